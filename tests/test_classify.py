"""Sequence classification: metrics against hand computations, windows and splits, the
classifier against its plain counterpart, and `seqformer finetune` / `predict` end to end
on the bundled Oct4/MafK sample (real ChIP-seq peak sequences)."""

from __future__ import annotations

import gzip
import itertools
import json
import math
import re
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from seqformer.core import ReformerClassifier, ReformerConfig, ReformerLM
from seqformer.domains import get_domain
from seqformer.pipeline.class_metrics import classification_metrics
from seqformer.pipeline.labelled import (
    LabelledSet,
    RecordWindows,
    average_by_record,
    window_starts,
)
from seqformer.pipeline.token_store import TokenStore

from cli_helpers import REPO, run_cli

SAMPLE = REPO / "data" / "dna" / "classify"
OCT4, MAFK = SAMPLE / "oct4_sample.fa.gz", SAMPLE / "mafk_sample.fa.gz"
# seconds, not minutes: a tiny model, a few steps
TINY = ["model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.d_ff=64",
        "model.bucket_size=16", "train.val_every=3", "train.log_every=1",
        "train.max_minutes=null", "train.batch_size=8", "data.holdout=0.2"]


def fasta_records(path) -> list[tuple[str, str]]:
    lines = gzip.open(path, "rt").read().split()
    return [(lines[i][1:], lines[i + 1]) for i in range(0, len(lines), 2)]


def write_fasta(path, records) -> None:
    path.write_text("".join(f">{rid}\n{seq}\n" for rid, seq in records))


