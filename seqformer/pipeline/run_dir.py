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

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from ..core import ReformerLM
from ..domains import Domain, get_domain
from ..errors import InputError
from ..files import atomic_path
from .markov import MarkovModel
from .run_config import model_config

BASELINE = "baseline.npz"
SAMPLING = "sampling.json"


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
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable ({e})") from None


def write_config(run: Path, cfg: dict, domain: Domain) -> None:
    run.mkdir(parents=True, exist_ok=True)
    with atomic_path(run / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
    with atomic_path(run / "vocab.json") as tmp:
        tmp.write_text(json.dumps(domain.vocabulary(), indent=1))


def export_weights(run: Path, model: ReformerLM) -> None:
    with atomic_path(run / "model.safetensors") as tmp:
        try:
            save_model(model, str(tmp))
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


# what each task's model is called, the command that trains it, and what else to do with it
TASKS = {"lm": ("language model", "seqformer train", "sample, score or embed"),
         "classify": ("classifier", "seqformer finetune", "predict"),
         "seq2seq": ("sequence-to-sequence model", "seqformer train seq2seq",
                     "sample seq2seq or score seq2seq")}


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
    model = build(cfg)
    try:
        load_model(model, str(weights), device=str(device))
    except Exception as e:
        raise InputError(f"{weights}: cannot load weights: {e}") from None
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
