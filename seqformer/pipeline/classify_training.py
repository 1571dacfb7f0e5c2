"""`finetune`: a ReformerClassifier trained on labelled sequences on the pipeline `train`
uses (config, token store, Lightning fit with checkpoints, resume, Ctrl-C safety,
progress, DDP). What `predict` needs is in classify.py, which loads no Lightning."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from safetensors.torch import load_model
from torch.utils.data import DataLoader

from ..domains import get_domain
from ..errors import InputError
from ..files import atomic_path
from .class_metrics import classification_metrics, plot_metrics
from .classify import METRICS, METRICS_PNG, VALIDATION, build_classifier, flip_of
from .labelled import LabelledSet, RecordWindows, TrainCrops, average_by_record
from .lightning_module import Task
from .run_dir import check_run_dir, write_config
from .token_store import tokenize
from .training import fit_and_export, item_range


class LabelledData(pl.LightningDataModule):
    """Training crops and validation windows of a labelled set, split by class."""

    def __init__(self, data: LabelledSet, cfg: dict, pad_id: int,
                 flip: Callable[[np.ndarray], np.ndarray] | None):
        super().__init__()
        self.data, self.cfg, self.pad_id, self.flip = data, cfg, pad_id, flip
        self.train_idx, self.val_idx = data.split(cfg["data"]["holdout"], cfg["train"]["seed"])
        self.val_labels = torch.from_numpy(data.labels[self.val_idx])

    def train_dataloader(self) -> DataLoader:
        data, train = self.cfg["data"], self.cfg["train"]
        n_items, done = item_range(self.trainer, train)
        ds = TrainCrops(self.data, self.train_idx, data["seq_len"], n_items, train["seed"],
                        self.pad_id, self.flip if data["rc_augment"] else None, start=done)
        return DataLoader(ds, batch_size=train["batch_size"], num_workers=train["num_workers"])

    def val_dataloader(self) -> DataLoader:
        flip = self.flip if self.cfg["classify"]["both_strands"] else None
        ds = RecordWindows(self.data.store.record_tokens, self.val_idx,
                           self.cfg["data"]["seq_len"], self.pad_id, flip)
        return DataLoader(ds, batch_size=self.cfg["train"]["batch_size"])


class ClassifierTask(Task):
    monitor = ("val_loss", "min")
    shown = (("loss", "loss"), ("val_acc", "accuracy"))
    curve = ("loss", "val_loss", "cross-entropy (nats)")
    command = "seqformer finetune"

    def __init__(self, model: dict, n_classes: int, train: dict, classify: dict):
        super().__init__()
        self.save_hyperparameters()
        self.model = build_classifier(model, n_classes, classify)
        if classify["freeze"]:
            self.model.freeze_body()
        self.train_cfg, self.classes = train, classify["classes"]
        self.last_metrics: dict | None = None
        self.last_probs: torch.Tensor | None = None
        self._val: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def tokens_in(self, batch) -> int:  # noqa: ANN001
        return int(batch[1].sum())

    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:  # noqa: ANN001
        tokens, mask, labels = batch
        logits = self.model(tokens, mask)
        loss = self.checked(F.cross_entropy(logits.float(), labels))
        if loss is None:
            return None
        self.log("loss", loss, prog_bar=True)
        self.log("acc", (logits.argmax(-1) == labels).float().mean(), prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:  # noqa: ANN001
        tokens, mask, owner, window = batch
        probs = torch.softmax(self.model(tokens, mask).float(), dim=-1)
        self._val.append((window, owner, probs))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        window, owner, probs = (torch.cat(t) for t in zip(*self._val))
        self._val.clear()
        if self.trainer.world_size > 1:
            # each process scored its share of the windows (some twice, where the sampler
            # padded the shares to one size): gather, then keep each window once
            window, owner, probs = (self.all_gather(t).flatten(0, 1) for t in
                                    (window, owner, probs))
        labels = self.trainer.datamodule.val_labels
        order = torch.argsort(window, stable=True)
        first = torch.ones_like(order, dtype=torch.bool)
        first[1:] = window[order][1:] != window[order][:-1]
        once = order[first]
        record_probs = average_by_record(probs[once].cpu(), owner[once].cpu(), len(labels))
        metrics = classification_metrics(record_probs, labels, self.classes)
        self.last_metrics, self.last_probs = metrics, record_probs
        for key in ("nll", "accuracy", "mcc", "auroc"):
            name = {"nll": "val_loss", "accuracy": "val_acc"}.get(key, f"val_{key}")
            self.log(name, torch.tensor(metrics[key]), prog_bar=key == "accuracy",
                     sync_dist=False)
        for name, auroc in metrics["auroc_per_class"].items():
            if auroc is not None:
                self.log(f"val_auroc_{name}", torch.tensor(auroc), sync_dist=False)


def labelled_set(cfg: dict, store, files_as_classes: bool,  # noqa: ANN001
                 table: dict[str, str] | None, table_path: Path | None) -> LabelledSet:
    classes = cfg["classify"]["classes"]
    if files_as_classes:
        return LabelledSet.from_class_files(store, classes)
    return LabelledSet.from_table(store, table, table_path, classes or None)


def describe_lengths(data: LabelledSet, seq_len: int) -> str | None:
    """How sequences of unequal lengths are handled, if they are unequal."""
    lengths = data.lengths()[data.labels >= 0]
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo == hi == seq_len:
        return None
    parts = [f"sequences of {lo:,} to {hi:,} tokens, windows of {seq_len:,}"]
    if lo < seq_len:
        parts.append("shorter ones are padded (the padding is left out of the pooling)")
    if hi > seq_len:
        parts.append("longer ones are cropped at random in training and covered by windows "
                     "overlapping by half, averaged, at validation and prediction")
    return "; ".join(parts)


def finetune(cfg: dict, inputs: list[Path], run: Path, resume: bool = False,
             table: dict[str, str] | None = None, table_path: Path | None = None,
             progress: bool = True, on_note: Callable[[str], None] | None = None) -> dict:
    """Train a classifier per the resolved config (task "classify"). Labels come from the
    input files (one per class, in the order of classify.classes) or, with `table`, from
    record ids. Writes the model directory and returns a summary."""
    started = time.monotonic()
    run = Path(run)
    check_run_dir(run, resume)
    clf = cfg["classify"]
    domain = get_domain(cfg["domain"], **cfg["data"]["options"])
    store = tokenize(cfg, inputs, run)
    data = labelled_set(cfg, store, table is None, table, table_path)
    clf["classes"] = data.classes
    write_config(run, cfg, domain)
    note = describe_lengths(data, cfg["data"]["seq_len"])
    if note and on_note:
        on_note(note)
    module = LabelledData(data, cfg, domain.pad_id, flip_of(domain))
    if not resume:  # the held-out records, so anyone can score them again (predict --labels)
        with atomic_path(run / VALIDATION) as tmp:
            tmp.write_text("id\tlabel\n" + "".join(
                f"{store.records[i].id}\t{data.classes[data.labels[i]]}\n"
                for i in module.val_idx))
    pl.seed_everything(cfg["train"]["seed"], workers=True, verbose=False)
    task = ClassifierTask(cfg["model"], len(data.classes), cfg["train"], clf)
    if clf["pretrained"] and not resume:
        weights = Path(clf["pretrained"]) / "model.safetensors"
        try:
            load_model(task.model.body, str(weights))
        except Exception as e:
            raise InputError(f"{weights}: cannot load into the classifier: {e}") from None
    has_val = len(module.val_idx) > 0
    trainer = fit_and_export(task, module, run, cfg["train"], resume, has_val, progress)
    if trainer is None:
        return {}
    summary = {"steps": trainer.global_step, "run": str(run), "classes": data.classes,
               "n_train": len(module.train_idx), "n_val": len(module.val_idx),
               "minutes": (time.monotonic() - started) / 60, "validation": task.last_metrics}
    if task.last_probs is not None:
        plot_metrics(task.last_probs, module.val_labels, data.classes, run / METRICS_PNG,
                     f"{run.name}: validation ({len(module.val_idx):,} sequences)")
    with atomic_path(run / METRICS) as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    return summary