# -- metrics ----------------------------------------------------------------------------
def probs_for(pairs: list[tuple[int, int, int]], C: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and labels with (true, predicted, count) as given."""
    probs, labels = [], []
    for true, pred, count in pairs:
        for _ in range(count):
            p = torch.full((C,), 0.1 / (C - 1))
            p[pred] = 0.9
            probs.append(p)
            labels.append(true)
    return torch.stack(probs), torch.tensor(labels)


def test_metrics_match_a_hand_computation_on_a_fixed_confusion_matrix():
    probs, labels = probs_for([(0, 0, 40), (0, 1, 10), (1, 0, 5), (1, 1, 45)], 2)
    m = classification_metrics(probs, labels, ["a", "b"])
    assert m["confusion"] == [[40, 10], [5, 45]] and m["n"] == 100
    assert m["accuracy"] == pytest.approx(0.85)
    tp, tn, fp, fn = 45, 40, 10, 5
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert m["mcc"] == pytest.approx(mcc, abs=1e-6)
    # three classes: MCC from Gorodkin's formula over the whole matrix
    pairs = [(0, 0, 30), (0, 1, 5), (1, 1, 20), (1, 2, 10), (2, 0, 3), (2, 2, 32)]
    probs, labels = probs_for(pairs, 3)
    m = classification_metrics(probs, labels, ["x", "y", "z"])
    cm = np.array(m["confusion"], dtype=float)
    assert cm.tolist() == [[30, 5, 0], [0, 20, 10], [3, 0, 32]]
    s, c, t, p = cm.sum(), np.trace(cm), cm.sum(1), cm.sum(0)
    gorodkin = (c * s - t @ p) / math.sqrt((s * s - p @ p) * (s * s - t @ t))
    assert m["mcc"] == pytest.approx(gorodkin, abs=1e-6)
    assert m["accuracy"] == pytest.approx(82 / 100)


def test_auroc_is_the_probability_a_positive_outranks_a_negative():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (60,), generator=g)
    probs = torch.softmax(torch.randn(60, 3, generator=g) + 1.5 * torch.nn.functional.one_hot(
        labels, 3), -1)
    m = classification_metrics(probs, labels, ["a", "b", "c"])
    for c, name in enumerate("abc"):
        pos, neg = probs[labels == c, c], probs[labels != c, c]
        wins = sum(float(x > y) + 0.5 * float(x == y) for x, y in itertools.product(pos, neg))
        assert m["auroc_per_class"][name] == pytest.approx(wins / (len(pos) * len(neg)),
                                                           abs=1e-6)
    assert m["auroc"] == pytest.approx(np.mean(list(m["auroc_per_class"].values())))


# -- windows and splits -------------------------------------------------------------------
@pytest.mark.parametrize("length,seq_len", [(10, 16), (16, 16), (17, 16), (100, 16), (33, 8)])
def test_windows_cover_every_position_and_end_at_the_end(length, seq_len):
    starts = window_starts(length, seq_len)
    covered = np.zeros(length, dtype=bool)
    for s in starts:
        covered[s:s + seq_len] = True
    assert covered.all() and starts[0] == 0
    assert max(starts) + min(seq_len, length) == length
    assert all(b - a <= seq_len // 2 for a, b in zip(starts, starts[1:]))


def test_record_windows_pad_mask_flip_and_average():
    dna = get_domain("dna")
    seqs = [dna.encode("ACGTACGTAC"), dna.encode("ACGT" * 10)]
    ds = RecordWindows(lambda i: seqs[i], [0, 1], 16, dna.pad_id, dna.reverse_complement)
    items = [ds[i] for i in range(len(ds))]
    short = [it for it in items if it[2] == 0]
    assert len(short) == 2  # one window, two strands
    tokens, mask, _, _ = short[1]
    assert mask.sum() == 10 and (tokens[10:] == dna.pad_id).all()
    assert dna.decode(tokens[:10].numpy()) == "GTACGTACGT"
    assert sum(it[2] == 1 for it in items) == 2 * len(window_starts(40, 16))
    probs = torch.tensor([[0.2, 0.8], [0.4, 0.6], [1.0, 0.0]])
    avg = average_by_record(probs, torch.tensor([0, 0, 1]), 3)
    assert torch.allclose(avg, torch.tensor([[0.3, 0.7], [1.0, 0.0], [0.0, 0.0]]))


def test_split_is_stratified_seeded_and_disjoint(tmp_path):
    dna = get_domain("dna")
    store = TokenStore.build(tmp_path / "store", dna, [OCT4, MAFK])
    data = LabelledSet.from_class_files(store, ["oct4", "mafk"])
    assert (data.labels == 0).sum() == 250 and (data.labels == 1).sum() == 250
    train, val = data.split(0.1, seed=3)
    assert not set(train) & set(val) and len(train) + len(val) == 500
    assert (data.labels[val] == 0).sum() == 25 and (data.labels[val] == 1).sum() == 25
    assert data.split(0.1, seed=3) == (train, val) and data.split(0.1, seed=4)[1] != val


# -- the model ----------------------------------------------------------------------------
CFG = dict(vocab_size=16, d_model=32, n_layers=2, n_heads=2, d_ff=64, attn=["local", "lsh"],
           bucket_size=8, n_hashes=2, max_seq_len=128, causal=False)


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_classifier_pools_the_language_models_hidden_states_over_real_positions(pool):
    torch.manual_seed(0)
    clf = ReformerClassifier(ReformerConfig(**CFG), 3, pool=pool).eval()
    lm = ReformerLM(ReformerConfig(**CFG)).eval()
    lm.load_state_dict(clf.body.state_dict())
    tokens = torch.randint(2, 16, (2, 40))
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 25:] = False
    with torch.no_grad():
        hidden = lm.hidden_states(tokens)
        reduce = (lambda h: h.mean(0)) if pool == "mean" else (lambda h: h.amax(0))
        want = torch.stack([reduce(hidden[0]), reduce(hidden[1, :25])])
        assert torch.allclose(clf(tokens, mask), clf.head(want), atol=1e-5)
        # a row with no real position pools to zeros, not NaN
        empty = clf(tokens, torch.zeros_like(mask))
        assert torch.allclose(empty, clf.head.bias.expand(2, 3))


def test_freeze_trains_the_head_only():
    torch.manual_seed(0)
    clf = ReformerClassifier(ReformerConfig(**{**CFG, "dropout": 0.1}), 2)
    clf.freeze_body()
    clf.train()
    assert not clf.body.training  # no dropout in the fixed features
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    opt = torch.optim.SGD([p for p in clf.parameters() if p.requires_grad], lr=0.1)
    loss = torch.nn.functional.cross_entropy(clf(torch.randint(2, 16, (4, 32))),
                                             torch.tensor([0, 1, 0, 1]))
    loss.backward()
    opt.step()
    changed = {k for k, v in clf.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"head.weight", "head.bias"}


# -- end to end -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    out = tmp_path_factory.mktemp("clf") / "run"
    code, text = run_cli("finetune", "dna", "--classes", f"oct4={OCT4}", f"mafk={MAFK}",
                         "--out", out, "--max-steps", 6, *TINY)
    return out, code, text


def test_finetune_writes_a_model_directory_with_metrics(classifier):
    out, code, text = classifier
    assert code == 0, text
    for name in ("config.yaml", "model.safetensors", "metrics.json", "metrics.png",
                 "loss.png", "checkpoints/last.ckpt"):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    v = m["validation"]
    assert m["classes"] == ["oct4", "mafk"] and m["steps"] == 6
    assert m["n_val"] == 100 and m["n_train"] == 400 and v["n"] == 100
    assert sum(map(sum, v["confusion"])) == 100 and [sum(r) for r in v["confusion"]] == [50, 50]
    assert f"accuracy {v['accuracy']:.4f}" in text and "confusion matrix" in text
    assert "validation at step 3: " in text and "step 6/6" in text
    code, info = run_cli("info", out)
    assert code == 0 and "classifier of 2 classes" in info and f"{v['accuracy']:.4f}" in info


def test_predict_reproduces_the_validation_metrics(classifier, tmp_path):
    """predict on the held-out records gives the probabilities validation scored: same
    windows, both strands, the same metrics."""
    out, code, text = classifier
    assert code == 0, text
    store = TokenStore(out / "data")
    data = LabelledSet.from_class_files(store, ["oct4", "mafk"])
    _, val = data.split(0.2, seed=0)
    recs = dict(fasta_records(OCT4) + fasta_records(MAFK))
    held = [store.records[i].id for i in val]
    labels = out / "validation.tsv"  # what finetune says it held out
    assert labels.read_text() == "id\tlabel\n" + "".join(
        f"{store.records[i].id}\t{['oct4', 'mafk'][data.labels[i]]}\n" for i in val)
    query = tmp_path / "held.fa"
    write_fasta(query, [(rid, recs[rid]) for rid in held])
    tsv = tmp_path / "pred.tsv"
    code, text = run_cli("predict", "dna", "--model", out, "--fasta", query, "--out", tsv,
                         "--labels", labels)
    assert code == 0, text
    rows = [line.split("\t") for line in tsv.read_text().strip().split("\n")]
    assert rows[0] == ["id", "predicted", "prob_oct4", "prob_mafk"]
    assert [r[0] for r in rows[1:]] == held
    probs = np.array([[float(x) for x in r[2:]] for r in rows[1:]])
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    assert [r[1] for r in rows[1:]] == [["oct4", "mafk"][k] for k in probs.argmax(1)]
    v = json.loads((out / "metrics.json").read_text())["validation"]
    got = re.search(r"accuracy ([\d.]+), MCC ([-\d.]+), AUROC ([\d.]+)", text).groups()
    assert np.allclose([float(x) for x in got], [v["accuracy"], v["mcc"], v["auroc"]],
                       atol=2e-4)


def test_resume_continues_to_the_new_max_steps(classifier, tmp_path):
    trained, code, text = classifier
    assert code == 0, text
    out = tmp_path / "resumed"  # a copy: the other tests read the 6-step run, in any order
    shutil.copytree(trained, out)
    code, text = run_cli("finetune", "dna", "--classes", f"oct4={OCT4}", f"mafk={MAFK}",
                         "--out", out, "--resume", "--max-steps", 9)
    assert code == 0, text
    assert "training from step 6 to 9" in text and "step 9/9" in text
    assert json.loads((out / "metrics.json").read_text())["steps"] == 9


def test_labels_table_and_sequences_of_very_different_lengths(tmp_path):
    """--labels with --fasta; short sequences padded, long ones windowed (and said so)."""
    oct4, mafk = fasta_records(OCT4)[:40], fasta_records(MAFK)[:40]
    records = [(rid, seq[:60]) for rid, seq in oct4[:20]] + oct4[20:]
    records += [(f"{rid}_long", seq * 5) for rid, seq in mafk[:5]] + mafk[5:]
    fa, tsv = tmp_path / "mixed.fa", tmp_path / "labels.tsv"
    write_fasta(fa, records)
    tsv.write_text("".join(f"{rid}\t{'oct4' if i < 40 else 'mafk'}\n"
                           for i, (rid, _) in enumerate(records)))
    out = tmp_path / "run"
    code, text = run_cli("finetune", "dna", "--labels", tsv, "--fasta", fa, "--out", out,
                         "--max-steps", 2, "--seq-len", 200, *TINY)
    assert code == 0, text
    assert "sequences of 60 to 1,000 tokens, windows of 200" in " ".join(text.split())
    assert json.loads((out / "metrics.json").read_text())["classes"] == ["mafk", "oct4"]
    pred = tmp_path / "p.tsv"
    code, text = run_cli("predict", "dna", "--model", out, "--fasta", fa, "--out", pred,
                         "--forward-only")
    assert code == 0, text
    assert len(pred.read_text().strip().split("\n")) == 81


def test_from_a_pretrained_language_model_with_the_head_only(tiny_dna_run, tmp_path):
    lm = tiny_dna_run
    out = tmp_path / "clf"
    code, text = run_cli("finetune", "dna", "--classes", f"oct4={OCT4}", f"mafk={MAFK}",
                         "--model", lm, "--freeze", "--out", out, "--max-steps", 3,
                         "train.max_minutes=null", "train.val_every=3", "train.batch_size=8")
    assert code == 0, text
    lm_weights, clf_weights = load_file(lm / "model.safetensors"), load_file(
        out / "model.safetensors")
    for name, w in lm_weights.items():
        assert torch.equal(clf_weights[f"body.{name}"], w), name
    cfg = json.dumps(__import__("yaml").safe_load((out / "config.yaml").read_text()))
    assert '"causal": true' in cfg and '"freeze": true' in cfg
    # a classifier is not a language model, and the other way round
    code, text = run_cli("sample", "dna", "--model", out, "--length", 5, "--out",
                         tmp_path / "s.fa")
    assert code == 2 and "not a language model" in text and not (tmp_path / "s.fa").exists()
    code, text = run_cli("predict", "dna", "--model", lm, "--fasta", OCT4, "--out",
                         tmp_path / "p.tsv")
    assert code == 2 and "not a classifier" in text and not (tmp_path / "p.tsv").exists()


def _bad(tmp_path, *args) -> str:
    out = tmp_path / "bad"
    code, text = run_cli("finetune", "dna", *args, "--out", out, "--max-steps", 1, *TINY)
    assert code == 2, text
    assert "Traceback" not in text and not out.exists()
    return " ".join(text.split())


def test_bad_inputs_end_with_one_clear_message(tmp_path):
    empty = tmp_path / "empty.fa"
    empty.write_text("")
    assert "no such file (class 'b')" in _bad(tmp_path, "--classes", f"a={OCT4}",
                                              f"b={tmp_path / 'nope.fa'}")
    assert "empty file (class 'b')" in _bad(tmp_path, "--classes", f"a={OCT4}", f"b={empty}")
    assert "at least two classes, got 1" in _bad(tmp_path, "--classes", f"a={OCT4}")
    assert "class 'a' is named twice" in _bad(tmp_path, "--classes", f"a={OCT4}", f"a={MAFK}")
    assert "expected NAME=FILE" in _bad(tmp_path, "--classes", str(OCT4), f"b={MAFK}")
    fa = tmp_path / "x.fa"
    write_fasta(fa, fasta_records(OCT4)[:10])
    tsv = tmp_path / "labels.tsv"
    tsv.write_text("id\tlabel\n" + "".join(f"{rid}\t{'ab'[i % 2]}\n" for i, (rid, _) in
                                           enumerate(fasta_records(OCT4)[:10]))
                   + "chrZ:1-2\ta\n")
    assert f"{tsv}: 1 ids are not in the FASTA input, e.g. 'chrZ:1-2'" in _bad(
        tmp_path, "--labels", tsv, "--fasta", fa)
    tsv.write_text("".join(f"{rid}\ta\n" for rid, _ in fasta_records(OCT4)[:10]))
    assert "at least two labels" in _bad(tmp_path, "--labels", tsv, "--fasta", fa)
    assert "no labelled sequences" in _bad(tmp_path, "--fasta", fa)


def test_ddp_validation_counts_every_window_once(tmp_path):
    """Two processes each score their share of the validation windows, and the sampler pads
    an odd number of windows by repeating one: the gathered metrics equal one process's."""
    import pytorch_lightning as pl

    from seqformer.pipeline import run_config
    from seqformer.pipeline.classify_training import ClassifierTask, LabelledData
    from seqformer.pipeline.training import _strategy

    a, b = tmp_path / "a.fa", tmp_path / "b.fa"
    write_fasta(a, fasta_records(OCT4)[:23])
    write_fasta(b, fasta_records(MAFK)[:22])
    dna = get_domain("dna")
    data = LabelledSet.from_class_files(TokenStore.build(tmp_path / "store", dna, [a, b]),
                                        ["oct4", "mafk"])
    cfg = run_config.resolve("dna", dna.vocab_size, None, {
        "model": {k: v for k, v in CFG.items() if k != "vocab_size"},
        "data": {"seq_len": 100, "holdout": 0.5},
        "train": {"batch_size": 4}, "classify": {"classes": ["oct4", "mafk"],
                                                 "both_strands": False}}, task="classify")
    assert cfg["data"]["holdout"] == 0.5
    found = {}
    for devices in (1, 2):
        module = LabelledData(data, cfg, dna.pad_id, None)
        # 12 + 11 records of 200 bases, windows of 100 at 0, 50 and 100: 69, an odd number,
        # so the sampler repeats one
        assert len(module.val_idx) == 23 and len(module.val_dataloader().dataset) == 69
        pl.seed_everything(0, verbose=False)
        task = ClassifierTask(cfg["model"], 2, cfg["train"], cfg["classify"])
        trainer = pl.Trainer(accelerator="cpu", devices=devices, logger=False,
                             strategy=_strategy("ddp_spawn") if devices > 1 else "auto",
                             enable_progress_bar=False, enable_model_summary=False)
        trainer.validate(task, datamodule=module, verbose=False)
        found[devices] = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert set(found[1]) == {"val_loss", "val_acc", "val_mcc", "val_auroc", "val_auroc_oct4",
                             "val_auroc_mafk"}
    for key, value in found[1].items():
        assert found[2][key] == pytest.approx(value, abs=1e-5), key


def test_a_window_set_by_override_is_kept(tmp_path):
    """data.seq_len=N as an override (not --seq-len): 200-base peaks in windows of 128."""
    import yaml

    out = tmp_path / "run"
    code, text = run_cli("finetune", "dna", "--classes", f"oct4={OCT4}", f"mafk={MAFK}",
                         "--out", out, "--max-steps", 1, *TINY, "data.seq_len=128")
    assert code == 0, text
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["seq_len"] == 128
    assert "longer ones are cropped at random" in " ".join(text.split())
