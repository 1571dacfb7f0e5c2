"""Labelled sequences for classification: which record has which class, a seeded
stratified validation split, and the windows a classifier trains and predicts on.

A classifier sees windows of `seq_len` tokens. A shorter sequence is padded (the pad
positions are left out of the pooling the head reads); a longer one is cropped at a random
offset in training and covered by windows overlapping by half at validation and
prediction, whose class probabilities are averaged. With both strands, every window is
also read reverse-complemented and the two strands' probabilities averaged.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import InputError
from .token_store import TokenStore


def parse_classes(pairs: list[str]) -> tuple[list[str], list[Path]]:
    """['oct4=a.fa', 'mafk=b.fa'] -> (names, files), checked."""
    names, files = [], []
    for pair in pairs:
        name, sep, file = pair.partition("=")
        name, file = name.strip(), file.strip()
        if not sep or not name or not file:
            raise InputError(f"--classes {pair!r}: expected NAME=FILE")
        if name in names:
            raise InputError(f"--classes: class {name!r} is named twice")
        path = Path(file)
        if not path.is_file():
            raise InputError(f"{path}: no such file (class {name!r})")
        if path.stat().st_size == 0:
            raise InputError(f"{path}: empty file (class {name!r})")
        if path in files:
            raise InputError(f"{path}: given for two classes")
        names.append(name)
        files.append(path)
    if len(names) < 2:
        raise InputError("--classes: a classifier needs at least two classes, got "
                         f"{len(names)}")
    return names, files


def read_label_table(path: Path) -> dict[str, str]:
    """A TSV of id and label (a header line `id<TAB>label` is allowed) -> {id: label}."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    labels: dict[str, str] = {}
    with open(path, newline="") as f:
        for n, row in enumerate(csv.reader(f, delimiter="\t"), start=1):
            if not row or not "".join(row).strip() or row[0].startswith("#"):
                continue
            if len(row) < 2 or not row[0].strip() or not row[1].strip():
                raise InputError(f"{path}, line {n}: expected id<TAB>label, got {row!r}")
            rid, label = row[0].strip(), row[1].strip()
            if n == 1 and (rid.lower(), label.lower()) == ("id", "label"):
                continue
            if rid in labels and labels[rid] != label:
                raise InputError(f"{path}, line {n}: id {rid!r} has two labels "
                                 f"({labels[rid]!r} and {label!r})")
            labels[rid] = label
    if not labels:
        raise InputError(f"{path}: no labels")
    return labels


def class_index(table: dict[str, str], classes: list[str], where: Path) -> dict[str, int]:
    """{class: its output index}, once every label of the table is one of `classes`."""
    unknown = sorted(set(table.values()) - set(classes))
    if unknown:
        raise InputError(f"{where}: label {unknown[0]!r} is not one of the model's classes "
                         f"{classes}")
    return {c: i for i, c in enumerate(classes)}


@dataclass
class LabelledSet:
    """A token store and the class index of each of its records."""

    store: TokenStore
    labels: np.ndarray  # (n_records,) int
    classes: list[str]

    @classmethod
    def from_class_files(cls, store: TokenStore, classes: list[str]) -> LabelledSet:
        """Records take the class of the input file they came from (one file per class)."""
        labels = np.array([r.input for r in store.records], dtype=np.int64)
        missing = set(range(len(classes))) - set(labels.tolist())
        if missing:
            raise InputError(f"class {classes[min(missing)]!r}: its file has no sequences")
        return cls(store, labels, classes)

    @classmethod
    def from_table(cls, store: TokenStore, table: dict[str, str], where: Path,
                   classes: list[str] | None = None) -> LabelledSet:
        """Records labelled by id from a TSV; every labelled id must be in the FASTA, and
        records without a label are left out. `classes` fixes the class order (resume)."""
        ids = {r.id for r in store.records}
        absent = [rid for rid in table if rid not in ids]
        if absent:
            raise InputError(f"{where}: {len(absent):,} ids are not in the FASTA input, e.g. "
                             f"{absent[0]!r}")
        classes = classes or sorted(set(table.values()))
        if len(classes) < 2:
            raise InputError(f"{where}: a classifier needs at least two labels, found "
                             f"{classes}")
        index = class_index(table, classes, where)
        labels = np.array([index[table[r.id]] if r.id in table else -1
                           for r in store.records], dtype=np.int64)
        return cls(store, labels, classes)

    def lengths(self) -> np.ndarray:
        return np.array([r.length for r in self.store.records], dtype=np.int64)

    def split(self, holdout: float, seed: int) -> tuple[list[int], list[int]]:
        """(train, validation) record indices: `holdout` of each class, drawn with `seed`."""
        rng = np.random.default_rng(seed)
        train, val = [], []
        for c in range(len(self.classes)):
            idx = np.flatnonzero(self.labels == c)
            rng.shuffle(idx)
            n_val = int(round(len(idx) * holdout))
            if holdout > 0 and len(idx) > 1:
                n_val = min(max(1, n_val), len(idx) - 1)
            val.extend(idx[:n_val].tolist())
            train.extend(idx[n_val:].tolist())
        return sorted(train), sorted(val)


