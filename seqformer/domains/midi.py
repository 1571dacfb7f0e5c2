"""Symbolic music: MIDI files <-> event tokens (a performance vocabulary in the spirit of
Music Transformer), read and written with pretty_midi.

Vocabulary (519 tokens, fixed: model shapes never depend on the data)

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

Time is absolute (seconds from pretty_midi, so tempo-independent), quantized to 10 ms steps by
flooring: onsets and offsets move by less than 10 ms, and a note shorter than one step lasts one
step. Velocity keeps its bin; decoding uses the bin's middle (4b + 2).

An instrument is (program, drum flag). Multi-track files interleave their tracks: a program or
drums token precedes note events (on and off) whenever the current instrument changes. Tracks with
the same program merge into one instrument (all four voices of a chorale are usually program 0).
Within one 10 ms step events are ordered by instrument, then offs before ons, then pitch.

Same pitch, same instrument, overlapping notes (unison voices of a merged chorale are common):
they are kept, not cut. A note-on on a sounding pitch starts another note; a note-off ends the
earliest-started open note of that pitch (first in, first out). So every note survives with its
exact pitch, instrument, onset step and velocity bin, and the offsets of each pitch survive as a
multiset; only when one note lies strictly inside another of the same pitch do the two swap
offsets (the sound is the same). Decoding spreads such overlapping notes over extra instruments
with the same program, so a written MIDI file keeps them apart (a channel cannot sound one key
twice).

Not kept: tempo map, time and key signatures (the written file uses 120 bpm, 500 ticks per beat,
so one tick is 1 ms), control changes, pitch bends, lyrics and text, track names and the track
split of same-program parts, and the program of drum tracks (drums decode as program 0, the GM
standard kit). The sustain pedal (CC64) is folded into note durations: a note released while the
pedal is down lasts until the pedal is lifted, or until the same key is struck again if that
comes first; a pedal never lifted holds to the instrument's last event.

Decoding never fails: it repairs and counts (see `decode`). Reading goes through mido first, so
valid files that pretty_midi alone refuses as "likely corrupt" (more than 10,000,000 ticks, as in
long music21 exports at 10,080 ticks per quarter) are rescaled to fewer ticks and read.
"""

from __future__ import annotations

import bisect
import logging
import math
import warnings
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import mido
import numpy as np
import pretty_midi

from ..files import atomic_path
from .base import Domain, InputError, Record

__all__ = [
    "MIDIDomain", "TOKENS", "VOCABULARIES", "VOCAB_SIZE", "decode", "encode", "load_midi",
    "piano_roll_png", "render_audio", "stats", "write_midi",
]

log = logging.getLogger(__name__)

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

# pretty_midi refuses files whose last tick is beyond this ("likely corrupt"), because it
# allocates one float per tick; we rescale such files below it instead
_MAX_TICK = int(pretty_midi.pretty_midi.MAX_TICK)
_WRITE_RESOLUTION, _WRITE_TEMPO = 500, 120.0  # 1 tick = 1 ms, so 10 ms steps are exact ticks

REPAIRS = ("unmatched_note_off", "unclosed_note", "zero_length", "pad", "separator",
           "unknown_token", "no_instrument", "no_velocity")


def _step(seconds: float) -> int:
    # the epsilon keeps exact step boundaries (0.3 s -> 29.999999...) on their own step
    return max(0, math.floor(seconds / STEP + 1e-6))


def velocity_bin(velocity: int) -> int:
    return min(max(int(velocity), 0), 127) // BIN_WIDTH


def _instrument_token(instrument: pretty_midi.Instrument) -> int:
    return DRUMS if instrument.is_drum else PROGRAM + int(instrument.program)


# ---------------------------------------------------------------------------- reading


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


# ---------------------------------------------------------------------------- encoding


