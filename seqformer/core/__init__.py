"""seqformer.core: the Reformer in plain PyTorch. Knows nothing of files or domains."""

from .classifier import ReformerClassifier
from .config import ConfigError, ReformerConfig
from .cross_attention import Alignment
from .encdec import ReformerEncDec
from .model import DecodeCache, ReformerLM
from .prefix_lm import PrefixLM
from .sampling import Constraint, check_sampling, sample_next

__all__ = ["Alignment", "ConfigError", "Constraint", "DecodeCache", "PrefixLM",
           "ReformerClassifier", "ReformerConfig", "ReformerEncDec", "ReformerLM",
           "check_sampling", "sample_next"]
