"""ReformerClassifier: a ReformerLM body, its final hidden states pooled over the real
(unpadded) positions, and a linear head to class logits.

Pooling is the mean (pool="mean") or the per-feature maximum (pool="max"). The maximum
suits sequences labelled by what occurs somewhere in them, such as a binding motif: one
occurrence sets a feature whatever the length, where the mean dilutes it by the length.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import ReformerConfig
from .lm import ReformerLM

POOLS = ("mean", "max")


class ReformerClassifier(nn.Module):
    def __init__(self, cfg: ReformerConfig, n_classes: int, head_dropout: float = 0.0,
                 pool: str = "mean"):
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"n_classes must be at least 2, got {n_classes}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.cfg, self.n_classes, self.pool = cfg, n_classes, pool
        # the whole language model, so a pretrained one's weights load as they are; its
        # tied LM head adds no parameters and is not used here
        self.body = ReformerLM(cfg)
        self.dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(cfg.d_model, n_classes)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.frozen = False

    def freeze_body(self) -> None:
        """Train the head only: the body's features are fixed (no gradient, no dropout)."""
        self.frozen = True
        self.body.requires_grad_(False)
        self.body.eval()

    def train(self, mode: bool = True) -> ReformerClassifier:
        super().train(mode)
        if self.frozen:
            self.body.eval()
        return self

    def pooled(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, L), mask (B, L) True at real positions -> (B, d_model): the mean or
        maximum of the final hidden states over the real positions (zeros where a row has
        none)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            hidden = self.body.hidden_states(tokens)
        if mask is None:
            mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        keep = mask.unsqueeze(-1)
        if self.pool == "max":
            top = hidden.masked_fill(~keep, float("-inf")).amax(1)
            return torch.where(keep.any(1), top, torch.zeros_like(top))
        weights = keep.to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, L) -> class logits (B, n_classes)."""
        return self.head(self.dropout(self.pooled(tokens, mask)))
