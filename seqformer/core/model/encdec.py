"""ReformerEncDec: a bidirectional Reformer encoder and an exactly causal Reformer decoder
whose layers also attend to the encoder's output (trax's Reformer encoder-decoder,
lucidrains' ReformerEncDec).

Both stacks are reversible (or plain) two-stream stacks. The encoder's output is an input
of every decoder layer; in the reversible decoder its gradient sums over the layers in the
custom backward, then flows into the encoder's own reversible backward. Sources of
unequal length come right-padded with their lengths: no real source position attends to
padding, and no target position attends to it either.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..attention.cross import Alignment
from ..config import ConfigError, ReformerConfig
from ..decoding.beam import beam_search
from ..decoding.sampling import Constraint, check_sampling
from ..layers.chunked_loss import next_token_nll, reduce_targets
from ..layers.reversible import Source
from .lm import ReformerLM


class ReformerEncDec(nn.Module):
    """enc_cfg: the encoder (its `causal` is forced False); dec_cfg: the decoder (causal).

    share_weights=True: decoder layer i uses encoder layer i's self-attention and
    feed-forward weights (its cross-attention stays its own); equal depth and width needed.
    shared_vocab=True (source and target from one vocabulary): the decoder's token
    embedding is the encoder's, and so is the output head when dec_cfg.tie_embeddings.
    tie_positions=True: the first axis of the decoder's axial positions is the encoder's,
    for pairs aligned by position: with encoder axial_shape (S, 1) and decoder (S, k),
    target position t and source position t // k share a vector (codons: k = 3), so
    cross-attention can find its source position from the start instead of learning S
    separate alignments.
    alignment=Alignment(ratio, window): the cheaper cross-attention for position-aligned
    pairs, each target position t against the source positions within `window` of
    t // ratio (see attention/cross.py); None: every target position against the whole
    source.
    read_target=False: the decoder does not read the target tokens before a position (each
    is one learned vector), so each position's distribution is the target's marginal there
    given the source, and greedy decoding picks each position's likeliest token
    (non-autoregressive, as CodonTransformer's codon design). Still exactly causal.
    """

    def __init__(self, enc_cfg: ReformerConfig, dec_cfg: ReformerConfig,
                 share_weights: bool = False, shared_vocab: bool = False,
                 tie_positions: bool = False, alignment: Alignment | None = None,
                 read_target: bool = True):
        super().__init__()
        if enc_cfg.causal:
            enc_cfg = ReformerConfig.from_dict({**enc_cfg.to_dict(), "causal": False})
        if not dec_cfg.causal:
            raise ConfigError("causal: the decoder must be causal (dec_cfg.causal=True)")
        if dec_cfg.copy_k:
            raise ConfigError("copy_k: the copy mixture is for language models, not for an "
                              "encoder-decoder's decoder")
        if enc_cfg.d_model != dec_cfg.d_model:
            raise ConfigError(f"d_model: the encoder's ({enc_cfg.d_model}) and the decoder's "
                              f"({dec_cfg.d_model}) must be equal")
        self.enc_cfg, self.dec_cfg = enc_cfg, dec_cfg
        self.share_weights, self.shared_vocab = share_weights, shared_vocab
        self.tie_positions, self.alignment = tie_positions, alignment
        self.read_target = read_target
        self.encoder = ReformerLM(enc_cfg)
        # the encoder's output feeds cross-attention, never a vocabulary
        self.encoder.head = None
        self.decoder = ReformerLM(dec_cfg, cross_attention=True, alignment=alignment,
                                  read_tokens=read_target)
        if shared_vocab:
            if enc_cfg.vocab_size != dec_cfg.vocab_size:
                raise ConfigError(f"vocab_size: shared_vocab needs equal vocabularies, got "
                                  f"{enc_cfg.vocab_size} and {dec_cfg.vocab_size}")
            self.decoder.embed = self.encoder.embed
            if dec_cfg.tie_embeddings:
                self.decoder.head.weight = self.encoder.embed.weight
        if tie_positions:
            rows = enc_cfg.axial_shape[0], dec_cfg.axial_shape[0]
            if rows[0] != rows[1]:
                raise ConfigError(f"axial_shape: tie_positions needs the encoder's and the "
                                  f"decoder's first axes equal, got {rows[0]} and {rows[1]}")
            self.decoder.pos.axes[0] = self.encoder.pos.axes[0]
        if share_weights:
            for name in ("n_layers", "d_ff", "n_heads"):
                a, b = getattr(enc_cfg, name), getattr(dec_cfg, name)
                if a != b:
                    raise ConfigError(f"{name}: share_weights needs the encoder's ({a}) and "
                                      f"the decoder's ({b}) to be equal")
            for enc, dec in zip(self.encoder.layers, self.decoder.layers):
                # submodules, not the sublayers: each keeps its own causal flag and settings
                for part in ("norm", "to_qk", "to_v", "to_out"):
                    setattr(dec.attn, part, getattr(enc.attn, part))
                for part in ("norm", "w1", "w2"):
                    setattr(dec.ff, part, getattr(enc.ff, part))

    @property
    def max_source_len(self) -> int:
        return self.enc_cfg.max_seq_len

    @property
    def max_target_len(self) -> int:
        return self.dec_cfg.max_seq_len

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor | None = None
               ) -> torch.Tensor:
        """src (B, S) -> the encoder's output (B, S, d_model); src_lengths (B,): the real
        tokens of each right-padded row (None: all S)."""
        if src_lengths is not None and int(src_lengths.min()) < 1:
            raise ValueError("every source needs at least one token")
        return self.encoder.hidden_states(src, src=Source(lengths=src_lengths))

    def _source(self, src: torch.Tensor, src_lengths: torch.Tensor | None) -> Source:
        return Source(memory=self.encode(src, src_lengths), memory_lengths=src_lengths)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor,
                src_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """src (B, S), tgt (B, T) -> logits (B, T, dec vocab): position t predicts t + 1."""
        hidden = self.decoder.hidden_states(tgt, src=self._source(src, src_lengths))
        return self.decoder.head(hidden)

    def loss(self, src: torch.Tensor, tgt: torch.Tensor,
             src_lengths: torch.Tensor | None = None, tgt_lengths: torch.Tensor | None = None,
             reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy in nats of tgt[:, 1:] given tgt[:, :-1] and the source, the head a
        block of rows at a time (as ReformerLM.loss). tgt_lengths (B,): real tokens of each
        right-padded target (bos included); padding is never a target. reduction "mean"
        (over real targets), "sum" or "none" ((B, T - 1), zero at padding)."""
        if tgt.ndim != 2 or tgt.shape[1] < 2:
            raise ValueError("loss needs targets of shape (batch, length) with length >= 2")
        hidden = self.decoder.hidden_states(tgt[:, :-1], src=self._source(src, src_lengths))
        nll = next_token_nll(hidden, self.decoder.head.weight, tgt[:, 1:])
        return reduce_targets(nll, tgt_lengths, reduction)

    @torch.no_grad()
    def generate(self, src: torch.Tensor, n_tokens: int, bos: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 constraint: Constraint | None = None,
                 src_lengths: torch.Tensor | None = None, eos: int | None = None,
                 num_beams: int = 1) -> torch.Tensor:
        """(B, 1 + n_tokens) target tokens starting with bos. The source is encoded once and
        each decoder layer's cross-attention keys and values are computed once; each step
        then costs one position of the decoder. temperature=0 is greedy. eos: stop once
        every row has produced it (fewer columns then). num_beams > 1: beam search for the
        likeliest target instead of sampling (decoding/beam.py; temperature, top_k,
        top_p and generator unused)."""
        check_sampling(temperature, top_k, top_p)
        was_training = self.training
        self.eval()
        try:
            start = torch.full((src.shape[0], 1), bos, dtype=torch.long, device=src.device)
            if num_beams > 1:
                return beam_search(self.decoder, start, n_tokens, num_beams, constraint,
                                   self._source(src, src_lengths), eos)
            return self.decoder.generate(start, n_tokens, temperature, top_k, top_p,
                                         generator, constraint,
                                         src=self._source(src, src_lengths), eos=eos)
        finally:
            self.train(was_training)
