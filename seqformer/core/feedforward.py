"""Position-wise feed-forward, optionally applied to chunks of rows (Reformer section 3)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class FeedForward(nn.Module):
    """LayerNorm -> Linear -> GELU -> Linear, with dropout after both activations.

    With `chunk_size` the sequence is processed `chunk_size` positions at a time, so the
    d_ff-wide intermediate never exists for the whole sequence at once. The reversible
    stack also back-propagates chunk by chunk, so the saving holds in training too.
    """

    def __init__(self, d_model: int, d_ff: int, dropout: float, chunk_size: int | None):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.w1 = nn.Linear(d_model, d_ff)
        self.w2 = nn.Linear(d_ff, d_model)
        self.dropout = dropout
        self.chunk_size = chunk_size

    def block(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(F.gelu(self.w1(self.norm(x))), self.dropout, self.training)
        return F.dropout(self.w2(h), self.dropout, self.training)

    def chunks(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The pieces (along the sequence, dim -2) that `forward` processes one by one."""
        return (x,) if self.chunk_size is None else x.split(self.chunk_size, dim=-2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pieces = self.chunks(x)
        if len(pieces) == 1:
            return self.block(x)
        return torch.cat([self.block(p) for p in pieces], dim=-2)
