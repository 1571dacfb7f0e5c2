"""apps/harmonize: soprano / alto-tenor-bass pairs from Bach chorales (prepare.py) and the
analysis of generated voices (voices.py)."""

import json
import shutil
from pathlib import Path

import pretty_midi
import pytest

from seqformer.domains import get_domain
from seqformer.domains.midi import decode, encode, load_midi

from cli_helpers import load_app_module

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "apps" / "harmonize"
BACH = REPO.parent / "shared" / "data" / "midi" / "bach"


prepare = load_app_module(APP / "prepare.py", "harmonize_prepare")
voices = load_app_module(APP / "voices.py", "harmonize_voices")

KEPT = ["bach__bwv323", "bach__bwv286", "bach__bwv324", "bach__bwv396",
        "bach__bwv79.6"]  # the last has horns and timpani beside the voices
DROPPED = {"bach__bwv27.6": "2 soprano tracks",  # "Soprano 1", "Soprano 2"
           "bach__bwv281": "no track named Soprano/Alto/Tenor/Bass",  # four unnamed tracks
           "bach__choraleAnalyses__riemenschneider006": "no track named"}


def notes_of(inst):
    return sorted((round(n.start, 4), round(n.end, 4), n.pitch, n.velocity) for n in inst.notes)


def track(pm, name):
    (inst,) = [i for i in pm.instruments if i.name == name]
    return inst


# ---- prepare.py on real chorales ------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    if not all((BACH / f"{n}.mid").exists() for n in [*KEPT, *DROPPED]):
        pytest.skip(f"the Bach chorales are not at {BACH}")
    root = tmp_path_factory.mktemp("harmonize")
    source = root / "bach"
    source.mkdir()
    for name in [*KEPT, *DROPPED]:
        shutil.copy(BACH / f"{name}.mid", source)
    out = root / "out"
    summary = prepare.prepare(source, out, heldout_fraction=0.2, seed=0, sample=(2, 1),
                              log=lambda *_: None)
    return source, out, summary


def test_kept_and_dropped_with_reasons(prepared):
    _, out, summary = prepared
    assert (summary["files"], summary["kept"], summary["dropped"]) == (8, 5, 3)
    for name, reason in DROPPED.items():
        assert summary["dropped_files"][f"{name}.mid"].startswith(reason)
    assert summary["splits"] == {"train": 4, "heldout": 1}
    assert summary["kept_with_extra_tracks"] == 1
    assert json.loads((out / "summary.json").read_text()) == summary


def test_pairs_by_name_and_splits_are_disjoint(prepared):
    _, out, summary = prepared
    names = {}
    for split in prepare.SPLITS:
        sop = sorted(p.stem for p in (out / split / "soprano").glob("*.mid"))
        atb = sorted(p.stem for p in (out / split / "atb").glob("*.mid"))
        assert sop == atb and len(sop) == summary["splits"][split]
        names[split] = set(sop)
    assert names["train"].isdisjoint(names["heldout"])
    assert names["train"] | names["heldout"] == set(KEPT)
    # the tokenizer's record ids are the file names, so the two sides pair by id
    midi = get_domain("midi")
    for split in prepare.SPLITS:
        ids = [[r.id for r in midi.read(out / split / kind)] for kind in prepare.KINDS]
        assert ids[0] == ids[1] == sorted(names[split])
    # the sample: the shortest of each split, paired the same way
    for split, n in zip(prepare.SPLITS, (2, 1)):
        sop = sorted(p.stem for p in (out / "sample" / split / "soprano").glob("*.mid"))
        atb = sorted(p.stem for p in (out / "sample" / split / "atb").glob("*.mid"))
        assert sop == atb == sorted(summary["sample"][split]) and len(sop) == n
        assert set(sop) <= names[split]


def test_files_hold_exactly_their_voices(prepared):
    source, out, _ = prepared
    for name in KEPT:
        split = next(s for s in prepare.SPLITS if (out / s / "soprano" / f"{name}.mid").exists())
        original = load_midi(source / f"{name}.mid")
        soprano = load_midi(out / split / "soprano" / f"{name}.mid")
        atb = load_midi(out / split / "atb" / f"{name}.mid")
        assert [i.name for i in soprano.instruments] == ["Soprano"]
        assert [i.name for i in atb.instruments] == ["Alto", "Tenor", "Bass"]
        for pm, voice_names in ((soprano, ["Soprano"]), (atb, ["Alto", "Tenor", "Bass"])):
            for v in voice_names:
                assert notes_of(track(pm, v)) == notes_of(track(original, v))
                assert track(pm, v).program == track(original, v).program
            # same timing as the source
            assert pm.resolution == original.resolution
            for a, b in zip(pm.get_tempo_changes(), original.get_tempo_changes()):
                assert a.tolist() == pytest.approx(b.tolist())
            assert [(t.numerator, t.denominator, round(t.time, 6))
                    for t in pm.time_signature_changes] == [
                (t.numerator, t.denominator, round(t.time, 6))
                for t in original.time_signature_changes]


