"""A model directory: everything sample/score/embed need, and nothing else they read.

    runs/NAME/
      config.yaml          resolved config (domain, task, model, data, train[, classify])
      vocab.json           the domain's vocabulary and tokenization options
      model.safetensors    weights (written at the end of training)
      checkpoints/         Lightning checkpoints: last.ckpt, previous.ckpt (the last one
                           before it), best.ckpt (for --resume)
      logs/version_N/      metrics.csv of each training session (a resume adds one)
      loss.png             loss curve
      baseline.npz         the Markov baseline fitted on the training split
      sampling.json        limits of the domain's sampling grammar (MIDI), from training
      data/                token store of the training inputs
      metrics.json         a classifier's final validation metrics (and metrics.png)
      data/source, data/target   a sequence-to-sequence model's two token stores
      validation.tsv       a classifier's held-out records: id and label
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model

from ..core import ReformerLM
from ..domains import Domain, get_domain
from ..errors import InputError
from ..files import atomic_path
from .markov import MarkovModel
from .run_config import TASKS, model_config
from .token_store import TokenStore
from .windows import split_streams

BASELINE = "baseline.npz"
SAMPLING = "sampling.json"
POINTER = "pointer.json"  # how often the far pointer is right in training (model.copy_pointer)
PREVIOUS = "previous.ckpt"  # checkpoints/: last.ckpt before its latest rewrite, to fall back on


def read_baseline(run: str | Path) -> tuple[MarkovModel, dict] | None:
    """The run's Markov baseline (model, summary), or None for a run trained before it."""
    path = Path(run) / BASELINE
    if not path.is_file():
        return None
    try:
        return MarkovModel.load(path)
    except Exception as e:
        raise InputError(f"{path}: unreadable baseline ({e})") from None


def read_sampling_limits(run: str | Path) -> dict | None:
    """What the domain's sampling grammar learned from training, or None for a run
    trained before it was stored."""
    path = Path(run) / SAMPLING
    return _read_json(path) if path.is_file() else None


def read_pointer_hit_rates(run: str | Path) -> list[float]:
    """The far pointer's hit rate per count of mismatches in the run's training data."""
    path = Path(run) / POINTER
    if not path.is_file():
        raise InputError(f"{path}: no such file: the model has no far pointer "
                         f"(model.copy_pointer), or was trained before it was stored")
    rates = _read_json(path).get("hit_rate_by_mismatches")
    try:
        return [float(r) for r in rates]
    except (ValueError, TypeError) as e:
        raise InputError(f"{path}: no hit rates ({e})") from None


def _read_json(path: Path) -> dict:
    """A JSON object the run stored; InputError naming the file if it is not one."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable ({e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: unreadable (not a JSON object)")
    return data


def heldout_ids(run: str | Path) -> list[str]:
    """The records a language-model run kept out of training whole, by its own data split
    (data.holdout_ids, else the last data.holdout of the records with split "records")."""
    run = Path(run)
    data = read_config(run)["data"]
    if not (run / "data" / "index.json").is_file():
        raise InputError(f"{run}/data: no token store, so the held-out records are unknown")
    if not data.get("holdout_ids") and (data.get("split") != "records"
                                        or not data.get("holdout")):
        raise InputError(f"{run}: trained with split {data.get('split')!r} and holdout "
                         f"{data.get('holdout')}: no whole pieces were held out")
    store = TokenStore(run / "data")
    _, val = split_streams(store, data["holdout"], data["split"], 0,
                           data.get("holdout_ids") or [])
    starts = {offset for offset, _ in val.segments}
    return [r.id for r in store.records if r.offset in starts]


def read_metrics(run: Path, train_key: str = "bits", val_key: str = "val_bits"
                 ) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, train metric) and (step, validation metric), by default bits, over all
    sessions of a run: each start or resume logs to its own logs/version_N/metrics.csv,
    so nothing is overwritten and a resumed curve joins the earlier one."""
    train, val = {}, {}
    for metrics in sorted(Path(run).glob("logs/version_*/metrics.csv")):
        with open(metrics) as f:
            for row in csv.DictReader(f):
                try:  # a process killed mid-write can leave a truncated last row
                    if row.get(train_key):
                        train[int(row["step"])] = float(row[train_key])
                    if row.get(val_key):
                        val[int(row["step"])] = float(row[val_key])
                except (TypeError, ValueError):
                    continue
    return sorted(train.items()), sorted(val.items())


def write_config(run: Path, cfg: dict, domain: Domain) -> None:
    run.mkdir(parents=True, exist_ok=True)
    with atomic_path(run / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
    with atomic_path(run / "vocab.json") as tmp:
        tmp.write_text(json.dumps(domain.vocabulary(), indent=1))


WEIGHTS_CONFIG = "seqformer.config"  # metadata key of model.safetensors


def weights_fingerprint(cfg: dict) -> str:
    """What in a config decides what the weights mean: the model and the tokenization."""
    return json.dumps({"model": cfg["model"], "options": cfg.get("data", {}).get("options", {})},
                      sort_keys=True)


def export_weights(run: Path, model: ReformerLM) -> None:
    """model.safetensors, carrying the fingerprint of the run's config.yaml, so a damaged or
    edited config.yaml is named as such when the weights are loaded."""
    metadata = {WEIGHTS_CONFIG: weights_fingerprint(read_config(run))}
    with atomic_path(run / "model.safetensors") as tmp:
        try:
            save_model(model, str(tmp), metadata=metadata)
        except SafetensorError as e:  # its writer reports a full disk as "(os error 28)"
            code = re.search(r"os error (\d+)", str(e))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1)))) from None


