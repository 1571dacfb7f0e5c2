"""`train`: inputs -> token store -> Lightning fit -> an exported model directory."""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import signal
import sys
import threading
import warnings
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint, WeightAveraging
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import MisconfigurationException, SIGTERMException
from torch.utils.data import DataLoader

from ..core.config import ReformerConfig
from ..core.layers.copy import pointer_hit_rates
from ..domains import Domain, get_domain
from ..errors import WRITE_FAILURES, InputError, Interrupted, OutputError, write_failed
from ..files import atomic_path, save_torch
from .inference import sample_batch
from .lightning_module import LMTask, Task
from .markov import fit_baseline, split_at
from .progress import PlainProgress, TrainingBar
from .run_dir import (
    BASELINE,
    POINTER,
    PREVIOUS,
    SAMPLING,
    check_run_dir,
    export_weights,
    load_run,
    read_metrics,
    write_config,
)
from .token_store import TokenStore, tokenize
from .windows import Stream, TrainWindows, ValWindows, split_streams


def item_range(trainer: pl.Trainer | None, train: dict) -> tuple[int, int]:
    """(training items of the whole run, items already used). Items are drawn from one
    seeded sequence; a resumed run starts after those of the steps already done, so it
    goes on with new data instead of replaying the first items."""
    per_step = train["batch_size"] * train["accumulate"] * (trainer.world_size if trainer
                                                            else 1)
    done = trainer.global_step * per_step if trainer else 0
    return train["max_steps"] * per_step, done


class WindowData(pl.LightningDataModule):
    def __init__(self, store: TokenStore, cfg: dict, pad_id: int, sep_id: int, augment=None):
        super().__init__()
        data = cfg["data"]
        self.train_stream, self.val_stream = split_streams(
            store, data["holdout"], data["split"], sep_id, data.get("holdout_ids") or [])
        self.cfg, self.pad_id, self.augment = cfg, pad_id, augment

    def train_dataloader(self) -> DataLoader:
        data, train = self.cfg["data"], self.cfg["train"]
        n_items, done = item_range(self.trainer, train)
        ds = TrainWindows(self.train_stream, data["seq_len"], n_items, train["seed"],
                          self.augment, start=done, record_starts=data["record_starts"])
        return DataLoader(ds, batch_size=train["batch_size"], num_workers=train["num_workers"])

    def val_dataloader(self) -> DataLoader:
        data = self.cfg["data"]
        ds = ValWindows(self.val_stream, data["seq_len"], data["val_windows"], self.pad_id)
        return DataLoader(ds, batch_size=self.cfg["train"]["batch_size"])


# What a checkpoint may hold besides tensors and plain containers, numbers and strings:
# nothing. Resuming unpickles with weights_only=True and this allow-list, so a checkpoint
# from elsewhere cannot run code.
CHECKPOINT_GLOBALS: list = []
DAMAGED = "last.ckpt.damaged"


