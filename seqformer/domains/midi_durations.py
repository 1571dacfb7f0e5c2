"""The duration vocabulary for MIDI (`data.options.vocabulary: durations`): a note is its
pitch followed by its duration, so no note can be left hanging by construction.

Same 519 ids as the event vocabulary (midi.py), except the 128 ids that vocabulary spends
on note-offs:

    id        token             meaning
    2..129    note_P            a note of pitch P = id - 2 starts now; a duration follows
    130..257  dur_Nms           its duration: DURATION_STEPS[id - 130] steps of 10 ms
    258..518  shifts, velocities, programs, drums, exactly as in the event vocabulary

The 128 durations run from 10 ms to 20 s: every 10 ms step up to 280 ms, then log-spaced
(about 4.3% apart: a duration moves by at most 3.5%, and by at most 2.4% past
1 s). A note is quantized as in
the event vocabulary (onset and offset floored to 10 ms steps, at least one step long),
then its duration goes to the nearest bin in log terms; notes longer than 20 s become
20 s. Time is absolute: shifts advance it between onsets only. Notes of one step are
ordered by instrument, pitch, duration, then velocity.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import pretty_midi

from .midi import (
    DRUMS,
    NOTE_OFF,
    NOTE_ON,
    PAD,
    PROGRAM,
    SEP,
    SHIFT,
    TOKENS,
    VELOCITY,
    VOCAB_SIZE,
    _fold_sustain,
    _instrument_token,
    _shifts,
    _step,
    _to_pretty_midi,
    note_context,
    velocity_bin,
)

__all__ = ["DURATION", "DURATION_STEPS", "DURATION_TOKENS", "REPAIRS", "decode", "encode",
           "duration_bin"]

DURATION = NOTE_OFF  # first duration id
N_DURATIONS = 128
LONGEST = 2000  # steps (20 s)


def _duration_steps(n: int = N_DURATIONS, top: int = LONGEST) -> tuple[int, ...]:
    # exact steps while a log-spaced bin would be narrower than one step, log-spaced after
    exact = next(k for k in range(1, n) if k * ((top / k) ** (1 / (n - k)) - 1) >= 1)
    ratio = (top / exact) ** (1 / (n - exact))
    return tuple(range(1, exact)) + tuple(round(exact * ratio ** j) for j in range(n - exact + 1))


DURATION_STEPS = _duration_steps()
assert len(set(DURATION_STEPS)) == N_DURATIONS and DURATION_STEPS[-1] == LONGEST
# a duration goes to the bin whose value is nearest in log terms
_EDGES = np.sqrt(np.asarray(DURATION_STEPS[:-1], float) * np.asarray(DURATION_STEPS[1:], float))

DURATION_TOKENS: tuple[str, ...] = (
    TOKENS[:NOTE_ON] + tuple(f"note_{p}" for p in range(128))
    + tuple(f"dur_{s * 10}ms" for s in DURATION_STEPS) + TOKENS[SHIFT:])
assert len(DURATION_TOKENS) == VOCAB_SIZE

REPAIRS = ("no_duration", "unmatched_duration", "pad", "separator", "unknown_token",
           "no_instrument", "no_velocity")


def duration_bin(steps: int) -> int:
    """The bin (0..127) of a duration in 10 ms steps."""
    return int(np.searchsorted(_EDGES, max(1, steps), side="right"))


def encode(pm: pretty_midi.PrettyMIDI) -> np.ndarray:
    """Token ids of one piece in the duration vocabulary (no separator)."""
    notes = []  # (onset step, instrument token, pitch, duration bin, velocity bin)
    for instrument in pm.instruments:
        inst = _instrument_token(instrument)
        for start, end, pitch, velocity in _fold_sustain(instrument):
            if not 0 <= pitch <= 127:
                raise ValueError(f"note pitch {pitch} outside the MIDI range 0..127")
            on = _step(start)
            length = max(_step(end), on + 1) - on
            notes.append((on, inst, pitch, duration_bin(length), velocity_bin(velocity)))
    notes.sort()
    tokens: list[int] = []
    now, inst_now, vel_now = 0, None, None
    for on, inst, pitch, dur, vel in notes:
        if on > now:
            tokens += _shifts(on - now)
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
    notes: dict[int, list[tuple[int, int, int, int]]] = defaultdict(list)  # inst -> notes
    now, inst, vel, in_piece = 0, None, None, False
    pending: tuple[int, int, int] | None = None  # (instrument, pitch, velocity) awaiting

    def settle(steps: int | None) -> None:
        nonlocal pending
        if pending is not None:
            if steps is None:
                repairs["no_duration"] += 1
            notes[pending[0]].append((now, now + (steps or 1), pending[1], pending[2]))
            pending = None

    ids = tokens.tolist() if hasattr(tokens, "tolist") else list(tokens)
    for token in map(int, ids):
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
    return _to_pretty_midi(notes), repairs

