"""apps/music_continuation: the primer cut, the joined MIDI, the picture, the distances and
the bad inputs, with a tiny model trained for two steps on the bundled chorales."""

import json
import math
import shutil

import mido
import numpy as np
import pretty_midi
import pytest
import yaml
from safetensors.torch import load_file, save_file

from seqformer.domains import get_domain, midi
from seqformer.pipeline.run_dir import WEIGHTS_CONFIG, load_run, weights_fingerprint

from cli_helpers import REPO, load_app_module

APP = REPO / "apps" / "music_continuation"
BACH = REPO / "data" / "midi" / "bach"
PIECE = BACH / "bach__bwv1.6.mid"  # 63 s


# evaluate.py imports continue_piece by this name
cp = load_app_module(APP / "continue_piece.py", "continue_piece")
ev = load_app_module(APP / "evaluate.py", "music_continuation_evaluate")


@pytest.fixture(scope="module")
def trained(tiny_midi_run):
    return tiny_midi_run


def _pitched(pm):
    return [n for inst in pm.instruments if not inst.is_drum for n in inst.notes]


# ---------------------------------------------------------------------------- distances


def test_distances_on_hand_made_histograms():
    p = np.array([3.0, 0, 0, 0, 1, 0, 0, 2, 0, 0, 0, 0])
    for dist in (cp.total_variation, cp.jensen_shannon):
        assert dist(p, p) == 0
        assert dist(p, 2.5 * p) == pytest.approx(0, abs=1e-12)  # weights are normalised
        disjoint = np.roll(p, 1)  # pitch classes 1, 5, 8: none shared with 0, 4, 7
        assert dist(p, disjoint) == pytest.approx(1.0)  # the maximum
        q = np.array([1.0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1])
        assert dist(p, q) == pytest.approx(dist(q, p))
        assert 0 < dist(p, q) < 1
        with pytest.raises(ValueError):
            dist(p, np.zeros(12))
    # one point mass against a half-half split, by hand
    a, b = np.array([1.0, 0]), np.array([0.5, 0.5])
    assert cp.total_variation(a, b) == pytest.approx(0.5)
    kl_a = math.log2(1 / 0.75)
    kl_b = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    assert cp.jensen_shannon(a, b) == pytest.approx(math.sqrt((kl_a + kl_b) / 2))


def test_pitch_class_histogram_weights_by_duration_inside_the_span():
    pm = pretty_midi.PrettyMIDI()
    piano, drums = pretty_midi.Instrument(0), pretty_midi.Instrument(0, is_drum=True)
    piano.notes = [pretty_midi.Note(80, 60, 1.0, 2.0),   # C, 1 s
                   pretty_midi.Note(80, 72, 1.5, 2.0),   # C an octave up, 0.5 s
                   pretty_midi.Note(80, 64, 2.5, 4.0),   # E, cut at the span's end: 0.5 s
                   pretty_midi.Note(80, 67, 0.5, 1.5),   # G, starts before the span: out
                   pretty_midi.Note(80, 69, 3.0, 3.5)]   # A, starts at the end: out
    drums.notes = [pretty_midi.Note(80, 38, 1.0, 1.5)]   # drums have no pitch class
    pm.instruments += [piano, drums]
    h = cp.pitch_class_histogram(pm, 1.0, 3.0)
    expected = np.zeros(12)
    expected[0], expected[4] = 1.5, 0.5
    assert np.allclose(h, expected)


# ---------------------------------------------------------------------------- the primer cut


