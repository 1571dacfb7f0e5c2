"""`train seq2seq`: a ReformerEncDec (or a PrefixLM) trained on pairs of records on the
pipeline every task shares (Lightning fit with checkpoints, resume, Ctrl-C safety,
progress, DDP). What sampling and scoring need is in seq2seq.py, which loads no Lightning.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from .lightning_module import BitsTask
from .run_dir import check_run_dir, write_config
from .seq2seq import PairBatches, Pairs, build_model, domains_of, tokenize_pairs
from .training import fit_and_export, item_range, store_sampling_limits


class PairData(pl.LightningDataModule):
    def __init__(self, pairs: Pairs, cfg: dict, pad_id: int, sep_id: int):
        super().__init__()
        self.pairs, self.cfg, self.pad_id, self.sep_id = pairs, cfg, pad_id, sep_id
        self.train_idx, self.val_idx = pairs.split(cfg["data"]["holdout"], cfg["train"]["seed"])

    def train_dataloader(self) -> DataLoader:
        train = self.cfg["train"]
        n_items, done = item_range(self.trainer, train)
        ds = PairBatches(self.pairs, self.train_idx, train["batch_size"], n_items,
                         train["seed"], self.pad_id, self.sep_id, start=done)
        return DataLoader(ds, batch_size=None, num_workers=train["num_workers"])

    def val_dataloader(self) -> DataLoader:
        bs = self.cfg["train"]["batch_size"]
        ds = PairBatches(self.pairs, self.val_idx, bs, 0, 0, self.pad_id, self.sep_id)
        batches = [ds.collate(self.val_idx[b:b + bs]) for b in range(0, len(self.val_idx), bs)]
        return DataLoader(batches, batch_size=None)


class Seq2SeqTask(BitsTask):
    curve = ("bits", "val_bits", "bits per target token")
    command = "seqformer train seq2seq"

    def __init__(self, cfg: dict):
        super().__init__()
        self.save_hyperparameters()
        self.model = build_model(cfg)
        self.train_cfg = cfg["train"]

    def tokens_in(self, batch) -> int:  # noqa: ANN001
        return int(batch[1].sum() + batch[3].sum())

    def nll(self, batch, validation: bool) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
        src, src_len, tgt, tgt_len = batch
        return self.model.loss(src, tgt, src_len, tgt_len, reduction="sum"), (tgt_len - 1).sum()


def train_seq2seq(cfg: dict, sources: list[Path], targets: list[Path], run: Path,
                  resume: bool = False, progress: bool = True,
                  on_note: Callable[[str], None] | None = None) -> dict:
    """Train per the resolved config (task "seq2seq"); returns a summary."""
    started = time.monotonic()
    run = Path(run)
    check_run_dir(run, resume)
    pairs = tokenize_pairs(cfg, sources, targets, run)
    source, target = domains_of(cfg)
    write_config(run, cfg, target)
    if on_note:
        for what, ids in (("unpaired, skipped", pairs.unpaired),
                          ("longer than the model takes, skipped", pairs.too_long)):
            if ids:
                shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5
                                              else "")
                on_note(f"{len(ids)} record{'s' * (len(ids) != 1)} {what}: {shown}")
    data = PairData(pairs, cfg, target.pad_id, target.sep_id)
    pl.seed_everything(cfg["train"]["seed"], workers=True, verbose=False)
    task = Seq2SeqTask(cfg)
    has_val = len(data.val_idx) > 0
    trainer = fit_and_export(task, data, run, cfg["train"], resume, has_val, progress)
    if trainer is None:
        return {}
    train = [pairs.tokens(k) for k in data.train_idx]
    store_sampling_limits(run, target, [t for _, t in train], sources=[s for s, _ in train],
                          source_domain=source)
    val = trainer.callback_metrics.get("val_bits")
    return {"steps": trainer.global_step, "run": str(run), "pairs": len(pairs),
            "n_train": len(data.train_idx), "n_val": len(data.val_idx),
            "val_bits": float(val) if val is not None else math.nan,
            "minutes": (time.monotonic() - started) / 60}