def _fold_sustain(instrument: pretty_midi.Instrument) -> list[tuple[float, float, int, int]]:
    """(start, end, pitch, velocity) of the instrument's notes with the sustain pedal applied."""
    notes = [(n.start, max(n.end, n.start), n.pitch, n.velocity) for n in instrument.notes]
    pedal = sorted((cc.time, cc.value >= 64) for cc in instrument.control_changes
                   if cc.number == 64)
    if not pedal:
        return notes
    last_event = max([n[1] for n in notes] + [t for t, _ in pedal])
    downs: list[tuple[float, float]] = []  # (pedal down, pedal up)
    down_at = None
    for time, down in pedal:
        if down and down_at is None:
            down_at = time
        elif not down and down_at is not None:
            downs.append((down_at, time))
            down_at = None
    if down_at is not None:
        downs.append((down_at, max(last_event, down_at)))
    onsets: dict[int, list[float]] = defaultdict(list)
    for start, _, pitch, _ in notes:
        onsets[pitch].append(start)
    for times in onsets.values():
        times.sort()
    down_starts = [d for d, _ in downs]
    folded = []
    for start, end, pitch, velocity in notes:
        i = bisect.bisect_right(down_starts, end) - 1
        if i >= 0 and end < downs[i][1]:
            new_end = downs[i][1]
            # a key struck again while the pedal holds the old note ends it there
            j = bisect.bisect_right(onsets[pitch], start)
            if j < len(onsets[pitch]):
                new_end = min(new_end, max(end, onsets[pitch][j]))
            end = new_end
        folded.append((start, end, pitch, velocity))
    return folded


def _shifts(steps: int) -> list[int]:
    return [SHIFT + MAX_SHIFT - 1] * (steps // MAX_SHIFT) + (
        [SHIFT + steps % MAX_SHIFT - 1] if steps % MAX_SHIFT else [])


def encode(pm: pretty_midi.PrettyMIDI) -> np.ndarray:
    """Token ids of one piece (no separator: the caller adds one between pieces)."""
    events = []  # (step, instrument token, 0 = off / 1 = on, pitch, off step, velocity bin)
    for instrument in pm.instruments:
        inst = _instrument_token(instrument)
        for start, end, pitch, velocity in _fold_sustain(instrument):
            if not 0 <= pitch <= 127:  # only hand-built objects; files cannot hold these
                raise ValueError(f"note pitch {pitch} outside the MIDI range 0..127")
            on = _step(start)
            off = max(_step(end), on + 1)
            # ordering same-step onsets by their offset makes first-in-first-out pairing exact
            events.append((on, inst, 1, pitch, off, velocity_bin(velocity)))
            events.append((off, inst, 0, pitch, 0, 0))
    events.sort()
    tokens: list[int] = []
    now, inst_now, vel_now = 0, None, None
    for step, inst, is_on, pitch, _, vel in events:
        if step > now:
            tokens += _shifts(step - now)
            now = step
        if inst != inst_now:
            tokens.append(inst)
            inst_now = inst
        if is_on:
            if vel != vel_now:
                tokens.append(VELOCITY + vel)
                vel_now = vel
            tokens.append(NOTE_ON + pitch)
        else:
            tokens.append(NOTE_OFF + pitch)
    return np.asarray(tokens, dtype=np.int64)


# ---------------------------------------------------------------------------- decoding


def note_context(inst: int | None, vel: int | None, repairs: dict[str, int]
                 ) -> tuple[int, int]:
    """The instrument and velocity bin of a note, repaired (and counted) when the sequence
    has not said them yet: program 0, velocity 64's bin."""
    if inst is None:
        repairs["no_instrument"] += 1
        inst = PROGRAM
    if vel is None:
        repairs["no_velocity"] += 1
        vel = velocity_bin(64)
    return inst, vel


