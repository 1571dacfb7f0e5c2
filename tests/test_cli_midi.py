"""Every MIDI command end to end on a tiny model trained on the bundled pieces, and the
bad inputs a user will hit."""

import shutil

import h5py
import mido
import numpy as np
import pretty_midi
import pytest

from cli_helpers import LONG_MIDI, REPO
from cli_helpers import TINY_MODEL as TINY
from cli_helpers import run_cli as run

BACH = REPO / "data" / "midi" / "bach"



@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "bach"
    code, text = run("train", "midi", "--midi", BACH, "--out", out, "--max-steps", 5,
                     "--batch-size", 2, *TINY)
    assert code == 0, text
    return out


@pytest.fixture(scope="module")
def pieces(tmp_path_factory):
    """Three bundled chorales in a folder of their own."""
    d = tmp_path_factory.mktemp("pieces")
    for f in sorted(BACH.glob("*.mid"))[:3]:
        shutil.copy(f, d / f.name)
    return d


def test_train_and_info(trained):
    assert (trained / "model.safetensors").exists() and (trained / "loss.png").exists()
    code, text = run("info", trained)
    assert code == 0 and "midi" in text


def test_sample_with_primer_writes_midi_png_and_stats(trained, pieces, tmp_path):
    primer = sorted(pieces.glob("*.mid"))[0]
    out = tmp_path / "piece.mid"
    code, text = run("sample", "midi", "--model", trained, "--length", 200, "--primer", primer,
                     "--out", out, "--seed", 1, "--temperature", 0.95, "--top-p", 0.95)
    assert code == 0, text
    assert "pitch_class_entropy" in text and "notes" in text
    assert out.with_suffix(".png").stat().st_size > 1000
    mid = mido.MidiFile(out)  # another parser than the one that wrote it
    assert mid.length > 0
    primer_notes = sum(len(i.notes) for i in pretty_midi.PrettyMIDI(str(primer)).instruments)
    sampled = sum(len(i.notes) for i in pretty_midi.PrettyMIDI(str(out)).instruments)
    assert sampled >= primer_notes  # the primer is kept, the continuation added


def test_primer_longer_than_context_is_cut_with_a_message(trained, tmp_path):
    code, text = run("sample", "midi", "--model", trained, "--length", 20, "--primer",
                     LONG_MIDI, "--out", tmp_path / "x.mid", "--seed", 0)
    assert code == 0, text
    assert "more than the model's context" in text.replace("\n", " ")


def test_score_and_embed(trained, pieces, tmp_path):
    tsv = tmp_path / "s.tsv"
    code, text = run("score", "midi", "--model", trained, "--midi", pieces, "--out", tsv)
    assert code == 0, text
    rows = [r.split("\t") for r in tsv.read_text().strip().split("\n")]
    assert rows[0][-1] == "nll_nats_per_second" and len(rows) == 4
    assert all(float(r[4]) > 0 and float(r[-1]) > 0 for r in rows[1:])
    h5 = tmp_path / "e.h5"
    code, text = run("embed", "midi", "--model", trained, "--midi", pieces, "--out", h5,
                     "--pool", "mean")
    assert code == 0, text
    with h5py.File(h5) as f:
        assert len(f["ids"]) == 3 and f["pooled"].shape == (3, 32)
        lengths = [f[f"embeddings/{i}"].shape[0] for i in range(3)]
        assert lengths == [int(r[1]) for r in rows[1:]]
        assert f["embeddings/0"].dtype == np.float16


def test_unreadable_files_are_listed_and_skipped(trained, pieces, tmp_path):
    d = tmp_path / "mixed"
    shutil.copytree(pieces, d)
    (d / "notmidi.mid").write_text("this is not a MIDI file")
    real = sorted(pieces.glob("*.mid"))[0].read_bytes()
    (d / "truncated.mid").write_bytes(real[:60])
    empty = pretty_midi.PrettyMIDI()
    empty.instruments.append(pretty_midi.Instrument(0))
    empty.write(str(d / "nonotes.mid"))
    code, text = run("score", "midi", "--model", trained, "--midi", d)
    flat = text.replace("\n", " ")
    assert code == 0, text
    for name in ("notmidi.mid", "truncated.mid", "nonotes.mid"):
        assert "skipped" in flat and name in flat
    assert "3 records read, 3 files skipped" in flat


