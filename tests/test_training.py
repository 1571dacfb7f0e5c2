"""The Lightning task and loop: a non-finite loss stops training before it reaches the
weights; best.ckpt holds the weights its score was measured on; train.export: best."""

import csv
import math
import re

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from seqformer.core import ReformerConfig, ReformerLM
from seqformer.pipeline.lightning_module import LMTask, token_nll
from seqformer.pipeline.training import _precision, read_checkpoint, training_device

from cli_helpers import TINY_MODEL, run_cli


def test_token_nll_ignores_padding_and_separators():
    model = ReformerLM(ReformerConfig(vocab_size=5, d_model=16, n_layers=1, n_heads=2,
                                      d_ff=32, bucket_size=8, max_seq_len=64))
    with torch.no_grad():
        model.head.weight.zero_()  # uniform predictions: log 5 nats per token
    batch = torch.tensor([[4, 0, 1, 2, 3]])
    nll, n = token_nll(model, batch, ignore=(0, 1))
    assert n == 2 and math.isclose(nll.item(), 2 * math.log(5), rel_tol=1e-6)


def test_nonfinite_loss_stops_training_and_keeps_good_weights(tmp_path):
    cfg = ReformerConfig(vocab_size=8, d_model=16, n_layers=1, n_heads=2, d_ff=32,
                         bucket_size=8, max_seq_len=64)
    train = {"lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 1, "max_steps": 10}
    task = LMTask(cfg.to_dict(), train, pad_id=0, sep_id=1)
    loss = task.model.loss
    calls = {"n": 0}

    def poisoned(tokens, reduction="mean"):  # the third step's loss is NaN
        calls["n"] += 1
        out = loss(tokens, reduction)
        return out * float("nan") if calls["n"] == 3 else out

    task.model.loss = poisoned
    snapshot = {}

    class Snapshot(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            snapshot.update({k: v.clone() for k, v in module.state_dict().items()})

    data = DataLoader(torch.randint(2, 8, (40, 33)), batch_size=4)
    trainer = pl.Trainer(max_steps=10, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[Snapshot()], default_root_dir=tmp_path)
    trainer.fit(task, data)
    # stops at the poisoned batch (Lightning still counts its skipped step)
    assert task.stopped_on_nonfinite and trainer.global_step <= 3
    for name, value in task.state_dict().items():
        assert torch.isfinite(value).all(), name
        assert torch.equal(value, snapshot[name]), name  # the NaN step changed nothing


def _overfitting_run(tmp_path, export: str) -> tuple:
    """Train on one 64-base motif repeated and validate on random bases: validation first
    falls (base composition), then rises as the model learns to copy the motif. Returns
    the run, the periodic validations (metrics.csv, in order), the closing validation of
    the last step's weights, the validation the run reported and its output."""
    rng = np.random.default_rng(0)
    motif = "".join(rng.choice(list("ACGT"), 64))
    fasta = tmp_path / "g.fa"
    fasta.write_text(f">motif\n{motif * 40}\n>random\n{''.join(rng.choice(list('ACGT'), 2048))}\n")
    run = tmp_path / export
    code, out = run_cli("train", "dna", "--fasta", fasta, "--out", run, *TINY_MODEL,
                        "data.holdout_ids=[random]", "data.rc_augment=false",
                        "train.max_steps=60", "train.val_every=5", "train.lr=3e-3",
                        "train.warmup_steps=5", f"train.export={export}")
    assert code == 0, out
    rows = csv.DictReader(next(run.glob("logs/version_*/metrics.csv")).read_text().splitlines())
    vals = [float(r["val_bits"]) for r in rows if r.get("val_bits")]
    periodic, closing = vals[:12], vals[12]  # every 5 steps to 60, then the closing one
    reported = float(re.search(r"validation: model ([\d.]+) bits", out).group(1))
    return run, periodic, closing, reported, out


@pytest.mark.parametrize("export", ["last", "best"])
def test_best_checkpoint_holds_the_weights_of_its_score_and_export_best_keeps_them(
        tmp_path, export):
    run, periodic, closing, reported, out = _overfitting_run(tmp_path, export)
    best = read_checkpoint(run / "checkpoints" / "best.ckpt")
    score = next(v["best_model_score"] for k, v in best["callbacks"].items()
                 if "'monitor': 'val_bits'" in k)
    assert float(score) == pytest.approx(min(periodic), abs=1e-6)
    assert min(periodic) < closing - 0.05  # the run did overfit: the test is not vacuous
    exported = load_file(run / "model.safetensors")
    told = (f"validation was {min(periodic):.4f} bits/base earlier in this run: the model "
            "has overfit")
    if export == "last":
        assert reported == pytest.approx(closing, abs=1e-4)
        assert told in " ".join(out.split())  # the run says so, and how to keep the best
        return
    assert "has overfit" not in out
    # the best weights were exported, and scored again they give best.ckpt's score: the
    # checkpoint holds the weights that were validated, not the next interval's
    assert len(periodic) == 12 and reported == pytest.approx(min(periodic), abs=1e-4)
    weights = {k.removeprefix("model."): v for k, v in best["state_dict"].items()}
    assert exported.keys() <= weights.keys()
    for name, value in exported.items():
        assert torch.equal(value, weights[name]), name


@pytest.mark.parametrize("setting, message", [
    ("train.export=final", "train.export: must be last or best, got 'final'"),
    ("train.ema_decay=1", "train.ema_decay: must be a number in (0, 1) or null, got 1")])
def test_a_bad_train_setting_is_one_clear_error(tmp_path, setting, message):
    fasta = tmp_path / "g.fa"
    fasta.write_text(">a\n" + "ACGT" * 300 + "\n")
    code, out = run_cli("train", "dna", "--fasta", fasta, "--out", tmp_path / "r", *TINY_MODEL,
                        setting)
    assert code != 0 and message in out
    assert "Traceback" not in out and not (tmp_path / "r").exists()


class _RecordingLM(LMTask):
    """Keeps the raw weights after every optimizer step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, outputs, batch, batch_idx):  # noqa: ANN001
        self.steps.append({k: v.detach().clone() for k, v in self.model.named_parameters()})


def _recorded_fit(tmp_path, ema_decay):
    from seqformer.pipeline.run_config import DEFAULTS
    from seqformer.pipeline.training import fit
    cfg = ReformerConfig(vocab_size=8, d_model=16, n_layers=1, n_heads=2, d_ff=32,
                         bucket_size=8, max_seq_len=64, attn="local")
    train = {**DEFAULTS["train"], "max_steps": 12, "warmup_steps": 3, "val_every": 4,
             "lr": 3e-3, "ema_decay": ema_decay, "accelerator": "cpu"}
    pl.seed_everything(0, verbose=False)
    task = _RecordingLM(cfg.to_dict(), train, pad_id=0, sep_id=1)
    tokens = torch.randint(2, 8, (64, 33), generator=torch.Generator().manual_seed(0))
    data = pl.LightningDataModule()
    data.train_dataloader = lambda: DataLoader(tokens[:48], batch_size=4)
    data.val_dataloader = lambda: DataLoader(tokens[48:], batch_size=4)
    run = tmp_path / f"ema{ema_decay}"
    trainer = fit(task, data, run, train, resume=False, has_val=True, progress=False)
    return task, trainer, run, tokens[48:]


def test_ema_decay_exports_the_moving_average_of_the_weights(tmp_path):
    """train.ema_decay against its plain counterpart: the same seed's raw weights, step by
    step, are the plain run's; the exported weights are their average (the first step's,
    then w <- d w + (1 - d) p after step k with d = min(decay, k / (9 + k))), and the closing
    validation scores it. (fit_and_export writes task.model as it is after fit.)"""
    plain, _, _, _ = _recorded_fit(tmp_path, None)
    task, trainer, run, val_tokens = _recorded_fit(tmp_path, 0.5)
    assert len(task.steps) == len(plain.steps) == 12
    for raw, reference in zip(task.steps, plain.steps):  # averaging leaves training alone
        for name in raw:
            torch.testing.assert_close(raw[name], reference[name], rtol=1e-5, atol=1e-6)
    averaged = {k: v.clone() for k, v in task.steps[0].items()}
    for k, raw in enumerate(task.steps[1:], start=2):
        d = min(0.5, k / (9 + k))  # the decay is reached at step 9
        for name, value in raw.items():
            averaged[name] = d * averaged[name] + (1 - d) * value
    exported, plain_exported = (dict(t.model.named_parameters()) for t in (task, plain))
    for name, value in averaged.items():
        torch.testing.assert_close(exported[name], value, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(plain_exported[name], plain.steps[-1][name])
    assert any(not torch.allclose(exported[n], task.steps[-1][n]) for n in averaged)
    # the closing validation is the exported weights' score
    with torch.no_grad():
        nll, n = token_nll(task.model.eval(), val_tokens, ignore=(0, 1))
    assert float(trainer.callback_metrics["val_bits"]) == pytest.approx(
        (nll / n).item() / math.log(2), rel=1e-5)
    # the last step's checkpoint holds the average, and the raw weights to resume from
    last = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 12
    for name, value in averaged.items():
        torch.testing.assert_close(last["state_dict"][f"model.{name}"], value,
                                   rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(last["current_model_state"][f"model.{name}"],
                                   task.steps[-1][name])


def test_a_resumed_run_goes_on_averaging_and_exports_the_average(tmp_path):
    fasta = tmp_path / "g.fa"
    rng = np.random.default_rng(0)
    fasta.write_text(">a\n" + "".join(rng.choice(list("ACGT"), 5000)) + "\n")
    run = tmp_path / "r"
    args = ("train", "dna", "--fasta", fasta, "--out", run, *TINY_MODEL, "train.ema_decay=0.9")
    code, out = run_cli(*args, "train.max_steps=6")
    assert code == 0, out
    code, out = run_cli("train", "dna", "--fasta", fasta, "--out", run, "--resume",
                        "--max-steps", "12")
    assert code == 0, out
    last = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 12 and int(last["averaging_state"]["n_averaged"]) == 12
    exported = load_file(run / "model.safetensors")
    for name, value in exported.items():
        assert torch.equal(value, last["state_dict"][f"model.{name}"]), name
    assert any(not torch.equal(value, last["current_model_state"][f"model.{name}"])
               for name, value in exported.items())


@pytest.mark.parametrize("accelerator, with_gpu, device, precision", [
    ("auto", False, "cpu", "32-true"),
    ("auto", True, "cuda", "bf16-mixed"),
    ("gpu", True, "cuda", "bf16-mixed"),
    ("cpu", True, "cpu", "32-true"),  # a run kept to the CPU calibrates there too
])
def test_training_device_follows_the_accelerator(monkeypatch, accelerator, with_gpu, device,
                                                 precision):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: with_gpu)
    train = {"accelerator": accelerator, "precision": "auto"}
    assert training_device(train) == device
    assert _precision(train) == precision
    assert _precision({**train, "precision": "16-mixed"}) == "16-mixed"