def pad_window(tokens: np.ndarray, seq_len: int, pad_id: int) -> tuple[np.ndarray, int]:
    out = np.full(seq_len, pad_id, dtype=np.int64)
    out[:len(tokens)] = tokens
    return out, len(tokens)


class TrainCrops(Dataset):
    """Item i: a record drawn with rng(seed, start + i), a window of it at a random
    offset, reverse-complemented half the time if `flip` is given. Reproducible, and a
    resumed run goes on with new items. Yields (tokens, mask, label)."""

    def __init__(self, data: LabelledSet, records: list[int], seq_len: int, n_items: int,
                 seed: int, pad_id: int,
                 flip: Callable[[np.ndarray], np.ndarray] | None = None, start: int = 0):
        if not records:
            raise InputError("no training sequences left after the validation split")
        self.data, self.records, self.seq_len = data, np.asarray(records), seq_len
        self.n_items, self.seed, self.pad_id, self.flip, self.start = (
            n_items, seed, pad_id, flip, start)

    def __len__(self) -> int:
        return self.n_items

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        rng = np.random.default_rng([self.seed, self.start + i])
        rec = int(self.records[rng.integers(len(self.records))])
        tokens = self.data.store.record_tokens(rec)
        at = int(rng.integers(0, max(1, len(tokens) - self.seq_len + 1)))
        window = np.asarray(tokens[at:at + self.seq_len], dtype=np.int64)
        if self.flip is not None and rng.random() < 0.5:
            window = self.flip(window)
        window, n = pad_window(window, self.seq_len, self.pad_id)
        mask = np.arange(self.seq_len) < n
        return torch.from_numpy(window), torch.from_numpy(mask), int(self.data.labels[rec])


def window_starts(length: int, seq_len: int) -> list[int]:
    """Offsets of windows covering `length` tokens, overlapping by about half, the last
    one ending at the end."""
    if length <= seq_len:
        return [0]
    stride = max(1, seq_len // 2)
    starts = list(range(0, length - seq_len + 1, stride))
    if starts[-1] != length - seq_len:
        starts.append(length - seq_len)
    return starts


class RecordWindows(Dataset):
    """Every window of the given records (and its reverse complement with `flip`), in
    order. Item: (tokens, mask, position of its record in `records`)."""

    def __init__(self, tokens_of: Callable[[int], np.ndarray], records: list[int],
                 seq_len: int, pad_id: int,
                 flip: Callable[[np.ndarray], np.ndarray] | None = None):
        self.tokens_of, self.seq_len, self.pad_id, self.flip = tokens_of, seq_len, pad_id, flip
        self.items = [(k, rec, at, strand) for k, rec in enumerate(records)
                      for at in window_starts(len(tokens_of(rec)), seq_len)
                      for strand in ((0, 1) if flip is not None else (0,))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        k, rec, at, strand = self.items[i]
        window = np.asarray(self.tokens_of(rec)[at:at + self.seq_len], dtype=np.int64)
        if strand:
            window = self.flip(window)
        window, n = pad_window(window, self.seq_len, self.pad_id)
        mask = np.arange(self.seq_len) < n
        return torch.from_numpy(window), torch.from_numpy(mask), k, i


def average_by_record(probs: torch.Tensor, owner: torch.Tensor, n_records: int) -> torch.Tensor:
    """Mean of window probabilities (W, C) per record, owner (W,) -> (n_records, C)."""
    total = torch.zeros(n_records, probs.shape[1], dtype=torch.float64)
    total.index_add_(0, owner.long(), probs.double())
    count = torch.bincount(owner.long(), minlength=n_records).clamp_min(1)
    return (total / count.unsqueeze(1)).float()
