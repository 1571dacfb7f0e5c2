"""seqformer.core: the Reformer in plain PyTorch. Knows nothing of files or domains."""

from .classifier import ReformerClassifier
from .config import ConfigError, ReformerConfig
from .model import DecodeCache, ReformerLM
from .sampling import Constraint, check_sampling, sample_next

__all__ = ["ConfigError", "Constraint", "DecodeCache", "ReformerClassifier", "ReformerConfig",
           "ReformerLM", "check_sampling", "sample_next"]
