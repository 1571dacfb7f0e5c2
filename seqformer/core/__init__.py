"""seqformer.core: the Reformer in plain PyTorch. Knows nothing of files or domains."""

from .config import ConfigError, ReformerConfig
from .model import DecodeCache, ReformerLM
from .sampling import sample_next

__all__ = ["ConfigError", "DecodeCache", "ReformerConfig", "ReformerLM", "sample_next"]