def read_checkpoint(path: Path, map_location=None) -> dict:  # noqa: ANN001
    """A checkpoint's contents, or an InputError saying it is damaged or not ours."""
    damaged = InputError(f"{path}: damaged (truncated or overwritten)")
    if not path.is_file():
        raise InputError(f"{path}: not found")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise damaged
    try:
        with torch.serialization.safe_globals(CHECKPOINT_GLOBALS):
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" not in str(e).lower():
            raise damaged from None
        raise InputError(f"{path}: holds objects a seqformer checkpoint never holds; "
                         "refusing to load it") from None
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile):
        raise damaged from None
    if not isinstance(checkpoint, dict) or "global_step" not in checkpoint:
        raise InputError(f"{path}: not a training checkpoint")
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file, synced and renamed, so a kill at any
    moment leaves the previous checkpoint whole; last.ckpt's previous version is kept as
    previous.ckpt, to fall back on if last.ckpt is later damaged. Loading never runs code
    from the file (weights_only=True)."""

    def __init__(self):
        super().__init__()
        self.verified: dict[str, dict] = {}  # read by resume_from, handed to Lightning
        self.last_step: int | None = None  # the step last.ckpt holds, once written here

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        if path.name != "last.ckpt":
            save_torch(checkpoint, path)
            return
        # the last step can be saved twice (every N steps and at the end): keep an older one
        step = checkpoint.get("global_step")
        save_torch(checkpoint, path, path.with_name(PREVIOUS) if step != self.last_step else None)
        self.last_step = step

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        checkpoint = self.verified.pop(str(path), None)
        return checkpoint if checkpoint is not None else read_checkpoint(Path(path),
                                                                         map_location)


def resume_from(ckpt_dir: Path, io: AtomicCheckpointIO) -> Path:
    """The checkpoint to resume from: last.ckpt if it loads, else previous.ckpt with a
    warning saying which steps are lost; else one error naming the damaged file."""
    last, previous = ckpt_dir / "last.ckpt", ckpt_dir / PREVIOUS
    try:
        io.verified[str(last)] = read_checkpoint(last, "cpu")
        io.last_step = io.verified[str(last)]["global_step"]
        return last
    except InputError as damaged:
        if not previous.is_file():
            raise InputError(f"{damaged}; no earlier checkpoint to fall back on: start "
                             "over with --force") from None
        try:
            fallback = read_checkpoint(previous, "cpu")
        except InputError as also:
            raise InputError(f"{damaged}, and so is the one before it ({also}): start "
                             "over with --force") from None
        # moved aside, so the next rotation does not make the damaged file the previous one
        os.replace(last, last.with_name(DAMAGED))
        logging.getLogger("seqformer").warning(
            "%s (moved to %s); resuming from %s at step %d instead: the steps after it are "
            "lost", damaged, DAMAGED, previous, fallback["global_step"])
        io.verified[str(previous)] = fallback
        return previous


class StopOnSignal(Callback):
    """Ctrl-C or SIGTERM: finish the current step, save checkpoints/last.ckpt, stop. Also
    saves last.ckpt at the final step, whether or not it falls on checkpoint_every.
    A second Ctrl-C interrupts at once (the checkpoint on disk is then the previous one)."""

    def __init__(self, last: Path):
        self.last = last
        self.interrupted_at: int | None = None
        self._sigint = False
        self._previous = None

    def _on_sigint(self, signum, frame) -> None:
        self._sigint = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def on_train_start(self, trainer, pl_module) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (self._sigint or trainer.received_sigterm) and self.interrupted_at is None:
            trainer.save_checkpoint(self.last)
            self.interrupted_at = trainer.global_step
            trainer.should_stop = True
        elif trainer.global_step >= trainer.max_steps:
            trainer.save_checkpoint(self.last)  # the end, so --resume --max-steps extends it


def _strategy(name: str):
    """DDP with a static graph: the reversible stack back-propagates each layer in its own
    (reentrant) backward pass, which plain DDP rejects as parameters marked ready twice."""
    if name in ("ddp", "ddp_spawn", "ddp_find_unused_parameters_false"):
        from pytorch_lightning.strategies import DDPStrategy

        return DDPStrategy(static_graph=True, start_method="spawn" if name == "ddp_spawn"
                           else "popen")
    return name


def training_device(train: dict) -> str:
    """The device `train.accelerator` trains on: "cuda" where it allows a GPU and one is
    present, else "cpu". The calibration after training samples there too, so a run kept
    to the CPU stays on it."""
    gpu = torch.cuda.is_available() and train["accelerator"] in ("auto", "gpu", "cuda")
    return "cuda" if gpu else "cpu"


def _precision(train: dict) -> str:
    if train["precision"] != "auto":
        return train["precision"]
    return "bf16-mixed" if training_device(train) == "cuda" else "32-true"


def plot_loss(run: Path, train_key: str = "bits", val_key: str = "val_bits",
              ylabel: str = "bits per token") -> Path | None:
    """loss.png: training and validation loss (by default bits per token) against step."""
    train, val = read_metrics(run, train_key, val_key)
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train", lw=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(run.name)
    ax.grid(alpha=0.3)
    ax.legend()
    with atomic_path(run / "loss.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return run / "loss.png"


def markov_baseline(run: Path, train: Stream, val: Stream, seq_len: int, val_windows: int,
                    ignore: tuple[int, ...]) -> dict:
    """Fit the best fixed-order Markov model on the training stream's records and score
    the tokens validation scores (its first val_windows * seq_len targets; context within
    each record). Saved as run/baseline.npz; returns its summary."""
    store = train.store
    records = [store.tokens[o:o + n] for o, n in train.segments]
    model, orders = fit_baseline(records)
    scored = ValWindows(val, seq_len, val_windows, ignore[0])
    end = min(len(val), scored.n * seq_len + 1)
    total, n = model.bits(split_at(val.slice(0, end)[1:], ignore)) if end > 1 else (0.0, 0)
    summary = {"kind": "markov", "order": model.order, "val_bits": total / max(1, n),
               "val_tokens": n, "orders_on_training_split": orders}
    model.save(run / BASELINE, summary)
    return summary


def store_sampling_limits(run: Path, domain, records: Iterable[np.ndarray],  # noqa: ANN001
                          **sources: Any) -> dict | None:
    """run/sampling.json: the limits the domain's sampling grammar takes from the training
    records (MIDI: largest polyphony, longest usual note), if it has a grammar. `sources`:
    `sampling_limits`' seq2seq keywords (the records' sources and their domain)."""
    limits = domain.sampling_limits(records, **sources)
    if limits is not None:
        with atomic_path(run / SAMPLING) as tmp:
            tmp.write_text(json.dumps(limits, indent=1))
    return limits


def calibrate_sampling(run: Path, domain: Domain, limits: dict | None, seed: int,
                       device: str = "cpu") -> str | None:
    """Fit run/sampling.json (`limits`, as `store_sampling_limits` wrote them) to the
    exported model from its own samples on `device` (`Domain.calibrated_limits`); returns
    the domain's line saying what it fitted, None where it fits nothing."""
    if not limits:
        return None
    model, _, _ = load_run(run, device=device)
    prompt = np.array([domain.sep_id])

    def sample(trial: dict, n: int, length: int) -> list[np.ndarray]:
        rows, _ = sample_batch(model, prompt, length, n, seed=seed, allowed=domain.generatable(),
                               constraint=domain.constraint(trial, [prompt] * n), device=device)
        return list(rows)

    fitted, note = domain.calibrated_limits(limits, sample)
    if fitted != limits:
        with atomic_path(run / SAMPLING) as tmp:
            tmp.write_text(json.dumps(fitted, indent=1))
    return note


