"""Cross-attention from decoder positions to the encoder's output (the encoder-decoder).

Every target position attends to every real source position: compute is S x T. Memory is
linear in both: the attention runs a block of queries at a time against all source keys,
keeps only the output and the log-sum-exp, and the backward recomputes each block's
probabilities (as FlashAttention does), so no (T, S) matrix ever exists whole.
Unlike self-attention, keys and queries are separate projections: they come from two
different sequences.

`Alignment` makes it the cheaper kind for pairs aligned by position (a protein and its
coding DNA: 3 bases per residue): target position t attends only to the 2w + 1 source
positions around t // ratio, with a learned per-head bias for each offset. Compute and
memory are then T x (2w + 1), and the bias finds the aligned position from the first
steps, where full cross-attention must first learn S separate alignments from position
vectors alone (on a CPU budget it never did, see apps/codon_design). Its contract is
narrower: a source position only reaches target positions within w of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..config import ConfigError
from ..layers.dropout import dropout
from ..precision import acc_dtype

# Scores held at once per block, (B x H x queries x S) elements: bounded working memory
# whatever the lengths. A GPU wants larger blocks (fewer launches).
BLOCK_SCORES = 1 << 22
BLOCK_SCORES_CUDA = 1 << 26


def key_mask(lengths: torch.Tensor | None, S: int, device: torch.device) -> torch.Tensor | None:
    """(B, 1, 1, S) True at real source positions, or None when all are real."""
    if lengths is None:
        return None
    return (torch.arange(S, device=device) < lengths.to(device).unsqueeze(-1))[:, None, None]


def _blocks(q: torch.Tensor, S: int) -> list[slice]:
    B, H, T, _ = q.shape
    budget = BLOCK_SCORES_CUDA if q.is_cuda else BLOCK_SCORES
    n = max(1, budget // max(1, B * H * S))
    return [slice(t, min(t + n, T)) for t in range(0, T, n)]


def _block_scores(q, k, valid):  # noqa: ANN001, ANN202
    s = torch.matmul(q, k.transpose(-1, -2))
    s = s.to(torch.promote_types(s.dtype, torch.float32))
    return s if valid is None else s.masked_fill_(~valid, float("-inf"))


class _CrossAttention(torch.autograd.Function):
    """softmax(q k^T) v over a block of queries at a time; saves q, k, v, the output and
    its log-sum-exp, all linear in T and S."""

    @staticmethod
    def forward(ctx, q, k, v, valid):  # noqa: ANN001
        acc = acc_dtype(q.dtype)
        out = q.new_empty(q.shape, dtype=acc)
        lse = q.new_empty(q.shape[:-1], dtype=acc)
        with torch.autocast(q.device.type, enabled=False):
            for b in _blocks(q, k.shape[2]):
                s = _block_scores(q[:, :, b], k, valid)
                lse[:, :, b] = torch.logsumexp(s, dim=-1)
                p = torch.exp(s - lse[:, :, b].unsqueeze(-1))
                out[:, :, b] = torch.matmul(p.to(v.dtype), v)
        ctx.save_for_backward(q, k, v, valid, out, lse)
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, d_out):  # noqa: ANN001
        q, k, v, valid, out, lse = ctx.saved_tensors
        acc = out.dtype
        dq = torch.empty_like(q, dtype=acc)
        dk = torch.zeros_like(k, dtype=acc)
        dv = torch.zeros_like(v, dtype=acc)
        delta = (d_out.to(acc) * out).sum(-1)
        with torch.autocast(q.device.type, enabled=False):
            for b in _blocks(q, k.shape[2]):
                p = _block_scores(q[:, :, b], k, valid).sub_(lse[:, :, b].unsqueeze(-1)).exp_()
                do = d_out[:, :, b].to(acc)
                dv += torch.matmul(p.transpose(-1, -2), do)
                ds = torch.matmul(do, v.to(acc).transpose(-1, -2))
                ds = ds.sub_(delta[:, :, b].unsqueeze(-1)).mul_(p)
                dq[:, :, b] = torch.matmul(ds, k.to(acc))
                dk += torch.matmul(ds.transpose(-1, -2), q[:, :, b].to(acc))
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None


@dataclass(frozen=True)
class Alignment:
    """Target position t is aligned with source position t // ratio and attends to the
    source positions within `window` of it."""
    ratio: int
    window: int

    def __post_init__(self) -> None:
        for name in ("ratio", "window"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= (name == "ratio")):
                raise ConfigError(f"align.{name}: must be an integer >= {int(name == 'ratio')}, "
                                 f"got {v!r}")

    def source_positions(self, positions: torch.Tensor, lengths: torch.Tensor | None, S: int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (T,) target positions -> ((B or 1, T, 2w + 1) source positions,
        clamped into range, and a mask of those that are real). The aligned position is
        clamped to the row's last real one, so a target past the source's end (a stop
        codon, the end separator) still reads the source's end."""
        last = (lengths.view(-1, 1) if lengths is not None
                else torch.full((1, 1), S, device=positions.device)) - 1
        centre = torch.minimum(positions.view(1, -1) // self.ratio, last.to(positions.device))
        offsets = torch.arange(-self.window, self.window + 1, device=positions.device)
        idx = centre.unsqueeze(-1) + offsets
        real = (idx >= 0) & (idx <= last.to(idx.device).unsqueeze(-1))
        return idx.clamp(0, S - 1), real


def aligned_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            idx: torch.Tensor, real: torch.Tensor, bias: torch.Tensor
                            ) -> torch.Tensor:
    """q (B, H, T, D), softmax scale included; k, v (B, H, S, D); idx, real (B or 1, T, W)
    from `Alignment.source_positions`; bias (H, W). Each query against its W keys only:
    plain autograd, saved bytes B x T x W x d_model (linear in T, free of S)."""
    B, H, T, D = q.shape
    W = idx.shape[-1]
    flat = idx.expand(B, T, W).reshape(B, 1, T * W, 1).expand(B, H, T * W, D)
    kw = k.gather(2, flat).view(B, H, T, W, D)
    vw = v.gather(2, flat).view(B, H, T, W, D)
    acc = acc_dtype(q.dtype)
    s = torch.einsum("bhtd,bhtwd->bhtw", q, kw).to(acc) + bias.to(acc)[:, None]
    p = s.masked_fill(~real.unsqueeze(1), float("-inf")).softmax(-1)
    return torch.einsum("bhtw,bhtwd->bhtd", p.to(v.dtype), vw).to(q.dtype)


def cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    valid: torch.Tensor | None = None) -> torch.Tensor:
    """q (B, H, T, D), softmax scale included; k, v (B, H, S, D); valid (B, 1, 1, S) or
    None. Returns (B, H, T, D) in q's dtype."""
    return _CrossAttention.apply(q, k, v, valid)


class CrossAttention(nn.Module):
    """LayerNorm -> query projection; the source's keys and values; attention; output
    projection and dropout. A sublayer of the decoder's two-stream stack: it reads the
    same stream as the layer's self-attention and adds to the same one."""

    def __init__(self, d_model: int, n_heads: int, dropout: float,
                 alignment: Alignment | None = None):
        super().__init__()
        self.n_heads = n_heads
        self.alignment = alignment
        # zero: at first every offset of the window weighs the same
        self.offset_bias = (nn.Parameter(torch.zeros(n_heads, 2 * alignment.window + 1))
                            if alignment is not None else None)
        self.dropout = dropout
        self.norm = nn.LayerNorm(d_model)
        self.to_q = nn.Linear(d_model, d_model, bias=False)
        self.to_kv = nn.Linear(d_model, 2 * d_model, bias=False)
        self.to_out = nn.Linear(d_model, d_model)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, L, d = x.shape
        return x.view(B, L, self.n_heads, d // self.n_heads).transpose(1, 2)

    def keys_values(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The source's keys and values (B, H, S, D): once per source when decoding."""
        k, v = self.to_kv(memory.to(self.to_kv.weight.dtype)).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None,
                lengths: torch.Tensor | None = None,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, d_model) target states; memory (B, S, d_model) the encoder's output
        (or kv, its keys and values from `keys_values`); lengths (B,) real source
        positions; positions (T,) the target positions of x (None: 0..T-1; only an
        aligned cross-attention reads them)."""
        k, v = self.keys_values(memory) if kv is None else kv
        h = self.norm(x.to(self.norm.weight.dtype))
        q = self._heads(self.to_q(h)) * (k.shape[-1] ** -0.5)
        k, v = k.to(q.dtype), v.to(q.dtype)
        if self.alignment is None:
            o = cross_attention(q, k, v, key_mask(lengths, k.shape[2], x.device))
        else:
            if positions is None:
                positions = torch.arange(x.shape[1], device=x.device)
            idx, real = self.alignment.source_positions(positions, lengths, k.shape[2])
            o = aligned_cross_attention(q, k, v, idx, real, self.offset_bias)
        B, H, T, D = o.shape
        y = self.to_out(o.transpose(1, 2).reshape(B, T, H * D))
        return dropout(y, self.dropout, self.training)

    @torch.no_grad()
    def add_to(self, y: torch.Tensor, x: torch.Tensor, memory: torch.Tensor,
               lengths: torch.Tensor | None) -> None:
        """y += the sublayer's output for x, in place (the reversible forward)."""
        y.add_(self(x, memory, lengths))

    def reverse(self, y: torch.Tensor, x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor,
                memory: torch.Tensor, d_memory: torch.Tensor, lengths: torch.Tensor | None
                ) -> None:
        """The reversible backward of y = y_other + Cross(x, memory), in place: y becomes
        y_other, dx and d_memory take the gradients through Cross of dy, and the
        parameters' gradients accumulate. Run under the forward's RNG state (dropout)."""
        x_in = x.detach().requires_grad_()
        m_in = memory.detach().requires_grad_()
        with torch.enable_grad():
            f = self(x_in, m_in, lengths)
        torch.autograd.backward(f, dy.to(f.dtype))
        with torch.no_grad():
            y.sub_(f)
            dx.add_(x_in.grad)
            d_memory.add_(m_in.grad)
