"""Domains turn files into token ids and back. Register a new one in `_DOMAINS`."""

from __future__ import annotations

import importlib
from typing import Any

from .base import Domain, InputError, OnSkip, Record

# name -> "module:class", imported on first use so one domain's dependencies never
# slow down or break another
_DOMAINS = {
    "cds": "seqformer.domains.cds:CDSDomain",
    "dna": "seqformer.domains.dna:DNADomain",
    "midi": "seqformer.domains.midi:MIDIDomain",
    "protein": "seqformer.domains.protein:ProteinDomain",
}


def available_domains() -> list[str]:
    return sorted(_DOMAINS)


def get_domain(name: str, **options: Any) -> Domain:
    """A domain instance by name; options change tokenization (e.g. softmask="keep")."""
    if name not in _DOMAINS:
        raise InputError(f"unknown domain {name!r} (available: {', '.join(available_domains())})")
    module, cls = _DOMAINS[name].split(":")
    return getattr(importlib.import_module(module), cls)(**options)


__all__ = ["Domain", "InputError", "OnSkip", "Record", "available_domains", "get_domain"]
