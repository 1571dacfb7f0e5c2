"""PrefixLM: the decoder-only counterpart of ReformerEncDec, for side-by-side comparisons.

One causal ReformerLM reads the source and then the target as one sequence,
source + target (the target starting with its bos), and only the target is scored. It has
ReformerEncDec's interface (forward, loss, generate over (src, tgt) pairs with lengths), so
the seq2seq pipeline trains, samples and scores either. Source and target share one
vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import ReformerConfig
from ..decoding.beam import beam_search
from ..decoding.sampling import Constraint
from ..layers.chunked_loss import reduce_targets
from .lm import ReformerLM


def _lengths(x: torch.Tensor, lengths: torch.Tensor | None) -> list[int]:
    return [x.shape[1]] * x.shape[0] if lengths is None else [int(n) for n in lengths]


class PrefixLM(nn.Module):
    def __init__(self, cfg: ReformerConfig, max_source_len: int):
        super().__init__()
        self.lm = ReformerLM(cfg)
        self.dec_cfg = cfg
        self.max_source_len = max_source_len

    @property
    def max_target_len(self) -> int:
        return self.dec_cfg.max_seq_len - self.max_source_len

    def _joined(self, src: torch.Tensor, tgt: torch.Tensor, src_lengths, tgt_lengths
                ) -> tuple[torch.Tensor, list[int], list[int]]:
        """Right-padded source + target rows, and each row's source and target lengths."""
        s_len, t_len = _lengths(src, src_lengths), _lengths(tgt, tgt_lengths)
        rows = torch.zeros(len(s_len), max(a + b for a, b in zip(s_len, t_len)),
                           dtype=src.dtype, device=src.device)
        for b, (s, t) in enumerate(zip(s_len, t_len)):
            rows[b, :s] = src[b, :s]
            rows[b, s:s + t] = tgt[b, :t]
        return rows, s_len, t_len

    def _target_part(self, values: torch.Tensor, s_len: list[int], T: int) -> torch.Tensor:
        """(B, T, ...) of values (B, L, ...) at each row's target positions."""
        out = values.new_zeros(values.shape[0], T, *values.shape[2:])
        for b, s in enumerate(s_len):
            n = min(T, values.shape[1] - s)
            out[b, :n] = values[b, s:s + n]
        return out

    def forward(self, src: torch.Tensor, tgt: torch.Tensor,
                src_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, vocab) logits at the target's positions (position t predicts t + 1)."""
        rows, s_len, _ = self._joined(src, tgt, src_lengths, None)
        return self._target_part(self.lm(rows), s_len, tgt.shape[1])

    def loss(self, src: torch.Tensor, tgt: torch.Tensor,
             src_lengths: torch.Tensor | None = None, tgt_lengths: torch.Tensor | None = None,
             reduction: str = "mean") -> torch.Tensor:
        """As ReformerEncDec.loss: tgt[:, 1:] given the source and tgt[:, :-1]."""
        rows, s_len, t_len = self._joined(src, tgt, src_lengths, tgt_lengths)
        nll = self._target_part(self.lm.loss(rows, reduction="none"), s_len, tgt.shape[1] - 1)
        return reduce_targets(nll, torch.tensor(t_len, device=nll.device), reduction)

    @torch.no_grad()
    def generate(self, src: torch.Tensor, n_tokens: int, bos: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 constraint: Constraint | None = None,
                 src_lengths: torch.Tensor | None = None, eos: int | None = None,
                 num_beams: int = 1) -> torch.Tensor:
        """As ReformerEncDec.generate. The prompts (source + bos) differ in length, so each
        row decodes on its own; a constraint therefore needs a batch of one."""
        if constraint is not None and src.shape[0] > 1:
            raise ValueError("PrefixLM.generate takes a constraint with one source at a time")
        rows = []
        for b, s in enumerate(_lengths(src, src_lengths)):
            prompt = torch.cat([src[b, :s], src.new_tensor([bos])]).unsqueeze(0)
            gen = generator[b] if isinstance(generator, (list, tuple)) else generator
            if num_beams > 1:
                out = beam_search(self.lm, prompt, n_tokens, num_beams, constraint, eos=eos)
            else:
                out = self.lm.generate(prompt, n_tokens, temperature, top_k, top_p, gen,
                                       constraint, eos=eos)
            rows.append(out[0, s:])
        width = max(len(r) for r in rows)
        fill = bos if eos is None else eos
        return torch.stack([torch.cat([r, r.new_full((width - len(r),), fill)]) for r in rows])
