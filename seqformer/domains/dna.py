"""DNA domain: FASTA files (plain or gzipped) <-> arrays of token ids.

Vocabulary (fixed, whatever the options, so a model's parameter shapes never depend on them):

    0 <pad>   1 <sep>   2 A  3 C  4 G  5 T  6 N   7 a  8 c  9 g  10 t  11 n

Options:

- ``softmask="upper"`` (default) reads lowercase (soft-masked, e.g. repeats) bases as
  uppercase; ``"keep"`` keeps them as the separate lowercase tokens 7-11.
- ``iupac="n"`` (default) reads the IUPAC ambiguity codes R Y S W K M B D H V (any case) as
  N (as n for a lowercase code under ``softmask="keep"``); ``iupac="error"`` rejects them
  as unknown characters.

FASTA is read by a small streaming parser (`fasta.py`, shared with the protein domain)
rather than Biopython, whose parsers hold each record as one string: here a record arrives
in pieces of about 4 MiB (`read_pieces`), so a chromosome is tokenized in bounded memory.
Headers follow Biopython's rule (the id is the first word after '>').

GenBank and EMBL files (plain or gzip; told apart from FASTA by their first line, not by
the file name) are read with Biopython, one record at a time (Biopython holds that one
record), and their sequences tokenized in the same pieces. The record id is the
versioned accession (`NC_005816.1`). A protein record, a record without sequence (a
CONTIG or length-only entry), a feature outside its record or a truncated file is one
error naming the file and the record.

U (RNA) is not accepted: it is an unknown character like any other letter outside
A C G T N and the IUPAC codes. Whitespace inside a sequence is ignored; positions in error
messages count bases only (1-based).
"""

from __future__ import annotations

import gzip
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from . import fasta
from .annotations import from_biopython
from .base import Piece

__all__ = ["DNADomain"]

TOKENS = ("<pad>", "<sep>", "A", "C", "G", "T", "N", "a", "c", "g", "t", "n")
PAD, SEP = 0, 1
_IUPAC = "RYSWKMBDHV"
# Letters that occur in proteins but are neither bases nor IUPAC codes; X is left out
# because some DNA tools mask with it.
_AMINO_ONLY = "EFIJLOPQZ"
_PROTEIN_FRACTION = 0.1  # a record this rich in amino-acid-only letters is called a protein
_PIECE_BYTES = 1 << 22  # FASTA bytes per piece: memory bound while tokenizing

# id -> ASCII code for decoding; pad and sep are dropped before the lookup
_CHARS = np.frombuffer("".join(t if len(t) == 1 else "?" for t in TOKENS).encode(), np.uint8)
# id -> id of the complementary base; pad, sep and N map to themselves
_COMPLEMENT = np.array([TOKENS.index(t) for t in
                        ("<pad>", "<sep>", "T", "G", "C", "A", "N", "t", "g", "c", "a", "n")],
                       np.uint8)
_AMINO_MASK = np.zeros(256, bool)
_AMINO_MASK[list((_AMINO_ONLY + _AMINO_ONLY.lower()).encode())] = True


def _lookup_table(softmask: str, iupac: str) -> np.ndarray:
    lut = np.full(256, fasta.INVALID, np.uint8)
    letters = "ACGTN" + (_IUPAC if iupac == "n" else "")
    for ch in letters:
        upper = TOKENS.index(ch if ch in "ACGTN" else "N")
        lower = upper + 5 if softmask == "keep" else upper
        lut[ord(ch)] = upper
        lut[ord(ch.lower())] = lower
    return lut


