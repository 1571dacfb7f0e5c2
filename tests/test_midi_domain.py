"""The MIDI domain: vocabulary, lossless round trip, repairs, sustain, reading, writing, stats."""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

import mido
import numpy as np
import pretty_midi
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqformer.domains import InputError, Record, get_domain
from seqformer.domains.midi import (
    DRUMS,
    NOTE_OFF,
    NOTE_ON,
    PAD,
    PROGRAM,
    SEP,
    VELOCITY,
    VOCAB_SIZE,
    MIDIDomain,
    decode,
    encode,
    load_midi,
    piano_roll_png,
    render_audio,
    stats,
    write_midi,
)

from cli_helpers import LONG_MIDI as LONG_PIECE
from cli_helpers import MIDI_SAMPLE as BUNDLED_FILES
from cli_helpers import REPO
from midi_tokens import shift

BUNDLED = REPO / "data" / "midi"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "midi"
# bundled music21 exports that pretty_midi alone refuses ("likely corrupt")
REFUSED = ["palestrina/palestrina__Gloria_94.mid", "palestrina/palestrina__Credo_00.mid",
           "palestrina/palestrina__Gloria_18.mid"]
TOL = 0.01 + 1e-9  # one 10 ms step


def note_table(pm: pretty_midi.PrettyMIDI) -> dict:
    """Per (program, drum, pitch): sorted onsets, sorted offsets, sorted (onset step, velocity
    bin). Where no note lies inside another of the same pitch, sorted onsets and sorted offsets
    pair up note by note, so comparing them is a per-note check; where one does, the decoder may
    swap the two offsets (first in, first out), so offsets are compared as a multiset."""
    table: dict = defaultdict(lambda: ([], [], []))
    for inst in pm.instruments:
        key = (0 if inst.is_drum else int(inst.program), inst.is_drum)
        for n in inst.notes:
            onsets, offsets, onset_velocity = table[key + (n.pitch,)]
            onsets.append(n.start)
            offsets.append(n.end)
            onset_velocity.append((math.floor(n.start * 100 + 1e-6), n.velocity // 4))
    return {key: tuple(sorted(column) for column in columns) for key, columns in table.items()}


def assert_same_notes(original: pretty_midi.PrettyMIDI, decoded: pretty_midi.PrettyMIDI) -> None:
    want, got = note_table(original), note_table(decoded)
    assert want.keys() == got.keys()  # pitch, program and drum flag exactly
    for key in want:
        (on_a, off_a, ov_a), (on_b, off_b, ov_b) = want[key], got[key]
        assert len(on_a) == len(on_b), key
        assert ov_a == ov_b, key  # onset step and velocity bin exactly
        assert np.abs(np.subtract(on_a, on_b)).max() <= TOL, key
        assert np.abs(np.subtract(off_a, off_b)).max() <= TOL, key


# ---------------------------------------------------------------------------- vocabulary


def test_vocabulary_layout():
    domain = get_domain("midi")
    assert isinstance(domain, MIDIDomain) and domain.name == "midi"
    assert domain.vocab_size == VOCAB_SIZE == 519
    assert (domain.pad_id, domain.sep_id) == (0, 1)
    tokens = domain.tokens
    assert tokens[:2] == ("<pad>", "<sep>")
    assert tokens[NOTE_ON] == "on_0" and tokens[NOTE_ON + 127] == "on_127"
    assert tokens[NOTE_OFF + 60] == "off_60"
    assert tokens[shift(1)] == "shift_10ms" and tokens[shift(100)] == "shift_1000ms"
    assert tokens[VELOCITY] == "velocity_0-3" and tokens[VELOCITY + 31] == "velocity_124-127"
    assert tokens[PROGRAM + 52] == "program_52" and tokens[DRUMS] == "drums"
    assert len(set(tokens)) == len(tokens)
    assert domain.vocabulary()["tokens"] == list(tokens)


# ---------------------------------------------------------------------------- round trip


def test_bundled_sample_is_there():
    assert len(BUNDLED_FILES) == 36
    assert all(f.stat().st_size < 200_000 for f in BUNDLED_FILES)
    more = sorted((BUNDLED / "more").rglob("*.mid"))  # what the main job learns from besides
    assert len(more) == 199 and sum(f.stat().st_size for f in more) < 1_500_000
    assert {f.parent.name for f in more} == {"bach", "palestrina", "monteverdi", "josquin"}


@pytest.mark.parametrize("path", BUNDLED_FILES, ids=lambda p: p.stem)
def test_round_trip_bundled(path: Path):
    pm = load_midi(path)
    # the tolerance below assumes no pedal: sustain folding is tested on its own
    assert not any(cc.number == 64 for inst in pm.instruments for cc in inst.control_changes)
    tokens = encode(pm)
    assert tokens.dtype == np.int64 and tokens.min() >= 2 and tokens.max() < VOCAB_SIZE
    decoded, repairs = decode(tokens)
    assert not any(repairs.values()), repairs
    assert_same_notes(pm, decoded)
    assert np.array_equal(encode(decoded), tokens)  # tokens -> MIDI -> tokens is exact


def test_drums_keep_their_flag():
    pm = load_midi(LONG_PIECE)
    decoded, _ = decode(encode(pm))
    assert any(i.is_drum for i in pm.instruments)
    drums = sum(len(i.notes) for i in pm.instruments if i.is_drum)
    assert drums == sum(len(i.notes) for i in decoded.instruments if i.is_drum) > 0


def test_written_file_keeps_overlapping_unisons(tmp_path: Path):
    # Gloria_94 has same-pitch overlaps between voices that share program 53
    pm = load_midi(BUNDLED / REFUSED[0])
    decoded, _ = decode(encode(pm))
    out = tmp_path / "out.mid"
    write_midi(decoded, out)
    assert mido.MidiFile(out).type == 1
    reread = load_midi(out)
    assert_same_notes(pm, reread)
    assert np.array_equal(encode(reread), encode(pm))


@pytest.mark.parametrize("name", REFUSED)
def test_files_pretty_midi_refuses_are_read(name: str):
    path = BUNDLED / name
    with pytest.raises(ValueError, match="likely corrupt"):
        pretty_midi.PrettyMIDI(str(path))
    pm = load_midi(path)
    mid = mido.MidiFile(path)
    note_ons = sum(1 for t in mid.tracks for m in t if m.type == "note_on" and m.velocity > 0)
    assert sum(len(i.notes) for i in pm.instruments) == note_ons
    # mido's own tick -> seconds conversion agrees on when the last note ends
    now, last_note_event = 0.0, 0.0
    for message in mid:  # merged tracks, delta times in seconds
        now += message.time
        if message.type in ("note_on", "note_off"):
            last_note_event = now
    assert max(n.end for i in pm.instruments for n in i.notes) == pytest.approx(last_note_event)


def test_huge_tick_counts_without_a_common_factor(tmp_path: Path):
    # 9973 ticks per beat (prime) and a note ending at tick 10,000,019: dividing is not enough,
    # so ticks are rounded to a coarser resolution
    mid = mido.MidiFile(ticks_per_beat=9973)
    track = mido.MidiTrack([mido.Message("note_on", note=60, velocity=90, time=3),
                            mido.Message("note_off", note=60, velocity=0, time=10_000_016)])
    mid.tracks.append(track)
    path = tmp_path / "long.mid"
    mid.save(path)
    with pytest.raises(ValueError, match="likely corrupt"):
        pretty_midi.PrettyMIDI(str(path))
    (note,) = load_midi(path).instruments[0].notes
    assert note.start == pytest.approx(3 / 9973 * 0.5, abs=1e-4)
    assert note.end == pytest.approx(10_000_019 / 9973 * 0.5, abs=1e-4)


def test_more_refused_files_from_shared_data():
    if not SHARED.is_dir():
        pytest.skip("shared data not present")
    names = ["trecento/trecento__PMFC_01-Lugentium siccentur.mid",
             "palestrina/palestrina__Gloria_46.mid", "palestrina/palestrina__Credo_82.mid"]
    for name in names:
        path = SHARED / name
        if not path.exists():
            pytest.skip(f"{path} not present")
        with pytest.raises(ValueError, match="likely corrupt"):
            pretty_midi.PrettyMIDI(str(path))
        pm = load_midi(path)
        decoded, repairs = decode(encode(pm))
        assert not any(repairs.values())
        assert_same_notes(pm, decoded)


# ---------------------------------------------------------------------------- decoding repairs


def piano(*tokens: int) -> list[int]:
    return [PROGRAM, VELOCITY + 20, *tokens]


def notes_of(pm: pretty_midi.PrettyMIDI) -> list[tuple]:
    return sorted((round(n.start, 6), round(n.end, 6), n.pitch, n.velocity, i.is_drum, i.program)
                  for i in pm.instruments for n in i.notes)


def test_decode_clean_stream():
    pm, repairs = decode([SEP, *piano(NOTE_ON + 60, shift(50), NOTE_OFF + 60)])
    assert not any(repairs.values())
    assert notes_of(pm) == [(0.0, 0.5, 60, 82, False, 0)]


@pytest.mark.parametrize("tokens, repair, expected", [
    (piano(NOTE_OFF + 60), "unmatched_note_off", []),
    (piano(NOTE_ON + 60, shift(3)), "unclosed_note", [(0.0, 0.03, 60, 82, False, 0)]),
    (piano(NOTE_ON + 60), "unclosed_note", [(0.0, 0.01, 60, 82, False, 0)]),
    (piano(NOTE_ON + 60, NOTE_OFF + 60), "zero_length", [(0.0, 0.01, 60, 82, False, 0)]),
    (piano(NOTE_ON + 60, PAD, shift(1), NOTE_OFF + 60), "pad",
     [(0.0, 0.01, 60, 82, False, 0)]),
    (piano(NOTE_ON + 60, shift(1), -1, VOCAB_SIZE, 10**9, NOTE_OFF + 60), "unknown_token",
     [(0.0, 0.01, 60, 82, False, 0)]),
    ([VELOCITY, NOTE_ON + 60, shift(1), NOTE_OFF + 60], "no_instrument",
     [(0.0, 0.01, 60, 2, False, 0)]),
    ([PROGRAM + 5, NOTE_ON + 60, shift(1), NOTE_OFF + 60], "no_velocity",
     [(0.0, 0.01, 60, 66, False, 5)]),
])
def test_decode_repairs(tokens, repair, expected):
    pm, repairs = decode(tokens)
    counts = {k: v for k, v in repairs.items() if v}
    assert counts == {repair: 3 if repair == "unknown_token" else 1}
    assert notes_of(pm) == expected


def test_separator_inside_is_a_piece_boundary():
    first = piano(NOTE_ON + 60, shift(10))  # never closed
    second = [PROGRAM + 40, VELOCITY + 10, NOTE_ON + 64, shift(5), NOTE_OFF + 64]
    pm, repairs = decode([SEP, SEP, *first, SEP, *second, SEP])
    assert {k: v for k, v in repairs.items() if v} == {"separator": 2, "unclosed_note": 1}
    assert notes_of(pm) == [(0.0, 0.1, 60, 82, False, 0), (0.1, 0.15, 64, 42, False, 40)]


def test_note_off_belongs_to_the_current_instrument():
    tokens = piano(NOTE_ON + 60, PROGRAM + 1, shift(5), NOTE_OFF + 60, PROGRAM, NOTE_OFF + 60)
    pm, repairs = decode(tokens)
    assert repairs["unmatched_note_off"] == 1
    assert notes_of(pm) == [(0.0, 0.05, 60, 82, False, 0)]


def test_drums_and_same_pitch_overlap():
    tokens = [DRUMS, VELOCITY + 31, NOTE_ON + 36, shift(5), NOTE_ON + 36, shift(5),
              NOTE_OFF + 36, shift(5), NOTE_OFF + 36]
    pm, repairs = decode(tokens)
    assert not any(repairs.values())
    # first in, first out; each overlapping note gets its own track so a file can hold it
    assert notes_of(pm) == [(0.0, 0.1, 36, 126, True, 0), (0.05, 0.15, 36, 126, True, 0)]
    assert len(pm.instruments) == 2 and all(i.is_drum for i in pm.instruments)


def test_long_gaps_are_several_shifts():
    pm = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(0)
    inst.notes.append(pretty_midi.Note(100, 60, 2.505, 2.6))
    pm.instruments.append(inst)
    tokens = encode(pm).tolist()
    assert tokens[:3] == [shift(100), shift(100), shift(50)]
    assert notes_of(decode(tokens)[0]) == [(2.5, 2.6, 60, 102, False, 0)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.integers(0, VOCAB_SIZE - 1), st.integers(-3, VOCAB_SIZE + 3)),
                max_size=300))
