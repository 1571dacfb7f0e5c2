"""Training and validation windows over a token store.

The records of a split are seen as one stream, each preceded by the separator token, so
a window may span many short records (MIDI pieces) or sit inside one long one (a
chromosome). Training windows start at seeded random offsets; validation windows are
consecutive, so validation always scores the same tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import InputError
from .token_store import TokenStore


class Stream:
    """Segments (offset, length) of a store read as one stream, a separator before each."""

    def __init__(self, store: TokenStore, segments: list[tuple[int, int]], sep_id: int):
        self.store = store
        self.segments = [(o, n) for o, n in segments if n > 0]
        self.sep_id = sep_id
        self.starts = np.cumsum([0] + [n + 1 for _, n in self.segments])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def slice(self, start: int, n: int) -> np.ndarray:
        out = np.empty(n, dtype=np.int64)
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        filled = 0
        while filled < n:
            offset, length = self.segments[i]
            at = start + filled - int(self.starts[i])  # 0 is the separator
            if at == 0:
                out[filled] = self.sep_id
                filled += 1
                continue
            take = min(length - (at - 1), n - filled)
            out[filled:filled + take] = self.store.tokens[offset + at - 1:offset + at - 1 + take]
            filled += take
            i += 1
        return out


def split_streams(store: TokenStore, holdout: float, split: str, sep_id: int,
                  holdout_ids: list[str] = ()) -> tuple[Stream, Stream]:
    """(train, validation): the records named in `holdout_ids`, else the last `holdout` of
    each record ("tail") or the last `holdout` of the records ("records")."""
    train, val = [], []
    if holdout_ids:
        missing = set(holdout_ids) - {r.id for r in store.records}
        if missing:
            raise InputError(f"data.holdout_ids: no record named {sorted(missing)[0]!r} in "
                             "the input")
        for r in store.records:
            (val if r.id in holdout_ids else train).append((r.offset, r.length))
    elif split == "tail":
        for r in store.records:
            n_val = int(round(r.length * holdout))
            train.append((r.offset, r.length - n_val))
            val.append((r.offset + r.length - n_val, n_val))
    else:
        n_val = int(round(len(store.records) * holdout))
        if holdout > 0 and len(store.records) > 1:
            n_val = max(1, n_val)
        cut = len(store.records) - n_val
        for i, r in enumerate(store.records):
            (train if i < cut else val).append((r.offset, r.length))
    return Stream(store, train, sep_id), Stream(store, val, sep_id)


class TrainWindows(Dataset):
    """Item i: a window of seq_len + 1 tokens at an offset drawn from rng(seed, i), so
    the data order is reproducible and any process or resumed run can start anywhere.

    record_starts: the share of windows that start at a record's separator instead. A
    window at a random offset almost never has the separator at position 0, which is
    where sampling starts ([sep] alone): without such windows a model of short records
    (MIDI pieces) has not learned how a record begins."""

    def __init__(self, stream: Stream, seq_len: int, n_items: int, seed: int,
                 augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
                 start: int = 0, record_starts: float = 0.0):
        if len(stream) < seq_len + 1:
            raise InputError(f"training data has {len(stream)} tokens, fewer than one window "
                             f"of {seq_len + 1}: use a smaller --seq-len or more data")
        self.stream, self.seq_len, self.n_items = stream, seq_len, n_items
        self.seed, self.augment, self.start = seed, augment, start
        self.record_starts = record_starts

    def __len__(self) -> int:
        return self.n_items

    def __getitem__(self, i: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, self.start + i])
        last = len(self.stream) - self.seq_len - 1  # the last start with a whole window
        # (with record_starts 0 the draws are those of runs from before it existed)
        if self.record_starts and rng.random() < self.record_starts:
            record = int(rng.integers(0, len(self.stream.segments)))
            at = min(int(self.stream.starts[record]), last)
        else:
            at = int(rng.integers(0, last + 1))
        window = self.stream.slice(at, self.seq_len + 1)
        if self.augment is not None:
            window = self.augment(window, rng)
        return torch.from_numpy(np.ascontiguousarray(window))


class ValWindows(Dataset):
    """Consecutive windows from the start of the validation stream (the last one may be
    shorter; it is padded with pad_id, which the loss ignores)."""

    def __init__(self, stream: Stream, seq_len: int, max_windows: int, pad_id: int):
        self.stream, self.seq_len, self.pad_id = stream, seq_len, pad_id
        usable = max(0, len(stream) - 1)
        self.n = min(max_windows, -(-usable // seq_len)) if usable else 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        start = i * self.seq_len
        n = min(self.seq_len + 1, len(self.stream) - start)
        out = np.full(self.seq_len + 1, self.pad_id, dtype=np.int64)
        out[:n] = self.stream.slice(start, n)
        return torch.from_numpy(out)
