"""Where each hashing round puts each position: the bucket-sorted layout the kernels read.

The paper sorts tokens by (bucket, position) and cuts the sorted sequence into global
chunks. That leaks the future in a causal model: a later token's bucket shifts the chunk
boundaries, which changes which earlier keys an earlier query sees. Here a token's chunk
is (bucket, rank // bucket_size), where rank counts the earlier members of its bucket, and
it attends to its own and the previous chunk of the same bucket. Rank depends only on the
past, so the model is exactly causal and prefix consistent.

Which keys a query may see is encoded in one integer per sorted position, its group:
groups count up by 1 at each chunk boundary inside a bucket and by 2 at each new bucket,
so a key is in the query's own or previous chunk of the same bucket iff group(q) -
group(k) is 0 or 1. Local attention is the special case of one bucket in position order,
full attention that of one bucket and one chunk.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_PAD_BUCKET = 2**31 - 1  # padding positions form their own bucket, sorted last


def bucket_order(buckets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort by (bucket, position): one stable sort of the (int16 or int32) bucket ids.

    Returns, in sorted order: the original positions (the permutation), the bucket ids (in
    the input's dtype) and each token's rank among the earlier members of its bucket.
    All (..., L).
    """
    L = buckets.shape[-1]
    keys = buckets if buckets.dtype in (torch.int16, torch.int32) else buckets.to(torch.int32)
    sorted_buckets, perm = torch.sort(keys, dim=-1, stable=True)
    is_start = torch.ones_like(sorted_buckets, dtype=torch.bool)
    is_start[..., 1:] = sorted_buckets[..., 1:] != sorted_buckets[..., :-1]
    idx = torch.arange(L, device=buckets.device).expand(sorted_buckets.shape)
    start = torch.where(is_start, idx, torch.zeros_like(idx)).cummax(dim=-1).values
    return perm, sorted_buckets.to(buckets.dtype), idx - start


