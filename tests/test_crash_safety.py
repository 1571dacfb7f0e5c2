"""Killing a run at any moment loses at most the steps since the last checkpoint, and
--resume goes on from there: real training subprocesses, killed for real."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from seqformer.domains import Record
from seqformer.pipeline.inference import embed_records, partial_path
from seqformer.pipeline.run_dir import load_run, read_metrics

from cli_helpers import TINY_MODEL, run_cli

# checkpoints every 4 steps, no validation until the end, metrics flushed every step
ARGS = [*TINY_MODEL, "train.val_every=100000", "train.checkpoint_every=4"]
MAX_STEPS = 2000  # the tests kill the run after a few checkpoints (every 4 steps)


def _start(run: Path, max_steps: int, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "seqformer", "train", "dna", "--out", str(run),
                             "--max-steps", str(max_steps), *extra, *ARGS],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _step_of(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]


def _wait_for_checkpoints(proc: subprocess.Popen, last: Path, n: int) -> None:
    """Until last.ckpt has been written at n different steps (each write renames a new
    file into place, so a new inode says when to read the step again; no file times). The
    run has a finite MAX_STEPS, far more than the test needs, so a run that never
    checkpoints ends and fails here instead of leaving the test waiting."""
    steps, inode = set(), None
    while len(steps) < n:
        assert proc.poll() is None, proc.communicate()
        if last.exists() and last.stat().st_ino != inode:
            inode = last.stat().st_ino
            steps.add(_step_of(last))
        time.sleep(0.05)  # polling interval only: nothing is timed


def test_sigkill_keeps_the_last_checkpoint_and_resume_goes_on(tmp_path):
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    proc = _start(run, MAX_STEPS)
    _wait_for_checkpoints(proc, last, 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = _step_of(last)  # loads: the checkpoint is whole
    assert step >= 8 and step % 4 == 0
    assert not (run / "model.safetensors").exists()
    trained_before = {s for s, _ in read_metrics(run)[0]}
    assert trained_before and max(trained_before) >= step - 1

    code, out = run_cli("train", "dna", "--out", run, "--resume", "--max-steps", step + 6)
    assert code == 0, out
    assert _step_of(last) == step + 6
    assert not list((run / "checkpoints").glob(".*.tmp"))
    # the curve joins: the resumed session logs the steps after the checkpoint
    train_steps = {s for s, _ in read_metrics(run)[0]}
    assert set(range(step, step + 6)) <= train_steps
    load_run(run, "dna")  # the exported model loads


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_sigterm_or_ctrl_c_saves_the_current_step_and_exits_cleanly(tmp_path, sig):
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    proc = _start(run, MAX_STEPS)
    _wait_for_checkpoints(proc, last, 2)
    proc.send_signal(sig)
    out, err = proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted at step" in err and "--resume" in err
    stopped = int(err.split("interrupted at step ")[1].split(",")[0])
    assert _step_of(last) == stopped  # nothing lost, not even the steps since the last save

    code, out = run_cli("train", "dna", "--out", run, "--resume", "--max-steps", stopped + 2)
    assert code == 0, out
    assert _step_of(last) == stopped + 2


class Interrupt(Exception):
    pass


def test_embed_resumes_after_an_interruption_and_skips_finished_records(tmp_path):
    from seqformer.core import ReformerConfig, ReformerLM

    torch.manual_seed(0)
    model = ReformerLM(ReformerConfig(vocab_size=12, d_model=16, n_layers=2, n_heads=2,
                                      d_ff=32, attn=["local", "lsh"], bucket_size=8,
                                      n_hashes=2, max_seq_len=64)).eval()
    rng = np.random.default_rng(0)
    records = [Record(f"r{i}", rng.integers(2, 6, size=n).astype(np.uint8))
               for i, n in enumerate([150, 90, 200, 40])]
    whole = tmp_path / "whole.h5"
    embed_records(model, records, 1, 64, whole, pool="mean")

    out = tmp_path / "emb.h5"
    windows = 0

    def stop_midway(n: int) -> None:
        nonlocal windows
        windows += 1
        if windows == 12:  # inside the third record
            raise Interrupt

    with pytest.raises(Interrupt):
        embed_records(model, records, 1, 64, out, pool="mean", on_window=stop_midway)
    assert not out.exists() and partial_path(out).exists()
    with h5py.File(partial_path(out)) as h5:
        done = [k for k in h5["embeddings"] if h5["embeddings"][k].attrs.get("complete")]
    assert done == ["0", "1"]

    computed = []
    embed_records(model, records, 1, 64, out, pool="mean", resume=True,
                  on_window=computed.append)
    assert sum(computed) == sum(len(r.tokens) for r in records)  # progress covers all
    assert not partial_path(out).exists()
    with h5py.File(whole) as a, h5py.File(out) as b:
        assert list(b["ids"].asstr()) == [r.id for r in records]
        for k in a["embeddings"]:
            np.testing.assert_array_equal(a["embeddings"][k][:], b["embeddings"][k][:])
        np.testing.assert_allclose(a["pooled"][:], b["pooled"][:], rtol=1e-6)


def test_embed_cli_resume_and_refusal_of_other_settings(tmp_path):
    run = tmp_path / "run"
    code, out = run_cli("train", "dna", "--out", run, "--max-steps", 2, *TINY_MODEL)
    assert code == 0, out
    fasta = tmp_path / "g.fa"
    fasta.write_text(">a\n" + "ACGT" * 100 + "\n>b\n" + "GGCA" * 50 + "\n")
    emb = tmp_path / "emb.h5"
    partial_path(emb).write_bytes(b"not hdf5 at all: a run killed while creating it")
    code, out = run_cli("embed", "dna", "--model", run, "--fasta", fasta, "--out", emb,
                        "--resume")
    assert code == 0, out
    with h5py.File(emb) as h5:
        assert list(h5["ids"].asstr()) == ["a", "b"]
    assert not list(tmp_path.glob(".emb.h5*")) and not partial_path(emb).exists()

    # a partial file from other settings (another layer) is not silently mixed in
    with h5py.File(partial_path(emb), "w") as h5:
        h5.attrs["layer"] = 0
    code, out = run_cli("embed", "dna", "--model", run, "--fasta", fasta, "--out",
                        tmp_path / "emb2.h5", "--resume")
    assert code == 0, out  # other output name: its own partial file
    code, out = run_cli("embed", "dna", "--model", run, "--fasta", fasta, "--out", emb,
                        "--resume", "--force")
    assert code == 2 and "written with another model or other options" in out


# -- the atomic writers themselves, killed mid-write --------------------------------------------
_WRITE_THEN_DIE = """
import os, signal, sys
from pathlib import Path
from seqformer.files import atomic_file
with atomic_file(Path(sys.argv[1]), "wb", keep_previous=Path(sys.argv[2])) as f:
    f.write(b"half of the new file")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_sigkill_mid_write_leaves_the_old_file_and_nothing_else(tmp_path):
    out, previous = tmp_path / "out.bin", tmp_path / "previous.bin"
    out.write_bytes(b"old")
    proc = subprocess.run([sys.executable, "-c", _WRITE_THEN_DIE, str(out), str(previous)])
    assert proc.returncode == -signal.SIGKILL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]  # no temporary file
    assert out.read_bytes() == b"old"