@pytest.mark.parametrize("case", ["missing", "empty_dir", "not_midi", "truncated", "no_notes"])
def test_bad_midi_input_is_one_clear_error(trained, tmp_path, case):
    path = tmp_path / f"{case}.mid"
    if case == "empty_dir":
        path = tmp_path / "empty"
        path.mkdir()
    elif case == "not_midi":
        path.write_text("hello")
    elif case == "truncated":
        path.write_bytes(sorted(BACH.glob("*.mid"))[0].read_bytes()[:60])
    elif case == "no_notes":
        pretty_midi.PrettyMIDI().write(str(path))
    code, text = run("score", "midi", "--model", trained, "--midi", path)
    assert code == 2, text
    assert "error:" in text and "Traceback" not in text and path.name in text


def test_existing_output_refused(trained, tmp_path):
    out = tmp_path / "x.mid"
    out.write_bytes(b"keep")
    code, text = run("sample", "midi", "--model", trained, "--length", 5, "--out", out)
    assert code == 2 and "already exists" in text and out.read_bytes() == b"keep"


@pytest.mark.parametrize("option, value", [("--temperature", -0.5), ("--top-p", 1.5),
                                           ("--top-k", -3)])
def test_bad_sampling_options_are_one_clear_error(trained, tmp_path, option, value):
    out = tmp_path / "x.mid"
    code, text = run("sample", "midi", "--model", trained, "--length", 5, "--out", out,
                     option, value)
    assert code == 2 and text.startswith(f"error: {option} must be") and "Traceback" not in text
    assert not out.exists()


def test_pieces_many_windows_long_get_the_long_context_hint(capsys):
    from seqformer.cli.train import long_context_hint

    cfg = {"domain": "midi", "data": {"seq_len": 1024}, "model": {"attn": "local"}}
    long_context_hint(cfg, [500, 5000, 97_000])
    said = " ".join(capsys.readouterr().err.split())
    assert "2 of these pieces are over 4 windows of 1,024 tokens long (the longest 97,000)" in said
    assert "--config midi-long" in said
    for quiet_cfg, lengths in [(cfg, [500, 4096]),
                               ({**cfg, "model": {"attn": ["local", "match"], "n_layers": 2}},
                                [97_000]),
                               ({**cfg, "domain": "dna"}, [97_000])]:
        long_context_hint(quiet_cfg, lengths)
        assert capsys.readouterr().err == ""


def test_trust_pointer_samples_with_the_training_hit_rates(trained, pieces, tmp_path):
    """A run with the far pointer stores how often it was right per mismatch count
    (pointer.json); `sample midi --trust-pointer` samples with them. A model without the
    pointer is refused with one message, and writes nothing."""
    import json

    run_dir = tmp_path / "pointer"
    code, text = run("train", "midi", "--midi", pieces, "--out", run_dir, "--max-steps", 3,
                     "--batch-size", 2, *TINY, "model.copy_k=[4, 8]", "model.copy_pointer=16")
    assert code == 0, text
    rates = json.loads((run_dir / "pointer.json").read_text())["hit_rate_by_mismatches"]
    assert len(rates) == 33 and all(0 <= r <= 1 for r in rates) and max(rates) > 0.5
    for grammar in ("--grammar", "--no-grammar"):
        out = tmp_path / f"held{grammar}.mid"
        code, text = run("sample", "midi", "--model", run_dir, "--length", 100, "--out", out,
                         "--seed", 0, "--trust-pointer", grammar)
        assert code == 0 and out.exists(), text
        assert ("without the note grammar" in text) == (grammar == "--no-grammar")
    # with a primer the trust is fitted to it, unless the training pieces' is asked for
    primer = sorted(pieces.glob("*.mid"))[0]
    for fit in ("--fit-trust", "--training-trust"):
        out = tmp_path / f"primed{fit}.mid"
        code, text = run("sample", "midi", "--model", run_dir, "--length", 50, "--out", out,
                         "--seed", 0, "--trust-pointer", "--primer", primer, fit)
        assert code == 0 and out.exists(), text
        said = " ".join(text.split())
        assert ("positions of the primer, right at" in said) == (fit == "--fit-trust"), said
    plain = tmp_path / "plain.mid"
    code, text = run("sample", "midi", "--model", trained, "--length", 100, "--out", plain,
                     "--trust-pointer")
    assert code == 2 and "Traceback" not in text, text
    assert "pointer.json" in text and "model.copy_pointer" in text
    assert not plain.exists()
