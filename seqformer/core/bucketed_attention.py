"""Shared-QK attention inside buckets, chunked by rank within each bucket.

The paper sorts tokens by (bucket, position) and cuts the sorted sequence into global
chunks. That leaks the future in a causal model: a later token's bucket shifts the chunk
boundaries, which changes which earlier keys an earlier query sees. Here a token's chunk
is (bucket, rank // bucket_size), where rank counts the earlier members of its bucket, and
it attends to its own and the previous chunk of the same bucket. Rank depends only on the
past, so the model is exactly causal and prefix consistent.

In the sorted sequence each query's window is a contiguous run of at most 2 * bucket_size
positions ending at itself (causal), so the work is a band: query block k against key
blocks k-2..k, masked to same bucket, chunk >= own chunk - 1 and original position <= own.
Local attention is the special case of one bucket in position order (key blocks k-1..k).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# A token attends to itself only when no other key is allowed (paper, section 2). A finite
# score rather than -inf gives exactly that: exp(-1e5 - max) == 0 whenever another key is
# present, and weight 1 when it stands alone.
SELF_SCORE = -1e5
_PAD_BUCKET = 1 << 40  # padding positions form their own bucket, sorted last


def bucket_order(buckets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort by (bucket, position).

    Returns, in sorted order: the original positions (the permutation), the bucket ids and
    each token's rank among the earlier members of its bucket. All (..., L).
    """
    L = buckets.shape[-1]
    pos = torch.arange(L, device=buckets.device)
    sorted_key, perm = (buckets * L + pos).sort(dim=-1)
    sorted_buckets = torch.div(sorted_key, L, rounding_mode="floor")
    is_start = torch.ones_like(sorted_buckets, dtype=torch.bool)
    is_start[..., 1:] = sorted_buckets[..., 1:] != sorted_buckets[..., :-1]
    idx = pos.expand_as(sorted_buckets)
    start = torch.where(is_start, idx, torch.zeros_like(idx)).cummax(dim=-1).values
    return perm, sorted_buckets, idx - start


def _windows(x: torch.Tensor, block_dim: int, look_back: int, look_ahead: int, fill: float
             ) -> torch.Tensor:
    """For each block, concatenate blocks [k - look_back, k + look_ahead] along block_dim + 1."""
    nb = x.shape[block_dim]
    pad_shape = list(x.shape)
    parts = []
    if look_back:
        pad_shape[block_dim] = look_back
        parts.append(x.new_full(pad_shape, fill))
    parts.append(x)
    if look_ahead:
        pad_shape[block_dim] = look_ahead
        parts.append(x.new_full(pad_shape, fill))
    xp = torch.cat(parts, dim=block_dim) if len(parts) > 1 else x
    return torch.cat([xp.narrow(block_dim, look_back + o, nb)
                      for o in range(-look_back, look_ahead + 1)], dim=block_dim + 1)


