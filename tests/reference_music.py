"""Plain reference computations on decoded music, for tests of the note grammar's limits."""

from __future__ import annotations

import numpy as np
import pretty_midi


def polyphony_percentile(pieces: list[pretty_midi.PrettyMIDI], q: float) -> int:
    """The q-th percentile of the number of notes sounding, over the 10 ms steps during
    which at least one sounds, counted step by step on a grid (notes at least one step)."""
    counts = np.sort(sounding_counts(pieces))
    return int(counts[int(np.ceil(q / 100 * len(counts))) - 1])


def sounding_counts(pieces: list[pretty_midi.PrettyMIDI]) -> np.ndarray:
    """The number of notes sounding at each 10 ms step during which at least one sounds,
    over all pieces (notes at least one step long)."""
    counts = []
    for pm in pieces:
        notes = [n for inst in pm.instruments for n in inst.notes]
        if not notes:
            continue
        start = np.array([round(n.start / 0.01) for n in notes])
        end = np.maximum(np.array([round(n.end / 0.01) for n in notes]), start + 1)
        per_step = np.zeros(end.max() + 1, dtype=np.int64)
        np.add.at(per_step, start, 1)
        np.add.at(per_step, end, -1)
        sounding = np.cumsum(per_step)
        counts.append(sounding[sounding > 0])
    return np.concatenate(counts)


def tokens_between_shifts(tokens: np.ndarray) -> np.ndarray:
    """The number of tokens in each stretch between two time shifts (and before the first
    and after the last), for either MIDI vocabulary."""
    from seqformer.domains.midi import SHIFT, VELOCITY

    tokens = np.asarray(tokens)
    shifts = np.flatnonzero((tokens >= SHIFT) & (tokens < VELOCITY))
    return np.diff(np.concatenate([[-1], shifts, [len(tokens)]])) - 1
