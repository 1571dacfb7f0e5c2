"""The decoding caches: what prefill leaves and each step reads and extends.

Every shape is fixed by the capacity, never by the position decoded, so a compiled step
serves every position; the step writes each cache in place.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class KVCache:
    """Keys (normalized queries) and values of every decoded position: (B, H, capacity, D)."""

    k: torch.Tensor
    v: torch.Tensor


@dataclass
class LSHCache(KVCache):
    """Adds, per hashing round, how many tokens each bucket holds and the positions of
    its latest 2 * bucket_size members (slot = rank % (2 * bucket_size)): exactly the keys
    a new token's window can reach. The last slot of `ring` is a write sink."""

    counts: torch.Tensor  # (B, H, R, n_buckets)
    ring: torch.Tensor  # (B, H, R, n_buckets * 2 * bucket_size + 1)


@dataclass
class CopyCache:
    """The copy mixture's state (layers/copy.py): the tokens so far (B, capacity), the
    copy history first, the context hash of each item 0..capacity per k (B, K, capacity +
    1), -1 unset, the last position's candidates and streaks (B, K), how many tokens
    it holds (B,), the same in every row: a tensor, so that a compiled step serves any
    length of history; and the far pointer's distance (B,), -1 for none (or no pointer)."""

    tokens: torch.Tensor
    hashes: torch.Tensor
    last: torch.Tensor
    streak: torch.Tensor
    length: torch.Tensor
    distance: torch.Tensor


@dataclass
class DecodeCache:
    """A model's decoding state: each layer's cache (an LSHCache for lsh layers) and what
    the embedding and the cross-attention read at each step."""

    layers: list[KVCache]
    length: int  # positions decoded so far
    capacity: int
    recent: torch.Tensor | None = None  # (B, n) the last tokens the step reads, oldest first
    # a decoder's source: each layer's cross-attention keys and values, computed once
    cross: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    memory_lengths: torch.Tensor | None = None
    # `length` on the model's device, advanced by the step itself: the decoding loop never
    # has to send a position to the device nor read one back
    position: torch.Tensor | None = None
    copy: CopyCache | None = None  # the copy mixture's tokens and context hashes

    def select(self, index: torch.Tensor) -> None:
        """Row r becomes a copy of row index[r] (the batch may change size): e.g. each
        source's row repeated once per beam."""
        for layer in self.layers:
            for f in fields(layer):
                setattr(layer, f.name, getattr(layer, f.name)[index])
        if self.recent is not None:
            self.recent = self.recent[index]
        if self.cross is not None:
            self.cross = [(k[index], v[index]) for k, v in self.cross]
        if self.memory_lengths is not None:
            self.memory_lengths = self.memory_lengths[index]
        if self.copy is not None:
            self.copy = CopyCache(*(getattr(self.copy, f.name)[index]
                                    for f in fields(self.copy)))

    def reorder_beams(self, parent: torch.Tensor, start: int) -> None:
        """Row r takes row parent[r]'s state, in place (a compiled step keeps its
        tensors). Beams of one source only: the source's keys stay as they are. Keys and
        values at positions before `start` are already equal in both rows (a position's
        depend only on the tokens up to it), so only positions start..length-1 move."""
        for layer in self.layers:
            for f in fields(layer):
                t = getattr(layer, f.name)
                if f.name in ("k", "v"):  # (B, H, capacity, D); a match layer's key of
                    # item `length` is position length - 1's
                    t[:, :, start:self.length + 1] = t[parent, :, start:self.length + 1]
                else:  # LSH bucket counts and rings, match buckets: copied whole
                    t.copy_(t[parent])
        if self.recent is not None:
            self.recent = self.recent[parent]
        if self.copy is not None:
            for f in fields(self.copy):
                t = getattr(self.copy, f.name)
                t.copy_(t[parent])