class DNADomain(fasta.FastaDomain):
    """FASTA <-> uint8 token ids over a fixed 12-token vocabulary (see the module docstring)."""

    name = "dna"
    tokens = TOKENS
    pad_id = PAD
    sep_id = SEP
    unit = "base"
    _chars = _CHARS

    @staticmethod
    def _hint(ch: str) -> str:
        return _hint(ch)

    def __init__(self, softmask: str = "upper", iupac: str = "n") -> None:
        if softmask not in ("upper", "keep"):
            raise InputError(f"dna: softmask must be 'upper' or 'keep', got {softmask!r}")
        if iupac not in ("n", "error"):
            raise InputError(f"dna: iupac must be 'n' or 'error', got {iupac!r}")
        self.softmask = softmask
        self.iupac = iupac
        self._lut = _lookup_table(softmask, iupac)

    def config(self) -> dict[str, Any]:
        return {"softmask": self.softmask, "iupac": self.iupac}

    def generatable(self) -> list[int]:
        """Bases a sampler may emit: lowercase ones only when soft-masking is kept."""
        return [TOKENS.index(t) for t in ("ACGTNacgtn" if self.softmask == "keep" else "ACGTN")]

    # ---- sequences <-> tokens -------------------------------------------------------

    def complement_ids(self) -> list[int]:
        """Each token id's complement (model.copy_complement)."""
        return _COMPLEMENT.tolist()

    def reverse_complement(self, tokens: Any) -> np.ndarray:
        """Reverse complement of token ids along the last axis (A<->T, C<->G, N->N, lowercase
        likewise, pad and sep unchanged); keeps the input's integer dtype."""
        t = fasta.check_ids(tokens, len(TOKENS))
        return _COMPLEMENT[t[..., ::-1]].astype(t.dtype, copy=False)

    # ---- files ----------------------------------------------------------------------

    def _pieces(self, path: Path, seen: dict[str, Path]) -> Iterator[Piece]:
        gzipped, first = fasta.sniff(path)
        fmt = ("genbank" if first.startswith(b"LOCUS") else
               "embl" if first.startswith(b"ID ") else None)
        if fmt is not None:
            with fasta.read_errors(path, gzipped):
                yield from self._annotated_pieces(path, fmt, gzipped, seen)
            return
        not_fasta = ("not a FASTA, GenBank or EMBL file (the first line does not start with "
                     "'>', 'LOCUS' or 'ID')")
        for chunk in fasta.chunks(path, gzipped, seen, _PIECE_BYTES, not_fasta):
            yield self._piece(path, chunk)

    def _annotated_pieces(self, path: Path, fmt: str, gzipped: bool,
                          seen: dict[str, Path]) -> Iterator[Piece]:
        """The records of a GenBank or EMBL file through Biopython, in pieces."""
        from Bio import BiopythonParserWarning, SeqIO
        from Bio.Seq import UndefinedSequenceError

        name = _ANNOTATED[fmt]
        n = 0
        with (gzip.open if gzipped else open)(path, "rt", encoding="utf-8",
                                               errors="replace") as handle, \
                warnings.catch_warnings():
            # Biopython repairs what it can (e.g. locations written across the origin) and
            # warns; what it cannot repair is an error below
            warnings.simplefilter("ignore", BiopythonParserWarning)
            records = SeqIO.parse(handle, fmt)
            while True:
                try:
                    rec = next(records, None)
                except ValueError as e:
                    where = f"after record {n}" if n else "in its first record"
                    raise InputError(f"{path}: malformed {name} file {where} ({e})") from None
                if rec is None:
                    break
                n += 1
                rid = rec.id if rec.id and rec.id != "<unknown id>" else rec.name
                fasta.check_id(path, rid, n, seen)
                if rec.annotations.get("molecule_type", "DNA").lower() == "protein":
                    raise InputError(f"{path}: record {rid!r} is a protein record; expected "
                                     "DNA")
                try:
                    raw = bytes(rec.seq)
                except UndefinedSequenceError:
                    raise InputError(f"{path}: record {rid!r} has no sequence (only its "
                                     "length or a contig description)") from None
                for feature in rec.features:
                    loc = feature.location
                    if loc is not None and (int(loc.start) < 0 or int(loc.end) > len(raw)):
                        raise InputError(f"{path}: record {rid!r}: {feature.type} feature at "
                                         f"{loc} lies outside the record ({len(raw):,} bp)")
                # _piece gives path and description; an annotated record adds these
                meta = {"format": fmt, "features": from_biopython(rec.features, rid)}
                if not raw:
                    raise fasta.no_sequence(path, rid)
                for done in range(0, len(raw), _PIECE_BYTES):
                    chunk = fasta.Chunk(rid, rec.description,
                                        raw[done:done + _PIECE_BYTES].translate(
                                            None, fasta.WHITESPACE),
                                        done, last=done + _PIECE_BYTES >= len(raw))
                    piece = self._piece(path, chunk)
                    piece.meta.update(meta)
                    yield piece
        if n == 0:
            raise InputError(f"{path}: no {name} records found")

    def _piece(self, path: Path, chunk: fasta.Chunk) -> Piece:
        """Tokens of a chunk of a record; `chunk.done` bases of it came in earlier pieces."""
        raw, rid, done = chunk.raw, chunk.id, chunk.done
        tokens, bad = self._tokenize(raw)
        if bad >= 0:
            amino = int(_AMINO_MASK[np.frombuffer(raw, np.uint8)].sum())
            if amino >= _PROTEIN_FRACTION * len(raw):
                found = ", ".join(sorted(set(raw.decode("ascii", "replace").upper())
                                         & set(_AMINO_ONLY)))
                raise InputError(f"{path}: looks like a protein FASTA (record {rid!r} has "
                                 f"{amino} amino-acid-only letters: {found}); expected DNA")
            ch = fasta.char_at(raw, bad)
            raise InputError(f"{path}: record {rid!r}: unknown character {ch!r} at "
                             f"position {done + bad + 1}{_hint(ch)}")
        return Piece(rid, tokens, first=done == 0, last=chunk.last,
                     meta={"path": str(path), "description": chunk.description})



_ANNOTATED = {"genbank": "GenBank", "embl": "EMBL"}


def _hint(ch: str) -> str:
    if ch in "Uu":
        return " (RNA? convert U to T)"
    if ch == "\ufffd":
        return " (not valid UTF-8 text)"
    return ""
