"""Axial positional embeddings (Reformer section 5 / trax): a position is a mixed-radix
number over `shape`, and its embedding is the sum of one learned vector per axis, so a
1M-position table costs (sum of axes) x d_model parameters instead of 1M x d_model."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


class AxialPositionalEmbedding(nn.Module):
    def __init__(self, shape: tuple[int, ...], d_model: int):
        super().__init__()
        self.shape = tuple(shape)
        self.axes = nn.ParameterList(
            [nn.Parameter(torch.randn(n, d_model) * 0.02) for n in self.shape])

    @property
    def max_positions(self) -> int:
        return math.prod(self.shape)

    def indices(self, positions: torch.Tensor) -> list[torch.Tensor]:
        """Each axis's row for each position: the digits of its mixed-radix number."""
        digits = []
        rest = positions
        for n in reversed(self.shape):
            digits.append(rest % n)
            rest = torch.div(rest, n, rounding_mode="floor")
        return digits[::-1]

    def tables(self) -> list[torch.Tensor]:
        """One (n, d_model) table per axis. Read by name: torch 2.11's Dynamo cannot unpack
        a ParameterList (`*self.axes`) inside a compiled decoding step."""
        return [getattr(self.axes, str(i)) for i in range(len(self.shape))]

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """positions: LongTensor of any shape -> (*positions.shape, d_model)."""
        return sum(table[i] for table, i in zip(self.tables(), self.indices(positions)))
