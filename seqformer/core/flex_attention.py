"""The bucketed attention band through PyTorch's FlexAttention (the CUDA backend).

Same inputs and results as the band kernel in bucketed_attention.py: queries, keys and
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

SELF_SCORE = -1e5  # the same rule as bucketed_attention.SELF_SCORE
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


_COMPILED = None


def _compiled():
    global _COMPILED
    if _COMPILED is None:
        from torch.nn.attention.flex_attention import flex_attention

        _COMPILED = torch.compile(flex_attention, dynamic=False)
    return _COMPILED
