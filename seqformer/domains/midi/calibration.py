"""Fitting the duration vocabulary's texture and voice steers to one trained model.

The steers' weights were chosen on a few models; a fresh model of the same job may still
sample thinner music than its training pieces, and steers made stronger for every model
took 0.08-0.15 of mean overlap from the models that did not need them (docs/music.md).
So after training, `train midi` samples CALIBRATION_SAMPLES pieces of CALIBRATION_TOKENS
tokens from the model and, while their mean polyphony is more than TEXTURE_TOLERANCE
below the training pieces' (`GrammarLimits.piece_polyphony`), tries the next of
STEER_GAINS; the first gain that reaches it (the last if none does) is stored with the
run's sampling limits, which `sample midi` reads. A guard: the six main-job models
measured last keep x1 (their samples 3.25-3.54 notes at once against a mark of 3.14)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from .grammar import GrammarLimits, piece_polyphony

STEER_GAINS = (1.0, 1.25, 1.5, 2.0)  # what the texture and voice weights are multiplied by
TEXTURE_TOLERANCE = 0.15  # how far below the training pieces' polyphony samples may be
CALIBRATION_SAMPLES = 32
CALIBRATION_TOKENS = 3000


def calibrated(limits: GrammarLimits,
               sample: Callable[[GrammarLimits, int, int], list[np.ndarray]]
               ) -> tuple[GrammarLimits, list[tuple[float, float]]]:
    """`limits` with the steer gain chosen as the module docstring says, and each gain
    tried with its samples' mean polyphony. `sample(limits, n, length)`: n samples of the
    model (token ids of the duration vocabulary, length each) under those limits'
    grammar. Limits stored before the training pieces' polyphony was are returned as
    they are."""
    if limits.piece_polyphony is None:
        return limits, []
    floor = (1 - TEXTURE_TOLERANCE) * limits.piece_polyphony
    tried = []
    for gain in STEER_GAINS:
        trial = replace(limits, steer_gain=gain)
        pieces = sample(trial, CALIBRATION_SAMPLES, CALIBRATION_TOKENS)
        means = [m for m in (piece_polyphony(p, "durations") for p in pieces) if m is not None]
        tried.append((gain, round(float(np.mean(means)), 3) if means else 0.0))
        if tried[-1][1] >= floor:
            break
    return trial, tried
