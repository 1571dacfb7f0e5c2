"""Faults a user meets, tried for real on every command that writes: a full disk (a
file-size limit in a subprocess, the OSError a full disk gives), kills at random moments,
damaged checkpoints and model files, an output directory without permission, a model
directory deleted while in use. Each ends in one clear message, exit code 2 and no
traceback; what was on disk before is whole and no temporary file is left."""

from __future__ import annotations

import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from seqformer.pipeline.inference import partial_path
from seqformer.pipeline.run_dir import PREVIOUS

from cli_helpers import REPO, TINY_MODEL, run_cli

LAMBDA = REPO / "data" / "dna" / "lambda_phage.fa.gz"
CLASSIFY = REPO / "data" / "dna" / "classify"
CODON = REPO / "apps" / "codon_design" / "data"
OLD = "the previous output, which must survive\n"


def seqformer(*args: object, file_limit: int | None = None, timeout: float = 600
              ) -> subprocess.CompletedProcess:
    """`seqformer ARGS` in a subprocess; file_limit: RLIMIT_FSIZE in bytes with SIGXFSZ
    ignored, so a write past it fails with EFBIG as a write to a full disk fails."""
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "seqformer", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=timeout,
                          preexec_fn=limit if file_limit else None)


def assert_one_clear_error(proc: subprocess.CompletedProcess, *names: str) -> str:
    err = proc.stderr
    assert proc.returncode == 2, (proc.returncode, err[-3000:])
    assert "Traceback" not in err and "weights_only=False" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err[-3000:]
    for name in names:
        assert name in err, (name, err[-3000:])
    return err


def no_temporary_files(folder: Path) -> None:
    left = [p for p in folder.rglob(".*") if p.suffix in (".tmp", ".link")]
    assert not left, left


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults") / "clf"
    code, text = run_cli("finetune", "dna", "--classes",
                         f"oct4={CLASSIFY / 'oct4_sample.fa.gz'}",
                         f"mafk={CLASSIFY / 'mafk_sample.fa.gz'}", "--out", out,
                         "--max-steps", 2, "model.d_model=32", "model.n_layers=2",
                         "model.n_heads=2", "model.d_ff=64", "model.bucket_size=16",
                         "train.max_minutes=null", "train.batch_size=8", "data.holdout=0.2")
    assert code == 0, text
    return out


@pytest.fixture(scope="module")
def seq2seq_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults") / "codon"
    code, text = run_cli("train", "seq2seq", "--source", CODON / "sample_train_protein.fa",
                         "--target", CODON / "sample_train_cds.fa", "--source-domain",
                         "protein", "--target-domain", "dna", "--config", "seq2seq-tiny",
                         "--out", out, "--max-steps", 2)
    assert code == 0, text
    return out


# -- a full disk, per command ----------------------------------------------------------------
def _commands(dna: Path, midi: Path, clf: Path, s2s: Path, tmp: Path) -> dict:
    """name -> (arguments writing `out`, out, file-size limit below that output's size)."""
    fasta = tmp / "query.fa"
    fasta.write_text(">q\n" + "ACGTTGCA" * 2000 + "\n")
    return {
        "score tsv": (["score", "dna", "--model", dna, "--fasta", LAMBDA, "--out",
                       tmp / "s.tsv"], tmp / "s.tsv", 40),
        "score bedGraph": (["score", "dna", "--model", dna, "--fasta", LAMBDA, "--per-base",
                            tmp / "s.bedgraph"], tmp / "s.bedgraph", 50_000),
        "score bigWig": (["score", "dna", "--model", dna, "--fasta", LAMBDA, "--per-base",
                          tmp / "s.bw"], tmp / "s.bw", 50_000),
        "embed": (["embed", "dna", "--model", dna, "--fasta", fasta, "--out", tmp / "e.h5"],
                  tmp / "e.h5", 60_000),
        "sample dna": (["sample", "dna", "--model", dna, "--length", 1000, "--out",
                        tmp / "x.fa", "--seed", 1], tmp / "x.fa", 500),
        "sample midi": (["sample", "midi", "--model", midi, "--length", 600, "--out",
                         tmp / "x.mid", "--seed", 1], tmp / "x.mid", 200),
        "predict": (["predict", "dna", "--model", clf, "--fasta", fasta, "--out",
                     tmp / "p.tsv"], tmp / "p.tsv", 20),
        "sample seq2seq": (["sample", "seq2seq", "--model", s2s, "--source",
                            CODON / "sample_heldout_protein.fa", "--out", tmp / "d.fa",
                            "--max-length", 60], tmp / "d.fa", 200),
        "score seq2seq": (["score", "seq2seq", "--model", s2s, "--source",
                           CODON / "sample_heldout_protein.fa", "--target",
                           CODON / "sample_heldout_cds.fa", "--out", tmp / "t.tsv"],
                          tmp / "t.tsv", 40),
    }


