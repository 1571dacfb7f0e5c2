"""DNA domain: FASTA files (plain or gzipped) <-> arrays of token ids.

Vocabulary (fixed, whatever the options, so a model's parameter shapes never depend on them):

    0 <pad>   1 <sep>   2 A  3 C  4 G  5 T  6 N   7 a  8 c  9 g  10 t  11 n

Options:

- ``softmask="upper"`` (default) reads lowercase (soft-masked, e.g. repeats) bases as
  uppercase; ``"keep"`` keeps them as the separate lowercase tokens 7-11.
- ``iupac="n"`` (default) reads the IUPAC ambiguity codes R Y S W K M B D H V (any case) as
  N (as n for a lowercase code under ``softmask="keep"``); ``iupac="error"`` rejects them
  as unknown characters.

FASTA is read by a small streaming parser rather than Biopython, whose parsers hold each
record as one string: here a record arrives in pieces of about 4 MiB (`read_pieces`), so
a chromosome is tokenized in bounded memory. Headers follow Biopython's rule (the id is
the first word after '>').

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
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..files import atomic_path
from .base import Domain, Piece, Record
from .base import assemble as _assemble
from .features import from_biopython

__all__ = ["DNADomain"]

TOKENS = ("<pad>", "<sep>", "A", "C", "G", "T", "N", "a", "c", "g", "t", "n")
PAD, SEP = 0, 1
_INVALID = 255  # lookup-table value for a byte that is no base
_IUPAC = "RYSWKMBDHV"
# Letters that occur in proteins but are neither bases nor IUPAC codes; X is left out
# because some DNA tools mask with it.
_AMINO_ONLY = "EFIJLOPQZ"
_PROTEIN_FRACTION = 0.1  # a record this rich in amino-acid-only letters is called a protein
_WHITESPACE = b" \t\n\r\v\f"
_LINE_WIDTH = 60
_GZIP_MAGIC = b"\x1f\x8b"
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
    lut = np.full(256, _INVALID, np.uint8)
    letters = "ACGTN" + (_IUPAC if iupac == "n" else "")
    for ch in letters:
        upper = TOKENS.index(ch if ch in "ACGTN" else "N")
        lower = upper + 5 if softmask == "keep" else upper
        lut[ord(ch)] = upper
        lut[ord(ch.lower())] = lower
    return lut


def _char_at(raw: bytes, i: int) -> str:
    """The character starting at byte i, for messages. Every byte before the first bad one
    is an ASCII base, so byte and character positions agree up to there."""
    return raw[i:i + 4].decode("utf-8", errors="replace")[0]


class DNADomain(Domain):
    """FASTA <-> uint8 token ids over a fixed 12-token vocabulary (see the module docstring)."""

    name = "dna"
    tokens = TOKENS
    pad_id = PAD
    sep_id = SEP

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

    def _tokenize(self, raw: bytes) -> tuple[np.ndarray, int]:
        """Tokens of whitespace-free ASCII bytes, and the index of the first bad byte (-1
        if none)."""
        tokens = self._lut[np.frombuffer(raw, np.uint8)]
        bad = tokens == _INVALID
        first = int(bad.argmax()) if tokens.size else 0
        return tokens, (first if tokens.size and bad[first] else -1)

    def encode(self, seq: str) -> np.ndarray:
        """Token ids (1-D uint8) of a DNA string; whitespace is ignored."""
        raw = seq.encode("utf-8", errors="replace").translate(None, _WHITESPACE)
        tokens, bad = self._tokenize(raw)
        if bad >= 0:
            ch = _char_at(raw, bad)
            raise InputError(f"unknown character {ch!r} at position {bad + 1}{_hint(ch)}")
        return tokens

    def decode(self, tokens: Any) -> str:
        """The DNA string of token ids; pad and sep are dropped."""
        t = _check_ids(tokens)
        return _CHARS[t[t > SEP]].tobytes().decode("ascii")

    def reverse_complement(self, tokens: Any) -> np.ndarray:
        """Reverse complement of token ids along the last axis (A<->T, C<->G, N->N, lowercase
        likewise, pad and sep unchanged); keeps the input's integer dtype."""
        t = _check_ids(tokens)
        return _COMPLEMENT[t[..., ::-1]].astype(t.dtype, copy=False)

    # ---- files ----------------------------------------------------------------------

    def read(self, path: str | Path) -> Iterator[Record]:
        """Records of one FASTA file (plain or gzipped). File-level problems (missing, a
        directory, empty) are raised here; problems inside the file while iterating."""
        path = _check_file(path)
        return _assemble(self._pieces(path, {}))

    def read_many(self, paths: Iterable[str | Path]) -> Iterator[Record]:
        """Records of several FASTA files in order; record ids must be unique across all.
        Every file is checked here, so a missing one fails before any reading."""
        checked = [_check_file(p) for p in paths]
        seen: dict[str, Path] = {}
        return _assemble(piece for path in checked for piece in self._pieces(path, seen))

    def read_pieces(self, path: str | Path) -> Iterator[Piece]:
        """The tokens of one FASTA file in pieces of at most ~4 MiB, so a chromosome of any
        length is tokenized in bounded memory (the token store is built from these)."""
        return self._pieces(_check_file(path), {})

    def _pieces(self, path: Path, seen: dict[str, Path]) -> Iterator[Piece]:
        n, gzipped = 0, False
        try:
            with path.open("rb") as f:
                gzipped = f.read(2) == _GZIP_MAGIC
            fmt = _annotated_format(path, gzipped)
            if fmt is not None:
                yield from self._annotated_pieces(path, fmt, gzipped, seen)
                return
            with (gzip.open if gzipped else open)(path, "rb") as handle:
                rid, description, lines, size, done = None, "", [], 0, 0
                for line in handle:
                    if line.startswith(b">"):
                        if rid is not None:
                            yield self._piece(path, rid, description, lines, done, last=True)
                        n += 1
                        description = line[1:].decode("utf-8", "replace").strip()
                        rid = description.split(None, 1)[0] if description else ""
                        self._check_id(path, rid, n, seen)
                        lines, size, done = [], 0, 0
                    elif rid is None:
                        if line.strip():
                            raise InputError(f"{path}: not a FASTA, GenBank or EMBL file (the "
                                             "first line does not start with '>', 'LOCUS' or "
                                             "'ID')")
                    else:
                        lines.append(line)
                        size += len(line)
                        if size >= _PIECE_BYTES:
                            piece = self._piece(path, rid, description, lines, done, last=False)
                            done += len(piece.tokens)
                            lines, size = [], 0
                            yield piece
                if rid is not None:
                    yield self._piece(path, rid, description, lines, done, last=True)
        except (OSError, EOFError, zlib.error) as e:
            what = "corrupt or truncated gzip file" if gzipped else "cannot read"
            raise InputError(f"{path}: {what} ({e})") from None
        if n == 0:
            raise InputError(f"{path}: no FASTA records found (expected lines starting with "
                             "'>')")

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
                self._check_id(path, rid, n, seen)
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
                for done in range(0, max(1, len(raw)), _PIECE_BYTES):
                    piece = self._piece(path, rid, rec.description,
                                        [raw[done:done + _PIECE_BYTES]], done,
                                        last=done + _PIECE_BYTES >= len(raw))
                    piece.meta.update(meta)
                    yield piece
        if n == 0:
            raise InputError(f"{path}: no {name} records found")

    @staticmethod
    def _check_id(path: Path, rid: str, n: int, seen: dict[str, Path]) -> None:
        if not rid:
            raise InputError(f"{path}: record {n} has no id (a '>' header line with no name)")
        if rid in seen:
            where = "" if seen[rid] == path else f" (first seen in {seen[rid]})"
            raise InputError(f"{path}: duplicate record id {rid!r}{where}")
        seen[rid] = path

    def _piece(self, path: Path, rid: str, description: str, lines: list[bytes], done: int,
               last: bool) -> Piece:
        """Tokens of a record's next lines; `done` bases of it came in earlier pieces."""
        raw = b"".join(lines).translate(None, _WHITESPACE)
        if last and done + len(raw) == 0:
            raise InputError(f"{path}: record {rid!r} has no sequence (zero length)")
        tokens, bad = self._tokenize(raw)
        if bad >= 0:
            amino = int(_AMINO_MASK[np.frombuffer(raw, np.uint8)].sum())
            if amino >= _PROTEIN_FRACTION * len(raw):
                found = ", ".join(sorted(set(raw.decode("ascii", "replace").upper())
                                         & set(_AMINO_ONLY)))
                raise InputError(f"{path}: looks like a protein FASTA (record {rid!r} has "
                                 f"{amino} amino-acid-only letters: {found}); expected DNA")
            ch = _char_at(raw, bad)
            raise InputError(f"{path}: record {rid!r}: unknown character {ch!r} at "
                             f"position {done + bad + 1}{_hint(ch)}")
        return Piece(rid, tokens, first=done == 0, last=last,
                     meta={"path": str(path), "description": description})

    def write(self, records: Iterable[Record], path: str | Path) -> None:
        """FASTA with ids as headers and 60 bases a line; gzipped if `path` ends in .gz.
        Atomic: `path` is replaced only once every record is written."""
        path = Path(path)
        seen: set[str] = set()
        with atomic_path(path) as tmp, tmp.open("wb") as raw_out:
            # mtime=0 and no file name in the header: the same records give the same bytes
            out = (gzip.GzipFile(filename="", mode="wb", fileobj=raw_out, mtime=0,
                                 compresslevel=6)
                   if path.name.endswith(".gz") else raw_out)
            with out:
                for rec in records:
                    out.write(self._fasta_entry(rec, path, seen))

    def _fasta_entry(self, rec: Record, path: Path, seen: set[str]) -> bytes:
        # refuse what read() would refuse, so everything written here reads back
        if not rec.id or any(c.isspace() for c in rec.id):
            raise InputError(f"{path}: record id {rec.id!r} must be non-empty with no "
                             "whitespace")
        if rec.id in seen:
            raise InputError(f"{path}: duplicate record id {rec.id!r}")
        seen.add(rec.id)
        seq = self.decode(rec.tokens).encode("ascii")
        if not seq:
            raise InputError(f"{path}: record {rec.id!r} is empty; FASTA needs at least one "
                             "base")
        lines = [b">" + rec.id.encode("utf-8")]
        lines += [seq[i:i + _LINE_WIDTH] for i in range(0, len(seq), _LINE_WIDTH)]
        return b"\n".join(lines) + b"\n"


