"""The Markov baseline: its probabilities by hand, its choice of order, its file, and
that `train`, `info` and `score` show it beside the model's figures."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest

from seqformer.domains import get_domain
from seqformer.pipeline.markov import MarkovModel, fit_baseline, split_at

from cli_helpers import REPO
from cli_helpers import TINY_MODEL as TINY
from cli_helpers import run_cli as run

LAMBDA = REPO / "data" / "dna" / "lambda_phage.fa.gz"


def _tokens(path) -> np.ndarray:
    return next(iter(get_domain("dna").read(path))).tokens


def test_order_one_probabilities_by_hand():
    train = [np.array([5, 7, 5, 7, 5, 5])]  # pairs: 5->7 twice, 7->5 twice, 5->5 once
    model = MarkovModel.fit(train, 1, np.array([5, 7]), alpha=0.5)
    V = 3  # 5, 7 and "other"
    p_7_after_5 = (2 + 0.5) / (3 + 0.5 * V)
    p_5_first = (4 + 0.5) / (6 + 0.5 * V)  # order 0 for the first token
    p_other_after_7 = 0.5 / (2 + 0.5 * V)  # 9 was never seen: the "other" symbol
    bits, n = model.bits([np.array([5, 7, 9])])
    want = -(math.log2(p_5_first) + math.log2(p_7_after_5) + math.log2(p_other_after_7))
    assert n == 3 and bits == pytest.approx(want, rel=1e-12)


def test_the_order_is_chosen_on_the_training_split():
    rng = np.random.default_rng(0)
    # an order-2 chain: the next symbol is (a + b) mod 4 most of the time
    seq = [0, 1]
    for _ in range(20_000):
        seq.append((seq[-1] + seq[-2]) % 4 if rng.random() < 0.9 else int(rng.integers(4)))
    model, scores = fit_baseline([np.array(seq)])
    assert model.order >= 2 and scores[2] < scores[1] - 0.5
    entropy = -(0.925 * math.log2(0.925) + 3 * 0.025 * math.log2(0.025))
    held = np.array(seq[-2000:])
    bits, n = model.bits([held])
    assert abs(bits / n - entropy) < 0.05


def test_save_and_load_give_the_same_bits(tmp_path):
    seq = np.frombuffer(b"".join(gzip.open(LAMBDA).read().split(b"\n")[1:]), dtype=np.uint8)
    model, _ = fit_baseline([seq[:40_000]])
    model.save(tmp_path / "b.npz", {"val_bits": 1.0})
    again, meta = MarkovModel.load(tmp_path / "b.npz")
    assert meta == {"val_bits": 1.0} and again.order == model.order
    a, _ = model.bits([seq[40_000:]])
    b, _ = again.bits([seq[40_000:]])
    assert a == pytest.approx(b, rel=1e-6)  # tables are stored as float32
    assert 1.9 < a / len(seq[40_000:]) < 2.0  # lambda: a little below 2 bits/base


def test_split_at_separators():
    parts = split_at(np.array([9, 1, 2, 9, 9, 3, 0]), (9, 0))
    assert [p.tolist() for p in parts] == [[1, 2], [3]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "lambda"
    code, text = run("train", "dna", "--out", out, "--max-steps", 3, "--batch-size", 2, *TINY)
    assert code == 0, text
    return out, text


def test_train_prints_and_stores_the_baseline_on_the_validation_tokens(trained):
    out, text = trained
    assert "order-" in text and "Markov baseline" in text and "model " in text
    model, meta = MarkovModel.load(out / "baseline.npz")
    # the validation split is the last 10% of lambda, all of it scored (2 windows of 256
    # targets in TINY cover 512 of its 4,850 bases)
    assert meta["val_tokens"] == 512 and model.order == meta["order"]
    assert f"{meta['val_bits']:.4f}" in text
    tokens = _tokens(LAMBDA)
    held = tokens[len(tokens) - int(round(0.1 * len(tokens))):][:512]
    bits, n = model.bits([held])
    assert n == 512 and meta["val_bits"] == pytest.approx(bits / n, rel=1e-6)
    code, info = run("info", out)
    assert code == 0 and f"{meta['val_bits']:.4f}" in info and "Markov" in info
    assert "trained steps │ 3 " in info and "at step 3 " in info  # the closing validation


def test_score_adds_the_baseline_column(trained, tmp_path):
    out, _ = trained
    query = tmp_path / "q.fa"
    seq = "".join(gzip.open(LAMBDA, "rt").read().split("\n")[1:])[:300]
    query.write_text(f">q\n{seq}\n")
    tsv = tmp_path / "s.tsv"
    code, text = run("score", "dna", "--model", out, "--fasta", query, "--out", tsv)
    assert code == 0, text
    header, row = (line.split("\t") for line in tsv.read_text().strip().split("\n"))
    column = [h for h in header if h.startswith("markov_order")]
    assert len(column) == 1 and "all records:" in text
    model, _ = MarkovModel.load(out / "baseline.npz")
    bits, n = model.bits([_tokens(query)])
    assert float(row[header.index(column[0])]) == pytest.approx(bits / n, abs=1e-6)


def test_progress_is_plain_lines_without_a_terminal(trained):
    """Output to a file (CliRunner is no terminal): a line per log interval and one per
    validation, no bar, no "Epoch 0/-2"."""
    _, text = trained
    lines = text.splitlines()
    steps = [line for line in lines if line.startswith("step ")]
    assert [s.split()[1] for s in steps] == ["1/3", "2/3", "3/3"]  # TINY logs every step
    assert all("tokens/s" in s and "elapsed" in s and "train " in s for s in steps)
    assert any(line.startswith("validation at step 3: ") for line in lines)
    assert "Epoch" not in text and "LeafSpec" not in text and "Warning" not in text


def test_bundled_midi_holds_out_its_own_validation_pieces(tmp_path):
    """With no --midi the four pieces of data/midi/heldout.txt are validation, not the
    last 10% of the files (Palestrina and trecento pieces only); the pieces are the 234 of
    vocal polyphony under data/midi, more/ included, and not the game-music piece."""
    import yaml

    out = tmp_path / "midi"
    code, text = run("train", "midi", "--out", out, "--max-steps", 1, "--batch-size", 1,
                     *TINY, "data.val_windows=64")
    assert code == 0, text
    held = yaml.safe_load((out / "config.yaml").read_text())["data"]["holdout_ids"]
    assert held == ["bach/bach__bwv351", "palestrina/palestrina__Kyrie_02",
                    "monteverdi/monteverdi__madrigal.4.4", "josquin/josquin__milleRegrets__0000"]
    from seqformer.pipeline.token_store import TokenStore

    lengths = {r.id: r.length for r in TokenStore(out / "data").records}
    _, meta = MarkovModel.load(out / "baseline.npz")
    assert meta["val_tokens"] == sum(lengths[i] for i in held)  # every held-out token scored
    assert len(lengths) == 234 and sum(i.startswith("more/") for i in lengths) == 199
    assert not any("planetblupi" in i for i in lengths)