def decode(tokens: Iterable[int]) -> tuple[pretty_midi.PrettyMIDI, dict[str, int]]:
    """A PrettyMIDI object from any token sequence, and counts of what had to be repaired:

    unmatched_note_off  a note-off with no open note of that pitch and instrument: ignored
    unclosed_note       a note still open at the end or at a separator: closed there
    zero_length         a note ended in the step it started: given one step
    pad                 padding inside the sequence: ignored
    separator           <sep> after some events: a piece boundary (open notes close, the
                        instrument and velocity reset; the next piece follows in time)
    unknown_token       an id outside the vocabulary: ignored
    no_instrument       a note-on before any program/drums token: program 0
    no_velocity         a note-on before any velocity token: velocity 64's bin
    """
    repairs = dict.fromkeys(REPAIRS, 0)
    notes: dict[int, list[tuple[int, int, int, int]]] = defaultdict(list)  # inst -> notes
    open_notes: dict[tuple[int, int], deque[tuple[int, int]]] = defaultdict(deque)
    now, inst, vel, in_piece = 0, None, None, False

    def close(key: tuple[int, int], end: int) -> None:
        start, velocity = open_notes[key].popleft()
        if end <= start:
            repairs["zero_length"] += 1
            end = start + 1
        notes[key[0]].append((start, end, key[1], velocity))

    def close_all() -> None:
        for (inst_, pitch), queue in open_notes.items():
            repairs["unclosed_note"] += len(queue)
            for start, velocity in queue:
                notes[inst_].append((start, max(now, start + 1), pitch, velocity))
        open_notes.clear()

    # tolist() takes numpy arrays and torch tensors alike
    ids = tokens.tolist() if hasattr(tokens, "tolist") else list(tokens)
    for token in map(int, ids):
        if token == PAD:
            repairs["pad"] += 1
        elif token == SEP:
            if in_piece:  # a leading <sep> is the start token, not a boundary
                repairs["separator"] += 1
                close_all()
                inst, vel, in_piece = None, None, False
        elif not 0 <= token < VOCAB_SIZE:
            repairs["unknown_token"] += 1
        else:
            in_piece = True
            if token < NOTE_OFF:
                inst, vel = note_context(inst, vel, repairs)
                open_notes[(inst, token - NOTE_ON)].append((now, vel))
            elif token < SHIFT:
                key = (inst, token - NOTE_OFF)
                if inst is not None and open_notes.get(key):
                    close(key, now)
                else:
                    repairs["unmatched_note_off"] += 1
            elif token < VELOCITY:
                now += token - SHIFT + 1
            elif token < PROGRAM:
                vel = token - VELOCITY
            else:
                inst = token
    close_all()
    return _to_pretty_midi(notes), repairs


def _to_pretty_midi(notes: dict[int, list[tuple[int, int, int, int]]]) -> pretty_midi.PrettyMIDI:
    pm = pretty_midi.PrettyMIDI(resolution=_WRITE_RESOLUTION, initial_tempo=_WRITE_TEMPO)
    for inst in sorted(notes):
        drum = inst == DRUMS
        program = 0 if drum else inst - PROGRAM
        name = "Drums" if drum else pretty_midi.program_to_instrument_name(program)
        # layer 0 is the instrument; a note overlapping a sounding note of the same pitch goes
        # to the first layer where that pitch is free, so a MIDI file can hold it
        layers: list[tuple[pretty_midi.Instrument, dict[int, int]]] = []
        for start, end, pitch, vel in sorted(notes[inst]):
            free = [lay for lay in layers if lay[1].get(pitch, -1) <= start]
            if not free:
                layers.append((pretty_midi.Instrument(program, drum, name), {}))
            layer, busy_until = free[0] if free else layers[-1]
            busy_until[pitch] = end
            layer.notes.append(pretty_midi.Note(vel * BIN_WIDTH + BIN_WIDTH // 2, pitch,
                                                start * STEP, end * STEP))
        pm.instruments += [layer for layer, _ in layers]
    return pm


# ---------------------------------------------------------------------------- output


