"""The two-stream residual stack: y1 = x1 + Attn(x2), y2 = x2 + FF(y1) (RevNet coupling).

Both stacks start from x1 = x2 = the embeddings and return the mean of the two streams.
A decoder layer of the encoder-decoder also has cross-attention to the source, which reads
the same stream as the self-attention and adds to the same one (a parallel block, as in
GPT-J): y1 = x1 + Attn(x2) + Cross(x2, memory), so the coupling stays two-stream and
invertible. The source (`memory`) is an input of every such layer; its gradient sums over
the layers in the reversible backward.
`plain_stack` runs it with ordinary autograd (activations of every layer stored).
`reversible_stack` stores only the final pair: the backward pass reconstructs each
layer's inputs from its outputs (x2 = y2 - FF(y1), x1 = y1 - Attn(x2)) and recomputes and
back-propagates the sublayers piece by piece (feed-forward chunks, attention head
groups). For the recompute to be the forward's computation exactly, each sublayer runs
again from the RNG state it started with (fork_rng + set_rng_state, the global generator
is never reseeded), and LSH layers reuse the bucket ids of the
forward (stored as int16/int32: a reconstructed input differs from the original by
rounding, enough to flip a near-tie in the hash argmax). Under 16-bit autocast the streams
are float64 (`stream_dtype`), which makes the reconstruction exact.
The stacks take any layers with sublayers `attn`, `ff` and `cross` (None when absent), as
model/lm.py's ReformerLayer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..precision import autocast_state


@dataclass
class Source:
    """What a stack's layers see besides their input: the real length of each row of a
    right-padded batch (self-attention never reaches padding), for a decoder the
    encoder's output and its real lengths, and for match layers the buckets of the
    tokens' contexts (attention/matching.py)."""

    lengths: torch.Tensor | None = None  # (B,)
    memory: torch.Tensor | None = None  # (B, S, d_model)
    memory_lengths: torch.Tensor | None = None  # (B,)
    match_buckets: torch.Tensor | None = None  # (B, 1, R, L + 1)

    def buckets_for(self, attn: nn.Module) -> torch.Tensor | None:
        """The bucket ids given to an attention sublayer: a match layer's, else None."""
        return self.match_buckets if attn.kind == "match" else None


NO_SOURCE = Source()


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


def stream_dtype(x: torch.Tensor, exact: bool) -> torch.dtype:
    """float64 under 16-bit autocast when `exact` (ReformerConfig.exact_streams): each
    sublayer output then has at most 8 (bf16) or 11 (fp16) significant bits and adds to a
    53-bit stream exactly, so y - F(x) gives back x bit for bit."""
    _, dtype, enabled = autocast_state(x.device)
    low = enabled and dtype in (torch.bfloat16, torch.float16)
    return torch.float64 if exact and low and x.dtype == torch.float32 else x.dtype


