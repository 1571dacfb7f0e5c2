"""The event vocabulary (the default, in the spirit of Music Transformer): a note is a
note-on and, later, a note-off. Ids are in vocab.py, quantizing in notes.py.

Time is absolute (seconds from pretty_midi, so tempo-independent), quantized to 10 ms
steps by flooring: onsets and offsets move by less than 10 ms, and a note shorter than one
step lasts one step. Velocity keeps its bin.

An instrument is (program, drum flag). Multi-track files interleave their tracks: a program
or drums token precedes note events (on and off) whenever the current instrument changes.
Tracks with the same program merge into one instrument (all four voices of a chorale are
usually program 0). Within one 10 ms step events are ordered by instrument, then offs
before ons, then pitch.

Same pitch, same instrument, overlapping notes (unison voices of a merged chorale are
common): they are kept, not cut. A note-on on a sounding pitch starts another note; a
note-off ends the earliest-started open note of that pitch (first in, first out). So every
note survives with its exact pitch, instrument, onset step and velocity bin, and the
offsets of each pitch survive as a multiset; only when one note lies strictly inside
another of the same pitch do the two swap offsets (the sound is the same).

Not kept: tempo map, time and key signatures, control changes (the sustain pedal is folded
into durations), pitch bends, lyrics and text, track names and the track split of
same-program parts, and the program of drum tracks.

Decoding never fails: it repairs and counts (see `decode`).
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable

import numpy as np
import pretty_midi

from .notes import Notes, note_context, quantized_notes, to_pretty_midi
from .vocab import (
    NOTE_OFF,
    NOTE_ON,
    PAD,
    PROGRAM,
    SEP,
    SHIFT,
    VELOCITY,
    VOCAB_SIZE,
    shift_tokens,
    token_ids,
)

REPAIRS = ("unmatched_note_off", "unclosed_note", "zero_length", "pad", "separator",
           "unknown_token", "no_instrument", "no_velocity")


def encode(pm: pretty_midi.PrettyMIDI) -> np.ndarray:
    """Token ids of one piece (no separator: the caller adds one between pieces)."""
    events = []  # (step, instrument token, 0 = off / 1 = on, pitch, off step, velocity bin)
    for on, off, inst, pitch, vel in quantized_notes(pm):
        # ordering same-step onsets by their offset makes first-in-first-out pairing exact
        events.append((on, inst, 1, pitch, off, vel))
        events.append((off, inst, 0, pitch, 0, 0))
    events.sort()
    tokens: list[int] = []
    now, inst_now, vel_now = 0, None, None
    for step, inst, is_on, pitch, _, vel in events:
        if step > now:
            tokens += shift_tokens(step - now)
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
    notes: Notes = defaultdict(list)
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

    for token in token_ids(tokens):
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
    return to_pretty_midi(notes), repairs
