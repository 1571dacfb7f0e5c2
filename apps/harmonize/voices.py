"""Analyse generated alto/tenor/bass parts: which note belongs to which voice, each voice's
note count and pitch range, the notes outside the voice's usual range; a piano roll of the
soprano with the generated voices; one four-voice MIDI file.

Where the voices are in a token stream. seqformer's MIDI tokens keep each note's pitch,
onset, offset, velocity bin and instrument, and an instrument is only (program, drum flag):
track names are dropped and tracks with the same program merge. In the chorales all four
voices are program 0 (three files differ), so the ATB token stream of a prepared chorale is
one instrument: `decode(tokens)` returns a single "Acoustic Grand Piano" track (plus extra
same-program tracks holding the notes that overlap a sounding note of the same pitch, i.e.
voices in unison), and nothing in the tokens says which voice sang a note. Voices are
recovered in one of three ways, tried in this order (`split_voices`):

1. by track name, when the tracks are named after the voices (a prepared file or a MIDI
   file written by `combine`): exact;
2. by program, when each voice has its own program (data prepared with
   `prepare.py --programs distinct`, so the token stream carries a program token whenever
   the voice changes, and a model trained on it writes them too): exact for the map given
   (`programs=prepare.VOICE_PROGRAMS`), or, without a map, when there are exactly as many
   programs as voices, the program with the highest mean pitch is the top voice;
3. by pitch (`split_by_pitch`): a heuristic for a merged stream. Notes starting together
   are given, highest first, to voices from the top down (no crossing among them), each to
   the voice whose last pitch is nearest, avoiding voices still sounding and voice
   crossings against those. On the 406 prepared chorales, after a token round trip, it
   puts 98.4% of the notes in their voice; its errors are mostly real voice crossings.

Ranges are MIDI note numbers, inclusive: the textbook SATB ranges (STANDARD_RANGES) and the
ranges observed in the training chorales (`observed_ranges`, or `load_observed_ranges` of
the summary.json that prepare.py writes; Bach's basses go down to C2 = 36, well below the
textbook E2).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pretty_midi

APP = Path(__file__).resolve().parent
SUMMARY = APP / "data" / "summary.json"
VOICES = ("soprano", "alto", "tenor", "bass")
ATB = VOICES[1:]
# soprano C4-G5, alto G3-D5, tenor C3-G4, bass E2-C4
STANDARD_RANGES: dict[str, tuple[int, int]] = {
    "soprano": (60, 79), "alto": (55, 74), "tenor": (48, 67), "bass": (40, 60)}
COLOURS = {"soprano": "black", "alto": "tab:red", "tenor": "tab:green", "bass": "tab:blue"}

# split_by_pitch's costs, in semitones of movement
_BUSY = 16.0  # giving a note to a voice whose previous note still sounds
_SHARE = 40.0  # giving two notes starting together to one voice
_CROSS = 20.0  # each pair of sounding voices out of order
_EPS = 1e-3  # seconds: a note ending this close to an onset has ended


def voice_name(track_name: str) -> str | None:
    """The voice a track name stands for (its first word), or None."""
    words = track_name.split()
    return words[0].lower() if words and words[0].lower() in VOICES else None


def _instrument(voice: str, program: int) -> pretty_midi.Instrument:
    return pretty_midi.Instrument(int(program), False, voice.capitalize())


def _copy_notes(notes: Iterable[pretty_midi.Note]) -> list[pretty_midi.Note]:
    return sorted((pretty_midi.Note(n.velocity, n.pitch, n.start, n.end) for n in notes),
                  key=lambda n: (n.start, n.pitch))


def split_by_pitch(notes: Sequence[pretty_midi.Note], voices: Sequence[str] = ATB
                   ) -> dict[str, list[pretty_midi.Note]]:
    """Assign notes of merged voices (listed from the top down in `voices`) to voices; see
    the module docstring. Every note lands in exactly one voice."""
    n_voices = len(voices)
    last = [sum(STANDARD_RANGES[v]) / 2 for v in voices]  # reference pitch of each voice
    busy_until = [float("-inf")] * n_voices
    sounding = [0] * n_voices  # pitch of each voice's latest note
    parts: dict[str, list[pretty_midi.Note]] = {v: [] for v in voices}
    ordered = sorted(notes, key=lambda n: (math.floor(n.start * 100 + 1e-6), -n.pitch, -n.end))
    # notes starting in the same 10 ms step (the tokenizer's) start together
    for _, group_iter in itertools.groupby(ordered, key=lambda n: math.floor(n.start * 100 + 1e-6)):
        group = list(group_iter)
        t = group[0].start
        busy = [b > t + _EPS for b in busy_until]
        best, best_cost = None, float("inf")
        # notes highest first -> voice indices non-decreasing: no crossing inside the group
        for assign in itertools.combinations_with_replacement(range(n_voices), len(group)):
            cost = _SHARE * (len(group) - len(set(assign)))
            top: dict[int, int] = {}
            for note, v in zip(group, assign):
                cost += abs(note.pitch - last[v]) + (_BUSY if busy[v] else 0.0)
                top.setdefault(v, note.pitch)
            current = [top.get(v, sounding[v] if busy[v] else None) for v in range(n_voices)]
            heard = [p for p in current if p is not None]
            cost += _CROSS * sum(a < b for a, b in itertools.combinations(heard, 2))
            if cost < best_cost:
                best, best_cost = assign, cost
        for v in set(best):
            assigned = [note for note, u in zip(group, best) if u == v]
            parts[voices[v]] += assigned
            last[v] = sounding[v] = assigned[0].pitch  # the highest, as in the cost
            busy_until[v] = max(note.end for note in assigned)
    return parts


def split_voices(pm: pretty_midi.PrettyMIDI, voices: Sequence[str] = ATB,
                 programs: dict[str, int] | None = None
                 ) -> tuple[dict[str, pretty_midi.Instrument], str]:
    """({voice: a new track named after it, holding copies of its notes}, the method:
    "names", "programs" or "pitch"). Drum tracks are ignored; so are tracks named after
    other voices (the soprano of a combined file). Voices without notes get empty tracks."""
    tracks = [i for i in pm.instruments if not i.is_drum and i.notes]
    out = {v: _instrument(v, tracks[0].program if tracks else 0) for v in voices}
    if not tracks:
        return out, "names"
    named = [voice_name(i.name) for i in tracks]
    if all(named) and any(v in voices for v in named):
        for voice, inst in zip(named, tracks):
            if voice not in voices:  # e.g. the soprano of a combined file
                continue
            out[voice].program = inst.program
            out[voice].notes += _copy_notes(inst.notes)
        method = "names"
    else:
        by_program = {p: v for v, p in (programs or {}).items() if v in voices}
        found = sorted({int(i.program) for i in tracks})
        if not by_program and len(found) == len(voices):
            mean = {p: _mean_pitch([i for i in tracks if i.program == p]) for p in found}
            by_program = dict(zip(sorted(found, key=lambda p: -mean[p]), voices))
        if by_program and all(p in by_program for p in found):
            for inst in tracks:
                voice = by_program[int(inst.program)]
                out[voice].program = inst.program
                out[voice].notes += inst.notes
            method = "programs"
        else:
            parts = split_by_pitch([n for i in tracks for n in i.notes], voices)
            for voice in voices:
                out[voice].notes = parts[voice]
            method = "pitch"
        for inst in out.values():
            inst.notes = _copy_notes(inst.notes)
    for inst in out.values():
        inst.notes.sort(key=lambda n: (n.start, n.pitch))
    return out, method


def _mean_pitch(tracks: Sequence[pretty_midi.Instrument]) -> float:
    pitches = [n.pitch for i in tracks for n in i.notes]
    return sum(pitches) / len(pitches)


def load_observed_ranges(summary: str | Path = SUMMARY, key: str = "observed_ranges_train"
                         ) -> dict[str, tuple[int, int]]:
    """The per-voice ranges prepare.py observed in the training chorales."""
    data = json.loads(Path(summary).read_text())
    return {v: (int(lo), int(hi)) for v, (lo, hi) in data[key].items()}


def observed_ranges(pms: Iterable[pretty_midi.PrettyMIDI]) -> dict[str, tuple[int, int]]:
    """Lowest and highest pitch of each voice over MIDI objects with voice-named tracks."""
    low: dict[str, int] = {}
    high: dict[str, int] = {}
    for pm in pms:
        for inst in pm.instruments:
            voice = voice_name(inst.name)
            if voice and inst.notes:
                pitches = [n.pitch for n in inst.notes]
                low[voice] = min(low.get(voice, 127), min(pitches))
                high[voice] = max(high.get(voice, 0), max(pitches))
    return {v: (low[v], high[v]) for v in VOICES if v in low}


def range_report(notes: Sequence[pretty_midi.Note], ranges: dict[str, tuple[int, int]]
                 ) -> dict[str, Any]:
    """Counts for one voice's notes against each named range: {name: (low, high)}."""
    pitches = [n.pitch for n in notes]
    report: dict[str, Any] = {"notes": len(pitches),
                              "min": min(pitches) if pitches else None,
                              "max": max(pitches) if pitches else None}
    for name, (low, high) in ranges.items():
        outside = sum(not low <= p <= high for p in pitches)
        report[f"outside_{name}"] = outside
        report[f"frac_outside_{name}"] = outside / len(pitches) if pitches else 0.0
    return report


