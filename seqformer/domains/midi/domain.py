"""The MIDI domain: files <-> tokens of either vocabulary, its sampling grammar, and
what the CLI writes next to a sample (piano roll, statistics, audio)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..base import Domain, InputError, OnSkip, Record
from . import durations, events
from .calibration import TEXTURE_TOLERANCE, calibrated
from .files import load_midi, write_midi
from .grammar import (
    KEY_WEIGHT,
    PACE_WEIGHT,
    REGISTER_WEIGHT,
    TEXTURE_WEIGHT,
    VOICE_WEIGHT,
    DurationGrammar,
    GrammarLimits,
    MIDIGrammar,
    limits_from,
    pace_from,
)
from .render import piano_roll_png, render_audio, stats
from .vocab import DRUMS, DURATION_TOKENS, NOTE_OFF, PAD, PROGRAM, SEP, SHIFT, TOKENS

log = logging.getLogger(__name__)

# name -> (token names, encode, decode, sampling grammar)
_VOCABULARIES = {
    "events": (TOKENS, events.encode, events.decode, MIDIGrammar),
    "durations": (DURATION_TOKENS, durations.encode, durations.decode, DurationGrammar),
}
VOCABULARIES = tuple(_VOCABULARIES)


def _log_skip(path: str, reason: str) -> None:
    log.warning("skipping %s: %s", path, reason)


class MIDIDomain(Domain):
    """MIDI files <-> tokens. `vocabulary="events"` (the default) is the note-on/note-off
    vocabulary (events.py); "durations" gives each note a duration token instead of a
    note-off (durations.py)."""

    name = "midi"
    pad_id = PAD
    sep_id = SEP

    stats = staticmethod(stats)
    piano_roll_png = staticmethod(piano_roll_png)
    write_midi = staticmethod(write_midi)
    render_audio = staticmethod(render_audio)

    def __init__(self, vocabulary: str = "events") -> None:
        if vocabulary not in _VOCABULARIES:
            raise InputError(f"unknown MIDI vocabulary {vocabulary!r} "
                             f"(available: {', '.join(VOCABULARIES)})")
        self.vocabulary_name = vocabulary
        self.tokens, self.encode, self.decode, self._grammar = _VOCABULARIES[vocabulary]

    def config(self) -> dict[str, Any]:
        return {"vocabulary": self.vocabulary_name}

    @staticmethod
    def ends_note(token: int) -> bool:
        """A note-off (events) or a duration (durations): a token that settles a note."""
        return NOTE_OFF <= token < SHIFT

    @staticmethod
    def shuffle_programs(tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """`tokens` with every program token relabelled by one random permutation of the 128
        General MIDI programs, drums and all other tokens unchanged: the same music played
        by other instruments (the training switch data.program_shuffle)."""
        out = np.array(tokens, copy=True)
        is_program = (out >= PROGRAM) & (out < DRUMS)
        out[is_program] = PROGRAM + rng.permutation(128)[out[is_program] - PROGRAM]
        return out

    def sampling_limits(self, sequences: Iterable[np.ndarray],
                        sources: list[np.ndarray] | None = None,
                        source_domain: Domain | None = None) -> dict[str, Any]:
        """The grammar's limits (grammar.py); with the training targets' MIDI sources (in
        the same order), also each instrument's pace per source note and the most notes
        it sounds at once (a harmonization's voice: one). A language model's samples keep
        no per-instrument limit: on the main job's validation pieces it lowered the mean
        overlap from 0.582 to 0.543 (docs/music.md)."""
        sequences = list(sequences)
        limits = limits_from(sequences, self.vocabulary_name)
        if sources is not None and isinstance(source_domain, MIDIDomain):
            return replace(limits, pace=pace_from(
                zip(sources, sequences), source_domain.vocabulary_name, self.vocabulary_name)
            ).to_dict()
        return replace(limits, instrument_polyphony=None).to_dict()

    def calibrated_limits(self, limits: dict[str, Any] | None,
                          sample: Callable[[dict[str, Any], int, int], list[np.ndarray]]
                          ) -> tuple[dict[str, Any] | None, str | None]:
        """With the duration vocabulary, the texture and voice steers fitted to the model
        that `sample` draws from (calibration.py); the event vocabulary has no such steer."""
        if self.vocabulary_name != "durations" or not limits:
            return limits, None
        fitted, tried = calibrated(GrammarLimits(**limits),
                                   lambda trial, n, length: sample(trial.to_dict(), n, length))
        if not tried:
            return limits, None
        said = (f"the model's samples sound {tried[0][1]:.2f} notes at once against the "
                f"training pieces' {fitted.piece_polyphony:.2f}")
        if len(tried) == 1:
            return fitted.to_dict(), f"{said}: steers as they are"
        stronger = ", ".join(f"x{gain:g} {mean:.2f}" for gain, mean in tried[1:])
        return fitted.to_dict(), (f"{said} (more than {TEXTURE_TOLERANCE:.0%} below); with the "
                                  f"texture and voice steers {stronger}: "
                                  f"x{fitted.steer_gain:g} kept")

    def constraint(self, limits: dict[str, Any] | None, prompts: list[np.ndarray],
                   texture: float = TEXTURE_WEIGHT, redirect: bool = True,
                   key: float = KEY_WEIGHT, register: float = REGISTER_WEIGHT,
                   pace: float = PACE_WEIGHT, source_onsets: list[np.ndarray] | None = None,
                   voice: float = VOICE_WEIGHT) -> MIDIGrammar | DurationGrammar:
        """The note grammar of the vocabulary (grammar.py), with the texture and voice
        steers of the duration vocabulary and the key, register and pace steers this
        strong (0: off) and, for events, a refused note-off redirected to the release it
        most likely meant (`redirect`); without stored limits, a model trained before they
        were: at most 16 notes at once, none longer than 10 s. `source_onsets`: per
        prompt, the times of a seq2seq source's pitched note-ons, which the pace steer
        follows."""
        for name, weight in (("texture", texture), ("voice", voice), ("key", key),
                             ("register", register), ("pace", pace)):
            if not weight >= 0:
                raise InputError(f"{name} must be >= 0 (0: off), got {weight}")
        limits = GrammarLimits(**limits) if limits else GrammarLimits(16, 1000)
        return self._grammar(limits, prompts, texture, redirect, key, register, pace,
                             source_onsets, voice)

    def read(self, path: str | Path, on_skip: OnSkip | None = None) -> Iterator[Record]:
        """One Record per piece of a .mid/.midi file, or of every such file under a directory
        (recursive, case-insensitive, sorted). Unreadable files and files without notes in a
        directory are passed over and reported to on_skip(path, reason) (by default a logged
        warning). Path problems raise InputError here; 'nothing readable' raises once the
        records are exhausted."""
        root = Path(path)
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
        return self._read_dir(root, files, on_skip or _log_skip)

    def _read_dir(self, root: Path, files: list[Path], on_skip: OnSkip) -> Iterator[Record]:
        found, skipped = 0, []
        for file in files:
            record, reason = self._record(file, file.relative_to(root).with_suffix("").as_posix())
            if record is None:
                skipped.append((str(file), reason))
                on_skip(str(file), reason)
            else:
                found += 1
                yield record
        if not found:
            first = skipped[0]
            raise InputError(f"no readable MIDI files in {root}: {len(skipped)} skipped "
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

    def write(self, records: Iterable[Record], path: str | Path) -> dict[str, int]:
        """Exactly one record -> one .mid file (atomically); returns the repair counts."""
        records = list(records)
        if len(records) != 1:
            raise ValueError(f"MIDI output holds one piece; got {len(records)} records")
        pm, repairs = self.decode(records[0].tokens)
        write_midi(pm, path)
        return repairs
