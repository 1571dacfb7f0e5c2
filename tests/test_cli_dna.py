"""Every DNA command end to end on a tiny model, and the bad inputs a user will hit."""

import gzip

import h5py
import numpy as np
import pytest

from cli_helpers import REPO
from cli_helpers import TINY_MODEL as TINY
from cli_helpers import run_cli as run

SHARED = REPO.parent / "shared" / "data" / "dna"
LAMBDA = REPO / "data" / "dna" / "lambda_phage.fa.gz"



@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "lambda"
    code, text = run("train", "dna", "--out", out, "--max-steps", 6, "--batch-size", 2, *TINY)
    assert code == 0, text
    return out


@pytest.fixture(scope="module")
def query(tmp_path_factory):
    """Two records: 700 bases of lambda (longer than the 256 window) and a short one."""
    seq = "".join(gzip.open(LAMBDA, "rt").read().split("\n")[1:])[:700]
    path = tmp_path_factory.mktemp("q") / "query.fa"
    path.write_text(f">lam700 first bases\n{seq}\n>short\nACGTNNACGTTTGCA\n")
    return path, seq


def test_train_writes_a_complete_model_directory(trained):
    for name in ("config.yaml", "vocab.json", "model.safetensors", "loss.png",
                 "checkpoints/last.ckpt", "data/tokens.bin", "data/index.json"):
        assert (trained / name).exists(), name
    code, text = run("info", trained)
    assert code == 0 and "dna" in text and "validation" in text


def test_resume_continues_at_the_same_step(trained, tmp_path):
    import shutil

    run_dir = tmp_path / "resumed"
    shutil.copytree(trained, run_dir)
    code, text = run("train", "dna", "--out", run_dir, "--resume", "--max-steps", 9)
    assert code == 0, text
    assert "trained 9 steps" in text  # 6 done before, 3 more
    from seqformer.pipeline.run_dir import read_metrics

    steps = [s for s, _ in read_metrics(run_dir)[0]]
    assert steps == sorted(steps), steps
    assert max(steps) == 8, steps
    assert len(list(run_dir.glob("logs/version_*"))) == 2


def test_sample_writes_prompt_and_new_bases(trained, tmp_path):
    out = tmp_path / "s.fa"
    code, text = run("sample", "dna", "--model", trained, "--length", 300, "--prompt",
                     "ATGAAA", "--out", out, "--seed", 3, "--top-k", 3)
    assert code == 0, text
    lines = out.read_text().split("\n")
    seq = "".join(lines[1:])
    assert lines[0].startswith(">") and seq.startswith("ATGAAA") and len(seq) == 306
    assert set(seq) <= set("ACGTN")
    again = tmp_path / "s2.fa"
    run("sample", "dna", "--model", trained, "--length", 300, "--prompt", "ATGAAA", "--out",
        again, "--seed", 3, "--top-k", 3)
    assert again.read_text() == out.read_text()  # seeded


def test_score_tsv_bedgraph_and_both_strands(trained, query, tmp_path):
    path, seq = query
    tsv, bed = tmp_path / "s.tsv", tmp_path / "s.bedgraph"
    code, text = run("score", "dna", "--model", trained, "--fasta", path, "--out", tsv,
                     "--per-base", bed)
    assert code == 0, text
    rows = [line.split("\t") for line in tsv.read_text().strip().split("\n")]
    assert rows[0][:5] == ["id", "length", "total_ll_nats", "mean_ll_nats", "bits_per_base"]
    assert [r[0] for r in rows[1:]] == ["lam700", "short"] and rows[1][1] == "700"
    bed_rows = bed.read_text().strip().split("\n")
    assert bed_rows[0].startswith("track type=bedGraph") and len(bed_rows) == 1 + 700 + 15
    per_base = np.array([float(r.split("\t")[3]) for r in bed_rows[1:701]])
    assert abs(per_base.sum() - float(rows[1][2])) < 1e-2
    assert bed_rows[1].split("\t")[:3] == ["lam700", "0", "1"]
    both = tmp_path / "both.tsv"
    code, _ = run("score", "dna", "--model", trained, "--fasta", path, "--out", both,
                  "--both-strands")
    assert code == 0 and both.read_text() != tsv.read_text()