def store_pointer_hit_rates(run: Path, model_cfg: ReformerConfig,
                            records: Iterable[np.ndarray]) -> None:
    """run/pointer.json: how often the far pointer is right in the training records, per
    count of mismatches (`sample --trust-pointer`)."""
    rates = pointer_hit_rates((torch.from_numpy(np.asarray(r, dtype=np.int64)) for r in records),
                              model_cfg.copy_k, model_cfg.vocab_size, model_cfg.copy_pointer,
                              model_cfg.copy_pointer_k)
    with atomic_path(run / POINTER) as tmp:
        tmp.write_text(json.dumps({"hit_rate_by_mismatches": rates}, indent=1))


def quiet_foreign_warnings() -> None:
    """Filter what a user of the command line cannot act on: deprecations raised inside
    Lightning and torch, and Lightning's advice that does not apply here."""
    for category in (DeprecationWarning, FutureWarning):
        for module in ("pytorch_lightning", "lightning_fabric", "torch", "torchmetrics"):
            warnings.filterwarnings("ignore", category=category, module=module)
    # in-memory windows need no workers; a resumed run's windows do go on where they
    # stopped (WindowData); the checkpoint directory of a resumed run is of course not empty,
    # and a copied or moved run keeps its own checkpoints
    # a frozen body is in eval mode on purpose; a short run logs less often than log_every;
    # a run resumed at its last step has no batches left (it validates and exports)
    warnings.filterwarnings("ignore", message=r".*(does not have many workers|LeafSpec|"
                            r"dataloader is not resumable|exists and is not empty|"
                            r"dirpath has changed|module\(s\) in eval mode|"
                            r"smaller than the logging interval|across ranks is zero).*")


def _kept(last: Path) -> str:
    if not last.exists():
        return "no checkpoint was saved yet: free space and start again"
    step = read_checkpoint(last, "cpu")["global_step"]
    return (f"{last} keeps step {step}: free space, then continue with --resume")


def _restore_best(trainer: pl.Trainer, task: Task, best: ModelCheckpoint) -> bool:
    """train.export: best. Loads checkpoints/best.ckpt into the task when its validation
    beat the final weights' (just computed); says whether it did."""
    final = trainer.callback_metrics.get(task.monitor[0])
    if not best.best_model_path or best.best_model_score is None or final is None:
        return False
    score = float(best.best_model_score)
    if not (score < float(final) if task.monitor[1] == "min" else score > float(final)):
        return False
    task.load_state_dict(read_checkpoint(Path(best.best_model_path), "cpu")["state_dict"])
    return True


