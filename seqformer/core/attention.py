"""The attention sublayer: one set of parameters, three kinds (lsh, local, full).

All kinds share QK (keys are the normalized queries) and the same projections, so a
state dict trained with one kind loads under another. Each kind also decodes one token
at a time from a cache and gives the logits the full forward gives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .bucketed_attention import attend_one, bucket_order, bucketed_attention, full_attention
from .config import ReformerConfig
from .hashing import fixed_rotations, hash_buckets, random_rotations


@dataclass
class KVCache:
    """Keys (normalized queries) and values of every decoded position: (B, H, capacity, D)."""

    k: torch.Tensor
    v: torch.Tensor


@dataclass
class LSHCache(KVCache):
    """Adds, per hashing round, how many tokens each bucket holds and the positions of
    its latest 2 * bucket_size members (slot = rank % (2 * bucket_size)): exactly the keys
    a new token's window can reach. The last slot of `ring` is a write sink."""

    counts: torch.Tensor  # (B, H, R, n_buckets)
    ring: torch.Tensor  # (B, H, R, n_buckets * 2 * bucket_size + 1)


class Attention(nn.Module):
    def __init__(self, cfg: ReformerConfig, layer_idx: int):
        super().__init__()
        d = cfg.d_model
        self.kind = cfg.layer_attn(layer_idx)
        self.causal = cfg.causal
        self.n_heads = cfg.n_heads
        self.bucket_size = cfg.bucket_size
        self.backend = cfg.attn_backend
        self.n_buckets = cfg.n_buckets
        self.factors = cfg.bucket_factors
        self.n_hashes = cfg.n_hashes  # may be changed for evaluation
        self.dropout = cfg.dropout
        self.seed = cfg.hash_seed * 10_007 + layer_idx
        self.norm = nn.LayerNorm(d)
        self.to_qk = nn.Linear(d, d, bias=False)
        self.to_v = nn.Linear(d, d, bias=False)
        self.to_out = nn.Linear(d, d)
        self._eval_rotations: dict[tuple, torch.Tensor] = {}

    # -- helpers ----------------------------------------------------------------------
    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, L, d = x.shape
        return x.view(B, L, self.n_heads, d // self.n_heads).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        B, H, L, D = x.shape
        return x.transpose(1, 2).reshape(B, L, H * D)

    def _rotations(self, q: torch.Tensor) -> torch.Tensor:
        H, D = self.n_heads, q.shape[-1]
        if self.training:
            return random_rotations(H, D, self.n_hashes, self.factors, q.device, q.dtype)
        key = (self.n_hashes, q.device, q.dtype)
        if key not in self._eval_rotations:
            rot = fixed_rotations(H, D, self.n_hashes, self.factors, self.seed)
            self._eval_rotations[key] = rot.to(device=q.device, dtype=q.dtype)
        return self._eval_rotations[key]

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norm(x)
        return self._heads(self.to_qk(h)), self._heads(self.to_v(h))

    def _output(self, o: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.to_out(self._merge(o)), self.dropout, self.training)

    # -- full sequences ---------------------------------------------------------------
    def forward(self, x: torch.Tensor, buckets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, L, d_model). Returns the sublayer output and, for LSH, the bucket ids
        used (B, H, R, L); pass them back in to recompute with identical hashing."""
        q, v = self._project(x)
        o, buckets = self._attend(q, v, buckets)
        return self._output(o), buckets

    def _attend(self, q: torch.Tensor, v: torch.Tensor, buckets: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.kind == "full":
            return full_attention(q, v, self.causal), None
        if self.kind == "local":
            return bucketed_attention(q, v, None, self.bucket_size, self.causal,
                                      self.backend), None
        # drawn even when buckets are given, so a recompute consumes the RNG as the
        # forward did and its dropout masks match
        rotations = self._rotations(q)
        if buckets is None:
            buckets = hash_buckets(q.detach(), rotations, self.factors)
        o = bucketed_attention(q, v, buckets.long(), self.bucket_size, self.causal,
                               self.backend)
        return o, buckets

    # -- decoding ---------------------------------------------------------------------
    def prefill(self, x: torch.Tensor, capacity: int) -> tuple[torch.Tensor, KVCache]:
        """Full forward over a prompt (B, P, d_model) that also builds the decoding cache."""
        assert not self.training, "decoding runs in eval mode"
        q, v = self._project(x)
        o, buckets = self._attend(q, v, None)
        out = self._output(o)
        B, H, P, D = q.shape
        k_all = q.new_zeros(B, H, capacity, D)
        v_all = q.new_zeros(B, H, capacity, D)
        k_all[:, :, :P] = F.normalize(q, dim=-1)
        v_all[:, :, :P] = v
        if self.kind != "lsh":
            return out, KVCache(k_all, v_all)
        W = 2 * self.bucket_size
        R = buckets.shape[2]
        perm, s_bucket, rank = bucket_order(buckets)
        counts = torch.zeros(B, H, R, self.n_buckets, dtype=torch.long, device=q.device)
        counts.scatter_add_(-1, buckets, torch.ones_like(buckets))
        keep = rank >= counts.gather(-1, s_bucket) - W
        sink = self.n_buckets * W
        slot = torch.where(keep, s_bucket * W + rank % W, torch.full_like(rank, sink))
        ring = torch.full((B, H, R, sink + 1), -1, dtype=torch.long, device=q.device)
        ring.scatter_(-1, slot, perm)
        return out, LSHCache(k_all, v_all, counts, ring)

    def step(self, x: torch.Tensor, cache: KVCache, t: int) -> torch.Tensor:
        """Attention output for the token at position t, x: (B, 1, d_model); updates cache."""
        q, v = self._project(x)
        q, v = q[:, :, 0], v[:, :, 0]  # (B, H, D)
        k = F.normalize(q, dim=-1)
        if self.kind == "lsh":
            o = self._lsh_step(q, v, cache, t)
        else:
            start = 0 if self.kind == "full" else max(0, (t // self.bucket_size - 1)
                                                         * self.bucket_size)
            kw, vw = cache.k[:, :, start:t], cache.v[:, :, start:t]
            valid = torch.ones(kw.shape[:-1], dtype=torch.bool, device=q.device)
            o, _ = attend_one(q, kw, vw, valid, v)
        cache.k[:, :, t] = k
        cache.v[:, :, t] = v
        return self._output(o.unsqueeze(2))

    def _lsh_step(self, q: torch.Tensor, v: torch.Tensor, cache: LSHCache, t: int
                  ) -> torch.Tensor:
        B, H, D = q.shape
        W, bs = 2 * self.bucket_size, self.bucket_size
        bucket = hash_buckets(q.unsqueeze(2), self._rotations(q), self.factors)[..., 0]
        R = bucket.shape[-1]
        rank = cache.counts.gather(-1, bucket.unsqueeze(-1)).squeeze(-1)  # (B, H, R)
        slots = bucket.unsqueeze(-1) * W + torch.arange(W, device=q.device)
        positions = cache.ring.gather(-1, slots)  # (B, H, R, W)
        # the rank held by each slot: the latest rank below `rank` congruent to the slot
        last = (rank - 1).unsqueeze(-1)
        held = last - (last - torch.arange(W, device=q.device)) % W
        valid = (held >= 0) & (held >= ((rank // bs - 1) * bs).unsqueeze(-1))
        idx = positions.clamp_min(0).unsqueeze(-1).expand(B, H, R, W, D)
        T = cache.k.shape[2]
        kw = cache.k.unsqueeze(2).expand(B, H, R, T, D).gather(3, idx)
        vw = cache.v.unsqueeze(2).expand(B, H, R, T, D).gather(3, idx)
        o, lse = attend_one(q.unsqueeze(2).expand(B, H, R, D), kw, vw, valid,
                            v.unsqueeze(2).expand(B, H, R, D))
        o = (o * torch.softmax(lse, dim=-1).unsqueeze(-1)).sum(dim=2) if R > 1 else o[:, :, 0]
        cache.ring.scatter_(-1, (bucket * W + rank % W).unsqueeze(-1),
                            torch.full_like(rank, t).unsqueeze(-1))
        cache.counts.scatter_add_(-1, bucket.unsqueeze(-1), torch.ones_like(bucket).unsqueeze(-1))
        return o
