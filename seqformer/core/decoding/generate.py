"""The sampling loop: a prompt's continuation, one token at a time from the decoding cache.

The model fills its cache from the prompt once (`prefill`), then each step costs one
position (`step`); a constraint masks the next token's logits before temperature, top-k and
top-p (sampling.py) and is told which token was chosen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..layers.reversible import NO_SOURCE, Source
from .sampling import Constraint, apply_constraint, check_sampling, sample_next

if TYPE_CHECKING:
    from ..model.lm import ReformerLM


@torch.no_grad()
def generate_tokens(model: ReformerLM, prompt: torch.Tensor, n_tokens: int,
                    temperature: float = 1.0, top_k: int | None = None,
                    top_p: float | None = None, generator: torch.Generator | None = None,
                    constraint: Constraint | None = None, src: Source = NO_SOURCE,
                    eos: int | None = None) -> torch.Tensor:
    """prompt (B, P), P >= 1 -> (B, P + n_tokens), as `ReformerLM.generate`."""
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError("prompt must be (batch, length) with length >= 1")
    check_sampling(temperature, top_k, top_p)
    was_training = model.training
    model.eval()
    try:
        logits, cache = model.prefill(prompt, prompt.shape[1] + n_tokens, src)
        out = [prompt]
        next_logits = logits[:, -1]
        ended = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
        for i in range(n_tokens):
            next_logits, removed = apply_constraint(next_logits, constraint)
            token = sample_next(next_logits, temperature, top_k, top_p, generator)
            if constraint is not None:
                constraint.update(token, removed)
            out.append(token.unsqueeze(1))
            if eos is not None:
                ended |= token == eos
                if bool(ended.all()):
                    break
            if i + 1 < n_tokens:
                next_logits = model.step(token, cache)
        return torch.cat(out, dim=1)
    finally:
        model.train(was_training)
