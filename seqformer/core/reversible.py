"""The two-stream residual stack: y1 = x1 + Attn(x2), y2 = x2 + FF(y1) (RevNet coupling).

`plain_stack` runs it with ordinary autograd (activations of every layer stored).
`reversible_stack` stores only the final pair: the backward pass reconstructs each
layer's inputs from its outputs (x2 = y2 - FF(y1), x1 = y1 - Attn(x2)) and recomputes the
sublayers with grad enabled. For the recompute to be the forward's computation exactly,
each sublayer runs again from the RNG state it started with (fork_rng + set_rng_state,
the global generator is never reseeded), and LSH layers reuse the bucket ids of the
forward (stored as int16/int32: a reconstructed input differs from the original by
rounding, enough to flip a near-tie in the hash argmax).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn

from .attention import Attention
from .feedforward import FeedForward


class ReformerLayer(nn.Module):
    def __init__(self, attn: Attention, ff: FeedForward):
        super().__init__()
        self.attn = attn
        self.ff = ff


RNGState = tuple[torch.Tensor, torch.Tensor | None]


def _rng_state(device: torch.device) -> RNGState:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


@contextmanager
def _replay(state: RNGState | None, device: torch.device) -> Iterator[None]:
    if state is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], device)
        yield


def _compact(buckets: torch.Tensor, n_buckets: int) -> torch.Tensor:
    return buckets.to(torch.int16 if n_buckets < 2**15 else torch.int32)


def plain_stack(layers: nn.ModuleList, x1: torch.Tensor, x2: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    for layer in layers:
        x1 = x1 + layer.attn(x2)[0]
        x2 = x2 + layer.ff(x1)
    return x1, x2


class _ReversibleStack(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x1, x2, layers, *params):  # noqa: ANN001 - autograd signature
        device = x1.device
        rng = []
        buckets = []
        for layer in layers:
            s_attn = _rng_state(device) if layer.training else None
            a, b = layer.attn(x2)
            x1 = x1 + a
            s_ff = _rng_state(device) if layer.training else None
            x2 = x2 + layer.ff(x1)
            rng.append((s_attn, s_ff))
            buckets.append(None if b is None else _compact(b, layer.attn.n_buckets))
        ctx.layers = layers
        ctx.rng = rng
        # the recompute must run under the forward's autocast (bf16 sublayers, float32
        # streams), which backward does not inherit
        kind = device.type
        ctx.autocast = (kind, torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind))
        ctx.has_buckets = [b is not None for b in buckets]
        ctx.save_for_backward(x1, x2, *[b for b in buckets if b is not None])
        return x1, x2

    @staticmethod
    def backward(ctx, dy1, dy2):  # noqa: ANN001
        y1, y2, *stored = ctx.saved_tensors
        stored = iter(stored)
        buckets = [next(stored) if has else None for has in ctx.has_buckets]
        device = y1.device
        kind, enabled, dtype = ctx.autocast
        for layer, (s_attn, s_ff), b in reversed(list(zip(ctx.layers, ctx.rng, buckets))):
            # FF: recompute and back-propagate piece by piece (ff_chunk_size)
            outs, grads = [], []
            with _replay(s_ff, device):
                for y_c, d_c in zip(layer.ff.chunks(y1), layer.ff.chunks(dy2)):
                    y_c = y_c.detach().requires_grad_()
                    with torch.enable_grad(), torch.autocast(kind, dtype, enabled):
                        g_c = layer.ff.block(y_c)
                    torch.autograd.backward(g_c, d_c)
                    outs.append(g_c.detach())
                    grads.append(y_c.grad)
            x2 = y2 - torch.cat(outs, dim=-2)
            dy1 = dy1 + torch.cat(grads, dim=-2)
            del outs, grads

            x2_ = x2.detach().requires_grad_()
            with _replay(s_attn, device), torch.enable_grad(), torch.autocast(kind, dtype,
                                                                              enabled):
                f, _ = layer.attn(x2_, buckets=b)
            torch.autograd.backward(f, dy1)
            x1 = y1 - f.detach()
            dy2 = dy2 + x2_.grad
            y1, y2 = x1, x2
        return (dy1, dy2, None) + (None,) * (len(ctx.needs_input_grad) - 3)


def reversible_stack(layers: nn.ModuleList, x1: torch.Tensor, x2: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    params = [p for p in layers.parameters() if p.requires_grad]
    return _ReversibleStack.apply(x1, x2, layers, *params)
