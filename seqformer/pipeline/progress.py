"""Training progress: Rich's bar on a terminal, plain lines in a log file.

Under SLURM, nohup or CI nothing reads a redrawn bar, so without a terminal every
`log_every` steps one line says where training is (step, train and last validation
figures, tokens/s, elapsed, ETA), and each validation one more.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, RichProgressBar


class TrainingBar(RichProgressBar):
    """Rich's bar, named by what it counts: training runs by steps, not epochs (it would
    print "Epoch 0/-2")."""

    def _get_train_description(self, current_epoch: int) -> str:
        return "training"


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class PlainProgress(Callback):
    """One line per `every` optimizer steps and one per validation, to `stream`.
    `train_metric` and `val_metric` are the logged metrics shown, with their units (a
    language model's bits; a classifier's loss and accuracy)."""

    def __init__(self, every: int, max_minutes: float | None = None,
                 stream: TextIO | None = None, train_metric: tuple[str, str] = ("bits", "bits"),
                 val_metric: tuple[str, str] = ("val_bits", "bits/token")):
        self.every = max(1, every)
        self.train_metric, self.val_metric = train_metric, val_metric
        self.limit = 60.0 * max_minutes if max_minutes else None
        self.stream = stream
        self.started = self.first_step = None
        self.tokens = 0
        self.val_value: float | None = None
        self.last_validation: tuple[int, float] | None = None

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stderr, flush=True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started, self.first_step = time.monotonic(), trainer.global_step
        limit = f" or {self.limit / 60:g} minutes" if self.limit else ""
        self._print(f"training from step {trainer.global_step} to {trainer.max_steps}{limit}")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs,
                           batch, batch_idx: int) -> None:  # noqa: ANN001
        self.tokens += pl_module.tokens_in(batch) * trainer.world_size
        step = trainer.global_step
        if step % self.every and step != trainer.max_steps:
            return
        elapsed = time.monotonic() - self.started
        done = step - self.first_step
        eta = elapsed / done * (trainer.max_steps - step) if done else float("nan")
        if self.limit:  # training also stops at the time limit
            eta = min(eta, max(0.0, self.limit - elapsed)) if done else self.limit - elapsed
        (key, unit), val_unit = self.train_metric, self.val_metric[1].split("/")[0]
        value = trainer.callback_metrics.get(key)
        parts = [f"step {step}/{trainer.max_steps}",
                 f"train {float(value):.4f} {unit}" if value is not None else "",
                 f"val {self.val_value:.4f} {val_unit}" if self.val_value is not None else "",
                 f"{self.tokens / max(elapsed, 1e-9):,.0f} tokens/s",
                 f"elapsed {clock(elapsed)}",
                 f"ETA {clock(eta)}" if eta == eta else ""]
        self._print("  ".join(p for p in parts if p))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        key, unit = self.val_metric
        value = trainer.callback_metrics.get(key)
        if value is None or trainer.sanity_checking:
            return
        seen = (trainer.global_step, float(value))
        if seen == self.last_validation:  # the closing validation of weights just validated
            return
        self.last_validation = seen
        self.val_value = float(value)
        self._print(f"validation at step {trainer.global_step}: {self.val_value:.4f} {unit}")
