"""The PyTorch kernels of shared-QK bucketed attention (attn_backend="torch"; CPU and GPU).

In the sorted sequence of one hashing round (buckets.py) each query's window is a
contiguous run of at most 2 * bucket_size positions ending at itself (causal), so the work
is a band: query block k against key blocks k-2..k, masked to same bucket, chunk >= own
chunk - 1 and original position <= own. Local attention is the special case of one bucket
in position order (key blocks k-1..k). `band_forward` and `band_backward` compute one
round's band a tile at a time; `attend_one` is one new query against a gathered window of
keys (decoding).
"""

from __future__ import annotations

import torch

from ..precision import acc_dtype

# A token attends to itself only when no other key is allowed (paper, section 2). A finite
# score rather than -inf gives exactly that: exp(-1e5 - max) == 0 whenever another key is
# present, and weight 1 when it stands alone.
SELF_SCORE = -1e5

# Queries processed together by the band kernel: enough for efficient batched matmuls,
# few enough that a tile's scores (TILE_QUERIES x window floats) stay in cache. A GPU is
# launch-bound with small tiles: there a tile is up to 128K queries (~100 MB of scores).
TILE_QUERIES = 2048
TILE_QUERIES_CUDA = 1 << 17


def _windows(rows: torch.Tensor, g: slice, k0: int, n: int, width: int) -> torch.Tensor:
    """rows: padded rows of blocks (G, nb + width - 1, bs, D), contiguous. A view of the
    n overlapping windows of `width` consecutive blocks starting at blocks k0.. of rows g:
    (rows in g, n, width*bs, D)."""
    _, _, bs, D = rows.shape
    return rows.as_strided((len(range(*g.indices(rows.shape[0]))), n, width * bs, D),
                           (rows.stride(0), bs * D, D, 1),
                           rows.storage_offset() + g.start * rows.stride(0) + k0 * bs * D)


def _setup(blk: int, look_back: int, look_ahead: int, causal: bool, device: torch.device):
    """The window width in blocks, the mask of keys that are masked in every tile (a key's
    sorted offset from the query decides causality: within a bucket sorted order is
    position order; None when none is) and the diagonal that holds each query's own key."""
    width = look_back + look_ahead + 1
    offset = (torch.arange(width * blk, device=device) - look_back * blk
              - torch.arange(blk, device=device).unsqueeze(-1))
    return width, (offset > 0 if causal else None), look_back * blk


def _scores(qt, kw, gq, gk, fixed_bad, self_diagonal):  # noqa: ANN001, ANN202
    # matmuls in the inputs' dtype (bf16 under autocast), softmax in float32 or wider
    s = torch.matmul(qt, kw.transpose(-1, -2))
    s = s.to(torch.promote_types(s.dtype, torch.float32))
    d = gq.unsqueeze(-1) - gk.unsqueeze(-2)
    bad = torch.bitwise_and(d, -2, out=d) != 0  # d not in {0, 1}
    if fixed_bad is not None:
        bad.logical_or_(fixed_bad)
    s.masked_fill_(bad, float("-inf"))
    # the query's own key: one diagonal of the tile, not a pass over it
    s.diagonal(self_diagonal, -2, -1).fill_(SELF_SCORE)
    return s


