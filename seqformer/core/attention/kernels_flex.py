"""The bucketed attention band through PyTorch's FlexAttention (the CUDA backend).

Same inputs and results as the band kernel in kernels_torch.py: queries, keys and
values in sorted order, one group id per sorted position (+2 at each bucket start, +1 at
each chunk start inside a bucket), so a key is visible iff the group difference is 0 or 1
(own or previous chunk of the same bucket), it is not after the query in a causal model,
and the query itself scores SELF_SCORE. The coarse structure is a fixed band: query block
i only meets key blocks that hold positions i*128 - (2*bucket_size - 1) .. its own end,
built directly as a BlockMask (create_block_mask would evaluate the mask densely, which at
1M tokens is 10^12 entries).

FlexAttention is compiled for CUDA; on CPU torch runs it eagerly (dense scores) and
without backward, so there it serves only to test equality with the PyTorch kernel.
"""

from __future__ import annotations

import torch

SELF_SCORE = -1e5  # the same rule as kernels_torch.SELF_SCORE
BLOCK = 128  # FlexAttention's default tile


def available() -> bool:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def band_block_mask(heads: int, length: int, bucket_size: int, causal: bool,
                    device: torch.device, mask_mod=None):  # noqa: ANN001
    """A BlockMask whose query block i lists exactly the key blocks its window can reach.
    The band is the same for every head, but the mask_mod reads each head's groups, so the
    mask has its full head dimension (a broadcast head dimension would pass h = 0)."""
    from torch.nn.attention.flex_attention import BlockMask

    n = -(-length // BLOCK)
    starts = torch.arange(n, device=device) * BLOCK
    first = (starts - (2 * bucket_size - 1)).clamp_min(0) // BLOCK
    ends = (starts + BLOCK - 1 + (0 if causal else bucket_size - 1)).clamp_max(length - 1)
    last = ends // BLOCK
    count = (last - first + 1).to(torch.int32)
    # BlockMask wants (.., query blocks, key blocks) indices; only the first `count` of
    # each row are read (the rest repeat the last block). Broadcast over heads: no copy.
    width = n
    idx = (first.unsqueeze(-1) + torch.arange(width, device=device)).clamp_max(last.unsqueeze(-1))
    return BlockMask.from_kv_blocks(count.view(1, 1, n).expand(1, heads, n),
                                    idx.to(torch.int32).view(1, 1, n, width
                                                             ).expand(1, heads, n, width),
                                    BLOCK_SIZE=BLOCK, mask_mod=mask_mod,
                                    seq_lengths=(length, length))


def flex_band_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: torch.Tensor,
                        bucket_size: int, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """q (softmax scale included), k, v: (G, L, D) in sorted order; group: (G, L) int32.
    Returns the output (G, L, D) and the log-sum-exp (G, L), natural log."""
    from torch.nn.attention.flex_attention import flex_attention

    G, L, D = q.shape

    def mask_mod(b, h, qi, ki):  # noqa: ANN001
        d = group[h, qi] - group[h, ki]
        ok = (d >= 0) & (d <= 1)
        return ok & (ki <= qi) if causal else ok

    def score_mod(score, b, h, qi, ki):  # noqa: ANN001
        return torch.where(qi == ki, torch.full_like(score, SELF_SCORE), score)

    block_mask = band_block_mask(G, L, bucket_size, causal, q.device, mask_mod)
    attend = _compiled() if q.is_cuda else flex_attention
    out, lse = attend(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), score_mod=score_mod,
                      block_mask=block_mask, scale=1.0, return_lse=True)
    return out[0], lse[0].float()


def round_backward(qf, kf, vf, order, group, bs, causal, lse, delta, do, grads):  # noqa: ANN001
    """Add one round's share of the gradients into grads (dq, dk, dv like qf, kf, vf), from
    the combined log-sum-exp lse (G * Lp, 2), delta = <d_out, out> (G * Lp) and d_out
    (G * Lp, D), in original order; order, group: the round's (G, Lp) flat rows in sorted
    order and their group ids.

    FlexAttention has its own backward but no way to take an outside log-sum-exp, so the
    round is recomputed under autograd and its output and log-sum-exp get the merge's
    gradients: with w_r = exp(lse_r - lse), d o_r = w_r do and d lse_r = w_r (<do, o_r> -
    delta)."""
    G, Lp = group.shape
    D = qf.shape[-1]
    rows = order.reshape(-1)
    ins = [t.index_select(0, rows).view(G, Lp, D).detach().requires_grad_()
           for t in (qf, kf, vf)]
    with torch.enable_grad():
        o_r, lse_r = flex_band_attention(*ins, group, bs, causal)
    do_s = do.index_select(0, rows).view(G, Lp, D)
    stats = lse.index_select(0, rows).view(G, Lp, 2)
    w = torch.exp(lse_r.detach() - stats[..., 0] - stats[..., 1])
    d_lse = w * ((do_s * o_r.detach()).sum(-1) - delta.index_select(0, rows).view(G, Lp))
    torch.autograd.backward([o_r, lse_r], [(w.unsqueeze(-1) * do_s).to(o_r.dtype), d_lse])
    for total, t in zip(grads, ins):
        total.index_add_(0, rows, t.grad.reshape(-1, D).to(total.dtype))


_COMPILED = None


def _compiled():
    global _COMPILED
    if _COMPILED is None:
        from torch.nn.attention.flex_attention import flex_attention

        _COMPILED = torch.compile(flex_attention, dynamic=False)
    return _COMPILED