@pytest.mark.parametrize("unnamed", [True, False], ids=["O_TMPFILE", "named temporary"])
@pytest.mark.parametrize("mode, data", [("wb", b"new\x00bytes"), ("w", "new text\n")])
def test_atomic_file_replaces_whole_with_a_plain_files_mode(tmp_path, monkeypatch, unnamed,
                                                            mode, data):
    from seqformer import files

    if not unnamed:  # a file system without O_TMPFILE
        monkeypatch.setattr(files, "_open_unnamed", lambda folder: None)
    out, previous = tmp_path / "out", tmp_path / "previous"
    out.write_bytes(b"old")
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    with files.atomic_file(out, mode, keep_previous=previous) as f:
        f.write(data)
        f.close()  # writers may close the file they were given (gzip, a `with` over it)
        assert out.read_bytes() == b"old"  # nothing shows until the block ends
    assert (out.read_bytes() if mode == "wb" else out.read_text()) == data
    assert previous.read_bytes() == b"old"
    assert out.stat().st_mode == plain.stat().st_mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "plain", "previous"]


def test_atomic_file_failing_block_keeps_the_old_file(tmp_path):
    from seqformer.files import atomic_file

    out = tmp_path / "out"
    out.write_text("old")
    with pytest.raises(ValueError), atomic_file(out, "w") as f:
        f.write("partial")
        raise ValueError("the writer failed")
    assert out.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
