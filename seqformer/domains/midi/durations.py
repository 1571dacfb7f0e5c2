"""The duration vocabulary (`data.options.vocabulary: durations`): a note is its pitch
followed by its duration, so no note can be left hanging by construction. Ids are in
vocab.py, quantizing in notes.py.

A note is quantized as in the event vocabulary (onset and offset floored to 10 ms steps, at
least one step long), then its duration goes to the nearest bin in log terms; notes longer
than 20 s become 20 s. Time is absolute: shifts advance it between onsets only. Notes of one
step are ordered by instrument, pitch, duration, then velocity.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import pretty_midi

from .notes import Notes, note_context, quantized_notes, to_pretty_midi
from .vocab import (
    DRUMS,
    DURATION,
    DURATION_STEPS,
    NOTE_ON,
    PAD,
    PROGRAM,
    SEP,
    SHIFT,
    VELOCITY,
    VOCAB_SIZE,
    duration_bin,
    shift_tokens,
    token_ids,
)

REPAIRS = ("no_duration", "unmatched_duration", "pad", "separator", "unknown_token",
           "no_instrument", "no_velocity")


def encode(pm: pretty_midi.PrettyMIDI) -> np.ndarray:
    """Token ids of one piece in the duration vocabulary (no separator)."""
    notes = sorted((on, inst, pitch, duration_bin(off - on), vel)
                   for on, off, inst, pitch, vel in quantized_notes(pm))
    tokens: list[int] = []
    now, inst_now, vel_now = 0, None, None
    for on, inst, pitch, dur, vel in notes:
        if on > now:
            tokens += shift_tokens(on - now)
            now = on
        if inst != inst_now:
            tokens.append(inst)
            inst_now = inst
        if vel != vel_now:
            tokens.append(VELOCITY + vel)
            vel_now = vel
        tokens += [NOTE_ON + pitch, DURATION + dur]
    return np.asarray(tokens, dtype=np.int64)


def decode(tokens: Iterable[int]) -> tuple[pretty_midi.PrettyMIDI, dict[str, int]]:
    """A PrettyMIDI object from any token sequence of this vocabulary, and counts of what
    had to be repaired:

    no_duration         a note not followed by its duration: one step long
    unmatched_duration  a duration with no note before it: ignored
    pad, separator, unknown_token, no_instrument, no_velocity: as in the event vocabulary
    """
    repairs = dict.fromkeys(REPAIRS, 0)
    notes: Notes = defaultdict(list)
    now, inst, vel, in_piece = 0, None, None, False
    pending: tuple[int, int, int] | None = None  # (instrument, pitch, velocity) awaiting

    def settle(steps: int | None) -> None:
        nonlocal pending
        if pending is not None:
            if steps is None:
                repairs["no_duration"] += 1
            notes[pending[0]].append((now, now + (steps or 1), pending[1], pending[2]))
            pending = None

    for token in token_ids(tokens):
        if DURATION <= token < SHIFT:
            if pending is None:
                repairs["unmatched_duration"] += 1
            settle(DURATION_STEPS[token - DURATION])
            continue
        settle(None)
        if token == PAD:
            repairs["pad"] += 1
        elif token == SEP:
            if in_piece:  # a leading <sep> is the start token, not a boundary
                repairs["separator"] += 1
                inst, vel, in_piece = None, None, False
                # the next piece starts after everything of this one has ended
                now = max([now] + [end for ns in notes.values() for _, end, _, _ in ns])
        elif not 0 <= token < VOCAB_SIZE:
            repairs["unknown_token"] += 1
        else:
            in_piece = True
            if token < DURATION:
                inst, vel = note_context(inst, vel, repairs)
                pending = (inst, token - NOTE_ON, vel)
            elif token < VELOCITY:
                now += token - SHIFT + 1
            elif token < PROGRAM:
                vel = token - VELOCITY
            elif token <= DRUMS:
                inst = token
    settle(None)
    return to_pretty_midi(notes), repairs