def read_config(run: str | Path) -> dict:
    run = Path(run)
    if not run.exists():
        raise InputError(f"{run}: model directory not found")
    if not (run / "config.yaml").is_file():
        raise InputError(f"{run}: not a seqformer model directory (no config.yaml)")
    try:
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        assert isinstance(cfg, dict) and "model" in cfg and "domain" in cfg
    except Exception:
        raise InputError(f"{run}/config.yaml: unreadable or not a seqformer config") from None
    return cfg



def is_first_process() -> bool:
    """False in the extra processes of a distributed launch (Lightning DDP, torchrun)."""
    return all(int(os.environ.get(v, "0") or 0) == 0 for v in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def check_run_dir(run: Path, resume: bool) -> None:
    """A new run needs a new (or token-store-only) directory; a resumed one a checkpoint."""
    if resume:
        if not any((run / "checkpoints" / name).is_file() for name in ("last.ckpt", PREVIOUS)):
            raise InputError(f"{run}: nothing to resume (no checkpoints/last.ckpt)")
        return
    # Lightning's DDP launcher re-runs this command in child processes (and torchrun runs
    # it once per rank): only the first process judges whether the run directory is new
    if is_first_process() and run.exists() and any(p.name != "data" for p in run.iterdir()):
        raise InputError(f"{run}: already exists (use --resume to continue it, or --force to "
                         "start over)")


def prepare_run(run: Path, task: str, resume: bool, force: bool, max_steps: int | None,
                new_config: Callable[[], dict]) -> dict:
    """The config of a run about to train `task` (a key of TASKS): when resuming, the one
    stored in `run` (max_steps moves the end); else new_config(), in a new directory
    (--force removes the old one first). Checks the directory can be trained into."""
    if resume:
        cfg = read_config(run)
        if cfg.get("task", "lm") != task:
            raise InputError(f"{run}: is not a {TASKS[task][0]} run, nothing to resume here")
        if max_steps is not None:  # resuming may extend a finished run
            cfg["train"]["max_steps"] = max_steps
    else:
        cfg = new_config()
        if force and is_first_process() and run.exists():
            shutil.rmtree(run)
    check_run_dir(run, resume)
    return cfg


@contextlib.contextmanager
def no_half_made_run(run: Path, new_run: bool) -> Iterator[None]:
    """Bad input found before training began leaves no half-made run directory."""
    try:
        yield
    except InputError:
        if new_run and is_first_process() and not (run / "checkpoints").exists():
            shutil.rmtree(run, ignore_errors=True)
        raise


def check_model_dir(run: str | Path, task: str, domain: str | None = None) -> dict:
    """The config of a trained model directory of `task` (a key of TASKS) and, if given, of
    `domain` (a seq2seq model's is its target's), whose weights are written; else one error
    saying what it is instead."""
    run = Path(run)
    cfg = read_config(run)
    have = cfg.get("task", "lm")
    if have != task:
        name, _, use = TASKS[have]
        raise InputError(f"{run}: is a {name}, not a {TASKS[task][0]} (use `seqformer {use}` "
                         "with it)")
    if domain is not None and cfg["domain"] != domain:
        raise InputError(f"{run}: is a {cfg['domain']} model, not a {domain} model")
    if not (run / "model.safetensors").is_file():
        raise InputError(f"{run}: no model.safetensors (training not finished? resume it "
                         f"with `{TASKS[task][1]} ... --resume`)")
    return cfg


def load_model_dir(run: str | Path, task: str, build: Callable[[dict], torch.nn.Module],
                   domain: str | None = None, device: str | torch.device = "cpu"
                   ) -> tuple[torch.nn.Module, Domain, dict]:
    """The trained model of a `task` ("lm", "classify") directory, built from its config by
    `build` and loaded (eval mode), its domain (with the training tokenization options) and
    its config. `domain` checks that the directory holds a model of that domain."""
    cfg = check_model_dir(run, task, domain)
    weights = Path(run) / "model.safetensors"
    try:
        with safe_open(str(weights), "pt") as f:
            saved = (f.metadata() or {}).get(WEIGHTS_CONFIG)
    except Exception as e:
        raise InputError(f"{weights}: cannot load weights: {e}") from None
    if saved is not None and saved != weights_fingerprint(cfg):
        raise InputError(f"{Path(run) / 'config.yaml'}: its model or tokenization is not the "
                         f"one {weights.name} was trained with (damaged or edited?)")
    try:
        model = build(cfg)
        load_model(model, str(weights), device=str(device))
    except Exception as e:  # weights from before the fingerprint: either file may be wrong
        raise InputError(f"{weights}: cannot load weights with {Path(run) / 'config.yaml'}: "
                         f"{e}") from None
    dom = get_domain(cfg["domain"], **cfg["data"].get("options", {}))
    check_vocabulary(run, dom)
    return model.to(device).eval(), dom, cfg


def check_vocabulary(run: str | Path, domain: Domain) -> None:
    """The vocabulary the model was trained with (vocab.json) is the one `domain` tokenizes
    with now, so token ids mean what they meant in training."""
    path = Path(run) / "vocab.json"
    if not path.is_file():  # a run from before vocab.json was written
        return
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable ({e})") from None
    if saved != json.loads(json.dumps(domain.vocabulary())):
        raise InputError(f"{path}: the model was trained with another vocabulary than this "
                         f"seqformer's {domain.name} vocabulary")


def load_run(run: str | Path, domain: str | None = None, device: str | torch.device = "cpu"
             ) -> tuple[ReformerLM, Domain, dict]:
    """The trained language model (eval mode), its domain and its config."""
    return load_model_dir(run, "lm", lambda cfg: ReformerLM(model_config(cfg)), domain, device)