COMMANDS = ["score tsv", "score bedGraph", "score bigWig", "embed", "sample dna",
            "sample midi", "predict", "sample seq2seq", "score seq2seq"]


@pytest.mark.parametrize("name", COMMANDS)
def test_a_full_disk_keeps_the_previous_output_and_says_which_file(
        name, tiny_dna_run, tiny_midi_run, classifier_run, seq2seq_run, tmp_path):
    args, out, limit = _commands(tiny_dna_run, tiny_midi_run, classifier_run, seq2seq_run,
                                 tmp_path)[name]
    out.write_text(OLD)
    proc = seqformer(*args, "--force", file_limit=limit)
    err = assert_one_clear_error(proc, out.name, "file too large")
    assert out.read_text() == OLD
    no_temporary_files(tmp_path)
    if name == "embed":  # the partial file keeps what was finished, for --resume
        assert "--resume" in err
        code, text = run_cli(*args, "--force", "--resume")
        assert code == 0, text
        assert not partial_path(out).exists()
        with h5py.File(out) as h5:
            assert list(h5["ids"].asstr()) == ["q"]
    else:  # the same command with room to write succeeds
        code, text = run_cli(*args, "--force")
        assert code == 0, text
        assert out.read_text(errors="replace") != OLD


def _step_of(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]


TRAIN = ["train", "dna", *TINY_MODEL, "train.checkpoint_every=2", "train.val_every=100"]


def test_a_full_disk_while_training_keeps_the_last_checkpoint_and_resume_goes_on(tmp_path):
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    code, text = run_cli(*TRAIN, "--out", run, "--max-steps", 4)
    assert code == 0, text
    # the tiny model's checkpoint is about 0.4 MB: the next one cannot be written
    proc = seqformer(*TRAIN, "--out", run, "--resume", "--max-steps", 8, file_limit=100_000)
    err = assert_one_clear_error(proc, "file too large", "--resume")
    assert "keeps step 4" in err
    assert _step_of(last) == 4
    no_temporary_files(run)
    code, text = run_cli(*TRAIN, "--out", run, "--resume", "--max-steps", 8)
    assert code == 0, text
    assert _step_of(last) == 8


def test_a_full_disk_while_tokenizing_leaves_no_half_token_store(tmp_path):
    run = tmp_path / "run"
    proc = seqformer(*TRAIN, "--out", run, "--max-steps", 2, file_limit=20_000)
    assert_one_clear_error(proc, "tokens.bin", "file too large")
    assert not (run / "data" / "tokens.bin").exists()
    no_temporary_files(run)


# -- damaged checkpoints and model files -----------------------------------------------------
@pytest.fixture(scope="module")
def checkpointed_twice(tmp_path_factory) -> Path:
    """A run checkpointed at steps 2 and 4: last.ckpt holds step 4, previous.ckpt step 2
    (read-only: tests damage a copy)."""
    run = tmp_path_factory.mktemp("faults") / "run"
    code, text = run_cli(*TRAIN, "--out", run, "--max-steps", 4)
    assert code == 0, text
    assert _step_of(run / "checkpoints" / "last.ckpt") == 4
    assert _step_of(run / "checkpoints" / PREVIOUS) == 2
    return run


