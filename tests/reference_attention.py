"""Slow, obviously-correct references for the attention kernels (tests only)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seqformer.core.bucketed_attention import SELF_SCORE


def _attend(q, k, v, keys, i, scale):
    """Softmax of query i over key indices `keys` (self soft-masked); returns out, lse."""
    s = torch.stack([(q[i] * k[j]).sum() * scale if j != i else torch.tensor(SELF_SCORE,
                     dtype=q.dtype) for j in keys])
    lse = torch.logsumexp(s, 0)
    p = torch.exp(s - lse)
    return (p[:, None] * v[keys]).sum(0), lse


def rank_chunked_reference(q, v, buckets, bucket_size, causal=True):
    """Per-bucket rank chunking, one query at a time. q, v: (L, D); buckets: (R, L)."""
    L, D = q.shape
    k = F.normalize(q, dim=-1)
    scale = D ** -0.5
    out = torch.zeros_like(q)
    for i in range(L):
        outs, lses = [], []
        for b in buckets:
            members = [j for j in range(L) if b[j] == b[i]]  # in position order
            rank = {j: n for n, j in enumerate(members)}
            c = rank[i] // bucket_size
            keys = [j for j in members if c - 1 <= rank[j] // bucket_size <= c
                    and (j <= i if causal else True)]
            o, lse = _attend(q, k, v, keys, i, scale)
            outs.append(o)
            lses.append(lse)
        w = torch.softmax(torch.stack(lses), 0)
        out[i] = (w[:, None] * torch.stack(outs)).sum(0)
    return out


def global_chunked_reference(q, v, buckets, bucket_size):
    """The paper's scheme (trax/HF/lucidrains): sort by (bucket, position), cut the sorted
    sequence into global chunks, attend to own + previous chunk, causal by position.
    Not exactly causal: later tokens move the chunk boundaries."""
    L, D = q.shape
    k = F.normalize(q, dim=-1)
    scale = D ** -0.5
    out = torch.zeros_like(q)
    order_per_round = [sorted(range(L), key=lambda j, b=b: (int(b[j]), j)) for b in buckets]
    for i in range(L):
        outs, lses = [], []
        for order in order_per_round:
            where = order.index(i)
            c = where // bucket_size
            lo = max(0, (c - 1) * bucket_size)
            keys = [j for j in order[lo:(c + 1) * bucket_size] if j <= i]
            o, lse = _attend(q, k, v, keys, i, scale)
            outs.append(o)
            lses.append(lse)
        w = torch.softmax(torch.stack(lses), 0)
        out[i] = (w[:, None] * torch.stack(outs)).sum(0)
    return out
