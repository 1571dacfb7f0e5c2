"""Sequence classification without Lightning: a classifier's model and the windows
`predict` averages; `finetune` is in classify_training.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..core import ReformerClassifier
from ..domains import Domain, Record
from .labelled import RecordWindows, average_by_record
from .run_dir import (
    check_model_dir,
    load_model_dir,
    model_config,
)

METRICS = "metrics.json"
METRICS_PNG = "metrics.png"
VALIDATION = "validation.tsv"


def flip_of(domain: Domain) -> Callable[[np.ndarray], np.ndarray] | None:
    """The domain's reverse complement (DNA), or None where it has no second strand."""
    return getattr(domain, "reverse_complement", None)


def build_classifier(model: dict, n_classes: int, classify: dict) -> ReformerClassifier:
    return ReformerClassifier(model_config({"model": model}), n_classes,
                              classify["head_dropout"], classify.get("pool", "mean"))


def pretrained_model(lm_dir: Path, domain: str) -> tuple[dict, dict]:
    """A language model directory's (model config, tokenization options) for a classifier
    that starts from it; its weights load in `finetune`."""
    cfg = check_model_dir(lm_dir, "lm", domain)
    return cfg["model"], cfg["data"].get("options", {})


def load_classifier(run: str | Path, domain: str | None = None,
                    device: str | torch.device = "cpu"
                    ) -> tuple[ReformerClassifier, Domain, dict]:
    """A trained classifier (eval mode), its domain and its config."""
    def build(cfg: dict) -> ReformerClassifier:
        clf = cfg["classify"]
        return build_classifier(cfg["model"], len(clf["classes"]), clf)

    return load_model_dir(run, "classify", build, domain, device)


@torch.no_grad()
def predict_probabilities(model: ReformerClassifier, domain: Domain, cfg: dict,
                          records: list[Record], both_strands: bool | None = None,
                          batch_size: int = 64,
                          on_batch: Callable[[int], None] | None = None) -> torch.Tensor:
    """Class probabilities (n_records, n_classes): the mean over each record's windows
    (and both strands, by default if the model validated on both)."""
    if both_strands is None:
        both_strands = cfg["classify"]["both_strands"]
    flip = flip_of(domain) if both_strands else None
    ds = RecordWindows(lambda i: records[i].tokens, list(range(len(records))),
                       int(cfg["data"]["seq_len"]), domain.pad_id, flip)
    device = next(model.parameters()).device
    probs, owners = [], []
    for tokens, mask, owner, _ in DataLoader(ds, batch_size=batch_size):
        probs.append(torch.softmax(model(tokens.to(device), mask.to(device)).float(), -1).cpu())
        owners.append(owner)
        if on_batch:
            on_batch(len(owner))
    return average_by_record(torch.cat(probs), torch.cat(owners), len(records))