def test_distinct_programs_survive_tokenization(prepared, tmp_path):
    source, _, _ = prepared
    programs = prepare.VOICE_PROGRAMS
    chorales, _ = prepare.read_chorales(source, programs, log=lambda *_: None)
    chorale = chorales[0]
    assert [i.program for i in chorale.atb.instruments] == [programs[v] for v in prepare.ATB]
    decoded, _ = decode(encode(chorale.atb))
    parts, method = voices.split_voices(decoded, programs=programs)
    assert method == "programs"
    for inst in chorale.atb.instruments:
        # onsets move to the tokenizer's 10 ms steps (floored)
        expected = sorted((int(n.start * 100 + 1e-6), n.pitch) for n in inst.notes)
        got = sorted((round(n.start * 100), n.pitch) for n in parts[inst.name.lower()].notes)
        assert got == expected
    # kept programs (all 0 here): one merged instrument after the round trip
    plain, _ = prepare.read_chorales(source, None, log=lambda *_: None)
    merged, _ = decode(encode(plain[0].atb))
    assert {i.program for i in merged.instruments} == {0}
    assert voices.split_voices(merged)[1] == "pitch"


def test_voice_names_and_tune_split():
    assert prepare.voice_of("Soprano") == "soprano"
    assert prepare.voice_of("Soprano\rOboe 1,2\rViolin1") == "soprano"
    assert prepare.voice_of("Alto Oboe 2 Viloin 2") == "alto"
    assert prepare.voice_of("Soprano 1") == "soprano"
    assert prepare.voice_of("Violin") is None and prepare.voice_of("") is None
    # same tune (transposed, one note re-struck) -> same key
    a = pretty_midi.Instrument(0, name="Soprano")
    b = pretty_midi.Instrument(0, name="Soprano")
    for i, p in enumerate([60, 62, 64, 62, 60]):
        a.notes.append(pretty_midi.Note(90, p, i, i + 1))
    for i, p in enumerate([65, 67, 69, 69, 67, 65]):
        b.notes.append(pretty_midi.Note(90, p, i, i + 1))
    assert prepare.tune_key(a) == prepare.tune_key(b) == (2, 2, -2, -2)
    # one melody with a passing note added and another ending
    tune = (2, 2, -2, -2, 5, -1, -2, -2, 4, 1, -3, 2, 2, -4)
    varied = (2, 2, -2, -1, -1, 5, -1, -2, -2, 4, 1, -3, 2, 1, -5)
    assert prepare.same_tune(tune, varied)
    assert not prepare.same_tune(tune, (-1, -2, 3, 4, 1, -7, 2, 2, 2, -3, -1, 1, 4, -5))
    chorales = [prepare.Chorale(f"c{i}", None, None, (i % 7,), 0) for i in range(30)]
    assert len(prepare.tune_groups(chorales)) == 7
    first = prepare.split_chorales(chorales, 0.1, seed=3)
    again = prepare.split_chorales(chorales, 0.1, seed=3)
    assert [c.name for c in first["heldout"]] == [c.name for c in again["heldout"]]
    assert len(first["heldout"]) >= 3
    held = {c.tune for c in first["heldout"]}
    assert held.isdisjoint({c.tune for c in first["train"]})


# ---- voices.py on hand-made MIDI ------------------------------------------------------


def make_pm(parts, program=0, named=True):
    """parts: {voice: [pitch per beat]}, 0.5 s beats; one track per voice (named after it),
    or, with named=False, all notes in one program-`program` track."""
    pm = pretty_midi.PrettyMIDI(initial_tempo=120)
    merged = pretty_midi.Instrument(program, name="Acoustic Grand Piano")
    for voice, pitches in parts.items():
        inst = pretty_midi.Instrument(program, name=voice.capitalize())
        inst.notes = [pretty_midi.Note(90, p, 0.5 * i, 0.5 * i + 0.5)
                      for i, p in enumerate(pitches) if p is not None]
        if named:
            pm.instruments.append(inst)
        else:
            merged.notes += inst.notes
    if not named:
        pm.instruments.append(merged)
    return pm


