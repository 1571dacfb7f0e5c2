"""Protein domain: FASTA files (plain or gzipped) <-> arrays of token ids.

Vocabulary (fixed):

    0 <pad>   1 <sep>   2-21 the 20 standard amino acids A C D E F G H I K L M N P Q R S T V W Y
    22 X (unknown or ambiguous)   23 * (stop)

Reading:

- Lowercase letters read as uppercase.
- The ambiguity and non-standard codes B (D or N), Z (E or Q), J (I or L), U (selenocysteine)
  and O (pyrrolysine) read as X, so every letter A-Z is accepted; writing gives X back.
- ``*`` (a stop, e.g. at the end of a translated CDS or inside a translated ORF) is a token.
- Whitespace inside a sequence is ignored; anything else (alignment gaps ``-`` and ``.``,
  digits, non-ASCII) is an unknown character: one error naming the file, the record and the
  position (1-based, counting letters only).
- Headers follow Biopython's rule (the id is the first word after '>'); ids must be unique.
- A record that looks like nucleotides is refused, because passing a CDS or genome FASTA to
  the protein side is a common mistake and would otherwise read "fine" (A, C, G, T, U and N
  are amino-acid letters too): a record of at least 30 letters of which at least 90% are
  A, C, G, T, U or N (any case), and in which at least three of A, C, G and T/U occur. The
  length floor keeps honest short peptides (``ACGT``, ``GATTACA``) and the distinct-letter
  rule keeps homopolymer runs (poly-G, poly-A, poly-N linkers) readable; a real protein
  is about a quarter A, C, G, T and N, far from 90%.

The FASTA parsing (file checks, gzip found by its magic bytes, streaming in pieces, ids,
duplicate ids, empty records, the error messages) is shared with the DNA domain
(`fasta.py`). GenBank/EMBL input is not read here: such a file is "not a FASTA file".

Writing: FASTA with ids as headers, 60 residues a line, gzipped if the name ends in .gz,
atomic (the file appears only once every record is written).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import fasta
from .base import Piece

__all__ = ["ProteinDomain"]

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
TOKENS = ("<pad>", "<sep>", *AMINO_ACIDS, "X", "*")
PAD, SEP = 0, 1
UNKNOWN = TOKENS.index("X")
STOP = TOKENS.index("*")
AMBIGUOUS = "BZJUO"  # read as X
_PIECE_BYTES = 1 << 22  # FASTA bytes per piece (proteins are far shorter; a memory bound)

# the DNA-looking guard (see the module docstring)
NUCLEOTIDE_LETTERS = "ACGTUN"
DNA_MIN_LETTERS = 30
DNA_FRACTION = 0.9
DNA_MIN_DISTINCT = 3  # of A, C, G, T/U

_CHARS = np.frombuffer("".join(t if len(t) == 1 else "?" for t in TOKENS).encode(), np.uint8)
_LUT = np.full(256, fasta.INVALID, np.uint8)
for _ch in AMINO_ACIDS + "X*":
    _LUT[ord(_ch)] = _LUT[ord(_ch.lower())] = TOKENS.index(_ch)
for _ch in AMBIGUOUS:
    _LUT[ord(_ch)] = _LUT[ord(_ch.lower())] = UNKNOWN
_LETTER = np.zeros(256, bool)
_LETTER[list(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")] = True
_NUCLEOTIDE = np.zeros(256, bool)
_NUCLEOTIDE[list((NUCLEOTIDE_LETTERS + NUCLEOTIDE_LETTERS.lower()).encode())] = True


class ProteinDomain(fasta.FastaDomain):
    """FASTA <-> uint8 token ids over a fixed 24-token vocabulary (see the module docstring)."""

    name = "protein"
    tokens = TOKENS
    pad_id = PAD
    sep_id = SEP
    unit = "residue"
    _chars = _CHARS
    _lut = _LUT

    @staticmethod
    def _hint(ch: str) -> str:
        return _hint(ch)

    # ---- files ----------------------------------------------------------------------

    def _pieces(self, path: Path, seen: dict[str, Path]) -> Iterator[Piece]:
        gzipped, _ = fasta.sniff(path)
        not_fasta = "not a FASTA file (the first line does not start with '>')"
        letters = nucleotides = 0
        present: set[int] = set()
        for chunk in fasta.chunks(path, gzipped, seen, _PIECE_BYTES, not_fasta):
            if chunk.done == 0:
                letters = nucleotides = 0
                present = set()
            arr = np.frombuffer(chunk.raw, np.uint8)
            letters += int(_LETTER[arr].sum())
            nucleotides += int(_NUCLEOTIDE[arr].sum())
            present |= set(np.unique(arr[_NUCLEOTIDE[arr]]).tolist())
            if chunk.last:
                _check_not_dna(path, chunk.id, letters, nucleotides, present)
            yield self._piece(path, chunk)

    def _piece(self, path: Path, chunk: fasta.Chunk) -> Piece:
        tokens, bad = self._tokenize(chunk.raw)
        if bad >= 0:
            ch = fasta.char_at(chunk.raw, bad)
            raise InputError(f"{path}: record {chunk.id!r}: unknown character {ch!r} at "
                             f"position {chunk.done + bad + 1}{_hint(ch)}")
        return Piece(chunk.id, tokens, first=chunk.done == 0, last=chunk.last,
                     meta={"path": str(path), "description": chunk.description})



def _check_not_dna(path: Path, rid: str, letters: int, nucleotides: int,
                   present: set[int]) -> None:
    """Refuse a record that looks like nucleotides (the rule is in the module docstring)."""
    distinct = {chr(c).upper().replace("U", "T") for c in present} & set("ACGT")
    if (letters >= DNA_MIN_LETTERS and nucleotides >= DNA_FRACTION * letters
            and len(distinct) >= DNA_MIN_DISTINCT):
        raise InputError(f"{path}: looks like a DNA FASTA (record {rid!r}: {nucleotides} of "
                         f"its {letters} letters are A, C, G, T, U or N); expected protein "
                         "(for DNA use the dna domain)")


def _hint(ch: str) -> str:
    if ch in "-.":
        return " (an alignment gap? remove gaps first)"
    if ch == "\ufffd":
        return " (not valid UTF-8 text)"
    return ""