def write_midi(pm: pretty_midi.PrettyMIDI, path: str | Path) -> None:
    """Write a .mid file atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp:
        pm.write(str(tmp))


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
    # a bare Figure renders with Agg and leaves pyplot's global state (and backend) alone
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
    import wave

    _check_fluidsynth()
    audio = np.asarray(pm.fluidsynth(fs=sample_rate), dtype=np.float64)
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    pcm = (audio / peak * 32767 if peak > 0 else audio).astype("<i2")
    with atomic_path(path) as tmp, wave.open(str(tmp), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.tobytes())


# ---------------------------------------------------------------------------- the domain


VOCABULARIES = ("events", "durations")


class MIDIDomain(Domain):
    """MIDI files <-> tokens. `vocabulary="events"` (the default) is the note-on/note-off
    vocabulary of this module's docstring; "durations" gives each note a duration token
    instead of a note-off (midi_durations.py)."""

    name = "midi"
    pad_id = PAD
    sep_id = SEP

    stats = staticmethod(stats)
    piano_roll_png = staticmethod(piano_roll_png)
    write_midi = staticmethod(write_midi)
    render_audio = staticmethod(render_audio)

    def __init__(self, vocabulary: str = "events") -> None:
        if vocabulary not in VOCABULARIES:
            raise InputError(f"unknown MIDI vocabulary {vocabulary!r} "
                             f"(available: {', '.join(VOCABULARIES)})")
        self.vocabulary_name = vocabulary
        if vocabulary == "durations":
            from . import midi_durations

            self.tokens = midi_durations.DURATION_TOKENS
            self.encode, self.decode = midi_durations.encode, midi_durations.decode
        else:
            self.tokens, self.encode, self.decode = TOKENS, encode, decode
        self.skipped: list[tuple[str, str]] = []  # (path, reason) from the last read()
        self.repairs: dict[str, int] = {}  # repair counts from the last write()

    def config(self) -> dict[str, Any]:
        return {"vocabulary": self.vocabulary_name}

    @staticmethod
    def ends_note(token: int) -> bool:
        """A note-off (events) or a duration (durations): a token that settles a note."""
        return NOTE_OFF <= token < SHIFT

    def sampling_limits(self, sequences: Iterable[np.ndarray]) -> dict[str, Any]:
        from .midi_grammar import limits_from

        return limits_from(sequences, self.vocabulary_name).to_dict()

    def constraint(self, limits: dict[str, Any] | None, prompts: list[np.ndarray]):  # noqa: ANN201
        """The note grammar of the vocabulary (midi_grammar.py); without stored limits, a
        model trained before they were: at most 16 notes at once, none longer than 10 s."""
        from .midi_grammar import DurationGrammar, GrammarLimits, MIDIGrammar

        limits = GrammarLimits(**limits) if limits else GrammarLimits(16, 1000)
        grammar = DurationGrammar if self.vocabulary_name == "durations" else MIDIGrammar
        return grammar(limits, prompts)

    def read(self, path: str | Path) -> Iterator[Record]:
        """One Record per piece of a .mid/.midi file, or of every such file under a directory
        (recursive, case-insensitive, sorted). Unreadable files and files without notes are
        skipped with a logged warning and listed in `self.skipped`. Path problems raise
        InputError here; 'nothing readable' raises once the records are exhausted."""
        root = Path(path)
        self.skipped = []
        if not root.exists():
            raise InputError(f"{root}: no such file or directory")
        if root.is_file():
            record, reason = self._record(root, root.stem)
            if record is None:
                raise InputError(f"{root}: {reason}")
            return iter([record])
        files = sorted(p for p in root.rglob("*")
                       if p.suffix.lower() in (".mid", ".midi") and p.is_file())
        if not files:
            raise InputError(f"{root}: no .mid or .midi files in this directory")
        return self._read_dir(root, files)

    def _read_dir(self, root: Path, files: list[Path]) -> Iterator[Record]:
        found = 0
        for file in files:
            record, reason = self._record(file, file.relative_to(root).with_suffix("").as_posix())
            if record is None:
                self.skipped.append((str(file), reason))
                log.warning("skipping %s: %s", file, reason)
            else:
                found += 1
                yield record
        if not found:
            first = self.skipped[0]
            raise InputError(f"no readable MIDI files in {root}: {len(self.skipped)} skipped "
                             f"(first: {first[0]}: {first[1]})")

    def _record(self, path: Path, record_id: str) -> tuple[Record | None, str]:
        try:
            pm = load_midi(path)
        except Exception as error:  # mido and pretty_midi raise many kinds on bad bytes
            return None, f"not a readable MIDI file ({type(error).__name__}: {error})"
        n_notes = sum(len(inst.notes) for inst in pm.instruments)
        if n_notes == 0:
            return None, "no notes"
        meta = {"path": str(path), "duration": float(pm.get_end_time()), "n_notes": n_notes}
        return Record(record_id, self.encode(pm), meta), ""

    def write(self, records: Iterable[Record], path: str | Path) -> None:
        """Exactly one record -> one .mid file (atomically); repair counts go to self.repairs."""
        records = list(records)
        if len(records) != 1:
            raise ValueError(f"MIDI output holds one piece; got {len(records)} records")
        pm, self.repairs = self.decode(records[0].tokens)
        write_midi(pm, path)
