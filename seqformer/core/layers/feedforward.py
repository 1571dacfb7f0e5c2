"""Position-wise feed-forward, optionally applied to chunks of rows (Reformer section 3)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .dropout import dropout

# chunk_size=None: pieces of at most this many (batch x position) rows, so the d_ff-wide
# intermediate of a long sequence is bounded (with d_ff 2048, 128 MiB of float32 per
# copy) while inputs up to this size run in one piece
FF_ROWS = 16384


class FeedForward(nn.Module):
    """LayerNorm -> Linear -> GELU -> Linear, with dropout after both activations.

    The sequence is processed `chunk_size` positions at a time (None: as many as keep a
    piece within FF_ROWS rows), so the d_ff-wide intermediate never exists for the whole
    of a long sequence at once. The reversible stack also back-propagates chunk by chunk,
    so the saving holds in training too. Results do not depend on the chunking.
    """

    def __init__(self, d_model: int, d_ff: int, dropout: float, chunk_size: int | None):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.w1 = nn.Linear(d_model, d_ff)
        self.w2 = nn.Linear(d_ff, d_model)
        self.dropout = dropout
        self.chunk_size = chunk_size

    def block(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.norm.weight.dtype)  # a float64 residual stream enters in float32
        h = dropout(F.gelu(self.w1(self.norm(x))), self.dropout, self.training)
        return dropout(self.w2(h), self.dropout, self.training)

    def chunks(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The pieces (along the sequence, dim -2) that `forward` processes one by one."""
        size = self.chunk_size
        if size is None:
            length = x.shape[-2]
            rows_per_position = x.numel() // max(1, length * x.shape[-1])
            size = max(1, FF_ROWS // max(1, rows_per_position))
        return (x,) if size >= x.shape[-2] else x.split(size, dim=-2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pieces = self.chunks(x)
        if len(pieces) == 1:
            return self.block(x)
        return torch.cat([self.block(p) for p in pieces], dim=-2)

    @torch.no_grad()
    def add_to(self, y: torch.Tensor, x: torch.Tensor) -> None:
        """y += FF(x), in place, one chunk at a time (the reversible forward)."""
        for x_c, y_c in zip(self.chunks(x), self.chunks(y)):
            y_c.add_(self.block(x_c))

    def reverse(self, x: torch.Tensor, y: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor
                ) -> None:
        """The reversible backward of y = y_other + FF(x), in place and one chunk at a time,
        so only one chunk's activations are ever alive: y becomes y_other, dx += the
        gradient through FF of dy, and the parameters' gradients accumulate. Run under the
        forward's RNG state, so the dropout masks are the forward's."""
        for x_c, y_c, dy_c, dx_c in zip(*(self.chunks(t) for t in (x, y, dy, dx))):
            x_c = x_c.detach().requires_grad_()
            with torch.enable_grad():
                g_c = self.block(x_c)
            torch.autograd.backward(g_c, dy_c.to(g_c.dtype))
            with torch.no_grad():
                y_c.sub_(g_c)
                dx_c.add_(x_c.grad)