def ema_update(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor],
                                           torch.Tensor], None]:
    """train.ema_decay's update after the n-th step averaged: w <- d w + (1 - d) p with
    d = min(decay, (1 + n) / (10 + n)), so the average follows the weights closely early on
    and a short run's is not its first steps' (timm's ModelEmaV2 warms its decay up so).
    AveragedModel's multi_avg_fn: all the parameters at once, so n is read from its device
    once a step, not once per parameter."""
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor],
               n: torch.Tensor) -> None:
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        for a, p in zip(averaged, current):
            a.lerp_(p, 1.0 - d)
    return update


def fit(task: Task, data: pl.LightningDataModule, run: Path, train_cfg: dict, resume: bool,
        has_val: bool, progress: bool = True) -> pl.Trainer:
    """The training loop every task shares: Lightning fit with checkpoints (best by the
    task's `monitor`, last every checkpoint_every steps, atomically written), Ctrl-C and
    SIGTERM safety, progress (the task's `shown` metrics), and a closing validation of
    the final weights (with train.export: best, then of best.ckpt's when they scored
    better, which take their place). Raises Interrupted when stopped by a signal and
    InputError on a non-finite loss; returns the trainer."""
    ckpt_dir = run / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    for stale in [*ckpt_dir.glob(".*.tmp"), *ckpt_dir.glob(".*.link")]:  # cut short by a kill
        stale.unlink()
    io = AtomicCheckpointIO()
    resume_path = resume_from(ckpt_dir, io) if resume else None
    # "best" is saved at the end of each validation, with the weights just scored (saved
    # every val_every train steps instead, Lightning pairs a step's weights with the score
    # of the validation before it); "last" is kept every checkpoint_every steps
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=task.monitor[0],
                           mode=task.monitor[1], save_top_k=1, save_on_train_epoch_end=False)
    latest = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0,
                             every_n_train_steps=train_cfg.get("checkpoint_every")
                             or train_cfg["val_every"])
    stop = StopOnSignal(last)
    # validations score the average, checkpoints keep it (and the raw weights, to resume
    # from), and it replaces the raw weights when training ends; buffers are not averaged
    # (the copy's complement map is integer ids)
    ema = ([WeightAveraging(use_buffers=False,
                            multi_avg_fn=ema_update(train_cfg["ema_decay"]))]
           if train_cfg.get("ema_decay") else [])
    # a bar where someone watches, plain lines where output goes to a file
    bar = progress and sys.stdout.isatty()
    lines = ([TrainingBar(leave=True)] if bar
             else [PlainProgress(train_cfg["log_every"], train_cfg.get("max_minutes"),
                                 train_metric=task.shown[0], val_metric=task.shown[1])]
             if progress else [])
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    try:
        trainer = pl.Trainer(
            default_root_dir=run, max_steps=train_cfg["max_steps"],
            max_time=({"minutes": train_cfg["max_minutes"]} if train_cfg.get("max_minutes")
                      else None),
            accelerator=train_cfg["accelerator"],
            devices=train_cfg["devices"], num_nodes=train_cfg["num_nodes"],
            strategy=_strategy(train_cfg["strategy"]), precision=_precision(train_cfg),
            accumulate_grad_batches=train_cfg["accumulate"],
            gradient_clip_val=train_cfg["grad_clip"],
            val_check_interval=train_cfg["val_every"] if has_val else None,
            check_val_every_n_epoch=None, limit_val_batches=1.0 if has_val else 0,
            num_sanity_val_steps=0, log_every_n_steps=train_cfg["log_every"],
            # metrics reach disk every log_every steps, so a killed run's curve is kept
            logger=CSVLogger(run, name="logs", flush_logs_every_n_steps=train_cfg["log_every"]),
            callbacks=[best, latest, stop, *ema, *lines], plugins=[io],
            enable_progress_bar=bar, enable_model_summary=False)
    except (ValueError, MisconfigurationException) as e:  # e.g. fsdp without a GPU
        raise InputError(f"train (devices/strategy/accelerator): {e}") from None
    with warnings.catch_warnings():
        quiet_foreign_warnings()
        try:
            trainer.fit(task, datamodule=data,
                        ckpt_path=str(resume_path) if resume_path else None)
        except SIGTERMException:
            pass  # StopOnSignal has saved the step it stopped at
        except OSError as e:  # a log or plot write; checkpoint writes raise OutputError
            if e.errno not in WRITE_FAILURES:
                raise
            raise write_failed(e.filename or run, e, _kept(last)) from None
        except OutputError as e:
            raise OutputError(f"{e}; {_kept(last)}") from None
        if stop.interrupted_at is not None or trainer.received_sigterm:
            plot_loss(run, *task.curve)
            at = stop.interrupted_at if stop.interrupted_at is not None else "?"
            raise Interrupted(f"{run}: interrupted at step {at}, saved in checkpoints/last.ckpt; "
                              f"continue with `{task.command} ... --out {run} --resume` (add "
                              "--max-steps N to change where it ends)")
        for averaging in ema:  # the model holds the average now: score it as it is
            trainer.callbacks.remove(averaging)
        if has_val and not task.stopped_on_nonfinite:
            # the final weights' validation score, whatever step training ended on (every
            # process takes part: validation gathers across them)
            trainer.validate(task, datamodule=data, verbose=False)
            if train_cfg.get("export") == "best" and _restore_best(trainer, task, best):
                trainer.validate(task, datamodule=data, verbose=False)
    if task.stopped_on_nonfinite and trainer.global_rank == 0:
        raise InputError(f"{run}: training stopped on a non-finite loss at step "
                         f"{trainer.global_step}; checkpoints keep the last good weights")
    return trainer


