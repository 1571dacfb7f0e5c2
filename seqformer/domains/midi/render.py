"""What people look at or listen to rather than read: statistics of a piece, a piano roll
PNG and a WAV rendered with FluidSynth."""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any

import numpy as np
import pretty_midi

from ...files import atomic_path
from ..base import InputError


def stats(pm: pretty_midi.PrettyMIDI) -> dict[str, Any]:
    """notes, duration (s), pitch_range (min, max) or None, mean_polyphony (mean number of
    sounding notes over the time where at least one sounds), pitch_class_entropy (bits, of the
    note-count histogram)."""
    all_notes = [n for inst in pm.instruments for n in inst.notes]
    result: dict[str, Any] = {"notes": len(all_notes), "duration": float(pm.get_end_time()),
                              "pitch_range": None, "mean_polyphony": 0.0,
                              "pitch_class_entropy": 0.0}
    if not all_notes:
        return result
    pitches = [n.pitch for n in all_notes]
    result["pitch_range"] = (min(pitches), max(pitches))
    changes = sorted([(n.start, 1) for n in all_notes] + [(n.end, -1) for n in all_notes])
    sounding, last, covered, weighted = 0, 0.0, 0.0, 0.0
    for time, delta in changes:
        if sounding > 0:
            covered += time - last
            weighted += sounding * (time - last)
        sounding, last = sounding + delta, time
    result["mean_polyphony"] = float(weighted / covered) if covered > 0 else 0.0
    counts = np.bincount(np.asarray(pitches) % 12, minlength=12)
    p = counts[counts > 0] / counts.sum()
    result["pitch_class_entropy"] = float(-(p * np.log2(p)).sum())
    return result


def piano_roll_png(pm: pretty_midi.PrettyMIDI, path: str | Path, title: str = "") -> None:
    """A piano roll (time x pitch, one colour per instrument) as a PNG, written atomically."""
    # imported here: matplotlib is slow to load and only pictures need it; a bare Figure
    # renders with Agg and leaves pyplot's global state (and backend) alone
    import matplotlib
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 5), dpi=100)
    ax = fig.subplots()
    colours = matplotlib.colormaps["tab10"]
    for i, inst in enumerate(pm.instruments):
        # line segments, not an image: memory grows with notes, not with duration
        segments = [((n.start, n.pitch), (n.end, n.pitch)) for n in inst.notes]
        if segments:
            ax.add_collection(LineCollection(segments, linewidths=2.5, colors=[colours(i % 10)]))
    ax.autoscale()
    ax.set_xlabel("time (s)")
    ax.set_ylabel("MIDI pitch")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def _check_fluidsynth() -> None:
    try:
        import fluidsynth  # noqa: F401  (pyfluidsynth; importing it loads libfluidsynth)
    except (ImportError, OSError) as error:
        raise InputError(
            "cannot render audio: FluidSynth is missing "
            f"({type(error).__name__}: {error}); install the Python package pyfluidsynth "
            "and the FluidSynth library (Debian/Ubuntu: apt install fluidsynth)") from None


def render_audio(pm: pretty_midi.PrettyMIDI, path: str | Path, sample_rate: int = 44100) -> None:
    """Render to a 16-bit mono WAV (atomically) with FluidSynth and the General MIDI SoundFont
    that pretty_midi ships. Raises InputError naming the missing piece when FluidSynth is absent."""
    _check_fluidsynth()
    audio = np.asarray(pm.fluidsynth(fs=sample_rate), dtype=np.float64)
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    pcm = (audio / peak * 32767 if peak > 0 else audio).astype("<i2")
    with atomic_path(path) as tmp, wave.open(str(tmp), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.tobytes())