_ANNOTATED = {"genbank": "GenBank", "embl": "EMBL"}


def _annotated_format(path: Path, gzipped: bool) -> str | None:
    """"genbank" or "embl" by the first non-blank line (LOCUS / ID), else None."""
    with (gzip.open if gzipped else open)(path, "rb") as handle:
        for line in handle:
            if line.strip():
                return ("genbank" if line.startswith(b"LOCUS") else
                        "embl" if line.startswith(b"ID ") else None)
    return None


def _hint(ch: str) -> str:
    if ch in "Uu":
        return " (RNA? convert U to T)"
    if ch == "\ufffd":
        return " (not valid UTF-8 text)"
    return ""


def _check_ids(tokens: Any) -> np.ndarray:
    t = np.asarray(tokens)
    if t.size == 0:  # np.asarray([]) is float64; an empty list is still a valid sequence
        t = t.astype(np.uint8)
    if t.dtype.kind not in "iu":
        raise ValueError(f"token ids must be integers, got dtype {t.dtype}")
    if t.size and (t.min() < 0 or t.max() >= len(TOKENS)):
        raise ValueError(f"token ids must lie in [0, {len(TOKENS)}), got "
                         f"[{t.min()}, {t.max()}]")
    return t


def _check_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a FASTA file")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    if size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")
    return path
