"""Grammar-aware sampling for the MIDI vocabularies: a constraint for generation.

Each sequence keeps the notes sounding per (instrument, pitch) with their onsets, the
current instrument and the time. Then: no note-on before an instrument and a velocity
token; a note-off only for a sounding note of the current instrument, and not in the step
it started; no note-on of a sounding pitch; at most
`max_polyphony` notes at once; time may not advance past the moment the oldest sounding
note reaches `max_steps`, and once it has, only its release is allowed (after switching
to its instrument if need be). At the end, `closing` gives the tokens that release
whatever still sounds. Limits come from the training data (`limits_from`) and are stored
with the model.

Ranges, for both vocabularies: an instrument the training music plays starts notes only
within the lowest and highest pitch it played there (`pitch_ranges`); a bass voice does not
climb into the soprano's register, nor a flute below its lowest note. A sample switches
only to instruments the training music or the prompt plays (a harmonizer's voices are
three programs; a fourth, unranged one let its notes reach pitch 0 and 127). An instrument
the training music never played (a primer's) is not limited, and one it did may also
play what the prompt plays on it: a held-out piece may take an instrument higher or lower
than the training music did (the note-ons of planetblupi's music003 that the training
ranges refused: 2.9% of its tokens).

Texture, for both vocabularies: `max_polyphony` is what the training music typically
sounds (the POLYPHONY_QUANTILE-th percentile of its polyphony over the time something
sounds), not its rare maximum, so samples are not denser than the music; and no
instrument of a seq2seq target sounds more notes at once than it ever does in the training
targets (`instrument_polyphony`: a chorale's voice sings one note at a time; language
models keep no such limit, docs/music.md). A prompt of
PROMPT_NOTES notes or more narrows its own continuation's polyphony and note length to
its own, measured the same way (`fitted_to`): planetblupi's music003 opens at 3 notes and
0.63 s, where the training pieces reach 10 and 1.62 s, and its real continuation keeps to
4 and 0.63 s. Time keeps moving (after `max_step_tokens` tokens in one moment, the most
the training data has, only a shift may come); and no token that changes nothing: no
velocity right after a velocity, no instrument right after an instrument, none naming the
current instrument.

Redirects, for the event vocabulary (`redirect`): the model's probability of a note-off
the grammar refuses goes to the release it most likely meant (`redirects`, applied by
core's sampling). A pitch the current instrument is not sounding but another is: the switch
to that instrument, so a model that knows a pitch should end but not on which instrument's
context a note-off acts writes the switch and then the note-off, as the encoder does. A
pitch sounding nowhere: the note-off of the nearest pitch the current instrument sounds,
within an octave (NEAREST_RELEASE), so a model that has lost track of which notes sound
still ends notes when it means to.

The duration vocabulary (durations.py) needs less: a note's duration token comes
right after its pitch and is at most `max_steps`; a new note needs an instrument and a
velocity, keeps polyphony within `max_polyphony` and does not start on a pitch its
instrument is sounding. Nothing can be left hanging; `closing` only completes a final
note still waiting for its duration. Its samples from a young model are thin (1.6-1.8 notes
at once where the training music has 2.8), so it also steers, as a weight and not a mask
(`log_weights`, `texture`): while fewer notes sound than the training music's mean
polyphony, longer durations; and the fewer notes a time shift would leave sounding over the
time it passes, on average, below that mean, the less likely the shift
(DurationGrammar._steer; docs/music.md). A second weight (`voice`) holds time back until
the notes that ended are replaced: a voice sings its next note rather than drop out. Both
are scaled by the limits' `steer_gain`, fitted to each trained model (calibration.py).

Key, for both vocabularies, also a weight (`key`): once a piece has started KEY_NOTES
notes, a note-on whose pitch class lies outside the major scale (or its relative minor) that
the piece's recent notes fit best is weighted exp(-key). Recent: each later note scales an
earlier one's weight by KEY_MEMORY, so a piece may modulate. A young model's chords wander
out of key as the texture thickens; the reference pieces keep 95% of their notes in one
scale (docs/music.md). Drums have no key.

Register, for both vocabularies, a weight too (`register`): a note-on that would take the
piece's last REGISTER_NOTES pitched notes (any instrument, drums not counted) past the
span typical of the training music (`register_span`: the median span of that many
consecutive notes there), or past their own span where that is already wider, is weighted
exp(-register) per semitone past it. A young model's samples spanned 45-47 semitones where
the reference pieces span 30-31, though any 40 consecutive notes of theirs spanned what 40
of the pieces' do (24-27 against 24-26): a few notes far out (docs/music.md).

Pace, for a seq2seq target that follows a MIDI source (a harmonization), a weight too
(`pace`): training stores, per instrument of the targets, the median number of its notes
per pitched source note (`GrammarLimits.pace`); while sampling, an instrument more than
PACE_SLACK notes ahead of that many times the source notes begun so far has its note-ons
weighted exp(-pace) per note ahead, and while an instrument the target has played is more
than PACE_SLACK notes behind, a time shift is weighted exp(-pace) per note behind (the
instrument furthest behind). With the event vocabulary an instrument ahead also releases
its notes with the weight of its note-ons, so it holds a note rather than rest. A
harmonizer otherwise wrote BWV 300's voices with 1.3-1.5 times Bach's notes in every seed
(docs/seq2seq.md).

Numpy only: core's sampling loop turns the masks into tensors.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from functools import lru_cache

import numpy as np

from .vocab import (
    DEFAULT_VELOCITY_BIN,
    DRUMS,
    DURATION,
    DURATION_STEPS,
    NOTE_OFF,
    NOTE_ON,
    PROGRAM,
    SEP,
    SHIFT,
    VELOCITY,
    VOCAB_SIZE,
)

NOTE_QUANTILE = 99.5  # the longest note allowed: this percentile of the training notes
POLYPHONY_QUANTILE = 95.0  # the most notes at once: this percentile of sounding time
PROMPT_NOTES = 100  # a prompt with this many notes narrows its continuation's texture
TEXTURE_WEIGHT = 2.5  # the duration vocabulary's texture steer (DurationGrammar._steer)
# the steer's durations half is this many times as strong as its shifts'; 1.6 until
# 2026-12-06: as strong notes held the samples' median note at 0.73-1.02 s against the
# training pieces' 0.66 s, and 0.8 came out best on validation pieces (docs/music.md)
LENGTH_SHARE = 0.8
VOICE_WEIGHT = 1.5  # the duration vocabulary's voice steer (DurationGrammar._steer)
KEY_WEIGHT = 2.0  # the key steer (module docstring): exp(-2) = 0.14 for a note out of key
KEY_NOTES = 5  # notes a piece starts before the key steer has a key to keep
KEY_MEMORY = 0.98  # each later note scales an earlier one's weight in the key by this
REGISTER_WEIGHT = 1.0  # the register steer (module docstring), per semitone beyond the span
REGISTER_NOTES = 64  # a piece's register: the span of its last this many pitched notes
REGISTER_QUANTILE = 50.0  # the span allowed: this percentile of the training music's
NEAREST_RELEASE = 12  # a note-off of a pitch sounding nowhere: the nearest within an octave
PACE_WEIGHT = 2.0  # the pace steer (module docstring), per note ahead of or behind the pace
PACE_SLACK = 1.0  # notes an instrument may be ahead or behind before the pace steer weighs

# (12, 12): row r marks the pitch classes of the major scale on r (its relative minor's too)
_SCALES = np.zeros((12, 12), dtype=np.float32)
for _root in range(12):
    _SCALES[_root, (np.array([0, 2, 4, 5, 7, 9, 11]) + _root) % 12] = 1.0
_PITCHES = np.arange(128)
_PITCH_CLASS = _PITCHES % 12


@dataclass
class GrammarLimits:
    max_polyphony: int
    max_steps: int  # a note's longest duration, in 10 ms steps
    # the most tokens between two time shifts; None (limits stored before it existed): any
    max_step_tokens: int | None = None
    # [instrument token, lowest pitch, highest pitch] for each instrument the training music
    # plays (lists, so the limits survive a round trip through JSON); None: no ranges
    pitch_ranges: list[list[int]] | None = None
    # the mean number of notes sounding over the time something sounds; None (limits
    # stored before it existed): no texture steer
    mean_polyphony: float | None = None
    # the REGISTER_QUANTILE-th percentile of the span (highest - lowest pitch) of
    # REGISTER_NOTES consecutive pitched notes; None (stored before it existed): no
    # register steer
    register_span: int | None = None
    # [instrument token, its notes per pitched source note] for each instrument of a
    # seq2seq target with a MIDI source (`pace_from`); None: no pace steer
    pace: list[list[float]] | None = None
    # [instrument token, the most notes it sounds at once] for each instrument of the
    # training music; None (a language model's, or stored before it existed): no limit
    instrument_polyphony: list[list[int]] | None = None
    # the mean over the training pieces of each one's mean polyphony, what a sample (a
    # piece) is held to by `calibrated`; None (stored before it existed): no calibration
    piece_polyphony: float | None = None
    # the texture and voice steers' weights are multiplied by this (`calibrated`)
    steer_gain: float = 1.0

    def __post_init__(self) -> None:
        self._range_of = {inst: (low, high) for inst, low, high in self.pitch_ranges or []}
        self._polyphony_of = {inst: most for inst, most in self.instrument_polyphony or []}
        self.pace_of = {int(inst): ratio for inst, ratio in self.pace or []}
        # the instrument tokens the training music plays (None: no ranges, any instrument)
        self.instruments_played = None
        if self.pitch_ranges is not None:
            self.instruments_played = np.zeros(DRUMS + 1 - PROGRAM, dtype=bool)
            self.instruments_played[[inst - PROGRAM for inst in self._range_of]] = True

    def range_of(self, instrument: int) -> tuple[int, int] | None:
        return self._range_of.get(instrument)

    def polyphony_of(self, instrument: int) -> int:
        """The most notes `instrument` may sound at once (max_polyphony where the training
        music does not play it)."""
        return self._polyphony_of.get(instrument, self.max_polyphony)

    def to_dict(self) -> dict:
        return asdict(self)


class _Context:
    """What both vocabularies' walks share: the time, the current instrument, and whether
    an instrument and a velocity token have been seen in this piece."""

    def __init__(self) -> None:
        self.now, self.inst = 0, PROGRAM  # a note before any instrument token: program 0
        self.has_instrument = self.has_velocity = False
        self.in_step = 0  # tokens since time last moved
        self.last = SEP
        self.played: dict[int, tuple[int, int]] = {}  # instrument -> lowest, highest pitch
        # the pitch classes of the notes started, each weighted KEY_MEMORY ** (notes since)
        self.pitch_classes = np.zeros(12, dtype=np.float32)
        self.pitched = 0  # notes started, drums not counted
        self.instruments = np.zeros(DRUMS + 1 - PROGRAM, dtype=bool)  # each one seen
        self.recent: deque[int] = deque(maxlen=REGISTER_NOTES)  # the last pitched notes
        self.started: dict[int, int] = defaultdict(int)  # instrument -> notes it started
        self.onsets: list[int] = []  # the time of each pitched note-on

    def _context(self, token: int) -> None:
        """Apply a shift, velocity, program or drums token (others change nothing)."""
        if SHIFT <= token < VELOCITY:
            self.now += token - SHIFT + 1
        elif VELOCITY <= token < PROGRAM:
            self.has_velocity = True
        elif PROGRAM <= token <= DRUMS:
            self.inst = token
            self.instruments[token - PROGRAM] = True
            self.has_instrument = True

    @property
    def named(self) -> bool:
        """Whether the piece has named an instrument and a velocity (a note needs both)."""
        return self.has_instrument and self.has_velocity

    def _count(self, token: int) -> None:
        """Keep the tokens of this moment, the last token and the pitches each instrument
        played (after the token's step)."""
        self.in_step = 0 if SHIFT <= token < VELOCITY else self.in_step + 1
        self.last = token
        if NOTE_ON <= token < NOTE_OFF:
            pitch = token - NOTE_ON
            low, high = self.played.get(self.inst, (pitch, pitch))
            self.played[self.inst] = (min(low, pitch), max(high, pitch))
            self.started[self.inst] += 1
            if self.inst != DRUMS:
                self.onsets.append(self.now)
                self.recent.append(pitch)
                self.pitch_classes *= KEY_MEMORY
                self.pitch_classes[pitch % 12] += 1.0
                self.pitched += 1

    def scale(self) -> np.ndarray | None:
        """(12,): 1 for each pitch class of the scale the recent notes fit best; None
        before KEY_NOTES notes, and on drums."""
        if self.pitched < KEY_NOTES or self.inst == DRUMS:
            return None
        return _SCALES[int(np.argmax(_SCALES @ self.pitch_classes))]

    def register(self, span: int) -> np.ndarray | None:
        """(128,): by how many semitones each pitch would take the last REGISTER_NOTES
        pitched notes past `span` semitones (past their own span where that is wider);
        None before any note, and on drums."""
        if self.inst == DRUMS or not self.recent:
            return None
        low, high = min(self.recent), max(self.recent)
        wider = np.maximum(high, _PITCHES) - np.minimum(low, _PITCHES)
        return (wider - max(span, high - low)).clip(min=0)

    def pace(self, weights: np.ndarray, per_source_note: dict[int, float],
             source_onsets: np.ndarray, weight: float) -> float:
        """Add the pace steer's log-weights (module docstring) to one row's `weights`;
        returns the weight taken off the current instrument's note-ons (0: none)."""
        heard = int(np.searchsorted(source_onsets, self.now, side="right"))
        behind, held = 0.0, 0.0
        for inst, ratio in per_source_note.items():
            ahead = self.started.get(inst, 0) - ratio * heard
            if inst == self.inst and ahead + 1 > PACE_SLACK:
                held = weight * (ahead + 1 - PACE_SLACK)
                weights[NOTE_ON:NOTE_ON + 128] -= held
            if inst in self.started:
                behind = max(behind, -ahead - PACE_SLACK)
        if behind > 0:
            weights[SHIFT:VELOCITY] -= weight * behind
        return held

    def texture(self, ok: np.ndarray, limits: GrammarLimits) -> np.ndarray:
        """Narrow `ok` by the range and texture rules (module docstring); `ok` is kept when
        they would leave nothing."""
        keep = ok.copy()
        span = limits.range_of(self.inst)
        if span is not None and self.inst in self.played:
            played = self.played[self.inst]
            span = (min(span[0], played[0]), max(span[1], played[1]))
        if span is not None:
            ok[NOTE_ON:NOTE_ON + span[0]] = False
            ok[NOTE_ON + span[1] + 1:NOTE_ON + 128] = False
        if limits.instruments_played is not None:  # no instrument the music has not played
            ok[PROGRAM:DRUMS + 1] &= limits.instruments_played | self.instruments
        if VELOCITY <= self.last < PROGRAM:
            ok[VELOCITY:PROGRAM] = False
        if PROGRAM <= self.last <= DRUMS:
            ok[PROGRAM:DRUMS + 1] = False
        if self.has_instrument:
            ok[self.inst] = False
        if limits.max_step_tokens is not None and self.in_step >= limits.max_step_tokens:
            ok[:SHIFT] = False
            ok[VELOCITY:] = False
        return ok if ok.any() else keep


class _Walk(_Context):
    """The state the event tokens describe, as the decoder reads them."""

    def __init__(self) -> None:
        super().__init__()
        self.sounding: dict[tuple[int, int], deque[int]] = defaultdict(deque)
        self.count = 0

    def step(self, token: int) -> int | None:
        """Apply one token; returns the duration of a note it ended, if any."""
        ended = self._step(token)
        if token != SEP:
            self._count(token)
        return ended

    def _step(self, token: int) -> int | None:
        if token == SEP:
            self.__init__()
        elif NOTE_ON <= token < NOTE_OFF:
            self.sounding[(self.inst, token - NOTE_ON)].append(self.now)
            self.count += 1
        elif NOTE_OFF <= token < SHIFT:
            key = (self.inst, token - NOTE_OFF)
            onsets = self.sounding.get(key)
            if onsets:
                self.count -= 1
                onset = onsets.popleft()
                if not onsets:  # only sounding notes stay: the masks loop over them
                    del self.sounding[key]
                return self.now - onset
        else:
            self._context(token)
        return None

    def pace(self, weights: np.ndarray, per_source_note: dict[int, float],
             source_onsets: np.ndarray, weight: float) -> float:
        """The pace steer, and an instrument ahead of its pace releases its notes as
        reluctantly as it starts new ones: it holds a note rather than rest."""
        held = super().pace(weights, per_source_note, source_onsets, weight)
        weights[NOTE_OFF:NOTE_OFF + 128] -= held
        return held

    def oldest(self) -> tuple[tuple[int, int], int] | None:
        """The sounding note with the earliest onset, and that onset."""
        live = [(q[0], key) for key, q in self.sounding.items() if q]
        return (min(live)[1], min(live)[0]) if live else None


class _DurationWalk(_Context):
    """The same state for the duration vocabulary: sounding notes are (end, instrument,
    pitch), and a pitch waits for its duration token."""

    def __init__(self) -> None:
        super().__init__()
        self.sounding: list[tuple[int, int, int]] = []
        self.waiting: int | None = None  # the pitch of a note awaiting its duration
        self.ended = 0  # pitched notes whose end the last time shift reached
        self.begun = 0  # pitched notes begun since time last moved

    @property
    def count(self) -> int:
        return len(self.sounding) + (self.waiting is not None)

    def step(self, token: int) -> int | None:
        """Apply one token; returns the duration of a note it completed, if any."""
        ended = self._step(token)
        if token != SEP:
            self._count(token)
        return ended

    def _step(self, token: int) -> int | None:
        if DURATION <= token < SHIFT:
            if self.waiting is None:
                return None
            steps = DURATION_STEPS[token - DURATION]
            self.sounding.append((self.now + steps, self.inst, self.waiting))
            self.waiting = None
            return steps
        self.waiting = None  # a note left without duration: the decoder makes it one step
        if token == SEP:
            self.__init__()
        elif NOTE_ON <= token < DURATION:
            self.waiting = token - NOTE_ON
            self.begun += self.inst != DRUMS
        else:
            before = self.now
            self._context(token)
            if self.now > before:
                self.ended = sum(end <= self.now and inst != DRUMS
                                 for end, inst, _ in self.sounding)
                self.begun = 0
            self.sounding = [note for note in self.sounding if note[0] > self.now]
        return None


def sounding_time(notes: list[tuple[int, int]]) -> np.ndarray:
    """time[c]: the steps during which exactly c of `notes` ((onset, end) steps) sound."""
    if not notes:
        return np.zeros(1, dtype=np.int64)
    edges = sorted([(start, 1) for start, _ in notes] + [(end, -1) for _, end in notes])
    time = np.zeros(len(notes) + 1, dtype=np.int64)
    count, at = 0, edges[0][0]
    for t, change in edges:
        time[count] += t - at
        count, at = count + change, t
    return time


def limits_from(sequences: Iterable[np.ndarray], vocabulary: str = "events") -> GrammarLimits:
    """From the training sequences (token ids of `vocabulary`): the POLYPHONY_QUANTILE-th
    percentile of polyphony over the time something sounds, the NOTE_QUANTILE-th
    percentile of note length, the most tokens in one moment and each instrument's range."""
    return _limits_and_notes(sequences, vocabulary)[0]


def fitted_to(limits: GrammarLimits, prompt: np.ndarray, vocabulary: str = "events"
              ) -> GrammarLimits:
    """`limits` narrowed to the polyphony (the most and the mean) and note length of
    `prompt` when it holds PROMPT_NOTES notes or more: a continuation keeps its own
    piece's texture, not the training music's (module docstring). A denser prompt does not
    widen them: samples fill whatever polyphony they are allowed (music005 opens at 13
    notes at once against the training pieces' 10; allowed 13, its samples sounded
    9.3-10.5 on average, allowed 10, 7.5-7.9; the piece 6.8)."""
    own, notes = _limits_and_notes([prompt], vocabulary)
    if notes < PROMPT_NOTES:
        return limits
    mean, register = limits.mean_polyphony, limits.register_span
    if mean is not None:
        mean = min(mean, own.mean_polyphony)
    if register is not None and own.register_span is not None:
        register = min(register, own.register_span)
    return replace(limits, max_polyphony=min(limits.max_polyphony, own.max_polyphony),
                   max_steps=min(limits.max_steps, own.max_steps), mean_polyphony=mean,
                   register_span=register)


def piece_polyphony(tokens: np.ndarray, vocabulary: str = "events") -> float | None:
    """A piece's mean polyphony over the time something sounds, as `limits_from` counts it
    for each training piece (`GrammarLimits.piece_polyphony`); None without notes."""
    return _limits_and_notes([tokens], vocabulary)[0].piece_polyphony


def _name_first(targets: np.ndarray, walk: _Context, limits: GrammarLimits) -> None:
    """Before a piece has named an instrument and a velocity, a note-on (refused until then)
    moves to the token that names what is missing: the instrument, the first the training
    music plays that pitch on (program 0 without ranges, as the decoder assumes), then
    velocity 64's bin (the decoder's default). A young model that opens a piece with a
    note otherwise lost it to the mask and wrote time shifts instead: from <sep>, 8-15 of
    16 samples of three main-job models had not begun after 600 tokens (docs/music.md)."""
    notes = slice(NOTE_ON, NOTE_ON + 128)
    if walk.has_instrument:
        targets[notes] = VELOCITY + DEFAULT_VELOCITY_BIN
        return
    targets[notes] = PROGRAM
    pitched = [(inst, low, high) for inst, low, high in limits.pitch_ranges or []
               if inst != DRUMS]
    if pitched:
        targets[notes] = pitched[0][0]
        for inst, low, high in reversed(pitched):  # the first that plays the pitch wins
            targets[NOTE_ON + low:NOTE_ON + high + 1] = inst


def _new_walk(vocabulary: str) -> _Walk | _DurationWalk:
    return _DurationWalk() if vocabulary == "durations" else _Walk()


def walked(tokens: np.ndarray, vocabulary: str = "events") -> _Context:
    """The walk of a whole piece (its time, notes started per instrument, onsets, ...)."""
    walk = _new_walk(vocabulary)
    for token in np.asarray(tokens).tolist():
        walk.step(int(token))
    return walk


def pace_from(pairs: Iterable[tuple[np.ndarray, np.ndarray]], source_vocabulary: str = "events",
              vocabulary: str = "events") -> list[list[float]] | None:
    """[instrument token, notes per pitched source note] for each instrument the targets
    play: the median, over the (source, target) pairs whose target plays it, of its notes
    over the source's pitched notes (`GrammarLimits.pace`); None without such pairs."""
    ratios: dict[int, list[float]] = defaultdict(list)
    for source, target in pairs:
        heard = walked(source, source_vocabulary).pitched
        if heard:
            for inst, notes in walked(target, vocabulary).started.items():
                ratios[inst].append(notes / heard)
    return [[inst, round(float(np.median(r)), 4)] for inst, r in sorted(ratios.items())] or None


def _limits_and_notes(sequences: Iterable[np.ndarray], vocabulary: str
                      ) -> tuple[GrammarLimits, int]:
    lengths, in_step = [], 1
    time = np.zeros(1, dtype=np.int64)
    own_time: dict[int, np.ndarray] = {}  # instrument -> its own sounding time by polyphony
    ranges: dict[int, list[int]] = {}  # instrument -> [lowest, highest] pitch started
    windows = []  # the span of every REGISTER_NOTES consecutive pitched notes of a piece
    piece_means = []  # each piece's mean polyphony
    for seq in sequences:
        walk = _new_walk(vocabulary)
        notes, pitched = [], []
        own_notes: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for token in np.asarray(seq).tolist():
            if NOTE_ON <= token < NOTE_ON + 128:
                span = ranges.setdefault(walk.inst, [token - NOTE_ON] * 2)
                span[0], span[1] = min(span[0], token - NOTE_ON), max(span[1], token - NOTE_ON)
                if walk.inst != DRUMS:
                    pitched.append(token - NOTE_ON)
            ended = walk.step(token)
            if ended is not None:
                lengths.append(ended)
                start = walk.now - ended if vocabulary != "durations" else walk.now
                notes.append((start, start + max(ended, 1)))
                own_notes[walk.inst].append(notes[-1])  # a note ends on its own instrument
            in_step = max(in_step, walk.in_step)
        if pitched:  # a piece of fewer notes: one window
            run = np.lib.stride_tricks.sliding_window_view(
                np.asarray(pitched), min(REGISTER_NOTES, len(pitched)))
            windows.append(run.max(1) - run.min(1))
        piece_time = sounding_time(notes)
        time = _add_time(time, piece_time)
        if piece_time[1:].sum() > 0:
            piece_means.append(_mean_count(piece_time))
        for inst, played in own_notes.items():
            own_time[inst] = _add_time(own_time.get(inst, np.zeros(1, np.int64)),
                                       sounding_time(played))
    polyphony = _quantile_polyphony(time)
    steps = int(np.ceil(np.percentile(lengths, NOTE_QUANTILE))) if lengths else 500
    mean = _mean_count(time) if time[1:].sum() > 0 else 1.0
    register = (int(np.percentile(np.concatenate(windows), REGISTER_QUANTILE))
                if windows else None)
    return GrammarLimits(max_polyphony=polyphony, max_steps=max(1, steps),
                         max_step_tokens=in_step, mean_polyphony=round(mean, 3),
                         pitch_ranges=[[inst, *span] for inst, span in sorted(ranges.items())],
                         register_span=register,
                         piece_polyphony=(round(float(np.mean(piece_means)), 3)
                                          if piece_means else None),
                         instrument_polyphony=[[inst, _quantile_polyphony(t, 100.0)]
                                               for inst, t in sorted(own_time.items())]
                         ), len(lengths)


def _mean_count(time: np.ndarray) -> float:
    """The mean count over the time something sounds, of a `sounding_time` array."""
    return float(np.arange(1, len(time)) @ time[1:] / time[1:].sum())


def _add_time(total: np.ndarray, piece: np.ndarray) -> np.ndarray:
    """Two `sounding_time` arrays added."""
    if len(piece) > len(total):
        total = np.pad(total, (0, len(piece) - len(total)))
    total[:len(piece)] += piece
    return total


def _quantile_polyphony(time: np.ndarray, quantile: float = POLYPHONY_QUANTILE) -> int:
    """The `quantile`-th percentile of polyphony over the time something sounds."""
    sounding = np.cumsum(time[1:])
    if not len(sounding) or sounding[-1] <= 0:
        return 1
    return 1 + int(np.searchsorted(sounding, quantile / 100 * sounding[-1]))


class _Grammar:
    """The constraint (see core/decoding/sampling.py) for a batch of sequences that continue
    `prompts` (each may start with <sep>): one walk per sequence."""

    walk_type: type = _Walk
    vocabulary = "events"

    def __init__(self, limits: GrammarLimits, prompts: list[np.ndarray],
                 texture: float = TEXTURE_WEIGHT, redirect: bool = True,
                 key: float = KEY_WEIGHT, register: float = REGISTER_WEIGHT,
                 pace: float = PACE_WEIGHT, source_onsets: list[np.ndarray] | None = None,
                 voice: float = VOICE_WEIGHT):
        """source_onsets: per sequence, the times of its source's pitched note-ons (a
        seq2seq target's; the pace steer follows them where the limits have a pace)."""
        self.texture, self.redirect, self.key, self.voice = texture, redirect, key, voice
        self.register, self.pace = register, pace
        self.source_onsets = source_onsets
        # per sequence: the limits, with a long prompt's own texture
        self.row_limits = [fitted_to(limits, np.asarray(p), self.vocabulary) for p in prompts]
        self.walks = [self.walk_type() for _ in prompts]
        for walk, prompt in zip(self.walks, prompts):
            for token in np.asarray(prompt).tolist():
                walk.step(int(token))
        self.removed = [[] for _ in prompts]  # per sequence, the mass masked at each step

    def _allowed_one(self, walk, limits: GrammarLimits) -> np.ndarray:  # noqa: ANN001
        raise NotImplementedError

    def allowed(self) -> np.ndarray:
        return np.stack([self._allowed_one(w, lim) for w, lim in zip(self.walks,
                                                                      self.row_limits)])

    def log_weights(self) -> np.ndarray | None:
        """The texture, voice, key, register and pace steers' log-weights (B, V), or None
        where they have nothing to say."""
        if not (self.texture or self.voice or self.key or self.register or self.pace):
            return None
        weights = np.zeros((len(self.walks), VOCAB_SIZE), dtype=np.float32)
        for row, (walk, limits) in enumerate(zip(self.walks, self.row_limits)):
            scale = walk.scale() if self.key else None
            if scale is not None:
                weights[row, NOTE_ON:NOTE_ON + 128] = -self.key * (1.0 - scale[_PITCH_CLASS])
            beyond = (walk.register(limits.register_span)
                      if self.register and limits.register_span is not None else None)
            if beyond is not None:
                weights[row, NOTE_ON:NOTE_ON + 128] -= self.register * beyond
            if self.texture or self.voice:
                self._steer(weights[row], walk, limits)
            if self.pace and limits.pace_of and self.source_onsets is not None:
                walk.pace(weights[row], limits.pace_of, self.source_onsets[row], self.pace)
        return weights if weights.any() else None

    def _steer(self, weights: np.ndarray, walk, limits: GrammarLimits) -> None:  # noqa: ANN001
        """Add one row's texture and voice log-weights (none by default)."""

    def redirects(self) -> np.ndarray | None:
        """(B, V): where the probability of a token the grammar refuses goes instead (-1:
        nowhere; core/decoding/sampling.py), or None where nothing moves."""
        if not self.redirect:
            return None
        out = np.full((len(self.walks), VOCAB_SIZE), -1, dtype=np.int64)
        for row, (walk, limits) in enumerate(zip(self.walks, self.row_limits)):
            if walk.named:
                self._redirect(out[row], walk)
            else:
                _name_first(out[row], walk, limits)
        return out if (out >= 0).any() else None

    def _redirect(self, targets: np.ndarray, walk) -> None:  # noqa: ANN001
        """Fill one row's redirects once the piece has named its instrument and velocity
        (none by default)."""

    def update(self, tokens, removed, rows: Iterable[bool] | None = None) -> None:  # noqa: ANN001
        """Step each sequence by its token; `rows`: only those marked True (the others,
        e.g. seq2seq targets already closed, keep their state for `closing`)."""
        rows = [True] * len(self.walks) if rows is None else list(rows)
        for walk, log, token, mass, live in zip(self.walks, self.removed, tokens.tolist(),
                                                removed.tolist(), rows):
            if live:
                walk.step(int(token))
                log.append(float(mass))


class MIDIGrammar(_Grammar):
    """The event vocabulary's grammar."""

    def _allowed_one(self, walk: _Walk, limits: GrammarLimits) -> np.ndarray:
        ok = np.zeros(VOCAB_SIZE, dtype=bool)
        oldest = walk.oldest()
        if oldest is not None and walk.now - oldest[1] >= limits.max_steps:
            (inst, pitch), _ = oldest
            if inst == walk.inst:
                ok[NOTE_OFF + pitch] = True  # held too long: release it now
            else:
                ok[inst] = True  # ... after switching to its instrument
            return ok
        ok[VELOCITY:DRUMS + 1] = True  # velocities, programs, drums
        for (inst, pitch), onsets in walk.sounding.items():
            # not in the step it started: the decoder would have to lengthen it
            if onsets and inst == walk.inst and onsets[0] < walk.now:
                ok[NOTE_OFF + pitch] = True
        # a note-on needs its instrument and velocity said first (else the decoder guesses)
        own = sum(len(q) for (inst, _), q in walk.sounding.items() if inst == walk.inst)
        if (walk.named and walk.count < limits.max_polyphony
                and own < limits.polyphony_of(walk.inst)):
            ok[NOTE_ON:NOTE_OFF] = True
            for (inst, pitch), onsets in walk.sounding.items():
                if onsets and inst == walk.inst:
                    ok[NOTE_ON + pitch] = False
        room = (limits.max_steps - (walk.now - oldest[1]) if oldest is not None
                else VELOCITY - SHIFT)
        ok[SHIFT:SHIFT + min(room, VELOCITY - SHIFT)] = True  # shifts of 1 .. room steps
        return walk.texture(ok, limits)

    def _redirect(self, targets: np.ndarray, walk: _Walk) -> None:
        # A note-off the model wants but the grammar refuses is read as the release it
        # most likely meant. A pitch the current instrument is not sounding: the switch to
        # the instrument that has sounded it longest (its note-off is allowed next); a
        # model that has not learned which instrument a note-off acts on otherwise loses
        # that probability to the mask. A pitch sounding nowhere: the note-off of the
        # nearest pitch the current instrument sounds, within NEAREST_RELEASE semitones; a
        # young model loses track of which notes sound, and without this its notes were
        # held to the grammar's longest (docs/music.md).
        longest: dict[int, tuple[int, int]] = {}  # pitch -> (onset, instrument)
        own = []  # pitches the current instrument may release now
        for (inst, pitch), onsets in walk.sounding.items():
            if inst == walk.inst:
                longest[pitch] = (-1, -1)  # its own note-off: nothing to move
                if onsets[0] < walk.now:
                    own.append(pitch)
            elif onsets[0] < walk.now and onsets[0] < longest.get(pitch, (walk.now, 0))[0]:
                longest[pitch] = (onsets[0], inst)
        for pitch, (_, inst) in longest.items():
            if inst >= 0:
                targets[NOTE_OFF + pitch] = inst
        if own:
            own_sorted = np.asarray(sorted(own))
            distance = np.abs(np.arange(128)[:, None] - own_sorted[None, :])
            nearest = own_sorted[distance.argmin(1)]  # the lower of two as near
            free = distance.min(1) <= NEAREST_RELEASE
            free[[pitch for _, pitch in walk.sounding]] = False  # sounding somewhere
            targets[NOTE_OFF:NOTE_OFF + 128][free] = NOTE_OFF + nearest[free]

    def closing(self, index: int = 0) -> list[int]:
        """Tokens that release every note still sounding in sequence `index`."""
        walk, out = self.walks[index], []
        if any(q and q[-1] == walk.now for q in walk.sounding.values()):
            out.append(SHIFT)  # one step, so no note ends in the step it started
            walk.step(SHIFT)
        for (inst, pitch), onsets in sorted(walk.sounding.items()):
            for _ in range(len(onsets)):
                if walk.inst != inst:
                    out.append(inst)
                    walk.step(inst)
                out.append(NOTE_OFF + pitch)
                walk.step(NOTE_OFF + pitch)
        return out


@lru_cache
def _duration_bins(max_steps: int) -> int:
    """How many duration bins a note of at most max_steps may take (the shortest if even
    that is longer)."""
    return max(1, sum(s <= max_steps for s in DURATION_STEPS))


_LOG_STEPS = np.log(np.asarray(DURATION_STEPS, dtype=np.float32))
_SHIFT_STEPS = np.arange(1, VELOCITY - SHIFT + 1, dtype=np.float32)  # each shift token's steps


class DurationGrammar(_Grammar):
    """The duration vocabulary's grammar."""

    walk_type = _DurationWalk
    vocabulary = "durations"

    def _steer(self, weights: np.ndarray, walk: _DurationWalk, limits: GrammarLimits) -> None:
        """With the music's mean polyphony m: while a note awaits its duration and n notes
        sound (that one included), fewer than m, a duration of d steps is weighted by
        d ** (LENGTH_SHARE * texture * (m - n) / m). Otherwise, while notes sound, a shift
        of k steps is weighted by exp(-texture * max(0, m - a_k)), a_k the mean number of
        notes sounding over those k steps: the steer holds back long shifts past the ends
        of the notes, and any shift while the texture is thin. Silence is not steered. A
        flat weight on every shift (2026-12-05) thickened the texture less and made time
        move in long steps; a stronger shifts' half alone fills the texture with short
        notes (docs/music.md).

        The voice steer: once time has moved, a shift is weighted by exp(-voice) per
        pitched note whose end it reached that no pitched note begun since has replaced,
        in silence too: a voice that ends a note sings the next one rather than drop out.
        A young model's samples start fewer notes at once than the music (1.7-1.9 against
        2.4) and spend a third of their sounding time with two notes or fewer (the music
        8%); the texture half alone thickens them only with short notes (docs/music.md).

        Both weights are multiplied by the limits' steer_gain (calibration.py)."""
        voice, texture = self.voice * limits.steer_gain, self.texture * limits.steer_gain
        if voice and walk.ended > walk.begun and walk.waiting is None:
            weights[SHIFT:VELOCITY] -= voice * (walk.ended - walk.begun)
        mean = limits.mean_polyphony
        if not texture or mean is None or walk.count == 0:
            return
        if walk.waiting is not None:
            if walk.count < mean:
                weights[DURATION:SHIFT] += (LENGTH_SHARE * texture * (mean - walk.count)
                                            / mean * _LOG_STEPS)
            return
        left = np.asarray([end - walk.now for end, _, _ in walk.sounding], dtype=np.float32)
        sounding = np.minimum(left[:, None], _SHIFT_STEPS).sum(0) / _SHIFT_STEPS
        weights[SHIFT:VELOCITY] += -texture * np.maximum(0.0, mean - sounding)

    def _allowed_one(self, walk: _DurationWalk, limits: GrammarLimits) -> np.ndarray:
        ok = np.zeros(VOCAB_SIZE, dtype=bool)
        if walk.waiting is not None:
            ok[DURATION:DURATION + _duration_bins(limits.max_steps)] = True
            return ok
        ok[SHIFT:DRUMS + 1] = True  # shifts, velocities, programs, drums
        own = sum(inst == walk.inst for _, inst, _ in walk.sounding)
        if (walk.named and walk.count < limits.max_polyphony
                and own < limits.polyphony_of(walk.inst)):
            ok[NOTE_ON:DURATION] = True
            for _, inst, pitch in walk.sounding:
                if inst == walk.inst:
                    ok[NOTE_ON + pitch] = False
        return walk.texture(ok, limits)

    def closing(self, index: int = 0) -> list[int]:
        """The shortest duration for a final note still waiting for one, else nothing."""
        walk = self.walks[index]
        if walk.waiting is None:
            return []
        walk.step(DURATION)
        return [DURATION]
