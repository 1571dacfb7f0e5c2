"""What both tokenizers share: a piece's notes quantized to the vocabulary's grid (the
sustain pedal folded into their durations), and the way back from quantized notes to a
PrettyMIDI object.

Quantizing: onsets and offsets floor to 10 ms steps (they move by less than 10 ms), a note
lasts at least one step, and velocity keeps its bin; decoding uses the bin's middle
(4b + 2). The sustain pedal (CC64) is folded into note durations: a note released while the
pedal is down lasts until the pedal is lifted, or until the same key is struck again if
that comes first; a pedal never lifted holds to the instrument's last event.

Decoding spreads notes that overlap a sounding note of the same pitch and instrument over
extra instruments with the same program, so a written MIDI file keeps them apart (a channel
cannot sound one key twice). The written file uses 120 bpm and 500 ticks per beat, so one
tick is 1 ms; drums decode as program 0, the GM standard kit.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterator

import pretty_midi

from .vocab import BIN_WIDTH, DEFAULT_VELOCITY_BIN, DRUMS, PROGRAM, STEP, time_step, velocity_bin

_WRITE_RESOLUTION, _WRITE_TEMPO = 500, 120.0  # 1 tick = 1 ms, so 10 ms steps are exact ticks

# a decoded note: (onset step, offset step, pitch, velocity bin), grouped by instrument token
Notes = dict[int, list[tuple[int, int, int, int]]]


def instrument_token(instrument: pretty_midi.Instrument) -> int:
    return DRUMS if instrument.is_drum else PROGRAM + int(instrument.program)


def fold_sustain(instrument: pretty_midi.Instrument) -> list[tuple[float, float, int, int]]:
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


def quantized_notes(pm: pretty_midi.PrettyMIDI) -> Iterator[tuple[int, int, int, int, int]]:
    """(onset step, offset step, instrument token, pitch, velocity bin) of every note, the
    sustain pedal folded in; a note lasts at least one step. Raises ValueError on a pitch
    outside 0..127 (only hand-built objects; files cannot hold these)."""
    for instrument in pm.instruments:
        inst = instrument_token(instrument)
        for start, end, pitch, velocity in fold_sustain(instrument):
            if not 0 <= pitch <= 127:
                raise ValueError(f"note pitch {pitch} outside the MIDI range 0..127")
            on = time_step(start)
            yield on, max(time_step(end), on + 1), inst, pitch, velocity_bin(velocity)


def note_context(inst: int | None, vel: int | None, repairs: dict[str, int]
                 ) -> tuple[int, int]:
    """The instrument and velocity bin of a note, repaired (and counted) when the sequence
    has not said them yet: program 0, velocity 64's bin."""
    if inst is None:
        repairs["no_instrument"] += 1
        inst = PROGRAM
    if vel is None:
        repairs["no_velocity"] += 1
        vel = DEFAULT_VELOCITY_BIN
    return inst, vel


def to_pretty_midi(notes: Notes) -> pretty_midi.PrettyMIDI:
    """A PrettyMIDI object holding the decoded notes of each instrument token."""
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
