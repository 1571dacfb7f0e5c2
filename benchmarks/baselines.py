"""Reference models for the benchmarks (never imported by seqformer).

`SdpaLM`: a causal pre-norm transformer whose attention is a single call to
``F.scaled_dot_product_attention``, so it gets whatever fused kernel PyTorch picks
(flash / memory-efficient on CPU and CUDA). It is the "just use full attention"
reference: same width and depth as the Reformers, no hashing, no reversibility.

`SparseTransformerLM`: the same model with the Sparse Transformer's strided pattern
(Child et al. 2019, "merged heads"): half the heads attend to the previous `stride`
positions, the other half to every `stride`-th position before them, stride ~ sqrt(L).
Both patterns are regular, so each is a batched SDPA call on a reshaped sequence and the
whole layer costs O(L sqrt(L)): no dense mask, no custom kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_positions(length: int, dim: int, device: torch.device) -> torch.Tensor:
    # Parameter-free so the model size does not grow with the benchmarked length.
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )
    angles = pos * inv_freq
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def full_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def local_strided(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, stride: int
                  ) -> torch.Tensor:
    """Causal attention of each position to the `stride` positions ending at it: blocks of
    `stride` queries against their own block and the one before, under a band mask."""
    b, h, n, d = q.shape
    nb = n // stride
    qb = q.view(b, h, nb, stride, d)
    kb, vb = (torch.cat([F.pad(t.view(b, h, nb, stride, d), (0, 0, 0, 0, 1, 0))[:, :, :-1],
                         t.view(b, h, nb, stride, d)], dim=3) for t in (k, v))
    i = torch.arange(stride, device=q.device)[:, None] + stride
    j = torch.arange(2 * stride, device=q.device)[None, :]
    band = (j <= i) & (i - j < stride)
    first = band.clone()
    first[:, :stride] = False  # block 0 has no block before it
    mask = torch.stack([first] + [band] * (nb - 1))
    out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask)
    return out.view(b, h, n, d)


def strided(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, stride: int) -> torch.Tensor:
    """Causal attention of position i to i, i - stride, i - 2 stride, ...: the sequence
    viewed as `stride` interleaved subsequences, each attended causally."""
    b, h, n, d = q.shape

    def columns(t: torch.Tensor) -> torch.Tensor:
        return t.view(b, h, n // stride, stride, d).transpose(2, 3)

    out = F.scaled_dot_product_attention(columns(q), columns(k), columns(v), is_causal=True)
    return out.transpose(2, 3).reshape(b, h, n, d)


def sparse_strided(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    n = q.shape[2]
    stride = 2 ** round(math.log2(math.sqrt(n)))  # lengths are powers of two here
    half = q.shape[1] // 2
    return torch.cat([local_strided(q[:, :half], k[:, :half], v[:, :half], stride),
                      strided(q[:, half:], k[:, half:], v[:, half:], stride)], dim=1)


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int, attend=full_attention) -> None:  # noqa: ANN001
        super().__init__()
        self.attend = attend
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (t.view(b, n, self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
        attn = self.attend(q, k, v)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.ln2(x))


class SdpaLM(nn.Module):
    """Causal LM: tokens (B, L) -> logits (B, L, vocab)."""

    attend = staticmethod(full_attention)

    def __init__(
        self, vocab_size: int, d_model: int, n_layers: int, n_heads: int, d_ff: int
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_ff, self.attend)
                                    for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        x = x + sinusoidal_positions(tokens.shape[1], x.shape[-1], x.device).to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


class SparseTransformerLM(SdpaLM):
    """SdpaLM with the Sparse Transformer's strided attention in every layer."""

    attend = staticmethod(sparse_strided)