def test_any_token_stream_decodes_and_writes(tokens):
    pm, repairs = decode(np.asarray(tokens, dtype=np.int64))
    notes = [n for i in pm.instruments for n in i.notes]
    assert all(0 <= n.pitch <= 127 and 1 <= n.velocity <= 127 and n.end > n.start
               for n in notes)
    assert all(v >= 0 for v in repairs.values())
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sample.mid"
        write_midi(pm, out)
        mid = mido.MidiFile(out)  # another parser than pretty_midi opens it
    note_ons = sum(1 for t in mid.tracks for m in t if m.type == "note_on" and m.velocity > 0)
    assert note_ons == len(notes)


# ---------------------------------------------------------------------------- sustain


def test_sustain_pedal_is_folded_into_durations(tmp_path: Path):
    pm = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(0)
    inst.notes = [
        pretty_midi.Note(80, 60, 0.0, 0.5),  # released with the pedal down: held to 1.0
        pretty_midi.Note(80, 64, 0.2, 0.3),  # released before the pedal: unchanged
        pretty_midi.Note(80, 62, 1.2, 1.3),  # after the pedal: unchanged
        pretty_midi.Note(80, 67, 2.0, 2.1),  # held, but struck again at 2.5
        pretty_midi.Note(80, 67, 2.5, 2.6),  # held to 3.0
        pretty_midi.Note(80, 69, 4.0, 4.1),  # pedal never lifted: held to the last event
        pretty_midi.Note(80, 71, 4.5, 5.0),
    ]
    for time, value in [(0.4, 127), (1.0, 0), (1.9, 100), (3.0, 10), (4.05, 64)]:
        inst.control_changes.append(pretty_midi.ControlChange(64, value, time))
    inst.control_changes.append(pretty_midi.ControlChange(7, 100, 0.0))  # volume: dropped
    pm.instruments.append(inst)
    path = tmp_path / "pedal.mid"
    write_midi(pm, path)
    decoded, repairs = decode(encode(load_midi(path)))
    assert not any(repairs.values())
    assert [(s, e, p) for s, e, p, *_ in notes_of(decoded)] == [
        (0.0, 1.0, 60), (0.2, 0.3, 64), (1.2, 1.3, 62), (2.0, 2.5, 67), (2.5, 3.0, 67),
        (4.0, 5.0, 69), (4.5, 5.0, 71)]
    assert not any(i.control_changes for i in decoded.instruments)