def analyse(pm_atb: pretty_midi.PrettyMIDI, observed: dict[str, tuple[int, int]] | None = None,
            voices: Sequence[str] = ATB, programs: dict[str, int] | None = None
            ) -> dict[str, Any]:
    """Per voice: notes, min, max, outside_standard / frac_outside_standard (STANDARD_RANGES)
    and, when `observed` ranges are given, outside_observed / frac_outside_observed; plus
    "method", how the voices were told apart (see split_voices)."""
    parts, method = split_voices(pm_atb, voices, programs)
    result: dict[str, Any] = {"method": method}
    for voice in voices:
        ranges = {"standard": STANDARD_RANGES[voice]}
        if observed and voice in observed:
            ranges["observed"] = tuple(observed[voice])
        result[voice] = range_report(parts[voice].notes, ranges)
    return result


def _bare_copy(pm: pretty_midi.PrettyMIDI) -> pretty_midi.PrettyMIDI:
    """A copy of pm's timing (resolution, tempo map, signatures, lyrics), without tracks."""
    shallow = copy.copy(pm)
    shallow.instruments = []
    return copy.deepcopy(shallow)


def combine(soprano_pm: pretty_midi.PrettyMIDI, atb_pm: pretty_midi.PrettyMIDI,
            programs: dict[str, int] | None = None) -> pretty_midi.PrettyMIDI:
    """One four-track MIDI object: "Soprano" (every note of soprano_pm), then "Alto",
    "Tenor", "Bass" as split_voices finds them in atb_pm. Timing (tempo map, resolution,
    signatures) is soprano_pm's; note times are in seconds, so parts decoded from tokens
    (120 bpm) line up with a soprano read from its file."""
    pm = _bare_copy(soprano_pm)
    parts, _ = split_voices(atb_pm, ATB, programs)
    soprano_tracks = [i for i in soprano_pm.instruments if not i.is_drum and i.notes]
    soprano = _instrument("soprano", soprano_tracks[0].program if soprano_tracks else 0)
    soprano.notes = _copy_notes(n for i in soprano_tracks for n in i.notes)
    pm.instruments = [soprano] + [parts[v] for v in ATB]
    return pm