def fit_and_export(task: Task, data: pl.LightningDataModule, run: Path, train_cfg: dict,
                   resume: bool, has_val: bool, progress: bool = True) -> pl.Trainer | None:
    """`fit`, then, in the first process, the model's weights and its loss curve; None in
    the other processes of a distributed run."""
    trainer = fit(task, data, run, train_cfg, resume, has_val, progress)
    if trainer.global_rank != 0:
        return None
    export_weights(run, task.model)
    plot_loss(run, *task.curve)
    return trainer


def window_augment(domain: Domain, cfg: dict
                   ) -> Callable[[np.ndarray, np.random.Generator], np.ndarray] | None:
    """What the config's data switches do to each training window (validation windows are
    never changed): rc_augment reverse-complements half of a genome's windows (both
    strands are equally real), program_shuffle relabels a MIDI window's instruments."""
    steps = []
    if cfg["data"]["rc_augment"] and hasattr(domain, "reverse_complement"):
        steps.append(lambda w, rng: domain.reverse_complement(w) if rng.random() < 0.5 else w)
    if cfg["data"].get("program_shuffle"):
        steps.append(domain.shuffle_programs)
    if not steps:
        return None

    def augment(window: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for step in steps:
            window = step(window, rng)
        return window
    return augment


def train(cfg: dict, inputs: list[Path], run: Path, resume: bool = False,
          progress: bool = True, on_record: Callable[[str, int], None] | None = None) -> dict:
    """Train per the resolved config; returns a summary (steps, validation bits, paths).
    `on_record(id, n_tokens)` reports tokenization of each input record (first run only)."""
    run = Path(run)
    check_run_dir(run, resume)
    domain = get_domain(cfg["domain"], **cfg["data"]["options"])
    store = tokenize(cfg, inputs, run, on_record)
    write_config(run, cfg, domain)
    data = WindowData(store, cfg, domain.pad_id, domain.sep_id, window_augment(domain, cfg))
    pl.seed_everything(cfg["train"]["seed"], workers=True, verbose=False)
    task = LMTask(cfg["model"], cfg["train"], domain.pad_id, domain.sep_id)
    has_val = len(data.val_stream) > 1 and cfg["data"]["val_windows"] > 0
    trainer = fit_and_export(task, data, run, cfg["train"], resume, has_val, progress)
    if trainer is None:
        return {}
    val = trainer.callback_metrics.get("val_bits")
    best = next((c.best_model_score for c in trainer.checkpoint_callbacks if c.monitor), None)
    train = data.train_stream
    records = [train.store.tokens[o:o + n] for o, n in train.segments]  # views
    limits = store_sampling_limits(run, domain, records)
    calibration = (calibrate_sampling(run, domain, limits, cfg["train"]["seed"],
                                      training_device(cfg["train"]))
                   if cfg["train"]["calibrate_sampling"] else None)
    if task.model.cfg.copy_pointer:
        store_pointer_hit_rates(run, task.model.cfg, records)
    baseline = (markov_baseline(run, data.train_stream, data.val_stream, cfg["data"]["seq_len"],
                                cfg["data"]["val_windows"], (domain.pad_id, domain.sep_id))
                if has_val else None)
    return {"steps": trainer.global_step, "val_bits": float(val) if val is not None else math.nan,
            "best_val_bits": float(best) if best is not None else None,
            "run": str(run), "tokens": store.total, "records": len(store),
            "baseline": baseline, "calibration": calibration}
