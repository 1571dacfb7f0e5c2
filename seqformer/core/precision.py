"""Precision rules shared by the kernels: where accumulation is widened, and how a custom
backward re-enters the forward's autocast."""

from __future__ import annotations

import torch

AutocastState = tuple[str, torch.dtype, bool]


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax statistics, outputs, losses and gradients accumulate in float32 or wider:
    bf16 would blur the weights of the hashing rounds and the log-sum-exps."""
    return torch.promote_types(dtype, torch.float32)


def autocast_state(device: torch.device) -> AutocastState:
    """The autocast in force on this device as (device type, dtype, enabled): re-entered
    with torch.autocast(*state) in a backward pass, which does not inherit it."""
    kind = device.type
    return kind, torch.get_autocast_dtype(kind), torch.is_autocast_enabled(kind)