def test_primer_keeps_exactly_the_notes_starting_before_the_cut():
    pm = midi.load_midi(PIECE)
    notes = sorted((n.start, n.pitch) for n in _pitched(pm))
    onsets = sorted({round(s, 3) for s, _ in notes})
    for k in (1, 10, len(onsets) // 2):
        seconds = (onsets[k] + onsets[k + 1]) / 2  # between two onsets: no rounding question
        primer, reached = cp.clip_tokens(midi.encode(pm), cp._steps(seconds))
        assert reached and cp.duration_steps(primer) == cp._steps(seconds)
        kept = sorted((n.start, n.pitch) for n in _pitched(midi.decode(primer)[0]))
        wanted = [(s, p) for s, p in notes if s < seconds]
        assert [p for _, p in kept] == [p for _, p in wanted]
        assert np.allclose([s for s, _ in kept], [s for s, _ in wanted], atol=0.0101)


def test_cut_on_an_onset_excludes_that_note_and_leaves_sounding_notes_open(tmp_path):
    pm = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(0)
    inst.notes = [pretty_midi.Note(64, 60, 0.0, 0.5), pretty_midi.Note(64, 64, 0.5, 1.5),
                  pretty_midi.Note(64, 67, 1.0, 2.0)]
    pm.instruments.append(inst)
    path = tmp_path / "three.mid"
    pm.write(str(path))
    primer, _ = cp.clip_tokens(cp.read_piece(path), cp._steps(1.0))
    names = [midi.TOKENS[t] for t in primer]
    assert "on_60" in names and "off_60" in names and "on_64" in names
    assert "off_64" not in names and "on_67" not in names  # E still sounds; G starts at 1 s
    assert cp.duration_steps(primer) == 100


# ---------------------------------------------------------------------------- end to end


def test_continue_writes_joined_midi_png_and_distances(trained, tmp_path, capsys):
    out, seconds = tmp_path / "cont.mid", 5.0
    code = cp.main(["--model", str(trained), "--primer", str(PIECE), "--seconds", "5",
                    "--length", "3s", "--seed", "0", "--top-p", "0.95", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    for line in ("model continuation (primed)", "unprimed sample", "primer's own histogram"):
        assert line in text
    assert mido.MidiFile(out).length > seconds  # another parser than the writer's

    joined = _pitched(pretty_midi.PrettyMIDI(str(out)))
    original = _pitched(midi.load_midi(PIECE))
    # the primer's notes come back unchanged: pitch, onset and offset on the 10 ms grid
    # (floored, as the tokenizer documents), velocity to its bin. Offsets are compared as a
    # multiset per pitch: unison notes of merged voices may trade offsets (same sound).
    # Notes still sounding at the cut end where the model ends them, never before the cut.
    def step(t):
        return math.floor(t / 0.01 + 1e-6)

    cut = step(seconds)
    head = [n for n in joined if step(n.start) < cut]
    truth = [n for n in original if step(n.start) < cut]
    assert len(truth) > 0
    assert (sorted((n.pitch, step(n.start), n.velocity // 4) for n in head)
            == sorted((n.pitch, step(n.start), n.velocity // 4) for n in truth))
    assert (sorted((n.pitch, step(n.end)) for n in head if step(n.end) < cut)
            == sorted((n.pitch, max(step(n.end), step(n.start) + 1)) for n in truth
                      if step(n.end) < cut))
    # the continuation: new notes only inside the 3 s asked for
    tail = [n for n in joined if n.start >= seconds]
    assert all(n.start < seconds + 3 for n in tail)

    # an existing output is refused and left alone
    before = out.read_bytes()
    code = cp.main(["--model", str(trained), "--primer", str(PIECE), "--seconds", "5",
                    "--length", "20", "--out", str(out)])
    assert code == 2 and "already exists" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_length_in_tokens_and_the_real_continuation_histogram(trained):
    model, _, _ = load_run(trained, "midi")
    tokens = cp.read_piece(PIECE)
    r = cp.continue_piece(model, tokens, 4.0, n_tokens=40, seed=3, baseline=False)
    assert len(r.new) == 40 and r.primer_seconds == 4.0
    assert r.seconds == pytest.approx(cp.duration_steps(r.new) * 0.01)
    assert np.array_equal(r.histograms["primer"],
                          cp.pitch_class_histogram(midi.decode(tokens)[0], 0, 4.0))
    assert "unprimed" not in r.histograms


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("case", ["missing", "not_midi", "truncated", "no_notes", "too_short",
                                  "wrong_domain", "durations_model", "no_model",
                                  "bad_seconds"])
def test_bad_input_is_one_clear_error(trained, tmp_path, capsys, case):
    primer, model, seconds = tmp_path / f"{case}.mid", trained, "5"
    if case == "missing":
        pass
    elif case == "not_midi":
        primer.write_text("hello")
    elif case == "truncated":
        primer.write_bytes(PIECE.read_bytes()[:60])
    elif case == "no_notes":
        pretty_midi.PrettyMIDI().write(str(primer))
    else:
        shutil.copy(PIECE, primer)
    if case == "too_short":
        seconds = "64"
    elif case == "bad_seconds":
        seconds = "-1"
    elif case == "wrong_domain":
        model = tmp_path / "dna_run"
        shutil.copytree(trained, model)
        cfg = yaml.safe_load((model / "config.yaml").read_text())
        cfg["domain"] = "dna"
        (model / "config.yaml").write_text(yaml.safe_dump(cfg))
    elif case == "durations_model":  # the app cuts and counts event tokens
        model = tmp_path / "durations_run"
        shutil.copytree(trained, model)
        cfg = yaml.safe_load((model / "config.yaml").read_text())
        cfg["data"]["options"] = {"vocabulary": "durations"}
        (model / "config.yaml").write_text(yaml.safe_dump(cfg))
        durations = get_domain("midi", vocabulary="durations").vocabulary()
        (model / "vocab.json").write_text(json.dumps(durations))  # checked on load
        weights = model / "model.safetensors"  # and the fingerprint of the config in it
        save_file(load_file(weights), weights, {WEIGHTS_CONFIG: weights_fingerprint(cfg)})
    elif case == "no_model":
        model = tmp_path / "nothing_here"
    out = tmp_path / "out.mid"
    code = cp.main(["--model", str(model), "--primer", str(primer), "--seconds", seconds,
                    "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and "Traceback" not in err
    named = {"wrong_domain": "dna_run", "no_model": "nothing_here", "bad_seconds": "--seconds",
             "durations_model": "durations vocabulary"}
    assert named.get(case, primer.name) in err
    assert not out.exists() and not out.with_suffix(".png").exists()


def test_bad_length_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cp.parse_args(["--model", "m", "--primer", "p.mid", "--seconds", "5", "--length",
                       "ten", "--out", str(tmp_path / "x.mid")])
    assert exit_.value.code == 2 and "token count" in capsys.readouterr().err


# ---------------------------------------------------------------------------- evaluate.py


def test_evaluate_uses_the_runs_held_out_pieces(trained, tmp_path, capsys):
    # midi-tiny holds out the last 10% of the records: 1 of the 12 bundled chorales
    assert ev.heldout_ids(trained) == ["bach__bwv64.2"]
    code = ev.main(["--model", str(trained), "--midi", str(BACH), "--heldout",
                    "--out", str(tmp_path / "r.tsv")])
    assert code == 2 and "at least 2 pieces" in capsys.readouterr().err

    tsv, png = tmp_path / "all.tsv", tmp_path / "all.png"
    code = ev.main(["--model", str(trained), "--midi", str(BACH), "--limit", "2",
                    "--seconds", "3", "--length", "2", "--seeds", "0", "1", "--out", str(tsv),
                    "--png", str(png)])
    text = capsys.readouterr().out
    assert code == 0, text
    rows = [line.split("\t") for line in tsv.read_text().splitlines()]
    assert rows[0][:4] == ["piece", "seed", "tv_model", "js_model"] and len(rows) == 5
    values = np.array([[float(x) for x in r[2:]] for r in rows[1:]])
    assert np.all((values >= 0) & (values <= 1))
    assert png.stat().st_size > 10_000 and "model closer than unprimed" in text