def piano_roll_png(pm_soprano: pretty_midi.PrettyMIDI, pm_atb: pretty_midi.PrettyMIDI,
                   path: str | Path, title: str = "",
                   programs: dict[str, int] | None = None) -> None:
    """Time x pitch, the given soprano in black and the voices split_voices finds in pm_atb
    in red (alto), green (tenor) and blue (bass), with a legend; a PNG."""
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure  # a bare Figure renders with Agg, pyplot untouched
    from matplotlib.lines import Line2D

    combined = combine(pm_soprano, pm_atb, programs)
    fig = Figure(figsize=(14, 5), dpi=100)
    ax = fig.subplots()
    handles = []
    for inst in combined.instruments:
        voice = inst.name.lower()
        segments = [((n.start, n.pitch), (n.end, n.pitch)) for n in inst.notes]
        if segments:
            ax.add_collection(LineCollection(segments, linewidths=3, colors=COLOURS[voice]))
        label = f"{inst.name} ({len(inst.notes)})" + (" given" if voice == "soprano" else "")
        handles.append(Line2D([], [], color=COLOURS[voice], linewidth=3, label=label))
    ax.autoscale()
    ax.set_xlabel("time (s)")
    ax.set_ylabel("MIDI pitch")
    ax.set_title(title)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path), format="png")