# a cadence in C: soprano E-D-C-B-C over alto, tenor, bass
SOPRANO = {"soprano": [76, 74, 72, 71, 72]}
ATB_PARTS = {"alto": [67, 65, 64, 62, 64], "tenor": [60, 59, 55, 55, 55],
             "bass": [48, 43, 45, 43, 36]}


def test_range_counts_on_named_tracks():
    pm = make_pm({"alto": [54, 55, 74, 75], "tenor": [47, 48, 60], "bass": [36, 40, 60, 61]})
    report = voices.analyse(pm, observed={"alto": (53, 74), "tenor": (48, 69),
                                          "bass": (36, 64)})
    assert report["method"] == "names"
    assert report["alto"] == {
        "notes": 4, "min": 54, "max": 75, "outside_standard": 2, "frac_outside_standard": 0.5,
        "outside_observed": 1, "frac_outside_observed": 0.25}
    assert report["tenor"]["outside_standard"] == 1 and report["tenor"]["outside_observed"] == 1
    assert report["bass"]["outside_standard"] == 2 and report["bass"]["outside_observed"] == 0
    assert report["bass"]["frac_outside_standard"] == 0.5
    # no observed ranges -> standard only; an empty voice
    empty = voices.analyse(make_pm({"alto": [60], "tenor": [], "bass": [50]}))
    assert empty["tenor"] == {"notes": 0, "min": None, "max": None, "outside_standard": 0,
                              "frac_outside_standard": 0.0}
    assert "outside_observed" not in empty["alto"]


def test_observed_ranges(tmp_path):
    pms = [make_pm({"alto": [60, 70], "bass": [40]}), make_pm({"alto": [55], "bass": [50]})]
    assert voices.observed_ranges(pms) == {"alto": (55, 70), "bass": (40, 50)}
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"observed_ranges_train": {"alto": [53, 74]}}))
    assert voices.load_observed_ranges(summary) == {"alto": (53, 74)}


def test_split_by_pitch_after_tokenization():
    pm = make_pm(ATB_PARTS, named=False)
    decoded, _ = decode(encode(pm))
    parts, method = voices.split_voices(decoded)
    assert method == "pitch"
    for voice, pitches in ATB_PARTS.items():
        assert [n.pitch for n in parts[voice].notes] == pitches
    # a voice resting while the others move
    rest = make_pm({"alto": [67, 67, 65], "tenor": [60, None, 57], "bass": [48, 47, 50]},
                   named=False)
    parts, _ = voices.split_voices(rest)
    assert [n.pitch for n in parts["alto"].notes] == [67, 67, 65]
    assert [n.pitch for n in parts["tenor"].notes] == [60, 57]
    assert [n.pitch for n in parts["bass"].notes] == [48, 47, 50]
    # the alto holding while tenor and bass move
    hold = make_pm({"tenor": [60, 59], "bass": [48, 43]}, named=False)
    hold.instruments[0].notes.append(pretty_midi.Note(90, 67, 0.0, 1.0))
    parts, _ = voices.split_voices(hold)
    assert {v: [n.pitch for n in parts[v].notes] for v in voices.ATB} == {
        "alto": [67], "tenor": [60, 59], "bass": [48, 43]}


def test_split_by_program_without_a_map():
    pm = make_pm(ATB_PARTS)
    for inst, program in zip(pm.instruments, (68, 69, 70)):
        inst.program = program
    decoded, _ = decode(encode(pm))
    parts, method = voices.split_voices(decoded)
    assert method == "programs"
    assert {v: [n.pitch for n in parts[v].notes] for v in voices.ATB} == ATB_PARTS


def test_combine_and_piano_roll(tmp_path):
    soprano = make_pm(SOPRANO)
    atb, _ = decode(encode(make_pm(ATB_PARTS, named=False)))  # as a model's output decodes
    both = voices.combine(soprano, atb)
    assert [i.name for i in both.instruments] == ["Soprano", "Alto", "Tenor", "Bass"]
    assert [n.pitch for n in both.instruments[0].notes] == SOPRANO["soprano"]
    path = tmp_path / "both.mid"
    both.write(str(path))
    again = load_midi(path)
    report = voices.analyse(again)
    assert report["method"] == "names"
    assert {v: report[v]["notes"] for v in voices.ATB} == {"alto": 5, "tenor": 5, "bass": 5}
    assert report["bass"]["outside_standard"] == 1  # the final C2
    png = tmp_path / "roll.png"
    voices.piano_roll_png(soprano, atb, png, title="cadence")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


