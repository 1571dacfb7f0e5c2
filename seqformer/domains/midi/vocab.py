"""The two MIDI token vocabularies: their ids and names, and the quantization every
tokenizer and grammar of this package shares. Fixed, 519 ids each: model shapes never
depend on the data.

Events (the default; events.py)

    id        token             meaning
    0         <pad>             padding, never a target
    1         <sep>             piece separator / start token
    2..129    on_P              note-on, pitch P = id - 2
    130..257  off_P             note-off, pitch P = id - 130
    258..357  shift_Nms         advance time by k steps of 10 ms, k = id - 257 (10 ms .. 1 s);
                                longer gaps are several shifts
    358..389  velocity_A-B      velocity bin b = id - 358 (velocities 4b .. 4b+3) for the
                                following note-ons
    390..517  program_N         the following note events belong to GM program N = id - 390
    518       drums             the following note events are on the drum channel

Durations (`data.options.vocabulary: durations`; durations.py): the same ids, except the
128 that the event vocabulary spends on note-offs:

    2..129    note_P            a note of pitch P = id - 2 starts now; a duration follows
    130..257  dur_Nms           its duration: DURATION_STEPS[id - 130] steps of 10 ms
    258..518  shifts, velocities, programs, drums, exactly as in the event vocabulary

The 128 durations run from 10 ms to 20 s: every 10 ms step up to 280 ms, then log-spaced
(about 4.3% apart: a duration moves by at most 3.5%, and by at most 2.4% past 1 s).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

STEP = 0.01  # seconds per time step
MAX_SHIFT = 100  # steps in one shift token (1 s)
N_VELOCITY_BINS = 32
BIN_WIDTH = 128 // N_VELOCITY_BINS

PAD, SEP = 0, 1
NOTE_ON = 2
NOTE_OFF = NOTE_ON + 128
SHIFT = NOTE_OFF + 128  # id of a 1-step shift; k steps -> SHIFT + k - 1
VELOCITY = SHIFT + MAX_SHIFT
PROGRAM = VELOCITY + N_VELOCITY_BINS
DRUMS = PROGRAM + 128
VOCAB_SIZE = DRUMS + 1

TOKENS: tuple[str, ...] = (
    ("<pad>", "<sep>")
    + tuple(f"on_{p}" for p in range(128))
    + tuple(f"off_{p}" for p in range(128))
    + tuple(f"shift_{k * 10}ms" for k in range(1, MAX_SHIFT + 1))
    + tuple(f"velocity_{b * BIN_WIDTH}-{b * BIN_WIDTH + BIN_WIDTH - 1}"
            for b in range(N_VELOCITY_BINS))
    + tuple(f"program_{p}" for p in range(128))
    + ("drums",)
)
assert len(TOKENS) == VOCAB_SIZE

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


def duration_bin(steps: int) -> int:
    """The bin (0..127) of a duration in 10 ms steps."""
    return int(np.searchsorted(_EDGES, max(1, steps), side="right"))


def time_step(seconds: float) -> int:
    """The 10 ms step a time falls in (floored, never negative)."""
    # the epsilon keeps exact step boundaries (0.3 s -> 29.999999...) on their own step
    return max(0, math.floor(seconds / STEP + 1e-6))


def velocity_bin(velocity: int) -> int:
    return min(max(int(velocity), 0), 127) // BIN_WIDTH


# the velocity bin of a note whose sequence never said one: the decoder's repair, and what
# the sampling grammar names for a piece that opens with a note
DEFAULT_VELOCITY_BIN = velocity_bin(64)


def shift_tokens(steps: int) -> list[int]:
    """The shift tokens that advance time by `steps`: full seconds first, then the rest."""
    return [SHIFT + MAX_SHIFT - 1] * (steps // MAX_SHIFT) + (
        [SHIFT + steps % MAX_SHIFT - 1] if steps % MAX_SHIFT else [])


def token_ids(tokens: Iterable[int]) -> list[int]:
    """Plain ints from a list, a numpy array or a torch tensor."""
    ids = tokens.tolist() if hasattr(tokens, "tolist") else list(tokens)
    return [int(t) for t in ids]
