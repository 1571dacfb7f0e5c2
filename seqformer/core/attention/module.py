"""The attention sublayer: one set of parameters, four kinds (lsh, local, full, match).

All kinds share QK (keys are the normalized queries) and the same projections, so a
state dict trained with one kind loads under another. Each kind also decodes one token
at a time from a cache and gives the logits the full forward gives.

This module holds the parameters and what is done with them (projections, hashing, the
hand-written backward, prefill and step); the attention itself, and the choice of the
kernel that computes it, is dispatch.py's.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ReformerConfig
from ..decoding.cache import KVCache, LSHCache
from ..layers.dropout import dropout_mask
from ..precision import autocast_state
from .buckets import bucket_order, round_layouts
from .dispatch import attention_backward, attention_forward, resolve_backend
from .hashing import fixed_rotations, hash_buckets, random_rotations
from .kernels_torch import attend_one
from .matching import MatchCache, match_step

# Rows (positions x batch) of the layer norm and projections computed at once: working
# memory that does not grow with the sequence. A GPU wants fewer, larger launches.
ROW_CHUNK = 4096
ROW_CHUNK_CUDA = 65536
# head_group_size=None: a group holds at most this many (batch x position x head) rows
GROUP_ROWS = 65536


def compact_buckets(n_buckets: int) -> torch.dtype:
    """Bucket ids are kept between forward and backward in the smallest integer type."""
    return torch.int16 if n_buckets < 2**15 else torch.int32


def _rows(x: torch.Tensor) -> list[slice]:
    """Blocks of the rows of x (B, L, d) flattened to (B * L, d)."""
    n = x.shape[0] * x.shape[1]
    step = ROW_CHUNK_CUDA if x.is_cuda else ROW_CHUNK
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


class Attention(nn.Module):
    """LayerNorm -> shared-QK projection -> LSH / local / full / match attention -> output
    projection.

    The sublayer runs one group of `head_group_size` heads at a time, with each group's
    slices of the projection weights, and one hashing round at a time inside a group: the
    full (L, d_model) queries and values never exist, nor any hashing round's sorted copies
    beyond its own step. The backward (`_AttentionFunction`, and `reverse` for the
    reversible stack) recomputes a group from the layer's input and back-propagates it at
    once, from the combined output and log-sum-exp of all rounds.

    A match layer's buckets come from the tokens (matching.py), so it is always given them
    (ReformerLM computes them); it attends over L + 1 items rather than L positions.
    """

    def __init__(self, cfg: ReformerConfig, layer_idx: int):
        super().__init__()
        d = cfg.d_model
        self.kind = cfg.layer_attn(layer_idx)
        self.causal = cfg.causal
        self.n_heads = cfg.n_heads
        self.head_group_size = cfg.head_group_size
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
    def _params(self) -> list[nn.Parameter]:
        return [self.norm.weight, self.norm.bias, self.to_qk.weight, self.to_v.weight,
                self.to_out.weight, self.to_out.bias]

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, L, d = x.shape
        return x.view(B, L, self.n_heads, d // self.n_heads).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        B, H, L, D = x.shape
        return x.transpose(1, 2).reshape(B, L, H * D)

    def _head_groups(self, x: torch.Tensor) -> list[slice]:
        k = self.head_group_size or max(1, GROUP_ROWS // (x.shape[0] * x.shape[1]))
        return [slice(h, min(h + k, self.n_heads)) for h in range(0, self.n_heads, k)]

    def _columns(self, heads: slice) -> slice:
        D = self.to_qk.weight.shape[0] // self.n_heads
        return slice(heads.start * D, heads.stop * D)

    def _rotations(self, device: torch.device) -> torch.Tensor | None:
        """Training draws fresh rotations from the global RNG; eval uses seeded ones."""
        if self.kind != "lsh":
            return None
        H, D = self.n_heads, self.to_qk.weight.shape[0] // self.n_heads
        if self.training:
            return random_rotations(H, D, self.n_hashes, self.factors, device)
        key = (self.n_hashes, device)
        if key not in self._eval_rotations:
            rot = fixed_rotations(H, D, self.n_hashes, self.factors, self.seed)
            self._eval_rotations[key] = rot.to(device)
        return self._eval_rotations[key]

    def _dropout_mask(self, x: torch.Tensor) -> torch.Tensor | None:
        """The output dropout as an explicit mask (scaled by 1 / (1 - p)), so the backward
        draws the very same one from the replayed RNG."""
        if not self.training or self.dropout == 0:
            return None
        return dropout_mask(x.shape, self.dropout, x.device)

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All heads' queries and values at once (decoding)."""
        h = self.norm(x.to(self.norm.weight.dtype))
        return self._heads(self.to_qk(h)), self._heads(self.to_v(h))

    def _group_qv(self, x: torch.Tensor, heads: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """One head group's queries and values (B, h, L, D), a block of rows at a time."""
        B, L, d = x.shape
        cols = self._columns(heads)
        rows = x.reshape(B * L, d)
        q = v = None
        for r in _rows(x):
            h = self.norm(rows[r].to(self.norm.weight.dtype))
            q_r, v_r = F.linear(h, self.to_qk.weight[cols]), F.linear(h, self.to_v.weight[cols])
            if q is None:
                q = q_r.new_empty(B * L, q_r.shape[-1])
                v = v_r.new_empty(B * L, v_r.shape[-1])
            q[r], v[r] = q_r, v_r
        n = heads.stop - heads.start
        return tuple(t.view(B, L, n, -1).transpose(1, 2) for t in (q, v))

    def _group_buckets(self, q: torch.Tensor, heads: slice, rotations: torch.Tensor | None,
                       buckets: torch.Tensor) -> torch.Tensor | None:
        """Hash the group's queries round by round into `buckets` (B, H, R, L), unless the
        rotations are None (the buckets were given); returns the group's ids."""
        if self.kind == "match":
            return buckets.expand(-1, self.n_heads, -1, -1)[:, heads]
        if self.kind != "lsh":
            return None
        if rotations is not None:
            for r in range(rotations.shape[2]):
                b = hash_buckets(q, rotations[heads, :, r:r + 1], self.factors)
                buckets[:, heads, r:r + 1] = b.to(buckets.dtype)
        return buckets[:, heads]

    def _items(self, q: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor, str, torch.Tensor | None]:
        """What the kernels attend over, and as which kind: the positions, or for match the
        L + 1 items of matching.py (item i: position i - 1's query, position i's value)."""
        if self.kind != "match":
            return q, v, self.kind, lengths
        return (F.pad(q, (0, 0, 1, 0)), F.pad(v, (0, 0, 0, 1)), "lsh",
                None if lengths is None else lengths + 1)

    def _at_positions(self, o: torch.Tensor, L: int) -> torch.Tensor:
        """The kernels' output at the L positions (item i + 1's is position i's)."""
        return o[:, :, 1:L + 1] if self.kind == "match" else o[:, :, :L]

    def _add_output(self, y: torch.Tensor, o: torch.Tensor, heads: slice, sign: float) -> None:
        """y (B, L, d) += sign * the group's share of the output projection of o (B, h, L, D)."""
        B, L, d = y.shape
        o_rows = o.transpose(1, 2).reshape(B * L, -1)
        w = self.to_out.weight[:, self._columns(heads)]
        y_rows = y.view(B * L, d)
        for r in _rows(y):
            y_rows[r].add_(F.linear(o_rows[r], w), alpha=sign)

    # -- the sublayer, without autograd -----------------------------------------------
    @torch.no_grad()
    def _forward_into(self, x: torch.Tensor, y: torch.Tensor, rotations: torch.Tensor | None,
                      buckets: torch.Tensor | None, lengths: torch.Tensor | None = None
                      ) -> torch.Tensor | None:
        """y += the sublayer's output before dropout. Returns the bucket ids (B, H, R, L),
        hashed here unless given. lengths: (B,) real positions of a right-padded batch."""
        B, L, _ = x.shape
        if self.kind == "lsh" and buckets is None:
            buckets = torch.empty(B, self.n_heads, self.n_hashes, L, device=x.device,
                                  dtype=compact_buckets(self.n_buckets))
        else:
            rotations = None
        if self.kind == "match" and buckets is None:
            raise ValueError("a match layer needs the buckets of its tokens' contexts "
                             "(matching.context_buckets; ReformerLM passes them)")
        for heads in self._head_groups(x):
            q, v = self._group_qv(x, heads)
            b = self._group_buckets(q.detach(), heads, rotations, buckets)
            q, v, kind, item_lengths = self._items(q, v, lengths)
            o, _ = attention_forward(q, v, kind, b, self.bucket_size, self.causal,
                                     self.backend, lengths=item_lengths,
                                     null=self.kind == "match")
            self._add_output(y, self._at_positions(o, L), heads, 1.0)
        y.add_(self.to_out.bias)
        return buckets

    def _output(self, x: torch.Tensor, rotations: torch.Tensor | None,
                buckets: torch.Tensor | None, mask: torch.Tensor | None,
                lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The sublayer's output (after dropout) in a new tensor, and the bucket ids."""
        y = torch.zeros_like(x)
        buckets = self._forward_into(x, y, rotations, buckets, lengths)
        return (y if mask is None else y.mul_(mask)), buckets

    @torch.no_grad()
    def _backward(self, x: torch.Tensor, d_f: torch.Tensor, buckets: torch.Tensor | None,
                  dx: torch.Tensor, minus_f: torch.Tensor | None = None,
                  lengths: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Back-propagate d_f (the gradient of the output before dropout), one head group
        at a time: dx += the input's gradient; returns the gradients of `_params()`. With
        minus_f, the recomputed output is also subtracted from it (the reversible stack's
        reconstruction of its other stream)."""
        B, L, d = x.shape
        params = self._params()
        grads = [torch.zeros_like(p) for p in params]
        g_norm_w, g_norm_b, g_qk, g_v, g_out, g_out_b = grads
        # in the parameters' dtype: a float64 stream's gradient would take the backward
        # matmuls out of autocast
        df_rows = d_f.reshape(B * L, d).to(self.norm.weight.dtype)
        g_out_b += df_rows.sum(0)
        x_rows, dx_rows = x.reshape(B * L, d), dx.view(B * L, d)
        n_w, n_b = (p.detach().requires_grad_() for p in (self.norm.weight, self.norm.bias))
        for heads in self._head_groups(x):
            cols = self._columns(heads)
            q, v = self._group_qv(x, heads)
            b = self._group_buckets(q, heads, None, buckets)
            q, v, kind, item_lengths = self._items(q, v, lengths)
            # sorted once for the recompute and the backward
            layouts = round_layouts(kind, b, q, self.bucket_size, self.causal, item_lengths)
            o, lse = attention_forward(q, v, kind, b, self.bucket_size, self.causal,
                                       self.backend, layouts, null=self.kind == "match")
            o = self._at_positions(o, L)
            if minus_f is not None:
                self._add_output(minus_f, o, heads, -1.0)
            o_rows = o.transpose(1, 2).reshape(B * L, -1)
            del o
            w_out = self.to_out.weight[:, cols]
            g_out[:, cols] += torch.matmul(df_rows.t(), o_rows.to(df_rows.dtype))
            do = torch.matmul(df_rows, w_out.to(df_rows.dtype))
            n = heads.stop - heads.start
            # <d out, out> per query and head, for the softmax's gradient
            delta = (do.to(o_rows.dtype) * o_rows).view(B, L, n, -1).sum(-1).transpose(1, 2)
            del o_rows
            do = do.view(B, L, n, -1).transpose(1, 2)
            if self.kind == "match":  # position i's output is item i + 1's
                do, delta = F.pad(do, (0, 0, 1, 0)), F.pad(delta, (1, 0))
            dq, dv = attention_backward(q, v, kind, b, self.bucket_size, self.causal,
                                        lse, delta, do, self.backend, layouts)
            del lse, do, delta, layouts
            if self.kind == "match":  # item i + 1 has position i's query, item i its value
                dq, dv = dq[:, :, 1:], dv[:, :, :L]
            dq, dv = (t.transpose(1, 2).reshape(B * L, -1) for t in (dq, dv))
            w_qk, w_v = self.to_qk.weight[cols], self.to_v.weight[cols]
            # layer norm and projections a block of rows at a time, the norm recomputed per
            # group: no (L, d_model) normalized input or its gradient is ever kept, and the
            # norm is cheap next to the projections
            for r in _rows(x):
                x_r = x_rows[r].detach().to(n_w.dtype).requires_grad_()
                with torch.enable_grad():
                    h = F.layer_norm(x_r, (d,), n_w, n_b, self.norm.eps)
                # q = h w_qk^T and v = h w_v^T (matmuls under the caller's autocast)
                dq_r, dv_r = dq[r].to(h.dtype), dv[r].to(h.dtype)
                dh = torch.matmul(dq_r, w_qk) + torch.matmul(dv_r, w_v)
                g_qk[cols] += torch.matmul(dq_r.t(), h.detach())
                g_v[cols] += torch.matmul(dv_r.t(), h.detach())
                gx, gw, gb = torch.autograd.grad(h, [x_r, n_w, n_b], dh.to(h.dtype))
                dx_rows[r] += gx
                g_norm_w += gw
                g_norm_b += gb
        if minus_f is not None:
            minus_f.sub_(self.to_out.bias)
        return grads

    # -- full sequences ---------------------------------------------------------------
    def forward(self, x: torch.Tensor, buckets: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, L, d_model). Returns the sublayer output (x's dtype) and, for LSH, the
        bucket ids used (B, H, R, L); pass them back in to recompute with identical hashing.
        lengths: (B,) real positions of a right-padded batch; no real position attends to
        padding (None: all L are real)."""
        # drawn even when buckets are given, so a recompute consumes the RNG as the
        # forward did and its dropout masks match
        rotations = self._rotations(x.device)
        mask = self._dropout_mask(x)
        params = self._params()
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad
                                                                         for p in params))
        resolve_backend(self.backend, x, needs_grad)  # a clear error for flex on CPU
        if needs_grad:
            return _AttentionFunction.apply(x, self, rotations, buckets, mask, lengths, *params)
        return self._output(x, rotations, buckets, mask, lengths)

    @torch.no_grad()
    def add_to(self, y: torch.Tensor, x: torch.Tensor, lengths: torch.Tensor | None = None,
               buckets: torch.Tensor | None = None) -> torch.Tensor | None:
        """y += the sublayer's output for x, in place (the reversible forward). Returns the
        bucket ids used (a match layer's are given)."""
        rotations = self._rotations(x.device)
        mask = self._dropout_mask(x)
        if mask is None:
            return self._forward_into(x, y, rotations, buckets, lengths)
        f = torch.zeros_like(y)
        buckets = self._forward_into(x, f, rotations, buckets, lengths)
        y.add_(f.mul_(mask))
        return buckets

    @torch.no_grad()
    def reverse(self, y: torch.Tensor, x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor,
                buckets: torch.Tensor | None, lengths: torch.Tensor | None = None) -> None:
        """The reversible backward of y = x_other + Attn(x), in place: y becomes x_other,
        dx += the gradient through Attn of dy, and the parameters' gradients accumulate
        (through autograd, so DDP's hooks see them). Run under the forward's RNG state."""
        self._rotations(x.device)  # drawn as in the forward, so the dropout mask is its own
        mask = self._dropout_mask(x)
        if mask is None:
            grads = self._backward(x, dy, buckets, dx, minus_f=y, lengths=lengths)
        else:
            minus_f = torch.zeros_like(y)
            grads = self._backward(x, dy * mask, buckets, dx, minus_f=minus_f, lengths=lengths)
            y.add_(minus_f.mul_(mask))
        trainable = [(p, g) for p, g in zip(self._params(), grads) if p.requires_grad]
        if trainable:
            torch.autograd.backward(*zip(*trainable))

    # -- decoding ---------------------------------------------------------------------
    def prefill(self, x: torch.Tensor, capacity: int, buckets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, KVCache]:
        """Full forward over a prompt (B, P, d_model) that also builds the decoding cache.
        buckets: a match layer's, of the prompt's items (B, 1, R, P + 1)."""
        assert not self.training, "decoding runs in eval mode"
        out, buckets = self(x, buckets)
        q, v = self._project(x)
        B, H, P, D = q.shape
        if self.kind == "match":  # items 0..capacity: item i + 1 has position i's key
            k_all = q.new_zeros(B, H, capacity + 1, D)
            v_all = q.new_zeros(B, H, capacity + 1, D)
            k_all[:, :, 1:P + 1] = F.normalize(q, dim=-1)
            v_all[:, :, :P] = v
            item_buckets = buckets.new_full((B, buckets.shape[2], capacity + 1), -1)
            item_buckets[:, :, :P + 1] = buckets[:, 0]
            return out, MatchCache(k_all, v_all, item_buckets)
        k_all = q.new_zeros(B, H, capacity, D)
        v_all = q.new_zeros(B, H, capacity, D)
        k_all[:, :, :P] = F.normalize(q, dim=-1)
        v_all[:, :, :P] = v
        if self.kind != "lsh":
            return out, KVCache(k_all, v_all)
        W = 2 * self.bucket_size
        buckets = buckets.long()
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

    def step(self, x: torch.Tensor, cache: KVCache, t: torch.Tensor,
             bucket: torch.Tensor | None = None) -> torch.Tensor:
        """Attention output for the token at position t (a 0-d tensor), x: (B, 1, d_model);
        updates cache. Every shape is fixed by the cache, never by t, so a compiled decoding
        step serves every position. bucket: a match layer's, of item t + 1 (B, R).

        The token's key and value (and its LSH bucket entries) are written before any
        read: its window then holds itself, and Inductor writes the cache in place (with a
        read of a cache before its write, it may copy the whole cache on every token)."""
        q, v = self._project(x)
        q, v = q[:, :, 0], v[:, :, 0]  # (B, H, D)
        if self.kind == "match":  # position t gives item t its value, item t + 1 its key
            item = t + 1
            cache.v[:, :, t.view(1)] = v.unsqueeze(2)
            cache.k[:, :, item.view(1)] = F.normalize(q, dim=-1).unsqueeze(2)
            cache.buckets[:, :, item.view(1)] = bucket.to(cache.buckets.dtype).unsqueeze(-1)
            o = match_step(q, cache, item, self.bucket_size)
            return self.to_out(self._merge(o.unsqueeze(2)))
        cache.k[:, :, t.view(1)] = F.normalize(q, dim=-1).unsqueeze(2)
        cache.v[:, :, t.view(1)] = v.unsqueeze(2)
        if self.kind == "lsh":
            o = self._lsh_step(q, cache, t)
        else:
            T = cache.k.shape[2]
            if self.kind == "full":
                window = torch.arange(T, device=q.device)
            else:  # this chunk and the previous one: 2 * bucket_size slots from their start
                bs = self.bucket_size
                window = (t // bs - 1) * bs + torch.arange(2 * bs, device=q.device)
            valid = (window >= 0) & (window <= t)
            clamped = window.clamp(0, T - 1)
            o, _ = attend_one(q, cache.k.index_select(2, clamped),
                              cache.v.index_select(2, clamped), valid, window == t)
        return self.to_out(self._merge(o.unsqueeze(2)))

    def _lsh_step(self, q: torch.Tensor, cache: LSHCache, t: torch.Tensor) -> torch.Tensor:
        B, H, D = q.shape
        W, bs = 2 * self.bucket_size, self.bucket_size
        bucket = hash_buckets(q.unsqueeze(2), self._rotations(q.device), self.factors)[..., 0]
        R = bucket.shape[-1]
        rows = (torch.arange(B, device=q.device).view(B, 1, 1),
                torch.arange(H, device=q.device).view(1, H, 1),
                torch.arange(R, device=q.device).view(1, 1, R))
        cache.counts.index_put_((*rows, bucket), torch.ones_like(bucket), accumulate=True)
        rank = cache.counts[(*rows, bucket)] - 1  # (B, H, R): the token's rank in its bucket
        cache.ring.index_put_((*rows, bucket * W + rank % W), t.expand(B, H, R))
        slots = bucket.unsqueeze(-1) * W + torch.arange(W, device=q.device)
        positions = cache.ring.gather(-1, slots)  # (B, H, R, W)
        # the rank each slot holds, the latest up to `rank` congruent to it; the window is
        # this chunk and the previous one of the bucket's sorted order
        last = rank.unsqueeze(-1)
        held = last - (last - torch.arange(W, device=q.device)) % W
        valid = held >= ((rank // bs - 1) * bs).clamp_min(0).unsqueeze(-1)
        # the R * W keys of all rounds in one gather from the cache itself (not from an
        # (R, capacity) expanded view of it)
        idx = positions.clamp_min(0).view(B, H, R * W, 1).expand(B, H, R * W, D)
        kw = cache.k.gather(2, idx).view(B, H, R, W, D)
        vw = cache.v.gather(2, idx).view(B, H, R, W, D)
        o, lse = attend_one(q.unsqueeze(2), kw, vw, valid, held == last)
        return (o * torch.softmax(lse, dim=-1).unsqueeze(-1)).sum(dim=2) if R > 1 else o[:, :, 0]


class _AttentionFunction(torch.autograd.Function):
    """The sublayer under autograd: saves only its input (and the bucket ids and dropout
    mask) and recomputes each head group in the backward."""

    @staticmethod
    def forward(ctx, x, attn, rotations, buckets, mask, lengths, *params):  # noqa: ANN001
        y, buckets = attn._output(x, rotations, buckets, mask, lengths)
        ctx.attn = attn
        ctx.lengths = lengths
        ctx.autocast = autocast_state(x.device)
        ctx.save_for_backward(x, buckets, mask)
        if buckets is not None:
            ctx.mark_non_differentiable(buckets)
        return y, buckets

    @staticmethod
    def backward(ctx, dy, _):  # noqa: ANN001
        x, buckets, mask = ctx.saved_tensors
        dx = torch.zeros_like(x)
        with torch.autocast(*ctx.autocast):
            grads = ctx.attn._backward(x, dy if mask is None else dy * mask, buckets, dx,
                                       lengths=ctx.lengths)
        return (dx, None, None, None, None, None, *grads)
