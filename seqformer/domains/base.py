"""What every domain provides: files <-> token-id arrays, its vocabulary, and how to write
samples. Domains know nothing of torch.nn, Lightning or the CLI."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["Domain", "InputError", "Record"]


@dataclass
class Record:
    """One named sequence: a FASTA record, a MIDI piece."""

    id: str
    tokens: np.ndarray  # 1-D integer array of token ids
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. source path, duration


class Domain:
    """Base class. Subclasses set `name`, `tokens` (token names, index = id), `pad_id`
    and `sep_id`, and implement read/write."""

    name: str = ""
    tokens: tuple[str, ...] = ()
    pad_id: int = 0  # never a training target
    sep_id: int = 1  # separates records in a training stream; also the start token

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def read(self, path: str | Path) -> Iterator[Record]:
        """Records of one file (or, where the domain allows, a directory)."""
        raise NotImplementedError

    def write(self, records: Iterable[Record], path: str | Path) -> None:
        """Write records to `path` atomically (temporary file, then rename)."""
        raise NotImplementedError

    def generatable(self) -> list[int]:
        """Token ids a sampler may emit inside one record: by default all but pad and the
        separator (which would end the record)."""
        return [i for i in range(self.vocab_size) if i not in (self.pad_id, self.sep_id)]

    def config(self) -> dict[str, Any]:
        """Options that change tokenization; saved with a model so it reads input the same way."""
        return {}

    def vocabulary(self) -> dict[str, Any]:
        """What a model directory stores about the vocabulary."""
        return {"domain": self.name, "tokens": list(self.tokens), "pad_id": self.pad_id,
                "sep_id": self.sep_id, "config": self.config()}
