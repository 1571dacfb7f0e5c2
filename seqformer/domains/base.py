"""What every domain provides: files <-> token-id arrays, its vocabulary, and how to write
samples. Domains know nothing of torch.nn, Lightning or the CLI."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["Domain", "InputError", "OnSkip", "Piece", "Record", "assemble"]

# on_skip(path, reason): a file passed over while reading a directory
OnSkip = Callable[[str, str], None]


@dataclass
class Record:
    """One named sequence: a FASTA record, a MIDI piece."""

    id: str
    tokens: np.ndarray  # 1-D integer array of token ids
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. source path, duration


@dataclass
class Piece:
    """Consecutive tokens of one record: long records come in several pieces, in order."""

    id: str
    tokens: np.ndarray
    first: bool  # the record's first piece
    last: bool  # the record's last piece
    meta: dict[str, Any] = field(default_factory=dict)


def assemble(pieces: Iterable[Piece]) -> Iterator[Record]:
    """Records from their pieces (the inverse of Domain.read_pieces)."""
    parts: list[np.ndarray] = []
    for piece in pieces:
        parts.append(piece.tokens)
        if piece.last:
            tokens = parts[0] if len(parts) == 1 else np.concatenate(parts)
            yield Record(piece.id, tokens, piece.meta)
            parts = []


class Domain:
    """Base class. Subclasses set `name`, `tokens` (token names, index = id), `pad_id`
    and `sep_id`, and implement read/write."""

    name: str = ""
    unit: str = "token"  # what one token is, in figures: bits/base, bits/codon
    tokens: tuple[str, ...] = ()
    pad_id: int = 0  # never a training target
    sep_id: int = 1  # separates records in a training stream; also the start token

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def read(self, path: str | Path, on_skip: OnSkip | None = None) -> Iterator[Record]:
        """Records of one file (or, where the domain allows, a directory). A file of a
        directory that cannot be read is passed over and reported to on_skip(path, reason)
        (by default a logged warning); a domain that reads one file skips nothing."""
        raise NotImplementedError

    def read_pieces(self, path: str | Path, on_skip: OnSkip | None = None) -> Iterator[Piece]:
        """The records of one file as pieces; domains with very long records (genomes)
        override this to stream in bounded memory."""
        for rec in self.read(path, on_skip):
            yield Piece(rec.id, rec.tokens, first=True, last=True, meta=rec.meta)

    def write(self, records: Iterable[Record], path: str | Path) -> dict[str, int] | None:
        """Write records to `path` atomically (temporary file, then rename). Returns what
        decoding had to repair, by kind, where the domain repairs (MIDI); else None."""
        raise NotImplementedError

    def generatable(self) -> list[int]:
        """Token ids a sampler may emit inside one record: by default all but pad and the
        separator (which would end the record)."""
        return [i for i in range(self.vocab_size) if i not in (self.pad_id, self.sep_id)]

    def sampling_limits(self, sequences: Iterable[np.ndarray],
                        sources: list[np.ndarray] | None = None,
                        source_domain: Domain | None = None) -> dict[str, Any] | None:
        """What sampling constraints learn from the training sequences (saved with a
        model); None for a domain without a grammar. `sources`: for seq2seq targets, each
        one's source tokens, of `source_domain`."""
        return None

    def calibrated_limits(self, limits: dict[str, Any] | None,
                          sample: Callable[[dict[str, Any], int, int], list[np.ndarray]]
                          ) -> tuple[dict[str, Any] | None, str | None]:
        """The sampling limits fitted to a trained model, and a line for the user saying
        what was fitted; `sample(limits, n, length)`: n of the model's samples under those
        limits. By default as they are, and nothing to say."""
        return limits, None

    def constraint(self, limits: dict[str, Any] | None, prompts: list[np.ndarray]):  # noqa: ANN201
        """A sampling constraint (core/decoding/sampling.py) for sequences continuing `prompts`,
        or None for a domain without a grammar."""
        return None

    def config(self) -> dict[str, Any]:
        """Options that change tokenization; saved with a model so it reads input the same way."""
        return {}

    def vocabulary(self) -> dict[str, Any]:
        """What a model directory stores about the vocabulary."""
        return {"domain": self.name, "tokens": list(self.tokens), "pad_id": self.pad_id,
                "sep_id": self.sep_id, "config": self.config()}