def context_start(i: int, window: int) -> int:
    """The documented layout (pipeline/inference.py): with stride S = window // 2, token i
    is predicted from [sep] and all before it if i < window, else from the window starting
    at s = S * (1 + (i - window) // S), i.e. from tokens s - 1 .. i - 1."""
    stride = window // 2
    return 0 if i < window else stride * (1 + (i - window) // stride) - 1


def test_score_context_is_manual_truncation(trained, query, tmp_path):
    """--context N: each base is scored exactly as the model scores it from the documented
    window of at most N bases before it (`context_start`), cut by hand."""
    import torch

    from seqformer.pipeline.run_dir import load_run

    path, _ = query
    bed = tmp_path / "c.bedgraph"
    code, text = run("score", "dna", "--model", trained, "--fasta", path, "--context", 64,
                     "--per-base", bed)
    assert code == 0, text
    assert "at most 64 tokens of context" in " ".join(text.split())
    per_base = [float(r.split("\t")[3]) for r in bed.read_text().strip().split("\n")[1:701]]
    model, domain, _ = load_run(trained, "dna")
    tokens = next(iter(domain.read(path))).tokens
    for i in (0, 1, 63, 64, 65, 95, 96, 97, 130, 511, 699):
        start = context_start(i, 64)
        x = (np.concatenate([[domain.sep_id], tokens[:i]]) if i < 64
             else tokens[start:i])  # the window's inputs up to the base's own position
        assert len(x) <= 64 and (i < 64 or len(x) > 32)
        with torch.no_grad():
            logits = model(torch.from_numpy(x.astype(np.int64))[None])[0, -1]
        want = torch.log_softmax(logits.double(), -1)[int(tokens[i])].item()
        assert abs(per_base[i] - want) < 1e-4, (i, per_base[i], want)
    # a longer context changes the scores of bases beyond it
    default = tmp_path / "d.bedgraph"
    assert run("score", "dna", "--model", trained, "--fasta", path, "--per-base", default)[0] == 0
    assert default.read_text() != bed.read_text()


@pytest.mark.parametrize("context,says", [
    (1, "--context 1: must be at least 2"),
    (513, "--context 513: beyond the model's max_seq_len (512); only a model with the copy "
          "mixture (model.copy_k) reads further back")])
def test_context_outside_the_model_is_one_clear_error(trained, query, tmp_path, context, says):
    code, text = run("score", "dna", "--model", trained, "--fasta", query[0], "--context",
                     context)
    assert code == 2 and "Traceback" not in text
    assert says in " ".join(text.split())


def test_embed_hdf5_layout(trained, query, tmp_path):
    path, _ = query
    out = tmp_path / "e.h5"
    code, text = run("embed", "dna", "--model", trained, "--fasta", path, "--out", out,
                     "--pool", "mean", "--layer", "0")
    assert code == 0, text
    with h5py.File(out) as f:
        assert [s.decode() for s in f["ids"]] == ["lam700", "short"]
        emb = f["embeddings/0"]
        assert emb.shape == (700, 32) and emb.dtype == np.float16 and emb.chunks
        assert emb.attrs["id"] == "lam700" and f.attrs["layer"] == 0
        assert f["pooled"].shape == (2, 32)
        np.testing.assert_allclose(f["pooled"][0], emb[:].astype(np.float64).mean(0),
                                   atol=2e-3)
        assert "d_model" in f.attrs["model_config"] and f.attrs["domain"] == "dna"


def _bad(name):
    path = SHARED / name
    if not path.exists():
        pytest.skip("shared data not available")
    return path


@pytest.mark.parametrize("make, message", [
    (lambda t: t / "missing.fa", "no such file"),
    (lambda t: _bad("bad_null.fna"), "empty"),
    (lambda t: _bad("bad_empty.fna"), "zero length|no sequence|empty"),
    (lambda t: _bad("bad_protein.fna"), "protein"),
    (lambda t: _bad("bad_dupid.fna"), "duplicate"),
])
def test_bad_fasta_is_one_clear_error(trained, tmp_path, make, message):
    path = make(tmp_path)
    code, text = run("score", "dna", "--model", trained, "--fasta", path)
    assert code == 2, text
    assert "error:" in text and "Traceback" not in text
    assert str(path.name) in text.replace("\n", "")
    import re

    assert re.search(message, text, re.IGNORECASE), text


def test_unknown_character_names_record_and_position(trained, tmp_path):
    f = tmp_path / "x.fa"
    f.write_text(">ok\nACGT\n>bad\nACGTAC@T\n")
    code, text = run("score", "dna", "--model", trained, "--fasta", f)
    flat = text.replace("\n", "")
    assert code == 2 and "bad" in flat and "7" in flat and "@" in flat


def test_existing_output_is_refused_unless_forced(trained, query, tmp_path):
    path, _ = query
    out = tmp_path / "exists.tsv"
    out.write_text("keep me")
    code, text = run("score", "dna", "--model", trained, "--fasta", path, "--out", out)
    assert code == 2 and "already exists" in text and out.read_text() == "keep me"
    code, _ = run("score", "dna", "--model", trained, "--fasta", path, "--out", out, "--force")
    assert code == 0 and out.read_text().startswith("id\t")


def test_model_directory_errors(trained, tmp_path, query):
    path, _ = query
    code, text = run("score", "dna", "--model", tmp_path / "nope", "--fasta", path)
    assert code == 2 and "not found" in text
    code, text = run("sample", "midi", "--model", trained, "--length", 5, "--out",
                     tmp_path / "x.mid")
    assert code == 2 and "dna model, not a midi model" in text
    code, text = run("train", "dna", "--out", trained, "--max-steps", 1)
    assert code == 2 and "already exists" in text


def test_length_beyond_memory_is_refused(trained, tmp_path):
    code, text = run("sample", "dna", "--model", trained, "--length", 10**13, "--out",
                     tmp_path / "x.fa")
    assert code == 2 and "--length" in text and "GiB" in text
    assert not (tmp_path / "x.fa").exists()


def test_bad_prompt_and_config(trained, tmp_path):
    code, text = run("sample", "dna", "--model", trained, "--length", 5, "--prompt", "ACGX",
                     "--out", tmp_path / "x.fa")
    assert code == 2 and "--prompt" in text and not (tmp_path / "x.fa").exists()
    code, text = run("train", "dna", "--out", tmp_path / "r", "model.d_model=30")
    assert code == 2 and "model.d_model" in text


@pytest.mark.parametrize("option, value, message", [
    ("--temperature", -1, "--temperature must be >= 0"),
    ("--top-p", 2, "--top-p must be in (0, 1]"),
    ("--top-p", 0, "--top-p must be in (0, 1]"),
    ("--top-k", 0, "--top-k must be >= 1"),
    ("--length", 0, "--length 0: must be at least 1"),
])
def test_bad_sampling_options_are_one_clear_error(trained, tmp_path, option, value, message):
    args = ["sample", "dna", "--model", trained, "--length", 5, "--out", tmp_path / "x.fa"]
    if option == "--length":
        args[args.index("--length") + 1] = value
    else:
        args += [option, value]
    code, text = run(*args)
    assert code == 2 and message in text and "Traceback" not in text, text
    assert not (tmp_path / "x.fa").exists()


def test_several_files_after_one_fasta_option(tmp_path):
    """`--fasta a.fa b.fa model.d_model=32`: the words after the option that are not
    section.key=value overrides are more input files."""
    from seqformer.pipeline.token_store import TokenStore

    seq = "".join(gzip.open(LAMBDA, "rt").read().split("\n")[1:])
    a, b = tmp_path / "a.fa", tmp_path / "b.fa"
    a.write_text(f">a\n{seq[:3000]}\n")
    b.write_text(f">b\n{seq[3000:6000]}\n")
    out = tmp_path / "run"
    code, text = run("train", "dna", "--fasta", a, b, "--out", out, "--max-steps", 1,
                     "--batch-size", 1, *TINY)
    assert code == 0, text
    assert [r.id for r in TokenStore(out / "data").records] == ["a", "b"]
    code, text = run("train", "dna", "--fasta", a, tmp_path / "missing.fa", "--out",
                     tmp_path / "r2", *TINY)
    assert code == 2 and "missing.fa: no such file" in text
