"""Turning next-token logits into a token: constraints, temperature, top-k, top-p.

A constraint is any object with two methods: `allowed()` returns a (B, V) boolean mask (a
tensor or numpy array) of the tokens each sequence may take next, and `update(tokens,
removed)` is told the (B,) tokens chosen and the probability mass (B,) its mask took from
the model's own distribution at that step (tensors). A constraint may also weigh what it
allows: `log_weights()`, if it has one and it returns a (B, V) array, not None, gives
log-weights added to the logits, a prior that decoding multiplies into the model's
distribution (a product of experts). And it may move probability: `redirects()`, if it
has one and it returns a (B, V) integer array, not None, sends the model's probability of
each token v it does not allow to token redirects[b, v] where that one is allowed (-1:
nowhere), so a token the model wants but may not have now becomes the step toward it (MIDI:
a note-off on the wrong instrument becomes the switch to the right one). What is moved is
not counted as removed.
Masks and weights apply before temperature, top-k and top-p. Scores never use
constraints: they are the model's own likelihood.
"""

from __future__ import annotations

from typing import Protocol

import torch


class Constraint(Protocol):
    def allowed(self) -> torch.Tensor: ...

    def update(self, tokens: torch.Tensor, removed: torch.Tensor) -> None: ...


def check_sampling(temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None) -> None:
    """ValueError naming the option that is out of range."""
    if not temperature >= 0:  # also NaN
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def apply_constraint(logits: torch.Tensor, constraint: Constraint | None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The logits with the disallowed tokens at -inf, plus the constraint's log_weights if it
    has them, and the probability mass (B,) the mask removed from the model's own
    distribution (None without a constraint)."""
    if constraint is None:
        return logits, None
    allowed = torch.as_tensor(constraint.allowed(), device=logits.device)
    if not allowed.any(dim=-1).all():
        raise ValueError("the constraint allows no token for some sequence")
    probs = logits.float().softmax(dim=-1)
    removed = probs.masked_fill(allowed, 0.0).sum(dim=-1)
    redirects = getattr(constraint, "redirects", None)
    targets = redirects() if redirects is not None else None
    if targets is not None:
        targets = torch.as_tensor(targets, device=logits.device, dtype=torch.long)
        to = targets.clamp_min(0)
        moving = (targets >= 0) & ~allowed & allowed.gather(-1, to)
        gained = torch.zeros_like(probs).scatter_add_(-1, to, probs * moving)
        removed = removed - gained.sum(dim=-1)
        # logits are log-probabilities up to each row's log-sum-exp
        shifted = (probs + gained).log() + logits.float().logsumexp(dim=-1, keepdim=True)
        logits = torch.where(gained > 0, shifted, logits.float()).to(logits.dtype)
    log_weights = getattr(constraint, "log_weights", None)
    weights = log_weights() if log_weights is not None else None
    if weights is not None:
        logits = logits + torch.as_tensor(weights, device=logits.device, dtype=logits.dtype)
    return logits.masked_fill(~allowed, float("-inf")), removed


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None,
                generator: torch.Generator | list[torch.Generator] | None = None
                ) -> torch.Tensor:
    """logits: (B, V) -> (B,) token ids. temperature == 0 is greedy. `generator` may be a
    list, one per row: then row b draws exactly as it would alone with generator[b]."""
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens ranked above it already reach top_p
        drop = probs.cumsum(dim=-1) - probs >= top_p
        drop = torch.zeros_like(drop).scatter(-1, order, drop)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    if isinstance(generator, (list, tuple)):
        return torch.cat([_draw(probs[b:b + 1], g) for b, g in enumerate(generator)])
    return _draw(probs, generator)


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if generator is not None and generator.device != probs.device:
        # a CPU generator drives sampling for any model device, for reproducible seeds
        return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(
            probs.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
