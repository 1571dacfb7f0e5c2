"""CDS domain: coding sequences (FASTA, plain or gzipped) <-> one token per codon.

Vocabulary (fixed):

    0 <pad>   1 <sep>   2-65 the 64 codons AAA AAC AAG AAT ACA ... TTT (bases in the order
    A C G T, first base slowest)   66 NNN (a codon holding N or an IUPAC ambiguity code)

A model over codons reads a gene in a third of the positions a model over bases needs, and
each of its choices is a whole codon, so codon design trains about twice as many genes a
minute (apps/codon_design). Files are read by the DNA domain (the same FASTA and GenBank
parsing, checks and messages; soft-masked bases read as upper case), then each record is cut
into codons from its first base: a record whose length is not a multiple of 3 is an error
naming the file and the record. A record is held whole while it is cut, which is fine for
genes (the longest known are about 100 kb).

Writing: FASTA of the bases (60 a line), like the DNA domain; `NNN` writes as NNN.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from . import fasta
from .base import Piece
from .dna import TOKENS as DNA_TOKENS
from .dna import DNADomain

__all__ = ["CDSDomain", "CODONS"]

CODONS = tuple("".join(c) for c in product("ACGT", repeat=3))
TOKENS = ("<pad>", "<sep>", *CODONS, "NNN")
PAD, SEP = 0, 1
UNKNOWN = TOKENS.index("NNN")
_FIRST_CODON = TOKENS.index(CODONS[0])

# DNA token id -> base index (A C G T: 0-3), 4 for N (soft-masking is read as upper case)
_BASE_OF_DNA = np.array([("ACGT".index(t) if t in ("A", "C", "G", "T") else 4)
                         for t in DNA_TOKENS], np.int64)
_CODON_BYTES = np.frombuffer("".join(t if len(t) == 3 else "???" for t in TOKENS).encode(),
                             np.uint8).reshape(-1, 3)


def codon_ids(dna_tokens: np.ndarray) -> np.ndarray:
    """Codon token ids of DNA-domain token ids whose length is a multiple of 3."""
    bases = _BASE_OF_DNA[np.asarray(dna_tokens, np.int64)].reshape(-1, 3)
    ids = _FIRST_CODON + bases[:, 0] * 16 + bases[:, 1] * 4 + bases[:, 2]
    return np.where((bases == 4).any(axis=1), UNKNOWN, ids).astype(np.uint8)


class CDSDomain(fasta.FastaDomain):
    """Coding-sequence FASTA <-> uint8 codon ids over a fixed 67-token vocabulary (see the
    module docstring)."""

    name = "cds"
    tokens = TOKENS
    pad_id = PAD
    sep_id = SEP
    unit = "codon"

    def __init__(self) -> None:
        self._dna = DNADomain()

    def generatable(self) -> list[int]:
        """The 64 codons: a sampler never writes NNN."""
        return list(range(_FIRST_CODON, _FIRST_CODON + len(CODONS)))

    def encode(self, seq: str) -> np.ndarray:
        """Codon ids (1-D uint8) of a string of bases whose length is a multiple of 3."""
        tokens = self._dna.encode(seq)
        if len(tokens) % 3:
            raise InputError(f"{len(tokens):,} bases is not a whole number of codons")
        return codon_ids(tokens)

    def decode(self, tokens: Any) -> str:
        """The bases of codon ids; pad and sep are dropped."""
        t = fasta.check_ids(tokens, self.vocab_size)
        return _CODON_BYTES[t[t > self.sep_id]].tobytes().decode("ascii")

    def _pieces(self, path: Path, seen: dict[str, Path]) -> Iterator[Piece]:
        parts: list[np.ndarray] = []
        for piece in self._dna._pieces(path, seen):
            parts.append(piece.tokens)
            if not piece.last:
                continue
            bases = np.concatenate(parts) if len(parts) > 1 else parts[0]
            parts = []
            if len(bases) % 3:
                raise InputError(f"{path}: record {piece.id!r} has {len(bases):,} bases, not "
                                 "a whole number of codons (a coding sequence from its first "
                                 "base)")
            yield Piece(piece.id, codon_ids(bases), first=True, last=True, meta=piece.meta)
