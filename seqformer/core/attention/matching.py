"""Match attention: buckets from the tokens themselves, so a position reads what followed
the earlier occurrences of its own context (an induction head, hashed).

Shared-QK LSH hashes learned vectors; a repeat 10K tokens back is found only once the
model has learned vectors that collide for it. A match layer skips that: hashing round r
puts position p into the bucket of the k_r tokens *before* p, `hash(x[p-k_r .. p-1])`.
The query that wants p is the position t = p' - 1 whose last k_r tokens equal those:
position t asks "what came after my context last time?".

So the layer runs on L + 1 *items*, item i standing for "what follows x[..i-1]":
- its bucket is the hash of the k tokens before i (known at position i - 1);
- its query and key are position i - 1's (item 0, before the sequence, has a zero one);
- its value is position i's, which holds x[i], the token that followed; item L has none;
- its output is position i - 1's.
Items are sorted by (bucket, position) and chunked by rank in bucket as in LSH (buckets.py),
so an item's window is the most recent earlier occurrences of its context: exactly causal
and prefix consistent, as in every bucketed layer.

An item's own value is the next position's, which a causal model must not see. The
attention therefore has a *null key*: score 0, value 0, in every softmax. Against it the
self score SELF_SCORE (-1e5) has weight exp(-1e5) == 0 exactly, in the output and in every
gradient; and a position whose context never occurred before attends to nothing (output
0) instead of to itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..decoding.cache import KVCache
from .kernels_torch import attend_one

_MODULUS = 2**31 - 1  # prime; hashes stay below buckets.py's padding bucket (2**31 - 1)
_BASE = 1_000_003


def context_buckets(tokens: torch.Tensor, match_k: tuple[int, ...], pad: int) -> torch.Tensor:
    """The bucket of each item 0..L of tokens (B, L): for round r, a hash of the match_k[r]
    tokens before it, `pad` standing in before the sequence. Returns (B, 1, R, L + 1)
    int32 (one bucket for every head)."""
    B, L = tokens.shape
    k_max = max(match_k)
    ext = torch.cat([tokens.new_full((B, k_max), pad), tokens], dim=1).long()
    rounds = []
    for k in match_k:
        h = torch.zeros(B, L + 1, dtype=torch.long, device=tokens.device)
        for j in range(k):
            start = k_max - k + j
            h = (h * _BASE + ext[:, start:start + L + 1] + 1) % _MODULUS
        rounds.append(h)
    return torch.stack(rounds, dim=1).unsqueeze(1).to(torch.int32)


def next_bucket(history: torch.Tensor, match_k: tuple[int, ...], pad: int) -> torch.Tensor:
    """The buckets (B, R) of the item after the last of `history` (B, >= max(match_k))."""
    return context_buckets(history[:, -max(match_k):], match_k, pad)[:, 0, :, -1]


def add_null(out: torch.Tensor, m: torch.Tensor, norm: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge the null key (score 0, value 0) into a running softmax: `out` (rows, D),
    unnormalized relative to the running maximum `m` with normalizer `norm` (rows).
    In place on out; returns the new (m, norm)."""
    m_new = m.clamp_min(0)
    scale = torch.exp(m - m_new)
    out.mul_(scale.unsqueeze(-1))
    return m_new, norm.mul(scale).add_(torch.exp(-m_new))


@dataclass
class MatchCache(KVCache):
    """A match layer's decoding state: keys and values of items 0..capacity (B, H,
    capacity + 1, D) and each item's bucket per round (B, R, capacity + 1), -1 unset."""

    buckets: torch.Tensor


def match_step(q: torch.Tensor, cache: MatchCache, item: torch.Tensor, bucket_size: int
               ) -> torch.Tensor:
    """The output (B, H, D) of `item` (a 0-d tensor) whose key and bucket the cache
    already holds, as the full forward computes it: per round, its window is the members
    of its bucket in its own and the previous chunk of bucket_size by rank, up to itself;
    the rounds and the null key share one softmax. Fixed shapes (a compiled step serves
    every position): the window is found by a pass over the cache's buckets."""
    B, H, D = q.shape
    T = cache.buckets.shape[-1]
    bs, W = bucket_size, min(2 * bucket_size, T)
    idx = torch.arange(T, device=q.device)
    own = cache.buckets.index_select(-1, item.view(1))  # (B, R, 1)
    same = (cache.buckets == own) & (idx <= item)
    rank_all = same.cumsum(-1) - 1
    rank = rank_all.index_select(-1, item.view(1))
    valid = same & (rank_all >= (rank // bs - 1) * bs)
    # the window's items are the W latest valid ones (a bucket's own and previous chunk
    # hold at most 2 * bucket_size items up to the query)
    chosen = torch.where(valid, idx, -1).topk(W, dim=-1).values  # (B, R, W)
    R = chosen.shape[1]
    gather = chosen.clamp_min(0).view(B, 1, R * W, 1).expand(B, H, R * W, D)
    kw = cache.k.gather(2, gather).view(B, H, R, W, D)
    vw = cache.v.gather(2, gather).view(B, H, R, W, D)
    ok = (chosen >= 0).unsqueeze(1)
    o, lse = attend_one(q.unsqueeze(2), kw, vw, ok, (chosen == item).unsqueeze(1))
    # one softmax over the rounds' windows and the null key (score 0, value 0)
    m = lse.amax(-1, keepdim=True).clamp_min(0)
    w = torch.exp(lse - m)
    return (o * w.unsqueeze(-1)).sum(2) / (w.sum(-1, keepdim=True) + torch.exp(-m))