def gather_rows(flat: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """flat (N, ...) at the row indices `rows` (any shape): rows.shape + flat.shape[1:]."""
    return flat.index_select(0, rows.reshape(-1)).view(*rows.shape, *flat.shape[1:])


def _groups(is_start: torch.Tensor, rank: torch.Tensor, bucket_size: int) -> torch.Tensor:
    """Group ids along the sorted order: +2 at each bucket start, +1 at each chunk start."""
    step = torch.where(is_start, 2, (rank % bucket_size == 0).to(torch.long))
    return step.cumsum(dim=-1).to(torch.int32)


@dataclass
class RoundLayout:
    """Where one hashing round puts each position: each sorted position's row in the flat
    original-order (G * Lp, D) tensors and its group id, and how far back and ahead (in
    sorted positions) a query's window reaches. The band kernel's blocks are views."""

    order: torch.Tensor  # (G, Lp) flat rows in sorted order
    group_flat: torch.Tensor  # (G, Lp) int32
    blk: int  # the band kernel's query block
    look_back: int  # ... and its window, in blocks
    look_ahead: int
    back: int  # a query at sorted position i sees keys in [i - back, i + ahead]
    ahead: int
    in_order: bool = False  # local and full: sorted order is position order

    @property
    def rows(self) -> torch.Tensor:  # (G, nb, blk)
        return self.order.view(self.order.shape[0], -1, self.blk)

    def sorted_rows(self, flat: torch.Tensor) -> torch.Tensor:
        """flat (G * Lp [+ more], ...) in sorted order as blocks (G, nb, blk, ...): a view
        when the round is in position order, a gather otherwise."""
        rows = self.rows
        if self.in_order:
            return flat[:rows.numel()].view(*rows.shape, *flat.shape[1:])
        return gather_rows(flat, rows)

    def sorted_padded(self, flat: torch.Tensor) -> torch.Tensor:
        """flat (G * Lp + 1, D), its last row zero, as the band kernel's key blocks (G,
        look_back + nb + look_ahead, blk, D), the empty blocks zero."""
        if self.in_order:
            pad = (0, 0, 0, 0, self.look_back, self.look_ahead)
            return F.pad(self.sorted_rows(flat), pad)
        return gather_rows(flat, self.rows_padded(flat.shape[0] - 1))

    def rows_padded(self, zero_row: int) -> torch.Tensor:
        """(G, look_back + nb + look_ahead, blk): empty blocks point at the zero row."""
        return F.pad(self.rows, (0, 0, self.look_back, self.look_ahead), value=zero_row)

    def group(self) -> torch.Tensor:
        """(G, look_back + nb + look_ahead, blk) int32, empty blocks in groups no query
        can match."""
        g = self.group_flat.view(*self.rows.shape)
        g = F.pad(g, (0, 0, self.look_back, 0), value=-4)
        return F.pad(g, (0, 0, 0, self.look_ahead), value=2**30).contiguous()


def _round_layout(kind: str, buckets: torch.Tensor | None, G: int, L: int, Lp: int, bs: int,
           causal: bool, device: torch.device, lengths: torch.Tensor | None = None) -> RoundLayout:
    """buckets: (G, L) bucket ids of one round (lsh); local and full need none. lengths:
    (G, 1) real positions of each row, the rest padding that no real query sees; None: all
    L are real."""
    pos = torch.arange(Lp, device=device)
    real = L if lengths is None else lengths
    # a window [start of chunk c-1, self] spans at most 2*bs sorted positions; non-causal,
    # the rest of one's own chunk may lie up to bs - 1 positions ahead
    back, ahead = 2 * bs - 1, (0 if causal else bs - 1)
    if kind == "lsh":
        if lengths is not None:
            buckets = buckets.masked_fill(pos[:L] >= lengths, _PAD_BUCKET)
        if Lp != L:  # padding positions form their own bucket, sorted last
            buckets = F.pad(buckets, (0, Lp - L), value=_PAD_BUCKET)
        order, _, rank = bucket_order(buckets)
        group = _groups(rank == 0, rank, bs)
        # A window may start anywhere, so query blocks of bs/2 against 2*bs + bs/2 keys
        # waste less than blocks of bs against 3*bs keys.
        blk = bs // 2 if bs % 2 == 0 and bs >= 8 else bs
        look_back = math.ceil((2 * bs - 1) / blk)
    else:  # one bucket in position order (+ one of padding)
        order = pos.expand(G, Lp)
        is_start = (pos == 0) | (pos == real)
        if kind == "local":  # chunks are aligned blocks: own + previous
            group = _groups(is_start, pos - torch.where(pos >= real, real, 0), bs).expand(G, Lp)
            blk, look_back = bs, 1
        else:  # full: a single chunk, one block
            group = torch.where(is_start, 2, 0).cumsum(-1).to(torch.int32).expand(G, Lp)
            blk, look_back = Lp, 0
            back, ahead = Lp, (0 if causal else Lp)
    nb = Lp // blk
    look_back = min(look_back, nb - 1)
    look_ahead = 0 if causal or kind == "full" else min(math.ceil((bs - 1) / blk), nb - 1)
    order = order + torch.arange(G, device=device).unsqueeze(-1) * Lp
    return RoundLayout(order, group.reshape(G, Lp).to(torch.int32).contiguous(), blk, look_back,
                       look_ahead, back, ahead, in_order=kind != "lsh")



def round_layouts(kind: str, buckets: torch.Tensor | None, q: torch.Tensor, bucket_size: int,
                  causal: bool, lengths: torch.Tensor | None = None) -> list[RoundLayout]:
    """The layout of each hashing round (one for local and full attention): computed once
    by the caller when a forward and its backward both need them (the sorts are then not
    redone), 12 bytes per position and round. lengths: (B,) real positions per sequence of
    a right-padded batch (None: all real)."""
    return list(iter_round_layouts(kind, buckets, q, bucket_size, causal, lengths))


def iter_round_layouts(kind: str, buckets: torch.Tensor | None, q: torch.Tensor, bs: int,
                       causal: bool, lengths: torch.Tensor | None = None
                       ) -> Iterator[RoundLayout]:
    """As `round_layouts`, one round at a time (nothing of a round outlives its step)."""
    B, H, L, _ = q.shape
    Lp = math.ceil(L / bs) * bs
    n = buckets.shape[2] if kind == "lsh" else 1
    if lengths is not None:  # per (sequence, head) row
        lengths = lengths.to(q.device).repeat_interleave(H).view(B * H, 1)
    for r in range(n):
        b = buckets[:, :, r].reshape(B * H, L).to(torch.int32) if kind == "lsh" else None
        yield _round_layout(kind, b, B * H, L, Lp, bs, causal, q.device, lengths)