def _tiles(q, k, group, look_back, width):  # noqa: ANN001, ANN202
    """(rows, k0, n, q tile, key windows, query groups, key-window groups) per tile: part
    of one row of a long sequence, or several whole rows of short ones (a batch of short
    sequences then costs a few large matmuls, not one small one per sequence and head)."""
    G, nb, blk, _ = q.shape
    per_tile = max(1, (TILE_QUERIES_CUDA if q.is_cuda else TILE_QUERIES) // blk)
    rows_per_tile = max(1, per_tile // nb)
    for g0 in range(0, G, rows_per_tile):
        g = slice(g0, min(G, g0 + rows_per_tile))
        for k0 in range(0, nb, per_tile):
            n = min(per_tile, nb - k0)
            gk = group[g, k0:k0 + n + width - 1].unfold(1, width, 1).transpose(2, 3)
            yield (g, k0, n, q[g, k0:k0 + n], _windows(k, g, k0, n, width),
                   group[g, look_back + k0:look_back + k0 + n],
                   gk.reshape(gk.shape[0], n, width * blk))


def band_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: torch.Tensor,
                 look_back: int, look_ahead: int, causal: bool
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sorted query block against its window of key blocks, one tile at a time.

    Like FlashAttention it never holds all scores. Which keys a query may see is encoded in
    one integer per sorted position, its group: groups count up by 1 at each chunk boundary
    inside a bucket and by 2 at each new bucket, so a key is in the query's own or previous
    chunk of the same bucket iff group(q) - group(k) is 0 or 1. Causality and self-masking
    are then fixed patterns of the window, because inside a bucket sorted order is position
    order.

    q: (G, nb, blk, D), softmax scale included. k, v: (G, lb + nb + la, blk, D) and
    group: (G, lb + nb + la, blk) int32, with look_back (lb) empty blocks before each row
    and look_ahead (la) after it. Returns the output (G, nb, blk, D) and the log-sum-exp
    (G, nb, blk), both float32 or wider.
    """
    width, fixed_bad, self_diagonal = _setup(q.shape[2], look_back, look_ahead, causal, q.device)
    acc = acc_dtype(q.dtype)
    out = q.new_empty(q.shape, dtype=acc)
    lse = q.new_empty(q.shape[:-1], dtype=acc)
    for g, k0, n, qt, kw, gq, gk in _tiles(q, k, group, look_back, width):
        s = _scores(qt, kw, gq, gk, fixed_bad, self_diagonal)
        # softmax is one fused pass; the log-sum-exp follows from the largest score and its
        # probability: lse = s_max - log p_max
        m = s.amax(dim=-1)
        p = torch.softmax(s, dim=-1)
        out[g, k0:k0 + n] = torch.matmul(p.to(v.dtype), _windows(v, g, k0, n, width))
        lse[g, k0:k0 + n] = m - p.amax(dim=-1).log()
    return out, lse


def band_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: torch.Tensor,
                  look_back: int, look_ahead: int, causal: bool, lse: torch.Tensor,
                  delta: torch.Tensor, d_out: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradient of sum(d_out * out) for out_i = sum_j exp(s_ij - lse_i) v_j.

    lse (G, nb, blk, 2) as (m, log_norm) with lse = m + log_norm, and delta =
    <d_out_i, out_i>, are those of the *combined* output of all
    hashing rounds, so the probabilities are the query's weights in the one softmax over
    the union of its rounds' windows, and the result is this round's exact share of the
    gradient (as FlashAttention's backward, and ring attention's per block). Inputs as in
    `band_forward`; d_out (G, nb, blk, D). Returns dq (like q), dk and dv (like k and v),
    float32 or wider.
    """
    width, fixed_bad, self_diagonal = _setup(q.shape[2], look_back, look_ahead, causal, q.device)
    blk = q.shape[2]
    acc = acc_dtype(q.dtype)
    dq = q.new_empty(q.shape, dtype=acc)
    dk = k.new_zeros(k.shape, dtype=acc)
    dv = v.new_zeros(v.shape, dtype=acc)
    d_out = d_out.to(q.dtype)
    for g, k0, n, qt, kw, gq, gk in _tiles(q, k, group, look_back, width):
        stats = lse[g, k0:k0 + n].unsqueeze(-2)
        p = _scores(qt, kw, gq, gk, fixed_bad, self_diagonal)
        p = p.sub_(stats[..., 0]).sub_(stats[..., 1]).exp_()
        do = d_out[g, k0:k0 + n]
        dv_w = torch.matmul(p.to(do.dtype).transpose(-1, -2), do)
        # d out_i / d s_ij = p_ij (v_j - out_i): ds = p * (<do, v_j> - delta_i)
        ds = torch.matmul(do, _windows(v, g, k0, n, width).transpose(-1, -2)).to(p.dtype)
        ds = ds.sub_(delta[g, k0:k0 + n].unsqueeze(-1)).mul_(p).to(q.dtype)
        dq[g, k0:k0 + n] = torch.matmul(ds, kw)
        dk_w = torch.matmul(ds.transpose(-1, -2), qt)
        for o in range(width):  # overlapping windows: add back block by block
            dv[g, k0 + o:k0 + o + n] += dv_w[..., o * blk:(o + 1) * blk, :]
            dk[g, k0 + o:k0 + o + n] += dk_w[..., o * blk:(o + 1) * blk, :]
    return dq, dk, dv


def attend_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor,
               is_self: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One new query against a gathered window of keys that holds the query's own (decoding).

    q: (..., D), or with a 1 where k has a further dim (rounds sharing one query);
    k, v: (..., W, D); valid, is_self: (..., W), the window's real keys and the query's own.
    Returns the output (..., D) and its log-sum-exp (...), as the full forward computes them.
    """
    D = q.shape[-1]
    scores = torch.matmul(k, q.unsqueeze(-1)).squeeze(-1) * D ** -0.5
    scores = scores.masked_fill(~valid, float("-inf")).masked_fill(is_self, SELF_SCORE)
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    out = torch.matmul(torch.exp(scores - lse).unsqueeze(-2), v).squeeze(-2)
    return out, lse.squeeze(-1)