# ---------------------------------------------------------------------------- reading


def make_bad_files(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "not_midi.mid").write_text("this is not a MIDI file\n")
    data = (BUNDLED / "bach" / "bach__bwv1.6.mid").read_bytes()
    (folder / "truncated.mid").write_bytes(data[: len(data) // 2])
    empty = pretty_midi.PrettyMIDI()
    empty.instruments.append(pretty_midi.Instrument(0))
    write_midi(empty, folder / "no_notes.midi")


def test_read_directory_skips_bad_files(tmp_path: Path, caplog):
    shutil.copy(BUNDLED / "bach" / "bach__bwv10.7.mid", tmp_path / "a.mid")
    (tmp_path / "sub").mkdir()
    shutil.copy(BUNDLED / "josquin" / "josquin__milleRegrets__0000.mid", tmp_path / "sub" / "b.MID")
    (tmp_path / "notes.txt").write_text("ignored: not .mid")
    make_bad_files(tmp_path / "bad")
    domain = MIDIDomain()
    with caplog.at_level(logging.WARNING, logger="seqformer.domains.midi"):
        records = list(domain.read(tmp_path))  # reported as logged warnings
    reported = []
    assert [r.id for r in domain.read(tmp_path, on_skip=lambda *s: reported.append(s))] == \
        [r.id for r in records]
    assert [r.id for r in records] == ["a", "sub/b"]
    assert records[0].meta["n_notes"] == 206 and records[0].meta["duration"] == pytest.approx(44)
    assert records[0].meta["path"] == str(tmp_path / "a.mid")
    assert np.array_equal(records[0].tokens, encode(load_midi(tmp_path / "a.mid")))
    skipped = {Path(p).name: reason for p, reason in reported}
    assert sorted(skipped) == ["no_notes.midi", "not_midi.mid", "truncated.mid"]
    assert skipped["no_notes.midi"] == "no notes"
    assert "not a readable MIDI file" in skipped["truncated.mid"]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 3 and all("skipping" in w for w in warned)


def test_read_directory_with_nothing_readable(tmp_path: Path):
    make_bad_files(tmp_path)
    with pytest.raises(InputError, match=r"no readable MIDI files in .*: 3 skipped \(first: "):
        list(MIDIDomain().read(tmp_path))


def test_read_bad_paths(tmp_path: Path):
    domain = MIDIDomain()
    with pytest.raises(InputError, match="missing.mid"):
        domain.read(tmp_path / "missing.mid")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty"):
        domain.read(tmp_path / "empty")
    make_bad_files(tmp_path / "bad")
    with pytest.raises(InputError, match="truncated.mid: not a readable MIDI file"):
        domain.read(tmp_path / "bad" / "truncated.mid")
    with pytest.raises(InputError, match="no_notes.midi: no notes"):
        domain.read(tmp_path / "bad" / "no_notes.midi")


def test_read_single_file():
    records = list(MIDIDomain().read(BUNDLED / REFUSED[1]))
    assert len(records) == 1 and records[0].id == "palestrina__Credo_00"
    assert records[0].meta["n_notes"] == 1253


# ---------------------------------------------------------------------------- writing


def test_write_one_record_atomically(tmp_path: Path):
    domain = MIDIDomain()
    tokens = np.asarray(piano(NOTE_ON + 60, shift(20), NOTE_OFF + 60, NOTE_OFF + 61))
    out = tmp_path / "out.mid"
    out.write_bytes(b"old")
    repairs = domain.write([Record("x", tokens)], out)
    assert repairs["unmatched_note_off"] == 1
    assert notes_of(load_midi(out)) == [(0.0, 0.2, 60, 82, False, 0)]
    assert [p.name for p in tmp_path.iterdir()] == ["out.mid"]  # no temporary file left
    with pytest.raises(ValueError, match="one piece"):
        domain.write([Record("x", tokens), Record("y", tokens)], tmp_path / "two.mid")
    assert not (tmp_path / "two.mid").exists()


# ---------------------------------------------------------------------------- stats, picture


def c_major_scale() -> pretty_midi.PrettyMIDI:
    pm = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(0)
    for i, pitch in enumerate([60, 62, 64, 65, 67, 69, 71]):
        inst.notes.append(pretty_midi.Note(90, pitch, i * 0.5, (i + 1) * 0.5))
    pm.instruments.append(inst)
    return pm


def test_stats_of_a_scale_and_a_chord():
    s = stats(c_major_scale())
    assert s["notes"] == 7 and s["duration"] == pytest.approx(3.5)
    assert s["pitch_range"] == (60, 71)
    assert s["pitch_class_entropy"] == pytest.approx(math.log2(7))
    assert s["mean_polyphony"] == pytest.approx(1.0)
    pm = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(0)
    # a C major triad for 1 s, then C alone for 1 s, then 1 s of silence, then C again
    inst.notes = [pretty_midi.Note(90, p, 0, 1) for p in (60, 64, 67)]
    inst.notes += [pretty_midi.Note(90, 72, 1, 2), pretty_midi.Note(90, 72, 3, 4)]
    pm.instruments.append(inst)
    s = stats(pm)
    assert s["mean_polyphony"] == pytest.approx((3 + 1 + 1) / 3)
    # pitch classes C, C, C, E, G
    assert s["pitch_class_entropy"] == pytest.approx(-(0.6 * math.log2(0.6) + 0.4 * math.log2(0.2)))
    empty = stats(pretty_midi.PrettyMIDI())
    assert empty["notes"] == 0 and empty["pitch_range"] is None


def test_piano_roll_png(tmp_path: Path):
    out = tmp_path / "roll.png"
    piano_roll_png(c_major_scale(), out, title="C major")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["roll.png"]


def test_render_audio_names_what_is_missing(tmp_path: Path, monkeypatch):
    import wave

    import seqformer.domains.midi.render as midi

    pm = c_major_scale()
    try:
        import fluidsynth  # noqa: F401
    except (ImportError, OSError):
        with pytest.raises(InputError, match="FluidSynth is missing.*pyfluidsynth"):
            render_audio(pm, tmp_path / "x.wav")
        assert not (tmp_path / "x.wav").exists()
    # the WAV writing itself, with a stand-in synthesizer
    monkeypatch.setattr(midi, "_check_fluidsynth", lambda: None)
    monkeypatch.setattr(pm, "fluidsynth", lambda fs: np.sin(np.arange(fs) / 10.0))
    render_audio(pm, tmp_path / "y.wav", sample_rate=8000)
    with wave.open(str(tmp_path / "y.wav")) as wav:
        assert (wav.getnframes(), wav.getframerate(), wav.getsampwidth()) == (8000, 8000, 2)


# ---------------------------------------------------------------- program shuffle (training)


def test_shuffle_programs_relabels_instruments_by_one_permutation():
    midi = get_domain("midi")
    tokens = next(iter(midi.read(LONG_PIECE))).tokens[:20000]
    tokens = np.asarray(tokens, dtype=np.uint16)  # the token store's dtype
    is_program = (tokens >= PROGRAM) & (tokens < DRUMS)
    programs = set(tokens[is_program].tolist())
    assert len(programs) >= 5 and (tokens == DRUMS).any()
    seen = set()
    for seed in range(40):
        out = midi.shuffle_programs(tokens, np.random.default_rng(seed))
        assert out.dtype == tokens.dtype and out.shape == tokens.shape
        assert np.array_equal(out[~is_program], tokens[~is_program])  # drums, notes, time
        assert ((out[is_program] >= PROGRAM) & (out[is_program] < DRUMS)).all()
        mapping = dict(zip(tokens[is_program].tolist(), out[is_program].tolist()))
        # one map for the whole window, and a bijection: the piece's structure is kept
        assert np.array_equal(out[is_program], [mapping[t] for t in tokens[is_program]])
        assert len(set(mapping.values())) == len(programs)
        seen |= set(mapping.values())
    assert len(seen) > 100  # the draws reach (nearly) every one of the 128 programs
    # the same draw gives the same window: training data stays reproducible
    assert np.array_equal(midi.shuffle_programs(tokens, np.random.default_rng(7)),
                          midi.shuffle_programs(tokens, np.random.default_rng(7)))
