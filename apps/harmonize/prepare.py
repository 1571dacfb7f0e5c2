"""Soprano -> alto/tenor/bass pairs from Bach's four-part chorales, split 90/10 by tune.

    python apps/harmonize/prepare.py            # reads ../shared/data/midi/bach/

The chorales are music21 exports: one named track per voice ("Soprano", "Alto", "Tenor",
"Bass"), sometimes with doubling instruments beside them (horns, trumpets, timpani, strings,
continuo). A track belongs to a voice when the first word of its name is that voice
(case-insensitive), so "Soprano\\rOboe 1,2\\rViolin1" is the soprano and "Soprano 1" is a
soprano too. A file is kept when it has exactly one track of each of the four voices, each
with notes; the other tracks are ignored. Everything else is dropped with its reason (the
Riemenschneider analysis files have one unnamed track, BWV 281 has four unnamed tracks,
BWV 846 is the C major prelude for piano, two chorales have "Soprano 1" and "Soprano 2").

For each kept chorale two MIDI files with the same name (the source file's) are written:

    <out>/<split>/soprano/<name>.mid   the soprano track only
    <out>/<split>/atb/<name>.mid       alto, tenor and bass tracks, in that order

Both are copies of the source with the other tracks removed, so they share its resolution,
tempo map, time and key signatures: note times in seconds are the source's exactly. Track
names become the canonical "Soprano", "Alto", "Tenor", "Bass". Programs are kept (program 0
for all four voices in all but four files), unless `--programs distinct` gives each voice
its own (VOICE_PROGRAMS: flute, oboe, English horn, bassoon): seqformer's MIDI tokens merge
tracks of the same program, so only distinct programs let the token stream tell the voices
apart (see voices.py), at the price of about 38% more ATB tokens.

Splits (`train`, `heldout`) are seeded (--seed) and by tune: Bach harmonized many hymn
tunes several times (13 chorales here set "Herzlich tut mich verlangen"), so chorales whose
soprano lines are one melody always land on the same side and no held-out melody was seen in
training. A soprano line is compared as its interval sequence with repeated notes merged
(transposition and re-tied notes do not matter); two are one tune when their first 10
intervals agree or difflib rates the sequences at least 0.75 alike (passing notes, repeats,
other endings), and tunes are the connected groups of that relation.

The shortest chorales of each split (--sample, default 12 train and 4 held-out) are also
written to `<out>/sample/<split>/{soprano,atb}/`: the small set the tests and CI use.
`<out>/summary.json` records the counts, the reasons for dropping, the tune groups, the
splits, the pitch ranges observed per voice in the training chorales, token lengths under
seqformer's MIDI tokenizer and the size on disk.

Read a split with `seqformer.domains.get_domain('midi').read('<out>/train/atb')`: record ids
are the file names, so soprano and ATB records pair by id.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import os
import random
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pretty_midi

from seqformer import get_domain, midi

APP = Path(__file__).resolve().parent
REPO = APP.parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "midi" / "bach"
DEFAULT_OUT = APP / "data"
VOICES = ("soprano", "alto", "tenor", "bass")
ATB = VOICES[1:]
SPLITS = ("train", "heldout")
KINDS = ("soprano", "atb")
# --programs distinct: flute; oboe, English horn, bassoon (GM programs, 0-based). Alto < tenor
# < bass, so within a time step the token stream lists the voices from the top down
VOICE_PROGRAMS = {"soprano": 73, "alto": 68, "tenor": 69, "bass": 70}
# two sopranos are one tune when their first TUNE_PREFIX intervals agree or their interval
# sequences are at least TUNE_SIMILARITY alike (difflib's ratio); see same_tune
TUNE_PREFIX = 10
TUNE_SIMILARITY = 0.75


def voice_of(track_name: str) -> str | None:
    """The voice a track name stands for: its first word, if that is a voice name."""
    words = track_name.split()
    return words[0].lower() if words and words[0].lower() in VOICES else None


def find_voices(pm: pretty_midi.PrettyMIDI
                ) -> tuple[dict[str, pretty_midi.Instrument] | None, str]:
    """{voice: its track} when the file has exactly one track per voice, each with notes;
    else (None, the reason)."""
    tracks: dict[str, list[pretty_midi.Instrument]] = {v: [] for v in VOICES}
    for inst in pm.instruments:
        voice = voice_of(inst.name)
        if voice:
            tracks[voice].append(inst)
    if not any(tracks.values()):
        names = sorted({repr(i.name) for i in pm.instruments})
        return None, (f"no track named Soprano/Alto/Tenor/Bass ({len(pm.instruments)} "
                      f"track(s) named {', '.join(names)})")
    for voice in VOICES:
        if not tracks[voice]:
            return None, f"no {voice} track"
        if len(tracks[voice]) > 1:
            names = ", ".join(repr(i.name) for i in tracks[voice])
            return None, f"{len(tracks[voice])} {voice} tracks ({names})"
        if not tracks[voice][0].notes:
            return None, f"the {voice} track has no notes"
    return {v: tracks[v][0] for v in VOICES}, ""


def voice_midi(pm: pretty_midi.PrettyMIDI, tracks: dict[str, pretty_midi.Instrument],
               voices: Sequence[str], programs: dict[str, int] | None = None
               ) -> pretty_midi.PrettyMIDI:
    """A copy of `pm` (resolution, tempo map, time and key signatures, lyrics) holding only
    the tracks of `voices`, named canonically, programs from `programs` if given."""
    out = copy.copy(pm)  # shallow, so that deep-copying it below leaves the tracks out
    out.instruments = []
    out = copy.deepcopy(out)
    for voice in voices:
        inst = copy.deepcopy(tracks[voice])
        inst.name = voice.capitalize()
        if programs is not None:
            inst.program = programs[voice]
        out.instruments.append(inst)
    return out


def tune_key(soprano: pretty_midi.Instrument) -> tuple[int, ...]:
    """The soprano's interval sequence, repeated pitches merged: one key per tune, whatever
    the key it is in or how its notes are tied."""
    pitches = [n.pitch for n in sorted(soprano.notes, key=lambda n: (n.start, -n.pitch))]
    merged = [p for i, p in enumerate(pitches) if i == 0 or p != pitches[i - 1]]
    return tuple(np.diff(merged).tolist())


@dataclass
class Chorale:
    name: str  # the source file's stem: the record id of both output files
    soprano: pretty_midi.PrettyMIDI
    atb: pretty_midi.PrettyMIDI
    tune: tuple[int, ...]
    extra_tracks: int  # tracks beside the four voices (doublings), not written


def read_chorales(source: str | Path, programs: dict[str, int] | None = None,
                  log: Callable[[str], None] = print
                  ) -> tuple[list[Chorale], list[tuple[str, str]]]:
    """The kept chorales of every .mid file directly under `source` (sorted by name), and the
    (file name, reason) of each dropped file."""
    files = sorted(p for p in Path(source).iterdir()
                   if p.suffix.lower() in (".mid", ".midi") and p.is_file())
    if not files:
        raise SystemExit(f"{source}: no .mid files")
    kept, dropped = [], []
    for path in files:
        try:
            pm = midi.load_midi(path)
        except Exception as error:  # mido/pretty_midi raise many kinds on bad bytes
            dropped.append((path.name, f"unreadable ({type(error).__name__}: {error})"))
            continue
        tracks, reason = find_voices(pm)
        if tracks is None:
            dropped.append((path.name, reason))
            continue
        kept.append(Chorale(path.stem, voice_midi(pm, tracks, VOICES[:1], programs),
                            voice_midi(pm, tracks, ATB, programs), tune_key(tracks["soprano"]),
                            len(pm.instruments) - len(VOICES)))
    log(f"{len(files)} files: {len(kept)} chorales kept, {len(dropped)} dropped")
    return kept, dropped


def same_tune(a: Sequence[int], b: Sequence[int], prefix: int = TUNE_PREFIX,
              similarity: float = TUNE_SIMILARITY) -> bool:
    """Whether two tune keys (soprano interval sequences) are one melody: the same first
    `prefix` intervals, or difflib's similarity ratio at least `similarity` (a harmonization
    may add or drop passing notes, repeat a section or end differently)."""
    if tuple(a[:prefix]) == tuple(b[:prefix]):
        return True
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return (matcher.real_quick_ratio() >= similarity and matcher.quick_ratio() >= similarity
            and matcher.ratio() >= similarity)


def tune_groups(chorales: Sequence[Chorale]) -> list[list[Chorale]]:
    """Chorales grouped by melody: the connected components of `same_tune`, each sorted by
    name, listed by their first name."""
    ordered = sorted(chorales, key=lambda c: c.name)
    parent = list(range(len(ordered)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, a in enumerate(ordered):
        for j in range(i + 1, len(ordered)):
            if root(i) != root(j) and same_tune(a.tune, ordered[j].tune):
                parent[root(j)] = root(i)
    groups: dict[int, list[Chorale]] = {}
    for i, chorale in enumerate(ordered):
        groups.setdefault(root(i), []).append(chorale)
    return sorted(groups.values(), key=lambda g: g[0].name)


def split_chorales(chorales: Sequence[Chorale], heldout_fraction: float = 0.1, seed: int = 0,
                   groups: list[list[Chorale]] | None = None) -> dict[str, list[Chorale]]:
    """Seeded split by tune (`tune_groups`): whole groups go to `heldout` until it holds
    round(fraction x n) chorales (or just over); both lists sorted by name."""
    order = list(groups if groups is not None else tune_groups(chorales))
    random.Random(seed).shuffle(order)
    target = round(heldout_fraction * len(chorales))
    heldout: list[Chorale] = []
    train: list[Chorale] = []
    for group in order:
        (heldout if len(heldout) < target else train).extend(group)
    return {"train": sorted(train, key=lambda c: c.name),
            "heldout": sorted(heldout, key=lambda c: c.name)}


def clear_dir(folder: Path) -> None:
    """Remove the .mid files a previous run left in one of our output folders."""
    if folder.is_dir():
        for old in folder.glob("*.mid"):
            old.unlink()
    folder.mkdir(parents=True, exist_ok=True)


def write_split(out: Path, splits: dict[str, Sequence[Chorale]]) -> None:
    for split, chorales in splits.items():
        for kind in KINDS:
            clear_dir(out / split / kind)
        for c in chorales:
            midi.write_midi(c.soprano, out / split / "soprano" / f"{c.name}.mid")
            midi.write_midi(c.atb, out / split / "atb" / f"{c.name}.mid")


def token_lengths(folder: str | Path) -> dict[str, int]:
    """{record id: number of tokens} of the MIDI files under `folder`."""
    return {r.id: len(r.tokens) for r in get_domain("midi").read(folder)}


def length_stats(lengths: Sequence[int]) -> dict[str, float]:
    a = np.asarray(lengths, dtype=float)
    return {"n": int(a.size), "min": int(a.min()), "mean": round(float(a.mean()), 1),
            "p95": int(np.percentile(a, 95)), "max": int(a.max())}


def voice_ranges(chorales: Sequence[Chorale]) -> dict[str, list[int]]:
    """[lowest, highest] MIDI pitch of each voice over these chorales."""
    pitches: dict[str, list[int]] = {v: [] for v in VOICES}
    for c in chorales:
        for inst in c.soprano.instruments + c.atb.instruments:
            pitches[inst.name.lower()] += [n.pitch for n in inst.notes]
    return {v: [min(p), max(p)] for v, p in pitches.items() if p}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.mid"))


def _shown(path: str | Path) -> str:
    """A path relative to the repository when it can be (no machine's layout in the
    summary), else as given."""
    try:
        return os.path.relpath(Path(path).resolve(), REPO)
    except ValueError:  # another drive (Windows)
        return str(path)


def prepare(source: str | Path = DEFAULT_SOURCE, out: str | Path = DEFAULT_OUT,
            heldout_fraction: float = 0.1, seed: int = 0, sample: tuple[int, int] = (12, 4),
            programs: dict[str, int] | None = None, log: Callable[[str], None] = print
            ) -> dict:
    """The whole preparation; returns a summary (also written to `out/summary.json`)."""
    out = Path(out)
    chorales, dropped = read_chorales(source, programs, log)
    if not chorales:
        raise SystemExit(f"{source}: no chorale with Soprano/Alto/Tenor/Bass tracks")
    groups = tune_groups(chorales)
    splits = split_chorales(chorales, heldout_fraction, seed, groups)
    write_split(out, splits)
    lengths = {split: {kind: token_lengths(out / split / kind) for kind in KINDS}
               for split in SPLITS if splits[split]}
    # the sample: the shortest chorales of each split (soprano + ATB tokens)
    samples = {}
    for split, n in zip(SPLITS, sample):
        if split not in lengths:
            samples[split] = []
            continue
        total = {c.name: lengths[split]["soprano"][c.name] + lengths[split]["atb"][c.name]
                 for c in splits[split]}
        samples[split] = sorted(splits[split], key=lambda c: (total[c.name], c.name))[:n]
    write_split(out / "sample", samples)
    every = {kind: [n for s in lengths.values() for n in s[kind].values()] for kind in KINDS}
    summary = {
        "source": _shown(source), "seed": seed, "heldout_fraction": heldout_fraction,
        "programs": "distinct" if programs else "kept",
        "voice_programs": programs,
        "files": len(chorales) + len(dropped), "kept": len(chorales), "dropped": len(dropped),
        "drop_reasons": dict(Counter(r.split(" (")[0] for _, r in dropped).most_common()),
        "dropped_files": {name: reason for name, reason in dropped},
        "kept_with_extra_tracks": sum(c.extra_tracks > 0 for c in chorales),
        "tunes": len(groups), "tunes_with_several_chorales": sum(len(g) > 1 for g in groups),
        "chorales_sharing_a_tune": sum(len(g) for g in groups if len(g) > 1),
        "largest_tune_groups": [[c.name for c in g]
                                for g in sorted(groups, key=len, reverse=True)[:5]],
        "splits": {s: len(splits[s]) for s in SPLITS},
        "sample": {s: [c.name for c in samples[s]] for s in SPLITS},
        "observed_ranges_train": voice_ranges(splits["train"]),
        "observed_ranges_all": voice_ranges(chorales),
        "token_lengths": {kind: length_stats(every[kind]) for kind in KINDS},
        "token_lengths_by_split": {s: {k: length_stats(list(v.values()))
                                       for k, v in by_kind.items()}
                                   for s, by_kind in lengths.items()},
        "bytes": {s: folder_bytes(out / s) for s in (*SPLITS, "sample")},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    log(f"drop reasons: {summary['drop_reasons']}")
    log(f"{summary['tunes']} tunes ({summary['chorales_sharing_a_tune']} chorales share one of "
        f"{summary['tunes_with_several_chorales']}); split {summary['splits']}")
    for kind in KINDS:
        s = summary["token_lengths"][kind]
        log(f"{kind} tokens: min {s['min']}, mean {s['mean']}, p95 {s['p95']}, max {s['max']}")
    log(f"ranges (train): {summary['observed_ranges_train']}")
    log(f"bytes: {summary['bytes']}; wrote {out}")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=str(DEFAULT_SOURCE),
                        help="folder of chorale .mid files (default: %(default)s)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder")
    parser.add_argument("--heldout", type=float, default=0.1, help="held-out fraction")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample", type=int, nargs=2, default=(12, 4),
                        metavar=("TRAIN", "HELDOUT"), help="chorales in the small sample")
    parser.add_argument("--programs", choices=("kept", "distinct"), default="kept",
                        help="keep the source's programs (all 0 in nearly every file: the "
                             "voices merge in the token stream), or give each voice its own")
    args = parser.parse_args(argv)
    prepare(args.source, args.out, args.heldout, args.seed, tuple(args.sample),
            VOICE_PROGRAMS if args.programs == "distinct" else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
