"""Records tokenized once into a flat memory-mapped file, so a genome of any size trains
with bounded RAM, and reused while the inputs are unchanged.

Layout of a store directory: `tokens.bin` (all records back to back, uint8 or uint16)
and `index.json` (fingerprint of the inputs, dtype, and each record's id, offset and
length). Both are written to temporary names and renamed, index last.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..domains import Domain, OnSkip, Record, get_domain
from ..errors import InputError
from ..files import atomic_file


@dataclass
class StoredRecord:
    id: str
    offset: int
    length: int
    input: int = 0  # which of the inputs (files, in the order given) the record came from


def fingerprint(inputs: Iterable[Path], domain: Domain) -> str:
    """Changes when any input file (path, size, mtime) or the tokenization changes."""
    h = hashlib.sha256(json.dumps(domain.vocabulary(), sort_keys=True).encode())
    for p in inputs:
        st = Path(p).stat()
        h.update(f"{Path(p).resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


class TokenStore:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        index = json.loads((self.directory / "index.json").read_text())
        self.fingerprint: str = index["fingerprint"]
        self.records = [StoredRecord(**r) for r in index["records"]]
        self.tokens = np.memmap(self.directory / "tokens.bin", dtype=index["dtype"], mode="r",
                                shape=(index["total"],))

    def __len__(self) -> int:
        return len(self.records)

    @property
    def total(self) -> int:
        return int(self.tokens.shape[0])

    def record_tokens(self, i: int) -> np.ndarray:
        r = self.records[i]
        return self.tokens[r.offset:r.offset + r.length]

    def as_records(self) -> list[Record]:
        """Every record, its tokens a view of the memory map (nothing read yet)."""
        return [Record(r.id, self.record_tokens(i)) for i, r in enumerate(self.records)]

    @classmethod
    def build(cls, directory: str | Path, domain: Domain, inputs: list[Path],
              on_record: Callable[[str, int], None] | None = None,
              on_tokens: Callable[[int], None] | None = None,
              on_skip: OnSkip | None = None) -> TokenStore:
        """Tokenize `inputs` with `domain` into `directory`, unless an up-to-date store is
        already there. Records stream in pieces (Domain.read_pieces), so memory stays
        bounded whatever a record's length. `on_record(id, n_tokens)` reports each finished
        record, `on_tokens(n)` each piece, `on_skip(path, reason)` each file of a directory
        the domain passed over (unreadable MIDI)."""
        directory = Path(directory)
        key = fingerprint(inputs, domain)
        if (directory / "index.json").exists():
            try:
                store = cls(directory)
                if store.fingerprint == key:
                    return store
            except (OSError, ValueError, KeyError):
                pass  # unreadable or partial: rebuild
        directory.mkdir(parents=True, exist_ok=True)
        dtype = np.uint8 if domain.vocab_size <= 256 else np.uint16
        records, offset, start, seen = [], 0, 0, {}
        with atomic_file(directory / "tokens.bin") as f:
            for k, path in enumerate(inputs):
                for piece in domain.read_pieces(path, on_skip):
                    if piece.first:
                        if piece.id in seen:
                            raise InputError(f"{path}: record id {piece.id!r} also appears "
                                             f"in {seen[piece.id]}")
                        seen[piece.id] = path
                        start = offset
                    f.write(np.asarray(piece.tokens, dtype=dtype).tobytes())
                    offset += len(piece.tokens)
                    if on_tokens:
                        on_tokens(len(piece.tokens))
                    if piece.last:
                        records.append({"id": piece.id, "offset": start,
                                        "length": offset - start, "input": k})
                        if on_record:
                            on_record(piece.id, offset - start)
        if offset == 0:
            raise InputError(f"{', '.join(map(str, inputs))}: no tokens in the input")
        index = {"fingerprint": key, "dtype": np.dtype(dtype).name, "total": offset,
                 "records": records}
        with atomic_file(directory / "index.json", "w") as f:
            f.write(json.dumps(index))
        return cls(directory)


def tokenize(cfg: dict, inputs: list[Path], run: Path,
             on_record: Callable[[str, int], None] | None = None,
             on_tokens: Callable[[int], None] | None = None) -> TokenStore:
    """The run's token store (run/data), built from `inputs` unless up to date."""
    domain = get_domain(cfg["domain"], **cfg["data"]["options"])
    return TokenStore.build(Path(run) / "data", domain, inputs, on_record, on_tokens)