def stream_mean(x1: torch.Tensor, x2: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The stack's output: the mean of the two streams, in the embeddings' dtype."""
    return ((x1 + x2) * 0.5).to(dtype)


def plain_stack(layers: nn.ModuleList, x: torch.Tensor, dtype: torch.dtype | None = None,
                src: Source = NO_SOURCE) -> torch.Tensor:
    """The mean of the two streams after `layers`, with ordinary autograd."""
    x1 = x2 = x.to(dtype or x.dtype)
    for layer in layers:
        a = layer.attn(x2, src.buckets_for(layer.attn), lengths=src.lengths)[0]
        if layer.cross is not None:
            a = a + layer.cross(x2, src.memory, src.memory_lengths)
        x1 = x1 + a
        x2 = x2 + layer.ff(x1)
    return stream_mean(x1, x2, x.dtype)


@torch.no_grad()
def stack_in_place(layers: nn.ModuleList, x: torch.Tensor, dtype: torch.dtype,
                   src: Source = NO_SOURCE
                   ) -> tuple[torch.Tensor, torch.Tensor, list[tuple], list]:
    """The two streams after `layers`, updated in place without autograd (so the memory is
    the two streams plus one sublayer piece), with what the reversible backward needs:
    each sublayer's starting RNG state (in training) and each layer's bucket ids."""
    x1 = x.to(dtype, copy=True)
    x2 = x1.clone()
    rng, buckets = [], []
    for layer in layers:
        s_attn = _rng_state(x.device) if layer.training else None
        buckets.append(layer.attn.add_to(x1, x2, src.lengths, src.buckets_for(layer.attn)))
        s_cross = _rng_state(x.device) if layer.training else None
        if layer.cross is not None:
            layer.cross.add_to(x1, x2, src.memory, src.memory_lengths)
        s_ff = _rng_state(x.device) if layer.training else None
        layer.ff.add_to(x2, x1)
        rng.append((s_attn, s_cross, s_ff))
    return x1, x2, rng, buckets


def inference_stack(layers: nn.ModuleList, x: torch.Tensor, dtype: torch.dtype | None = None,
                    src: Source = NO_SOURCE) -> torch.Tensor:
    """The mean of the two streams after `layers` without autograd, in place."""
    x1, x2, _, _ = stack_in_place(layers, x, dtype or x.dtype, src)
    return x1.add_(x2).mul_(0.5).to(x.dtype)


class _ReversibleStack(torch.autograd.Function):
    """Keeps only the final pair of streams (and each LSH layer's bucket ids). The forward
    updates the streams in place; the backward walks down the layers, turning the final
    pair back into each layer's inputs in place while the two gradient streams accumulate
    in place, so the working memory is the four streams plus one sublayer's (one feed-
    forward chunk, one attention head group and hashing round)."""

    @staticmethod
    def forward(ctx, x, layers, dtype, src, memory, *params):  # noqa: ANN001 - autograd
        # memory is src.memory, passed on its own so autograd gives it a gradient
        x1, x2, rng, buckets = stack_in_place(layers, x, dtype, src)
        ctx.layers = layers
        ctx.lengths, ctx.memory_lengths = src.lengths, src.memory_lengths
        ctx.rng = rng
        # the recompute must run under the forward's autocast (bf16 sublayers)
        ctx.autocast = autocast_state(x.device)
        ctx.has_buckets = [b is not None for b in buckets]
        ctx.has_memory = memory is not None
        ctx.save_for_backward(x1, x2, *([memory] if memory is not None else []),
                              *[b for b in buckets if b is not None])
        ctx.used = False
        return stream_mean(x1, x2, x.dtype)

    @staticmethod
    def backward(ctx, d_mean):  # noqa: ANN001
        if ctx.used:
            raise RuntimeError("the reversible stack's backward overwrites its saved streams "
                               "and runs once (no retain_graph)")
        ctx.used = True
        y1, y2, *stored = ctx.saved_tensors
        stored = iter(stored)
        memory = next(stored) if ctx.has_memory else None
        d_memory = torch.zeros_like(memory) if ctx.has_memory else None
        buckets = [next(stored) if has else None for has in ctx.has_buckets]
        device = y1.device
        # the incoming gradient is the final norm's, ours alone: it becomes one of the two
        # gradient streams in place, as autograd keeps it alive through this call anyway
        dy1 = d_mean.mul_(0.5)
        dy2 = dy1.clone()
        for layer, (s_attn, s_cross, s_ff), b in reversed(list(zip(ctx.layers, ctx.rng,
                                                                     buckets))):
            with _replay(s_ff, device), torch.autocast(*ctx.autocast):
                layer.ff.reverse(y1, y2, dy2, dy1)  # y2 := x2, dy1 += FF'(y1) dy2
            if layer.cross is not None:
                with _replay(s_cross, device), torch.autocast(*ctx.autocast):
                    layer.cross.reverse(y1, y2, dy1, dy2, memory, d_memory,
                                        ctx.memory_lengths)
            with _replay(s_attn, device), torch.autocast(*ctx.autocast):
                # y1 := x1, dy2 += Attn'(x2) dy1
                layer.attn.reverse(y1, y2, dy1, dy2, b, ctx.lengths)
        return ((dy1.add_(dy2), None, None, None, d_memory)
                + (None,) * (len(ctx.needs_input_grad) - 5))


def reversible_stack(layers: nn.ModuleList, x: torch.Tensor, dtype: torch.dtype | None = None,
                     src: Source = NO_SOURCE) -> torch.Tensor:
    """The mean of the two streams after `layers`, storing only the final pair; dtype is
    the streams' (x's by default)."""
    params = [p for p in layers.parameters() if p.requires_grad]
    return _ReversibleStack.apply(x, layers, dtype or x.dtype, src, src.memory, *params)