# ---- the bundled sample ---------------------------------------------------------------


def test_bundled_sample_pairs():
    sample = APP / "data" / "sample"
    if not sample.is_dir():
        pytest.skip("no bundled sample (run apps/harmonize/prepare.py)")
    midi = get_domain("midi")
    for split, n in (("train", 12), ("heldout", 4)):
        sop = [r.id for r in midi.read(sample / split / "soprano")]
        atb = [r.id for r in midi.read(sample / split / "atb")]
        assert sop == atb and len(sop) == n


def test_pace_counts_each_voice_and_flags_the_voices_the_median_pace_misses():
    sample = APP / "data" / "sample"
    if not sample.is_dir():
        pytest.skip("no bundled sample (run apps/harmonize/prepare.py)")
    pace = load_app_module(APP / "pace.py", "harmonize_pace")
    train = pace.split_paces(sample / "train")
    name = sorted(train)[0]
    soprano = load_midi(sample / "train" / "soprano" / name)
    atb = load_midi(sample / "train" / "atb" / name)
    for v in voices.ATB:  # counted straight from the named tracks
        assert train[name][v] == (len(track(atb, v.capitalize()).notes),
                                  len(track(soprano, "Soprano").notes))
    paces = pace.voice_paces(train)
    median, _ = pace.unreachable(paces, {})
    # a held-out chorale of 40 soprano notes: a bass at the median pace is reachable, one
    # moving in eighths (twice as many notes as the fastest training bass) is not
    fastest = paces["bass"].max()
    typical = {v: (round(median[v] * 40), 40) for v in voices.ATB}
    walking = {**typical, "bass": (round(2 * fastest * 40), 40)}
    _, missed = pace.unreachable(paces, {"typical.mid": typical, "walking.mid": walking})
    assert [(m["chorale"], m["voice"], m["percentile"]) for m in missed] == [
        ("walking.mid", "bass", 100.0)]
    assert missed[0]["at_median_pace"] == pytest.approx(median["bass"] * 40, abs=0.05)


def test_harmonize_scores_and_writes_pieces_from_a_trained_run(tmp_path) -> None:
    """harmonize.py end to end on the bundled sample: a 4-step model, one piece sampled
    under the note grammar (so the decoder repairs nothing), its MIDI, roll and metrics."""
    from cli_helpers import run_cli

    data = tmp_path / "data"
    shutil.copytree(APP / "data" / "sample", data)
    shutil.copy(APP / "data" / "summary.json", data / "summary.json")
    run = tmp_path / "run"
    code, text = run_cli("train", "seq2seq", "--source", data / "train" / "soprano",
                         "--target", data / "train" / "atb", "--source-domain", "midi",
                         "--target-domain", "midi", "--config", "seq2seq-tiny", "--out", run,
                         "train.max_steps=4")
    assert code == 0, text
    app = load_app_module(APP / "harmonize.py", "harmonize_app")
    out = tmp_path / "out"
    assert app.main(["--model", str(run), "--data", str(data), "--pieces", "1", "--grammar",
                     "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    bits = metrics["bits"][str(run)]
    assert bits["pairs"] == len(list((data / "heldout" / "atb").glob("*.mid")))
    assert 0 < bits["bits_per_token"] < 20
    (piece,) = metrics["pieces"]
    assert piece["repairs"]["unmatched_note_off"] == 0 and piece["repairs"]["unclosed_note"] == 0
    name = piece["id"].replace("/", "_")
    assert load_midi(out / f"{name}.mid").instruments and (out / f"{name}.png").stat().st_size
    # --pieces 0 only scores: the same bits, no piece sampled or written
    scored = tmp_path / "scored"
    assert app.main(["--model", str(run), "--data", str(data), "--pieces", "0",
                     "--out", str(scored)]) == 0
    only = json.loads((scored / "metrics.json").read_text())
    assert only["bits"] == metrics["bits"] and only["pieces"] == []
    assert not list(scored.glob("*.mid"))
