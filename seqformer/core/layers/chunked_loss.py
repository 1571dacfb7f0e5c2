"""Next-token cross-entropy without the (L, vocab_size) logits.

At 1M tokens the 519-token MIDI vocabulary makes the logits and their gradient 2 GB each
in float32. Here the head is applied a block of rows at a time: the forward keeps only
each row's log-sum-exp, and the backward recomputes each block's logits to form its
gradient (softmax - one-hot), so the working memory is one block's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..precision import acc_dtype, autocast_state

ROWS = 4096


class _ChunkedNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets):  # noqa: ANN001 - autograd signature
        n = hidden.shape[0]
        nll = hidden.new_empty(n, dtype=acc_dtype(hidden.dtype))
        lse = torch.empty_like(nll)
        for r in range(0, n, ROWS):
            logits = F.linear(hidden[r:r + ROWS], weight).to(nll.dtype)
            lse[r:r + ROWS] = torch.logsumexp(logits, dim=-1)
            target = logits.gather(-1, targets[r:r + ROWS].unsqueeze(-1)).squeeze(-1)
            nll[r:r + ROWS] = lse[r:r + ROWS] - target
        ctx.autocast = autocast_state(hidden.device)
        ctx.save_for_backward(hidden, weight, targets, lse)
        return nll

    @staticmethod
    def backward(ctx, d_nll):  # noqa: ANN001
        hidden, weight, targets, lse = ctx.saved_tensors
        d_hidden = torch.empty_like(hidden)
        d_weight = torch.zeros_like(weight, dtype=lse.dtype)
        with torch.autocast(*ctx.autocast):
            for r in range(0, hidden.shape[0], ROWS):
                h = hidden[r:r + ROWS]
                # d nll / d logits = softmax - one_hot(target)
                g = torch.exp(F.linear(h, weight).to(lse.dtype) - lse[r:r + ROWS].unsqueeze(-1))
                g.scatter_add_(-1, targets[r:r + ROWS].unsqueeze(-1),
                               g.new_full((g.shape[0], 1), -1.0))
                g.mul_(d_nll[r:r + ROWS].unsqueeze(-1))
                d_hidden[r:r + ROWS] = torch.matmul(g, weight.to(g.dtype))
                d_weight += torch.matmul(g.t(), h.to(g.dtype))
        return d_hidden, d_weight.to(weight.dtype), None


def next_token_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
                   ) -> torch.Tensor:
    """-log softmax(hidden @ weight.T)[target] in nats (float32 or wider), in row blocks.

    hidden: (..., d), weight: (vocab, d), targets: (...) ids. Returns (...)."""
    shape = targets.shape
    d = hidden.shape[-1]
    nll = _ChunkedNLL.apply(hidden.reshape(-1, d), weight, targets.reshape(-1))
    return nll.view(shape)


def reduce_targets(nll: torch.Tensor, tgt_lengths: torch.Tensor | None, reduction: str
                   ) -> torch.Tensor:
    """nll (B, T - 1) of a right-padded batch of targets, zeroed past each row's
    tgt_lengths - 1 real targets (bos included in the length), then "mean" (over the real
    targets), "sum" or "none"."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    count = nll.numel()
    if tgt_lengths is not None:
        real = torch.arange(nll.shape[1], device=nll.device) < (
            tgt_lengths.to(nll.device) - 1).unsqueeze(-1)
        nll = nll * real
        count = real.sum()
    if reduction == "none":
        return nll
    return nll.sum() if reduction == "sum" else nll.sum() / max(count, 1)