@pytest.fixture
def trained_twice(checkpointed_twice, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(checkpointed_twice, run)
    return run


@pytest.mark.parametrize("damage", ["truncated", "zeroed"])
def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(trained_twice, damage):
    last = trained_twice / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes({"truncated": data[:len(data) // 2], "zeroed": bytes(len(data))}[damage])
    proc = seqformer(*TRAIN, "--out", trained_twice, "--resume", "--max-steps", 6)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "weights_only=False" not in proc.stderr
    assert f"{last}: damaged" in proc.stderr
    assert "resuming from" in proc.stderr and "at step 2" in proc.stderr
    assert "lost" in proc.stderr
    assert _step_of(last) == 6


def test_both_checkpoints_damaged_is_one_error_naming_the_file(trained_twice):
    ckpts = trained_twice / "checkpoints"
    (ckpts / "last.ckpt").write_bytes(b"\0" * 100)
    (ckpts / PREVIOUS).write_bytes(b"PK\3\4 not really a zip")
    code, text = run_cli(*TRAIN, "--out", trained_twice, "--resume", "--max-steps", 6)
    assert code == 2 and "Traceback" not in text, text
    assert f"{ckpts / 'last.ckpt'}: damaged" in text and "--force" in text


class Payload:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def test_a_checkpoint_that_would_run_code_is_refused(trained_twice):
    last = trained_twice / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["hyper_parameters"] = {"payload": Payload()}
    torch.save(checkpoint, last)
    (trained_twice / "checkpoints" / PREVIOUS).unlink()
    proc = seqformer(*TRAIN, "--out", trained_twice, "--resume", "--max-steps", 6)
    err = assert_one_clear_error(proc, "refusing to load it")
    assert "this must never run" not in proc.stdout + err


@pytest.mark.parametrize("name", ["model.safetensors", "vocab.json", "config.yaml"])
def test_a_truncated_model_file_is_one_clear_error(tiny_dna_run, tmp_path, name):
    run = tmp_path / "run"
    shutil.copytree(tiny_dna_run, run)
    data = (run / name).read_bytes()
    (run / name).write_bytes(data[:len(data) // 3])
    out = tmp_path / "s.tsv"
    code, text = run_cli("score", "dna", "--model", run, "--fasta", LAMBDA, "--out", out)
    assert code == 2 and text.startswith("error:") and str(run / name) in text, text
    assert not out.exists()


@pytest.mark.parametrize("name, text", [("sampling.json", '{"max_polyph'),
                                        ("sampling.json", "[5, 400]"),
                                        ("pointer.json", "{}"),
                                        ("pointer.json", '{"hit_rate_by_mismatches": "high"}')])
def test_a_damaged_run_file_is_one_error_naming_it(tmp_path, name, text):
    from seqformer.errors import InputError
    from seqformer.pipeline.run_dir import read_pointer_hit_rates, read_sampling_limits

    (tmp_path / name).write_text(text)
    read = read_sampling_limits if name == "sampling.json" else read_pointer_hit_rates
    with pytest.raises(InputError, match=str(tmp_path / name)):
        read(tmp_path)


@pytest.mark.parametrize("edit", [("hash_seed: 0", "hash_seed: 1"),  # same weights' shapes
                                  ("kmer_embedding: 4", "kmer_embedding: 0"),
                                  ("softmask: upper", "softmask: keep")])
def test_a_config_that_does_not_fit_the_weights_is_named(tiny_dna_run, tmp_path, edit):
    run = tmp_path / "run"
    shutil.copytree(tiny_dna_run, run)
    text = (run / "config.yaml").read_text()
    assert edit[0] in text
    (run / "config.yaml").write_text(text.replace(edit[0], edit[1]))
    out = tmp_path / "s.tsv"
    code, text = run_cli("score", "dna", "--model", run, "--fasta", LAMBDA, "--out", out)
    assert code == 2 and text.startswith("error:"), text
    assert f"{run / 'config.yaml'}: its model or tokenization is not the one" in text, text
    assert not out.exists()


def test_weights_without_a_fingerprint_still_load_and_a_mismatch_names_both_files(
        tiny_dna_run, tmp_path):
    """Runs saved before model.safetensors carried its config's fingerprint."""
    run = tmp_path / "run"
    shutil.copytree(tiny_dna_run, run)
    weights = run / "model.safetensors"
    save_file(load_file(weights), weights)  # the same tensors, no metadata
    code, text = run_cli("score", "dna", "--model", run, "--fasta", LAMBDA,
                         "--out", tmp_path / "s.tsv")
    assert code == 0, text
    config = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(config.replace("kmer_embedding: 4", "kmer_embedding: 0"))
    code, text = run_cli("score", "dna", "--model", run, "--fasta", LAMBDA,
                         "--out", tmp_path / "t.tsv")
    assert code == 2 and str(weights) in text and str(run / "config.yaml") in text, text


# -- kills at random moments -----------------------------------------------------------------
def _kill_at_random(args: list, seed: int, until: Path | None = None) -> None:
    """Start `seqformer ARGS`, wait until `until` exists (if given: the command has started
    writing), then SIGKILL it after a seeded random pause (it may have finished by then)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "seqformer", *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    while until is not None and not until.exists() and proc.poll() is None:
        time.sleep(0.02)  # polling interval only: nothing is timed
    time.sleep(random.Random(seed).uniform(0, 1.5))
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("seed", [0, 1])
def test_score_killed_at_random_leaves_the_old_or_the_new_output_whole(tiny_dna_run, tmp_path,
                                                                      seed):
    out, track = tmp_path / "s.tsv", tmp_path / "s.bedgraph"
    out.write_text(OLD)
    track.write_text(OLD)
    args = ["score", "dna", "--model", tiny_dna_run, "--fasta", LAMBDA, "--out", out,
            "--per-base", track, "--force"]
    _kill_at_random(args, seed)
    no_temporary_files(tmp_path)
    for path, whole in ((out, lambda t: t.startswith("id\t") and t.count("\n") == 2),
                        (track, lambda t: t.startswith("track") and t.count("\n") == 48_503)):
        text = path.read_text()
        assert text == OLD or whole(text), text[:200]


@pytest.mark.parametrize("seed", [0, 1])
def test_embed_killed_at_random_leaves_no_half_output_and_resumes(tiny_dna_run, tmp_path, seed):
    fasta = tmp_path / "q.fa"
    rng = np.random.default_rng(seed)
    fasta.write_text("".join(f">r{i}\n" + "".join(rng.choice(list("ACGT"), 3000)) + "\n"
                             for i in range(6)))
    out = tmp_path / "e.h5"
    args = ["embed", "dna", "--model", tiny_dna_run, "--fasta", fasta, "--out", out]
    _kill_at_random(args, seed, until=partial_path(out))
    assert not out.exists() or h5py.is_hdf5(out)
    no_temporary_files(tmp_path)
    code, text = run_cli(*args, "--resume", "--force")
    assert code == 0, text
    with h5py.File(out) as h5:
        assert list(h5["ids"].asstr()) == [f"r{i}" for i in range(6)]
        assert all(h5["embeddings"][str(i)].shape[0] == 3000 for i in range(6))


@pytest.mark.parametrize("seed", [0, 1])
def test_train_killed_at_random_resumes_from_a_whole_checkpoint(tmp_path, seed):
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    _kill_at_random([*TRAIN, "--out", run, "--max-steps", 400], seed, until=last)
    step = _step_of(last)  # whole: it loads
    # a kill in the two calls that name a finished checkpoint (or keep the previous one)
    # may leave a hidden name behind (CI met one); only hidden names, and the resumed run
    # removes them
    left = [p for p in run.rglob(".*") if p.suffix in (".tmp", ".link")]
    assert all(p.parent == last.parent and p.name.startswith((".last.ckpt.", ".previous"))
               for p in left), left
    code, text = run_cli(*TRAIN, "--out", run, "--resume", "--max-steps", step + 2)
    assert code == 0, text
    assert _step_of(last) == step + 2
    no_temporary_files(run)


# -- permissions and vanishing inputs --------------------------------------------------------
@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permissions")
def test_an_output_directory_without_permission_is_one_clear_error(tiny_dna_run, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        proc = seqformer("score", "dna", "--model", tiny_dna_run, "--fasta", LAMBDA,
                         "--out", locked / "s.tsv")
    finally:
        locked.chmod(0o700)
    assert_one_clear_error(proc, "permission denied")


def test_a_read_only_output_file_system_is_one_clear_error(tiny_dna_run, tmp_path,
                                                           monkeypatch):
    """What root meets instead of permissions: a write refused by the file system."""
    import errno

    from seqformer import files

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)  # a named temporary file
    monkeypatch.setattr(files, "_open_unnamed", refuse)  # an O_TMPFILE one
    code, text = run_cli("score", "dna", "--model", tiny_dna_run, "--fasta", LAMBDA,
                         "--out", tmp_path / "s.tsv")
    assert code == 2 and "s.tsv: cannot write: read-only file system" in text, text
    assert "Traceback" not in text


@pytest.mark.parametrize("seed", [0, 1])
def test_a_model_directory_deleted_while_score_runs(tiny_dna_run, tmp_path, seed):
    """Deleted at a random moment: before the model is read (one error naming it) or after
    (scoring needs nothing more from it and finishes); never a traceback or half a file."""
    run = tmp_path / "run"
    shutil.copytree(tiny_dna_run, run)
    fasta = tmp_path / "many.fa"
    fasta.write_text("".join(f">r{i}\n" + "ACGT" * 2000 + "\n" for i in range(20)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out, track = tmp_path / "s.tsv", tmp_path / "s.bedgraph"
    proc = subprocess.Popen([sys.executable, "-m", "seqformer", "score", "dna", "--model",
                             str(run), "--fasta", str(fasta), "--out", str(out),
                             "--per-base", str(track)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(random.Random(seed).uniform(0, 8))
    shutil.rmtree(run)
    _, err = proc.communicate()
    assert proc.returncode in (0, 2), err[-3000:]
    assert "Traceback" not in err
    if proc.returncode == 2:
        assert str(run) in err and not out.exists() and not track.exists()
    else:
        assert out.read_text().count("\n") == 21
    no_temporary_files(tmp_path)
