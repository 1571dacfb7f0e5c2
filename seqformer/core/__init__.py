"""seqformer.core: the Reformer in plain PyTorch. Knows nothing of files or domains.

    config.py      ReformerConfig            precision.py   accumulation and autocast rules
    attention/     self-attention (projections, hashing, bucket layout, kernels and their
                   choice) and cross-attention
    layers/        feed-forward, embeddings, axial positions, the two-stream stack, the loss
    decoding/      caches, sampling, the sampling loop, beam search
    model/         ReformerLM, ReformerClassifier, ReformerEncDec, PrefixLM
"""

from .attention.cross import Alignment
from .config import ConfigError, ReformerConfig
from .decoding.cache import DecodeCache
from .decoding.sampling import Constraint, check_sampling, sample_next
from .model.classifier import ReformerClassifier
from .model.encdec import ReformerEncDec
from .model.lm import ReformerLM
from .model.prefix_lm import PrefixLM

__all__ = ["Alignment", "ConfigError", "Constraint", "DecodeCache", "PrefixLM",
           "ReformerClassifier", "ReformerConfig", "ReformerEncDec", "ReformerLM",
           "check_sampling", "sample_next"]
