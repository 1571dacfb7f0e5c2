"""Token ids the MIDI tests write pieces with (both vocabularies share the note-on, note-off
and shift ids; the duration vocabulary's durations sit where note-offs are in events)."""
from seqformer.domains.midi.vocab import DURATION, NOTE_OFF, NOTE_ON, SHIFT, duration_bin


def on(pitch: int) -> int:
    return NOTE_ON + pitch


def off(pitch: int) -> int:
    return NOTE_OFF + pitch


def shift(steps: int) -> int:
    """A shift of 1-100 steps of 10 ms."""
    return SHIFT + steps - 1


def dur(steps: int) -> int:
    """The duration token nearest `steps` (exact for DURATION_STEPS)."""
    return DURATION + duration_bin(steps)
