"""Beam search: the most likely continuation under the model (and a constraint).

For tasks judged against one right answer (a coding sequence for a protein, a
translation), where sampling's variety is unwanted and greedy decoding, token by token, can
miss the likeliest whole: serine's likeliest codon in E. coli is AGC, but T, the first
base of the four TCN codons, is likelier than A, so greedy writes TCN.

Each source row holds `num_beams` hypotheses, ranked by their summed log-probability
(float64; the model's own distribution renormalized over what the constraint allows, no
length penalty). A hypothesis that has produced `eos` keeps its score and takes filler
tokens (the one its constraint allows, else eos). A row is done when its best hypothesis
has ended: the others can only lose probability.

Beams of one row share their tokens up to where they diverge, and so their keys and values
there (a position's depend only on the tokens up to it and the source), so reordering
beams copies the decoding cache only from the first divergence on (`DecodeCache.
reorder_beams`), not the whole history at every step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..layers.reversible import NO_SOURCE, Source
from .sampling import Constraint, apply_constraint

if TYPE_CHECKING:
    from ..model.lm import ReformerLM


def _first_difference(a: torch.Tensor, b: torch.Tensor) -> int:
    """The first column where any row of a differs from the same row of b (a.shape[1] if
    none)."""
    diff = (a != b).any(dim=0)
    return int(diff.int().argmax()) if bool(diff.any()) else a.shape[1]


def require_reorder(constraint: object) -> None:
    """Beam search reorders its rows every step: a constraint must follow them."""
    if not hasattr(constraint, "reorder"):
        raise ValueError(f"beam search needs a constraint with reorder(index); "
                         f"{type(constraint).__name__} has none")


@torch.no_grad()
def beam_search(model: ReformerLM, prompt: torch.Tensor, n_tokens: int, num_beams: int,
                constraint: Constraint | None = None, src: Source = NO_SOURCE,
                eos: int | None = None) -> torch.Tensor:
    """prompt (B, P) -> (B, P + n) the best hypothesis of each row, n <= n_tokens (fewer
    once every row's best has produced eos). A constraint must also have `reorder(index)`
    (row r takes row index[r]'s state): it is given B rows and expanded to B x num_beams."""
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if constraint is not None:
        require_reorder(constraint)
    B, P = prompt.shape
    K, device = num_beams, prompt.device
    logits, cache = model.prefill(prompt, P + n_tokens, src)
    expand = torch.arange(B, device=device).repeat_interleave(K)
    cache.select(expand)
    if constraint is not None:
        constraint.reorder(expand.cpu())
    seqs = prompt[expand]
    scores = torch.full((B, K), float("-inf"), dtype=torch.float64, device=device)
    scores[:, 0] = 0.0  # one live hypothesis to start with, not K copies of it
    ended = torch.zeros(B * K, dtype=torch.bool, device=device)
    row_start = (torch.arange(B, device=device) * K).unsqueeze(1)
    next_logits = logits[:, -1][expand]
    for i in range(n_tokens):
        logp, removed = apply_constraint(next_logits.double().log_softmax(dim=-1),
                                         constraint)
        V = logp.shape[-1]
        # each beam's first token its constraint allows: a finished or dead beam's filler
        first_allowed = (logp.isfinite().int().argmax(dim=-1) if constraint is not None
                         else None)
        if eos is not None and bool(ended.any()):
            filler = (first_allowed if constraint is not None
                      else torch.full_like(ended, eos, dtype=torch.long))
            hold = torch.full_like(logp, float("-inf")).scatter_(1, filler.unsqueeze(1), 0.0)
            logp = torch.where(ended.unsqueeze(1), hold, logp)
        scores, flat = (scores.view(-1, 1) + logp).view(B, K * V).topk(K, dim=-1)
        parent = (row_start + flat // V).view(-1)
        token = (flat % V).view(-1)
        if constraint is not None:
            # While a row has fewer live candidates than beams (the first steps, or a
            # constraint that allows few tokens), topk also returns -inf ones, whose token
            # may be one the constraint forbids: give those dead beams an allowed one.
            dead = scores.view(-1) == float("-inf")
            token = torch.where(dead, first_allowed[parent], token)
        start = _first_difference(seqs, seqs[parent])
        seqs = torch.cat([seqs[parent], token.unsqueeze(1)], dim=1)
        if constraint is not None:
            constraint.reorder(parent.cpu())
            constraint.update(token, removed[parent])
        if eos is not None:
            ended = ended[parent] | (token == eos)
            if bool(ended.view(B, K)[:, 0].all()):
                break
        if i + 1 < n_tokens:
            cache.reorder_beams(parent, start)
            next_logits = model.step(token, cache)
    return seqs.view(B, K, -1)[:, 0]
