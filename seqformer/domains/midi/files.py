"""Reading and writing .mid files. Reading goes through mido first, so valid files that
pretty_midi alone refuses as "likely corrupt" (more than 10,000,000 ticks, as in long
music21 exports at 10,080 ticks per quarter) are rescaled to fewer ticks and read."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import mido
import pretty_midi

from ...files import atomic_path

# pretty_midi refuses files whose last tick is beyond this ("likely corrupt"), because it
# allocates one float per tick; we rescale such files below it instead
_MAX_TICK = int(pretty_midi.pretty_midi.MAX_TICK)


def _rescale_ticks(mid: mido.MidiFile) -> None:
    """Bring the last tick under pretty_midi's limit: divide every time by the largest common
    factor of the resolution and all delta times (exact), or, if that is not enough, scale to a
    coarser resolution and round absolute ticks (off by at most half a tick)."""
    ticks = [[msg.time for msg in track] for track in mid.tracks]
    last = max((sum(t) for t in ticks), default=0)
    if last < _MAX_TICK:
        return
    factor = math.gcd(mid.ticks_per_beat, *(d for t in ticks for d in t))
    if last // factor < _MAX_TICK:
        mid.ticks_per_beat //= factor
        for track in mid.tracks:
            for msg in track:
                msg.time //= factor
        return
    new_tpb = max(1, mid.ticks_per_beat * (_MAX_TICK // 2) // last)
    scale = new_tpb / mid.ticks_per_beat
    for track in mid.tracks:
        absolute = previous = 0
        for msg in track:
            absolute += msg.time
            scaled = round(absolute * scale)
            msg.time, previous = scaled - previous, scaled
    mid.ticks_per_beat = new_tpb


def load_midi(path: str | Path) -> pretty_midi.PrettyMIDI:
    """Read a MIDI file, including valid files pretty_midi alone refuses for their many ticks.
    Raises ValueError (or an OSError/EOFError from mido) on a file that is not valid MIDI."""
    mid = mido.MidiFile(str(path))
    if mid.type == 2:
        raise ValueError("type 2 MIDI (independent sequences) is not supported")
    if mid.ticks_per_beat <= 0:
        raise ValueError(f"unsupported time division {mid.ticks_per_beat}")
    _rescale_ticks(mid)
    with warnings.catch_warnings():
        # tempo events on other tracks than the first: pretty_midi still reads them right
        warnings.simplefilter("ignore", RuntimeWarning)
        return pretty_midi.PrettyMIDI(mido_object=mid)


def write_midi(pm: pretty_midi.PrettyMIDI, path: str | Path) -> None:
    """Write a .mid file atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp:
        pm.write(str(tmp))
