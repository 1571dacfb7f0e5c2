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


# Queries processed together by the band kernel: enough for efficient batched matmuls,
# few enough that a tile's scores (TILE_QUERIES x window floats) stay in cache. A GPU is
# launch-bound with small tiles: there a tile is up to 128K queries (~100 MB of scores).
TILE_QUERIES = 2048
TILE_QUERIES_CUDA = 1 << 17


def _windows(rows: torch.Tensor, k0: int, n: int, width: int) -> torch.Tensor:
    """rows: one padded row of blocks (nb + width - 1, bs, D), contiguous. A view of n
    overlapping windows of `width` consecutive blocks starting at block k0: (n, width*bs, D)."""
    _, bs, D = rows.shape
    return rows.as_strided((n, width * bs, D), (bs * D, D, 1),
                           rows.storage_offset() + k0 * bs * D)


class _BandAttention(torch.autograd.Function):
    """Each sorted query block against its window of key blocks, one tile at a time.

    Like FlashAttention it never holds all scores: the forward keeps the output and the
    log-sum-exp, and the backward recomputes each tile's probabilities. Which keys a query
    may see is encoded in one integer per sorted position, its group: groups count up by
    1 at each chunk boundary inside a bucket and by 2 at each new bucket, so a key is in
    the query's own or previous chunk of the same bucket iff group(q) - group(k) is 0 or 1.
    Causality and self-masking are then fixed patterns of the window, because inside a
    bucket sorted order is position order.

    q: (G, nb, blk, D), softmax scale included. k, v: (G, lb + nb + la, blk, D) and
    group: (G, lb + nb + la, blk) int32, with look_back (lb) empty blocks before each row
    and look_ahead (la) after it. Returns the output (G, nb, blk, D) and lse (G, nb, blk).
    """

    @staticmethod
    def _setup(q, look_back, look_ahead, causal):
        width = look_back + look_ahead + 1
        blk = q.shape[2]
        # fixed patterns over (query i, window key j): j's sorted offset from i
        offset = (torch.arange(width * blk, device=q.device) - look_back * blk
                  - torch.arange(blk, device=q.device).unsqueeze(-1))
        fixed_ok = offset <= 0 if causal else torch.ones_like(offset, dtype=torch.bool)
        return width, fixed_ok, offset == 0

    @staticmethod
    def _scores(qt, kw, gq, gk, fixed_ok, is_self):
        # matmuls in the inputs' dtype (bf16 under autocast), softmax in float32 or wider
        s = torch.matmul(qt, kw.transpose(-1, -2))
        s = s.to(torch.promote_types(s.dtype, torch.float32))
        d = gq.unsqueeze(-1) - gk.unsqueeze(-2)
        ok = (torch.bitwise_and(d, -2) == 0) & fixed_ok  # d in {0, 1}
        return s.masked_fill_(~ok, float("-inf")).masked_fill_(is_self, SELF_SCORE)

    @staticmethod
    def _tiles(q, k, group, look_back, width):
        """(g, k0, n, q tile, key windows, query groups, key-window groups) per tile."""
        G, nb, blk, _ = q.shape
        per_tile = max(1, (TILE_QUERIES_CUDA if q.is_cuda else TILE_QUERIES) // blk)
        for g in range(G):
            for k0 in range(0, nb, per_tile):
                n = min(per_tile, nb - k0)
                gk = group[g, k0:k0 + n + width - 1].unfold(0, width, 1).transpose(1, 2)
                yield (g, k0, n, q[g, k0:k0 + n], _windows(k[g], k0, n, width),
                       group[g, look_back + k0:look_back + k0 + n], gk.reshape(n, width * blk))

    @staticmethod
    def forward(ctx, q, k, v, group, look_back, look_ahead, causal):  # noqa: ANN001
        with torch.autocast(q.device.type, enabled=False):  # explicit dtypes, as in backward
            return _BandAttention._forward(ctx, q, k, v, group, look_back, look_ahead, causal)

    @staticmethod
    def _forward(ctx, q, k, v, group, look_back, look_ahead, causal):  # noqa: ANN001
        width, fixed_ok, is_self = _BandAttention._setup(q, look_back, look_ahead, causal)
        out = torch.empty_like(q)
        # at least float32: bf16 would blur the weights of the hashing rounds
        lse = q.new_empty(q.shape[:-1], dtype=torch.promote_types(q.dtype, torch.float32))
        for g, k0, n, qt, kw, gq, gk in _BandAttention._tiles(q, k, group, look_back, width):
            s = _BandAttention._scores(qt, kw, gq, gk, fixed_ok, is_self)
            # softmax is one fused pass; the log-sum-exp follows from the largest score
            # and its probability: lse = s_max - log p_max
            m = s.amax(dim=-1)
            p = torch.softmax(s, dim=-1)
            out[g, k0:k0 + n] = torch.matmul(p.to(v.dtype), _windows(v[g], k0, n, width))
            lse[g, k0:k0 + n] = m - p.amax(dim=-1).log()
        ctx.save_for_backward(q, k, v, group, out, lse)
        ctx.args = (look_back, look_ahead, causal)
        return out, lse

    @staticmethod
    def backward(ctx, d_out, d_lse):  # noqa: ANN001
        q, k, v, group, out, lse = ctx.saved_tensors
        look_back, look_ahead, causal = ctx.args
        width, fixed_ok, is_self = _BandAttention._setup(q, look_back, look_ahead, causal)
        blk = q.shape[2]
        # d lse_i / d s_ij = p_ij and d o_i / d s_ij = p_ij (v_j - o_i), so
        # ds = p * (dp - <do, o> + dlse)
        delta = -(d_out * out).sum(-1, dtype=lse.dtype)
        if d_lse is not None:
            delta += d_lse
        dq = torch.empty_like(q)
        dk = torch.zeros_like(k)
        dv = torch.zeros_like(v)
        for g, k0, n, qt, kw, gq, gk in _BandAttention._tiles(q, k, group, look_back, width):
            p = torch.softmax(_BandAttention._scores(qt, kw, gq, gk, fixed_ok, is_self), dim=-1)
            do = d_out[g, k0:k0 + n]
            dv_w = torch.matmul(p.to(do.dtype).transpose(-1, -2), do)
            ds = torch.matmul(do, _windows(v[g], k0, n, width).transpose(-1, -2)).to(p.dtype)
            ds.add_(delta[g, k0:k0 + n].unsqueeze(-1)).mul_(p)
            ds = ds.to(q.dtype)
            dq[g, k0:k0 + n] = torch.matmul(ds, kw)
            dk_w = torch.matmul(ds.transpose(-1, -2), qt)
            for o in range(width):  # overlapping windows: add back block by block
                dv[g, k0 + o:k0 + o + n] += dv_w[:, o * blk:(o + 1) * blk]
                dk[g, k0 + o:k0 + o + n] += dk_w[:, o * blk:(o + 1) * blk]
        return dq, dk, dv, None, None, None, None


def _groups(is_start: torch.Tensor, rank: torch.Tensor, bucket_size: int) -> torch.Tensor:
    """Group ids along the sorted order: +2 at each bucket start, +1 at each chunk start."""
    step = torch.where(is_start, 2, (rank % bucket_size == 0).to(torch.long))
    return step.cumsum(dim=-1).to(torch.int32)


BACKENDS = ("auto", "torch", "flex")


def resolve_backend(backend: str, q: torch.Tensor) -> str:
    """'auto' is the PyTorch kernel everywhere: FlexAttention stays opt-in until it has
    been measured and tested against it on a GPU (docs/benchmarks.md)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r} (use one of {BACKENDS})")
    if backend == "flex":
        from . import flex_attention

        if not flex_attention.available():
            raise RuntimeError("attn_backend='flex' needs torch.nn.attention.flex_attention")
        if not q.is_cuda and q.requires_grad and torch.is_grad_enabled():
            raise RuntimeError("attn_backend='flex' has no backward on CPU (torch runs it "
                               "eagerly there); use attn_backend='torch' to train on CPU")
        return "flex"
    return "torch"


def bucketed_attention(q: torch.Tensor, v: torch.Tensor, buckets: torch.Tensor | None,
                       bucket_size: int, causal: bool, backend: str = "auto") -> torch.Tensor:
    """Shared-QK attention within buckets.

    q, v: (B, H, L, D); keys are the L2-normalized queries. buckets: (B, H, R, L) bucket
    ids per hashing round, or None for local attention (chunk + previous chunk in position
    order). Rounds are combined with their log-sum-exp weights. Returns (B, H, L, D).
    backend: "torch" (the band kernel below), "flex" (FlexAttention) or "auto".
    """
    backend = resolve_backend(backend, q)
    B, H, L, D = q.shape
    bs = bucket_size
    Lp = math.ceil(L / bs) * bs
    k = F.normalize(q, dim=-1).to(q.dtype)  # autocast computes norms in float32
    q = q * D ** -0.5
    if Lp != L:
        q, k, v = (F.pad(t, (0, 0, 0, Lp - L)) for t in (q, k, v))
    pos = torch.arange(Lp, device=q.device)

    if buckets is None:  # local attention: one bucket in position order (+ one of padding)
        R = 1
        order = pos.expand(B, H, 1, Lp)
        is_start = (pos == 0) | (pos == L)
        group = _groups(is_start, pos - torch.where(pos >= L, L, 0), bs).expand(B, H, 1, Lp)
        blk, look_back = bs, 1  # chunks are aligned blocks: own + previous
    else:
        R = buckets.shape[2]
        if Lp != L:
            buckets = F.pad(buckets, (0, Lp - L), value=_PAD_BUCKET)
        order, _, rank = bucket_order(buckets)
        group = _groups(rank == 0, rank, bs)
        # A window [start of chunk c-1, self] spans at most 2*bs sorted positions and may
        # start anywhere, so query blocks of bs/2 against 2*bs + bs/2 keys waste less
        # than blocks of bs against 3*bs keys.
        blk = bs // 2 if bs % 2 == 0 and bs >= 8 else bs
        look_back = math.ceil((2 * bs - 1) / blk)
    nb = Lp // blk
    look_back = min(look_back, nb - 1)
    # non-causal: the rest of one's own chunk may lie up to bs - 1 positions ahead
    look_ahead = 0 if causal else min(math.ceil((bs - 1) / blk), nb - 1)

    # Gather rows of the flat (B * H * Lp, D) tensors in sorted order, with empty blocks
    # around each row pointing at an appended zero row, so the kernel needs no copies.
    G = B * H * R
    rows = (order + torch.arange(B * H, device=q.device).view(B, H, 1, 1) * Lp).reshape(G, nb, blk)
    rows_padded = F.pad(rows, (0, 0, look_back, look_ahead), value=B * H * Lp)
    group_flat = group.reshape(G, Lp).to(torch.int32)
    group = F.pad(F.pad(group.reshape(G, nb, blk), (0, 0, look_back, 0), value=-4),
                  (0, 0, 0, look_ahead), value=2**30)  # groups no query can match

    def padded(t: torch.Tensor) -> torch.Tensor:
        flat = torch.cat([t.reshape(-1, D), t.new_zeros(1, D)])
        return flat.index_select(0, rows_padded.reshape(-1)).view(G, -1, blk, D)

    qs = q.reshape(-1, D).index_select(0, rows.reshape(-1)).view(G, nb, blk, D)
    if backend == "flex":
        from .flex_attention import flex_band_attention

        def sorted_rows(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(-1, D).index_select(0, rows.reshape(-1)).view(G, Lp, D)

        out, lse = flex_band_attention(qs.view(G, Lp, D), sorted_rows(k), sorted_rows(v),
                                       group_flat, bs, causal)
    else:
        out, lse = _BandAttention.apply(qs, padded(k), padded(v), group.contiguous(),
                                        look_back, look_ahead, causal)
    # combine the rounds in original order: weights softmax_r(lse), summed by index_add
    lse = lse.reshape(B, H, R, Lp)
    order_r = order.expand(B, H, R, Lp)
    inv = torch.empty_like(order_r).scatter_(-1, order_r, pos.expand_as(order_r))
    weights = torch.softmax(lse.gather(-1, inv), dim=2).gather(-1, order_r)
    # (weights are float32 under autocast; the sum stays in the activations' dtype)
    out = (out.reshape(B, H, R, Lp, D) * weights.unsqueeze(-1)).to(q.dtype)
    combined = q.new_zeros(B * H * Lp, D).index_add(0, rows.reshape(-1), out.reshape(-1, D))
    return combined.view(B, H, Lp, D)[:, :, :L]


def full_attention(q: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """Dense shared-QK attention with the same self-masking rule (the reference)."""
    L, D = q.shape[-2], q.shape[-1]
    k = F.normalize(q, dim=-1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * D ** -0.5
    i = torch.arange(L, device=q.device)
    if causal:
        scores = scores.masked_fill(i[None, :] > i[:, None], float("-inf"))
    scores = scores.masked_fill(torch.eye(L, dtype=torch.bool, device=q.device), SELF_SCORE)
    return torch.matmul(torch.softmax(scores, dim=-1), v)


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
