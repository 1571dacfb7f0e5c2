"""seqformer: Reformer models for very long sequences (genomes, music).

The public API: everything an application built on seqformer needs (apps/ import nothing
else). The models and domains load with the package; the pipeline's functions (which
bring in Lightning) on first use."""

from __future__ import annotations

import importlib
from typing import Any

from .core import (
    ConfigError,
    Constraint,
    ReformerClassifier,
    ReformerConfig,
    ReformerEncDec,
    ReformerLM,
)
from .domains import Domain, Record, get_domain
from .errors import InputError, OutputError, report_errors
from .files import atomic_file, atomic_path, check_output
from .version import __version__

# name -> the module that defines it, imported when the name is first read
_PIPELINE = {
    "load_run": "seqformer.pipeline.run_dir",
    "read_config": "seqformer.pipeline.run_dir",
    "read_sampling_limits": "seqformer.pipeline.run_dir",
    "token_log_likelihoods": "seqformer.pipeline.inference",
    "embed_records": "seqformer.pipeline.inference",
    "sample_batch": "seqformer.pipeline.inference",
    "sample_tokens": "seqformer.pipeline.inference",
    "heldout_ids": "seqformer.pipeline.run_dir",
    "load_seq2seq": "seqformer.pipeline.seq2seq",
    "pair_ids": "seqformer.pipeline.seq2seq",
    "target_grammar": "seqformer.pipeline.seq2seq",
    "target_log_likelihoods": "seqformer.pipeline.seq2seq",
    "translate": "seqformer.pipeline.seq2seq",
    "read_metrics": "seqformer.pipeline.run_dir",
}
# modules of the public API: the MIDI vocabulary and files, for token-level work
_MODULES = {"midi": "seqformer.domains.midi"}

__all__ = ["ConfigError", "Constraint", "Domain", "InputError", "OutputError",
           "ReformerClassifier", "ReformerConfig", "ReformerEncDec", "ReformerLM", "Record",
           "__version__", "atomic_file", "atomic_path", "check_output", "get_domain",
           "report_errors",
           *_PIPELINE, *_MODULES]


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(_MODULES[name])
    if name in _PIPELINE:
        return getattr(importlib.import_module(_PIPELINE[name]), name)
    raise AttributeError(f"module 'seqformer' has no attribute {name!r}")
