"""ReformerLM: token + axial position embeddings, the two-stream stack, a tied LM head.

Read top to bottom: the layer, the model's parameters, the forward and the loss, then
decoding (prefill fills the caches, step adds one position; the sampling loop is
decoding/generate.py's).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn

from ..attention.cross import Alignment, CrossAttention
from ..attention.matching import context_buckets, next_bucket
from ..attention.module import Attention
from ..config import ConfigError, ReformerConfig
from ..decoding.cache import DecodeCache
from ..decoding.generate import generate_tokens
from ..decoding.sampling import Constraint
from ..layers.axial_positions import AxialPositionalEmbedding
from ..layers.chunked_loss import next_token_nll
from ..layers.copy import Copies, CopyGate, copy_step, find_copies, mix, mixed_nll, new_copy_cache
from ..layers.dropout import dropout
from ..layers.embeddings import sum_of_rows
from ..layers.feedforward import FeedForward
from ..layers.reversible import (
    NO_SOURCE,
    Source,
    inference_stack,
    plain_stack,
    reversible_stack,
    stream_dtype,
    stream_mean,
)


class ReformerLayer(nn.Module):
    """One layer of the two-stream stack (layers/reversible.py): self-attention, the
    feed-forward and, in a decoder, cross-attention to the source."""

    def __init__(self, attn: Attention, ff: FeedForward, cross: CrossAttention | None = None):
        super().__init__()
        self.attn = attn
        self.ff = ff
        self.cross = cross


class ReformerLM(nn.Module):
    """cross_attention=True makes it the decoder of `ReformerEncDec`: each layer also
    attends to a source (`Source.memory`), to all of it or, with an `alignment`, to a
    window around each position's aligned source position."""

    def __init__(self, cfg: ReformerConfig, cross_attention: bool = False,
                 alignment: Alignment | None = None, read_tokens: bool = True):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        if not read_tokens and (not cross_attention or cfg.kmer_embedding > 1
                                or cfg.has_match or cfg.copy_k):
            raise ConfigError("read_tokens: only a decoder with cross-attention and no k-mer "
                              "embedding, match layers or copy mixture can leave its own "
                              "tokens unread")
        self.embed = nn.Embedding(cfg.vocab_size, d)
        # read_tokens=False: every input token is this one learned vector, so position t is
        # predicted from its position and the source alone; its greedy choice is then the
        # likeliest token at t, not the next step of a path the decoder follows
        self.blank = None if read_tokens else nn.Parameter(torch.zeros(1, d))
        # One table per offset 1..k-1, each with an extra row for "before the sequence".
        self.embed_prev = (nn.Embedding((cfg.kmer_embedding - 1) * (cfg.vocab_size + 1), d)
                           if cfg.kmer_embedding > 1 else None)
        self.pos = AxialPositionalEmbedding(cfg.axial_shape, d)
        self.layers = nn.ModuleList(
            ReformerLayer(Attention(cfg, i),
                          FeedForward(d, cfg.d_ff, cfg.dropout, cfg.ff_chunk_size),
                          CrossAttention(d, cfg.n_heads, cfg.dropout, alignment) if cross_attention
                          else None)
            for i in range(cfg.n_layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.apply(self._init)
        self.copy_gate = (CopyGate(cfg.n_copy_candidates, pointer=bool(cfg.copy_pointer))
                          if cfg.copy_k else None)
        # the complement map, pad (vocab_size: before the sequence) to itself
        self.register_buffer("copy_complement", torch.tensor([*cfg.copy_complement,
                                                              cfg.vocab_size])
                             if cfg.copy_complement else None, persistent=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        self._compiled: dict = {}  # compile_decoding's steps, by mode
        self._compiled_step = None  # the one in use

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    @property
    def max_seq_len(self) -> int:
        return self.cfg.max_seq_len

    def set_n_hashes(self, n_hashes: int) -> None:
        """Evaluate with a different number of hashing rounds (parameters do not change)."""
        for layer in self.layers:
            layer.attn.n_hashes = n_hashes

    # -- forward ----------------------------------------------------------------------
    def _embed(self, tokens: torch.Tensor, start: int = 0,
               before: torch.Tensor | None = None) -> torch.Tensor:
        """before: (B, kmer_embedding - 1) tokens preceding `tokens` (decoding); None at the
        sequence start."""
        L = tokens.shape[1]
        if start + L > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {start + L} tokens exceeds max_seq_len="
                             f"{self.cfg.max_seq_len}")
        positions = torch.arange(start, start + L, device=tokens.device)
        x = sum_of_rows(*self._embedding_rows(tokens, positions, before))
        return dropout(x, self.cfg.dropout, self.training)

    def _embedding_rows(self, tokens: torch.Tensor, positions: torch.Tensor,
                        before: torch.Tensor | None) -> tuple[list, list]:
        """(ids, tables): the input embedding of tokens (B, L) at positions (L,) is the sum
        of tables[i][ids[i]]: the token, each axial position axis and, with
        kmer_embedding k, the tokens 1..k-1 back (from `before` across the start)."""
        B, L = tokens.shape
        token_ids, token_table = ((tokens, self.embed.weight) if self.blank is None
                                  else (torch.zeros_like(tokens), self.blank))
        ids = [token_ids, *self.pos.indices(positions)]
        tables = [token_table, *self.pos.tables()]
        k, V = self.cfg.kmer_embedding, self.cfg.vocab_size
        if k > 1:
            before = (tokens.new_full((B, k - 1), V) if before is None
                      else before[:, before.shape[1] - (k - 1):])
            ext = torch.cat([before, tokens], dim=1)
            for j in range(1, k):  # the token j back, from table j (rows offset by j - 1)
                ids.append(ext[:, k - 1 - j:k - 1 - j + L] + (j - 1) * (V + 1))
                tables.append(self.embed_prev.weight)
        return ids, tables

    @property
    def _history(self) -> int:
        """How many past tokens a decoding step reads: the k-mer embedding's and the match
        layers' contexts (the copy mixture keeps its own tokens)."""
        match = max(self.cfg.match_k) if self.cfg.has_match else 0
        return max(self.cfg.kmer_embedding - 1, match)

    def _recent(self, tokens: torch.Tensor, before: torch.Tensor | None) -> torch.Tensor | None:
        """The last `_history` tokens after appending `tokens`, for the next step (the
        vocabulary size stands for "before the sequence")."""
        n = self._history
        if n == 0:
            return None
        if before is None:
            before = tokens.new_full((tokens.shape[0], n), self.cfg.vocab_size)
        # contiguous: a compiled step would recompile for each new stride
        return torch.cat([before, tokens], dim=1)[:, -n:].contiguous()

    def _with_contexts(self, tokens: torch.Tensor, src: Source) -> Source:
        """src with the match layers' context buckets of tokens, if the model has any."""
        if not self.cfg.has_match:
            return src
        return replace(src, match_buckets=context_buckets(tokens, self.cfg.match_k,
                                                          self.cfg.vocab_size))

    def _streams(self, x: torch.Tensor) -> torch.dtype:
        return stream_dtype(x, self.cfg.exact_streams)

    def hidden_states(self, tokens: torch.Tensor, layer: int = -1,
                      src: Source = NO_SOURCE) -> torch.Tensor:
        """tokens (B, L) -> hidden states (B, L, d_model): by default (layer=-1) the final
        normalized ones; layer=i (0-based) gives the mean of the two residual streams
        after layer i, for embeddings from inside the stack. src: the real lengths of a
        right-padded batch, and a decoder's source."""
        n = len(self.layers)
        if not -1 <= layer < n:
            raise ValueError(f"layer must be in -1..{n - 1}, got {layer}")
        x = self._embed(tokens)
        src = self._with_contexts(tokens, src)
        if layer >= 0:
            return plain_stack(self.layers[:layer + 1], x, self._streams(x), src)
        if not torch.is_grad_enabled():
            stack = inference_stack
        else:
            stack = reversible_stack if self.cfg.reversible else plain_stack
        return self.norm(stack(self.layers, x, self._streams(x), src))

    def _logits(self, hidden: torch.Tensor, copies: Copies | None) -> torch.Tensor:
        """The head's logits of final hidden states; with the copy mixture, its log p."""
        logits = self.head(hidden)
        if self.copy_gate is None:
            return logits
        return mix(logits, copies.candidates, self.copy_gate(copies))

    def _copies(self, tokens: torch.Tensor, copy_history: torch.Tensor | None = None
                ) -> Copies | None:
        if self.copy_gate is None:
            return None
        H = 0 if copy_history is None else copy_history.shape[1]
        seen = torch.cat([copy_history, tokens], dim=1) if H else tokens
        return find_copies(seen, self.cfg.copy_k, self.cfg.vocab_size, self.copy_complement,
                           self.cfg.copy_pointer, self.cfg.copy_pointer_k).after(H)

    def forward(self, tokens: torch.Tensor, copy_history: torch.Tensor | None = None
                ) -> torch.Tensor:
        """tokens (B, L) -> logits (B, L, vocab_size). copy_history (B, H): tokens that
        precede `tokens`, read by the copy mixture only (the window's attention starts at
        tokens[:, 0]): with copy_k, a model reaches further back than its window."""
        return self._logits(self.hidden_states(tokens), self._copies(tokens, copy_history))

    def loss(self, tokens: torch.Tensor, reduction: str = "mean",
             copy_history: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token cross-entropy in nats of tokens[:, 1:] given what precedes them.

        reduction "mean" (a scalar), "sum" or "none" ((B, L - 1)). The head runs a block of
        rows at a time: the (L, vocab_size) logits and their gradient never exist at once.
        copy_history: as in forward."""
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        if tokens.ndim != 2 or tokens.shape[1] < 2:
            raise ValueError("loss needs tokens of shape (batch, length) with length >= 2")
        hidden = self.hidden_states(tokens[:, :-1])
        nll = next_token_nll(hidden, self.head.weight, tokens[:, 1:])
        if self.copy_gate is not None:
            copies = self._copies(tokens[:, :-1], copy_history)
            nll = mixed_nll(nll, tokens[:, 1:], copies.candidates, self.copy_gate(copies))
        return nll.mean() if reduction == "mean" else nll.sum() if reduction == "sum" else nll

    # -- decoding ---------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, prompt: torch.Tensor, capacity: int, src: Source = NO_SOURCE,
                copy_history: torch.Tensor | None = None, copy_capacity: int | None = None
                ) -> tuple[torch.Tensor, DecodeCache]:
        """Logits for a prompt (B, P) and a cache with room for `capacity` positions; a
        decoder's source (src.memory) is projected once into every layer's cache.
        copy_history (B, H): tokens before the prompt that only the copy mixture reads (as
        in forward), in a cache of copy_capacity tokens (default H + capacity)."""
        if not self.cfg.causal:
            raise ValueError("decoding needs a causal model (causal=True)")
        if capacity > self.cfg.max_seq_len:
            raise ValueError(f"{capacity} positions exceed max_seq_len={self.cfg.max_seq_len}")
        cross = None
        if src.memory is not None:
            cross = [layer.cross.keys_values(src.memory) for layer in self.layers]
        x = self._embed(prompt)
        src = self._with_contexts(prompt, src)
        x1 = x2 = x.to(self._streams(x))
        caches = []
        positions = torch.arange(prompt.shape[1], device=prompt.device)
        for i, layer in enumerate(self.layers):
            a, cache = layer.attn.prefill(x2, capacity, src.buckets_for(layer.attn))
            if cross is not None:
                a = a + layer.cross(x2, None, src.memory_lengths, kv=cross[i],
                                    positions=positions)
            x1 = x1 + a
            x2 = x2 + layer.ff(x1)
            caches.append(cache)
        copies = self._copies(prompt, copy_history)
        logits = self._logits(self.norm(stream_mean(x1, x2, x.dtype)), copies)
        position = torch.tensor(prompt.shape[1], device=prompt.device)
        copy = None
        if copies is not None:
            seen = prompt if copy_history is None else torch.cat([copy_history, prompt], 1)
            need = seen.shape[1] - prompt.shape[1] + capacity
            if copy_capacity is not None and copy_capacity < need:
                raise ValueError(f"copy_capacity {copy_capacity} holds less than the copy "
                                 f"history and the capacity ({need})")
            copy = new_copy_cache(seen, copies, copy_capacity or need, self.cfg.copy_k,
                                  self.cfg.vocab_size)
        return logits, DecodeCache(caches, prompt.shape[1], capacity,
                                   self._recent(prompt, None), cross, src.memory_lengths,
                                   position, copy)

    @torch.no_grad()
    def step(self, token: torch.Tensor, cache: DecodeCache) -> torch.Tensor:
        """Logits (B, vocab) for one new token (B,) appended at position cache.length."""
        if cache.length >= cache.capacity:
            raise ValueError(f"decoding cache is full ({cache.capacity} positions)")
        logits, recent = (self._compiled_step or self._decode_step)(token, cache)
        cache.length += 1
        cache.recent = recent
        return logits

    def _decode_step(self, token: torch.Tensor, cache: DecodeCache
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The step's tensor work, shapes fixed by the cache: (logits, the new recent
        tokens). Advances cache.position and writes every layer's cache in place."""
        t = cache.position
        # as _embed, without its length check (a Python int) and autograd's row sums
        ids, tables = self._embedding_rows(token.unsqueeze(1), t.view(1), cache.recent)
        x = sum(table[i] for table, i in zip(tables, ids))
        recent = self._recent(token.unsqueeze(1), cache.recent)
        bucket = (next_bucket(recent, self.cfg.match_k, self.cfg.vocab_size)
                  if self.cfg.has_match else None)
        x1 = x2 = x.to(self._streams(x))
        for i, (layer, c) in enumerate(zip(self.layers, cache.layers)):
            a = layer.attn.step(x2, c, t, bucket if layer.attn.kind == "match" else None)
            if cache.cross is not None:
                a = a + layer.cross(x2, None, cache.memory_lengths, kv=cache.cross[i],
                                    positions=t.view(1))
            x1 = x1 + a
            x2 = x2 + layer.ff(x1)
        copies = None
        if cache.copy is not None:
            step = copy_step(cache.copy, token, self.cfg.copy_k, self.cfg.vocab_size,
                             self.copy_complement, self.cfg.copy_pointer,
                             self.cfg.copy_pointer_k)
            copies = Copies(*(c.unsqueeze(1) for c in step))
        t.add_(1)
        return self._logits(self.norm(stream_mean(x1, x2, x.dtype)), copies)[:, 0], recent

    def compile_decoding(self, mode: str | None = None, enabled: bool = True) -> None:
        """Decode with a torch.compile'd step (one graph for every position: the step's
        shapes depend on the cache, not on the position). The first step compiles
        (tens of seconds); worth it for long samples. mode: torch.compile's, e.g.
        "reduce-overhead" for CUDA graphs. enabled=False goes back to the eager step
        (compiled steps are kept for a later call)."""
        if not enabled:
            self._compiled_step = None
            return
        if mode not in self._compiled:
            self._compiled[mode] = torch.compile(self._decode_step, mode=mode, dynamic=False)
        self._compiled_step = self._compiled[mode]

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, n_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | None = None,
                 constraint: Constraint | None = None, src: Source = NO_SOURCE,
                 eos: int | None = None) -> torch.Tensor:
        """prompt (B, P), P >= 1 -> (B, P + n_tokens). temperature=0 is greedy.
        constraint: which tokens may come next (see decoding/sampling.py), masked before
        temperature, top-k and top-p. src: a decoder's source. eos: stop early, once every
        sequence has produced this token (the result is then shorter)."""
        return generate_tokens(self, prompt, n_tokens, temperature, top_k, top_p, generator,
                               constraint, src, eos)
