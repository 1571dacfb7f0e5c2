"""Slow, obviously-correct references for the attention kernels (tests only)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from seqformer.core.attention.kernels_torch import SELF_SCORE


def _multi_round(q, v, n_rounds: int, keys_of: Callable[[int, int], list[int]]):
    """For each query i and round r, softmax over keys_of(i, r) (self soft-masked); rounds
    combined with their log-sum-exp weights. q, v: (L, D)."""
    L, D = q.shape
    k = F.normalize(q, dim=-1)
    scale = D ** -0.5
    out = torch.zeros_like(q)
    for i in range(L):
        outs, lses = [], []
        for r in range(n_rounds):
            keys = keys_of(i, r)
            s = torch.stack([(q[i] * k[j]).sum() * scale if j != i
                             else torch.tensor(SELF_SCORE, dtype=q.dtype) for j in keys])
            lse = torch.logsumexp(s, 0)
            outs.append((torch.exp(s - lse)[:, None] * v[keys]).sum(0))
            lses.append(lse)
        w = torch.softmax(torch.stack(lses), 0)
        out[i] = (w[:, None] * torch.stack(outs)).sum(0)
    return out


def rank_chunked_reference(q, v, buckets, bucket_size, causal=True):
    """Per-bucket rank chunking, one query at a time. q, v: (L, D); buckets: (R, L)."""
    L = q.shape[0]

    def keys_of(i: int, r: int) -> list[int]:
        b = buckets[r]
        members = [j for j in range(L) if b[j] == b[i]]  # in position order
        rank = {j: n for n, j in enumerate(members)}
        c = rank[i] // bucket_size
        return [j for j in members if c - 1 <= rank[j] // bucket_size <= c
                and (j <= i or not causal)]

    return _multi_round(q, v, len(buckets), keys_of)


def global_chunked_reference(q, v, buckets, bucket_size):
    """The paper's scheme (trax/HF/lucidrains): sort by (bucket, position), cut the sorted
    sequence into global chunks, attend to own + previous chunk, causal by position.
    Not exactly causal: later tokens move the chunk boundaries."""
    L = q.shape[0]
    orders = [sorted(range(L), key=lambda j, b=b: (int(b[j]), j)) for b in buckets]

    def keys_of(i: int, r: int) -> list[int]:
        order = orders[r]
        c = order.index(i) // bucket_size
        lo = max(0, (c - 1) * bucket_size)
        return [j for j in order[lo:(c + 1) * bucket_size] if j <= i]

    return _multi_round(q, v, len(buckets), keys_of)


def match_reference(q, v, buckets, bucket_size, causal=True):
    """Match attention (seqformer/core/attention/matching.py) as one dense masked softmax.

    q, v: (L, D) per position; buckets: (R, L + 1) per item. Item i has position i - 1's
    query (item 0 a zero one) and position i's value (item L a zero one); it sees, in each
    round, the members of its bucket in its own and the previous chunk of bucket_size by
    rank (up to itself when causal), a key counted once per round that holds it, itself
    at SELF_SCORE, and a null key of score 0 and value 0. Returns the output (L, D) of
    positions 0..L-1 (items 1..L)."""
    L, D = q.shape
    qi = torch.cat([q.new_zeros(1, D), q])
    vi = torch.cat([v, v.new_zeros(1, D)])
    k = F.normalize(qi, dim=-1)
    n = L + 1
    s = (qi @ k.T) * D ** -0.5
    eye = torch.eye(n, dtype=torch.bool)
    s = s.masked_fill(eye, SELF_SCORE)
    count = torch.zeros(n, n, dtype=q.dtype)
    for b in buckets:
        same = b[:, None] == b[None, :]
        rank = torch.stack([(b[:j] == b[j]).sum() for j in range(n)])
        chunk = rank // bucket_size
        near = (chunk[None, :] >= chunk[:, None] - 1) & (chunk[None, :] <= chunk[:, None])
        ok = same & near
        if causal:
            ok &= torch.ones(n, n, dtype=torch.bool).tril()
        count += ok.to(q.dtype)
    s = s.masked_fill(count == 0, float("-inf"))
    m = s.amax(-1, keepdim=True).clamp_min(0)
    w = count * torch.exp(s - m)
    out = (w @ vi) / (w.sum(-1, keepdim=True) + torch.exp(-m))
    return out[1:]