def bucketed_attention(q: torch.Tensor, v: torch.Tensor, buckets: torch.Tensor | None,
                       bucket_size: int, causal: bool, dropout: float = 0.0,
                       training: bool = False) -> torch.Tensor:
    """Shared-QK attention within buckets.

    q, v: (B, H, L, D); keys are the L2-normalized queries. buckets: (B, H, R, L) bucket
    ids per hashing round, or None for local attention (chunk + previous chunk in position
    order). Rounds are combined with their log-sum-exp weights. Returns (B, H, L, D).
    """
    B, H, L, D = q.shape
    bs = bucket_size
    nb = math.ceil(L / bs)
    Lp = nb * bs
    k = F.normalize(q, dim=-1)
    if Lp != L:
        q, k, v = (F.pad(t, (0, 0, 0, Lp - L)) for t in (q, k, v))
    pos = torch.arange(Lp, device=q.device)

    if buckets is None:  # local attention: one bucket, already in position order
        R, perm = 1, None
        qs, ks, vs = q.unsqueeze(2), k.unsqueeze(2), v.unsqueeze(2)
        s_pos = pos.view(1, 1, 1, Lp)
        s_bucket = torch.zeros_like(s_pos)
        s_chunk = s_pos // bs
        look_back = min(1, nb - 1)
    else:
        R = buckets.shape[2]
        if Lp != L:
            buckets = F.pad(buckets, (0, Lp - L), value=_PAD_BUCKET)
        perm, s_bucket, rank = bucket_order(buckets)
        s_pos, s_chunk = perm, rank // bs
        idx = perm.unsqueeze(-1).expand(B, H, R, Lp, D)
        qs, ks, vs = (t.unsqueeze(2).expand(B, H, R, Lp, D).gather(3, idx) for t in (q, k, v))
        # the window [start of chunk c-1, self] spans at most 2*bs sorted positions
        look_back = min(2, nb - 1)
    # non-causal: the rest of one's own chunk may lie up to bs - 1 positions ahead
    look_ahead = 0 if causal else min(1, nb - 1)

    def blocks(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(*t.shape[:3], nb, bs, *t.shape[4:])

    qb = blocks(qs)
    kw = _windows(blocks(ks), 3, look_back, look_ahead, 0.0)
    vw = _windows(blocks(vs), 3, look_back, look_ahead, 0.0)
    qbkt, qchunk, qpos = (blocks(t).unsqueeze(-1) for t in (s_bucket, s_chunk, s_pos))
    kbkt, kchunk, kpos = (_windows(blocks(t), 3, look_back, look_ahead, -1).unsqueeze(-2)
                          for t in (s_bucket, s_chunk, s_pos))

    valid = (kbkt == qbkt) & (kchunk >= qchunk - 1) & (kpos < L)
    valid &= (kpos <= qpos) if causal else (kchunk <= qchunk)
    scores = torch.matmul(qb, kw.transpose(-1, -2)) * D ** -0.5
    scores = scores.masked_fill(~valid, float("-inf")).masked_fill(kpos == qpos, SELF_SCORE)
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    p = torch.exp(scores - lse)
    if dropout and training:
        p = F.dropout(p, dropout, training=True)
    out = torch.matmul(p, vw).reshape(B, H, R, Lp, D)
    lse = lse.reshape(B, H, R, Lp)

    if perm is not None:
        inv = torch.empty_like(perm).scatter_(-1, perm, pos.expand_as(perm))
        out = out.gather(3, inv.unsqueeze(-1).expand(B, H, R, Lp, D))
        lse = lse.gather(3, inv)
    if R > 1:
        out = (out * torch.softmax(lse, dim=2).unsqueeze(-1)).sum(dim=2)
    else:
        out = out.squeeze(2)
    return out[:, :, :L]


def full_attention(q: torch.Tensor, v: torch.Tensor, causal: bool, dropout: float = 0.0,
                   training: bool = False) -> torch.Tensor:
    """Dense shared-QK attention with the same self-masking rule (the reference)."""
    L, D = q.shape[-2], q.shape[-1]
    k = F.normalize(q, dim=-1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * D ** -0.5
    i = torch.arange(L, device=q.device)
    if causal:
        scores = scores.masked_fill(i[None, :] > i[:, None], float("-inf"))
    scores = scores.masked_fill(torch.eye(L, dtype=torch.bool, device=q.device), SELF_SCORE)
    p = torch.softmax(scores, dim=-1)
    if dropout and training:
        p = F.dropout(p, dropout, training=True)
    return torch.matmul(p, v)


def attend_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor,
               v_self: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One new query against a gathered window of earlier keys, plus itself (decoding).

    q: (..., D); k, v: (..., W, D); valid: (..., W); v_self: (..., D).
    Returns the output (..., D) and its log-sum-exp (...), as the full forward computes them.
    """
    D = q.shape[-1]
    scores = torch.matmul(k, q.unsqueeze(-1)).squeeze(-1) * D ** -0.5
    scores = scores.masked_fill(~valid, float("-inf"))
    scores = torch.cat([scores, scores.new_full((*scores.shape[:-1], 1), SELF_SCORE)], dim=-1)
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    p = torch.exp(scores - lse)
    out = torch.matmul(p[..., :-1].unsqueeze(-2), v).squeeze(-2) + p[..., -1:] * v_self
    return out, lse.squeeze(-1)
