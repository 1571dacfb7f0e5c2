"""FASTA reading and writing shared by the sequence domains (dna, protein).

What is common: file checks (missing, a directory, empty), gzip found by its magic bytes
(not the file name), a streaming parser that hands out each record's sequence in chunks of
about `piece_bytes` bytes with whitespace removed, ids by Biopython's rule (the first word
after '>'), unique ids, and the errors for all of these, each naming the file. What is
not: turning letters into token ids, which each domain does on the chunks (one byte = one
letter = one token, so positions in messages count letters, 1-based, across chunks).

Writing: ids as headers, 60 letters a line, gzipped when the name ends in .gz (with no time
stamp or file name in the gzip header, so the same records give the same bytes), and
atomic (seqformer.files.atomic_file).
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..files import atomic_file
from .base import Domain, OnSkip, Piece, Record, assemble

__all__ = ["Chunk", "char_at", "check_file", "check_id", "check_ids", "chunks", "no_sequence",
           "open_binary", "read_errors", "sniff", "write"]

WHITESPACE = b" \t\n\r\v\f"
LINE_WIDTH = 60
GZIP_MAGIC = b"\x1f\x8b"
READ_ERRORS = (OSError, EOFError, zlib.error)  # what reading a bad (gzip) file raises


@dataclass
class Chunk:
    """Consecutive letters of one record, whitespace removed."""

    id: str
    description: str  # the header line after '>', stripped
    raw: bytes
    done: int  # letters of this record in earlier chunks
    last: bool  # the record's last chunk


def check_file(path: str | Path) -> Path:
    """The path, if it names a non-empty file; else an InputError naming it."""
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


@contextmanager
def read_errors(path: Path, gzipped: bool) -> Iterator[None]:
    """Turn what reading a file raises (unreadable, corrupt or truncated gzip) into one
    InputError naming it."""
    try:
        yield
    except READ_ERRORS as e:
        what = "corrupt or truncated gzip file" if gzipped else "cannot read"
        raise InputError(f"{path}: {what} ({e})") from None


def open_binary(path: Path, gzipped: bool):  # noqa: ANN201
    return (gzip.open if gzipped else open)(path, "rb")


def sniff(path: Path) -> tuple[bool, bytes]:
    """Whether the file is gzipped (by its magic bytes), and its first non-blank line
    (b"" if none), which tells FASTA from other formats."""
    gzipped = False
    with read_errors(path, gzipped):
        with path.open("rb") as f:
            gzipped = f.read(2) == GZIP_MAGIC
    with read_errors(path, gzipped), open_binary(path, gzipped) as handle:
        for line in handle:
            if line.strip():
                return gzipped, line
    return gzipped, b""


def check_id(path: Path, rid: str, n: int, seen: dict[str, Path]) -> None:
    """Refuse record n's id if empty or already seen (in this file or, for reads of several
    files, an earlier one); remember it."""
    if not rid:
        raise InputError(f"{path}: record {n} has no id (a '>' header line with no name)")
    if rid in seen:
        where = "" if seen[rid] == path else f" (first seen in {seen[rid]})"
        raise InputError(f"{path}: duplicate record id {rid!r}{where}")
    seen[rid] = path


def no_sequence(path: Path, rid: str) -> InputError:
    return InputError(f"{path}: record {rid!r} has no sequence (zero length)")


def chunks(path: Path, gzipped: bool, seen: dict[str, Path], piece_bytes: int,
           not_fasta: str) -> Iterator[Chunk]:
    """The records of a FASTA file as chunks of about `piece_bytes` bytes of sequence lines.
    `not_fasta` is the message (after the path) for a file whose first line is no header."""
    n = 0
    with read_errors(path, gzipped), open_binary(path, gzipped) as handle:
        rid, description, lines, size, done = None, "", [], 0, 0
        for line in handle:
            if line.startswith(b">"):
                if rid is not None:
                    yield _chunk(path, rid, description, lines, done, last=True)
                n += 1
                description = line[1:].decode("utf-8", "replace").strip()
                rid = description.split(None, 1)[0] if description else ""
                check_id(path, rid, n, seen)
                lines, size, done = [], 0, 0
            elif rid is None:
                if line.strip():
                    raise InputError(f"{path}: {not_fasta}")
            else:
                lines.append(line)
                size += len(line)
                if size >= piece_bytes:
                    chunk = _chunk(path, rid, description, lines, done, last=False)
                    done += len(chunk.raw)
                    lines, size = [], 0
                    yield chunk
        if rid is not None:
            yield _chunk(path, rid, description, lines, done, last=True)
    if n == 0:
        raise InputError(f"{path}: no FASTA records found (expected lines starting with '>')")


def _chunk(path: Path, rid: str, description: str, lines: list[bytes], done: int,
           last: bool) -> Chunk:
    raw = b"".join(lines).translate(None, WHITESPACE)
    if last and done + len(raw) == 0:
        raise no_sequence(path, rid)
    return Chunk(rid, description, raw, done, last)


def char_at(raw: bytes, i: int) -> str:
    """The character starting at byte i, for messages. Every byte before the first bad one
    is an ASCII letter, so byte and character positions agree up to there."""
    return raw[i:i + 4].decode("utf-8", errors="replace")[0]


def check_ids(tokens: Any, vocab_size: int) -> np.ndarray:
    """Token ids as an integer array, checked to lie in [0, vocab_size)."""
    t = np.asarray(tokens)
    if t.size == 0:  # np.asarray([]) is float64; an empty list is still a valid sequence
        t = t.astype(np.uint8)
    if t.dtype.kind not in "iu":
        raise ValueError(f"token ids must be integers, got dtype {t.dtype}")
    if t.size and (t.min() < 0 or t.max() >= vocab_size):
        raise ValueError(f"token ids must lie in [0, {vocab_size}), got "
                         f"[{t.min()}, {t.max()}]")
    return t


def write(records: Iterable[Record], path: str | Path, decode: Callable[[Any], str],
          unit: str) -> None:
    """FASTA of `records` (sequence text by `decode`) at `path`; `unit` names one letter
    in messages ("base", "residue")."""
    path = Path(path)
    seen: set[str] = set()
    with atomic_file(path) as raw_out:
        # mtime=0 and no file name in the header: the same records give the same bytes
        out = (gzip.GzipFile(filename="", mode="wb", fileobj=raw_out, mtime=0,
                             compresslevel=6)
               if path.name.endswith(".gz") else raw_out)
        with out:
            for rec in records:
                out.write(_entry(rec, path, seen, decode, unit))


def _entry(rec: Record, path: Path, seen: set[str], decode: Callable[[Any], str],
           unit: str) -> bytes:
    # refuse what reading would refuse, so everything written reads back
    if not rec.id or any(c.isspace() for c in rec.id):
        raise InputError(f"{path}: record id {rec.id!r} must be non-empty with no "
                         "whitespace")
    if rec.id in seen:
        raise InputError(f"{path}: duplicate record id {rec.id!r}")
    seen.add(rec.id)
    seq = decode(rec.tokens).encode("ascii")
    if not seq:
        raise InputError(f"{path}: record {rec.id!r} is empty; FASTA needs at least one "
                         f"{unit}")
    lines = [b">" + rec.id.encode("utf-8")]
    lines += [seq[i:i + LINE_WIDTH] for i in range(0, len(seq), LINE_WIDTH)]
    return b"\n".join(lines) + b"\n"


INVALID = 255  # lookup-table value for a byte that is no letter of the domain


class FastaDomain(Domain):
    """A domain of letters read from FASTA files. Subclasses set `_lut` (byte -> token id,
    INVALID for a byte that is no letter), `_chars` (token id -> ASCII code) and `unit`
    ("base", "residue"), and read with `_pieces(path, seen)` (`seen`: record ids met so
    far, so ids are unique across files); `_hint(ch)` may explain a bad character."""

    _lut: np.ndarray
    _chars: np.ndarray
    unit = "letter"

    @staticmethod
    def _hint(ch: str) -> str:
        return " (not valid UTF-8 text)" if ch == "\ufffd" else ""

    def _tokenize(self, raw: bytes) -> tuple[np.ndarray, int]:
        """Tokens of whitespace-free bytes, and the index of the first bad byte (-1 if
        none)."""
        tokens = self._lut[np.frombuffer(raw, np.uint8)]
        bad = tokens == INVALID
        first = int(bad.argmax()) if tokens.size else 0
        return tokens, (first if tokens.size and bad[first] else -1)

    def encode(self, seq: str) -> np.ndarray:
        """Token ids (1-D uint8) of a string of the domain's letters; whitespace is
        ignored."""
        raw = seq.encode("utf-8", errors="replace").translate(None, WHITESPACE)
        tokens, bad = self._tokenize(raw)
        if bad >= 0:
            ch = char_at(raw, bad)
            raise InputError(f"unknown character {ch!r} at position {bad + 1}"
                             f"{self._hint(ch)}")
        return tokens

    def decode(self, tokens: Any) -> str:
        """The string of token ids; pad and sep are dropped."""
        t = check_ids(tokens, self.vocab_size)
        return self._chars[t[t > self.sep_id]].tobytes().decode("ascii")

    def write(self, records: Iterable[Record], path: str | Path) -> None:
        """FASTA with ids as headers and 60 letters a line; gzipped if `path` ends in .gz.
        Atomic: `path` is replaced only once every record is written. Nothing to repair."""
        write(records, path, self.decode, unit=self.unit)

    def _pieces(self, path: Path, seen: dict[str, Path]) -> Iterator[Piece]:
        raise NotImplementedError

    def read(self, path: str | Path, on_skip: OnSkip | None = None) -> Iterator[Record]:
        """Records of one FASTA file (plain or gzipped). File-level problems (missing, a
        directory, empty) are raised here; problems inside the file while iterating.
        Nothing is skipped: a bad record is an error."""
        return assemble(self._pieces(check_file(path), {}))

    def read_many(self, paths: Iterable[str | Path]) -> Iterator[Record]:
        """Records of several FASTA files in order; record ids must be unique across all.
        Every file is checked here, so a missing one fails before any reading."""
        checked = [check_file(p) for p in paths]
        seen: dict[str, Path] = {}
        return assemble(piece for path in checked for piece in self._pieces(path, seen))

    def read_pieces(self, path: str | Path, on_skip: OnSkip | None = None) -> Iterator[Piece]:
        """The tokens of one file in pieces of at most ~4 MiB, so a record of any length
        (a chromosome) is tokenized in bounded memory; the token store is built from these."""
        return self._pieces(check_file(path), {})
