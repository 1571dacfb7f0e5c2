"""Lightning tasks: what every task shares (AdamW with warmup + cosine decay, a guard that
stops training on a non-finite loss before it reaches the weights), what the tasks scored
in bits per token share, and the language model's task. The classifier's and the
encoder-decoder's tasks are in classify.py and seq2seq.py."""

from __future__ import annotations

import math
import time

import pytorch_lightning as pl
import torch

from ..core import ReformerConfig, ReformerLM

LN2 = math.log(2.0)


def token_nll(model: ReformerLM, batch: torch.Tensor, ignore: tuple[int, ...]
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token negative log-likelihood (nats) of batch[:, 1:] over targets not in
    `ignore`, and their count. The loss is the model's chunked one: no (L, vocab) logits."""
    targets = batch[:, 1:]
    keep = torch.ones_like(targets, dtype=torch.bool)
    for t in ignore:
        keep &= targets != t
    nll = model.loss(batch, reduction="none")
    return (nll * keep).sum(), keep.sum()


class Task(pl.LightningModule):
    """The training loop's shared part. Subclasses set self.model and self.train_cfg, and
    say what the loop reports: `monitor` (metric, "min"/"max") picks best.ckpt, `shown`
    ((train metric, unit), (validation metric, unit)) goes in the progress lines, `curve`
    (train metric, validation metric, axis label) is loss.png, `command` resumes it."""

    monitor: tuple[str, str]
    shown: tuple[tuple[str, str], tuple[str, str]]
    curve: tuple[str, str, str]
    command: str
    stopped_on_nonfinite = False

    def tokens_in(self, batch) -> int:  # noqa: ANN001
        """Tokens a training batch feeds the model (for progress lines)."""
        return batch[:, 1:].numel()

    def checked(self, loss: torch.Tensor) -> torch.Tensor | None:
        """The loss, or None (after stopping training) if it is not finite: returning None
        skips backward and the optimizer step, so the weights (and the checkpoints saved
        from them) stay those of the last good step."""
        if torch.isfinite(loss):
            return loss
        self.stopped_on_nonfinite = True
        self.trainer.should_stop = True
        self.print(f"error: non-finite loss ({loss.item()}) at step {self.global_step}; "
                   "stopping, the last good checkpoint is kept")
        return None

    def configure_optimizers(self):
        cfg = self.train_cfg
        decay = [p for p in self.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg["weight_decay"]},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=cfg["lr"], betas=(0.9, 0.98))
        warmup, total = max(1, cfg["warmup_steps"]), max(1, cfg["max_steps"])
        budget = 60.0 * cfg["max_minutes"] if cfg.get("max_minutes") else None
        started = time.monotonic()

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            if budget:  # a time-limited run anneals by the clock if that ends first
                progress = max(progress, (time.monotonic() - started) / budget)
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class BitsTask(Task):
    """A task scored in bits per target token (the language model, the encoder-decoder):
    subclasses give `nll(batch, validation)`, the summed nats and the number of targets."""

    monitor = ("val_bits", "min")
    shown = (("bits", "bits"), ("val_bits", "bits/token"))
    curve = ("bits", "val_bits", "bits per token")

    def __init__(self):
        super().__init__()
        self._val: list[torch.Tensor] = []

    def nll(self, batch, validation: bool) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
        raise NotImplementedError

    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:  # noqa: ANN001
        nll, n = self.nll(batch, validation=False)
        loss = self.checked(nll / n.clamp_min(1))
        if loss is None:
            return None
        self.log("loss", loss, prog_bar=True)
        self.log("bits", loss / LN2, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:  # noqa: ANN001
        nll, n = self.nll(batch, validation=True)
        self._val.append(torch.stack([nll.double(), n.double()]))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        nll, n = torch.stack(self._val).sum(0)
        self._val.clear()
        if self.trainer.world_size > 1:
            nll, n = self.all_gather(torch.stack([nll, n])).reshape(-1, 2).sum(0)
        loss = (nll / n.clamp_min(1)).float()
        self.log("val_loss", loss, prog_bar=False, sync_dist=False)
        self.log("val_bits", loss / LN2, prog_bar=True, sync_dist=False)


class LMTask(BitsTask):
    command = "seqformer train"

    def __init__(self, model: dict, train: dict, pad_id: int, sep_id: int):
        super().__init__()
        self.save_hyperparameters()
        self.model = ReformerLM(ReformerConfig.from_dict(
            {**model, "axial_shape": tuple(model["axial_shape"]) if model.get("axial_shape")
             else None}))
        self.train_cfg = train
        self.pad_id, self.sep_id = pad_id, sep_id

    def nll(self, batch: torch.Tensor, validation: bool) -> tuple[torch.Tensor, torch.Tensor]:
        # a separator is a target in training (records end), not in validation's bits
        ignore = (self.pad_id, self.sep_id) if validation else (self.pad_id,)
        return token_nll(self.model, batch, ignore)
