"""Symbolic music: MIDI files <-> tokens, read and written with pretty_midi.

Modules, each importing only those above it:

    vocab.py      the two vocabularies' ids and names (events, durations) and their grid
    notes.py      a piece as quantized notes (sustain folded in) and back to PrettyMIDI
    events.py     the event vocabulary's encode/decode (note-on ... note-off)
    durations.py  the duration vocabulary's encode/decode (pitch, then duration)
    grammar.py    sampling grammars of both vocabularies (constraints for generation)
    calibration.py  the duration grammar's steers fitted to a trained model
    files.py      reading and writing .mid files
    render.py     statistics, piano roll PNG, audio
    domain.py     MIDIDomain, registered as "midi" in seqformer.domains

Here: the names other packages use. `encode` and `decode` are the event vocabulary's; the
duration vocabulary's are in `durations`.
"""

from __future__ import annotations

from .domain import VOCABULARIES, MIDIDomain
from .events import decode, encode
from .files import load_midi, write_midi
from .grammar import DurationGrammar, GrammarLimits, MIDIGrammar, limits_from
from .render import piano_roll_png, render_audio, stats
from .vocab import (
    DRUMS,
    DURATION,
    DURATION_STEPS,
    DURATION_TOKENS,
    MAX_SHIFT,
    NOTE_OFF,
    NOTE_ON,
    PAD,
    PROGRAM,
    SEP,
    SHIFT,
    STEP,
    TOKENS,
    VELOCITY,
    VOCAB_SIZE,
    duration_bin,
)

__all__ = [
    "DRUMS", "DURATION", "DURATION_STEPS", "DURATION_TOKENS", "MAX_SHIFT", "NOTE_OFF",
    "NOTE_ON", "PAD", "PROGRAM", "SEP", "SHIFT", "STEP", "TOKENS", "VELOCITY", "VOCABULARIES",
    "VOCAB_SIZE", "DurationGrammar", "GrammarLimits", "MIDIDomain", "MIDIGrammar", "decode",
    "duration_bin", "encode", "limits_from", "load_midi", "piano_roll_png", "render_audio",
    "stats", "write_midi",
]
