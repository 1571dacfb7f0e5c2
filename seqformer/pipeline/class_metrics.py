"""Classification metrics (torchmetrics): accuracy, Matthews correlation, AUROC (macro and
per class, one against the rest), the confusion matrix, and a picture of the last two."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_confusion_matrix,
    multiclass_matthews_corrcoef,
    multiclass_roc,
)

from ..files import atomic_path


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor,
                           classes: list[str]) -> dict:
    """probs (N, C) class probabilities, labels (N,) class indices -> a JSON-ready dict.
    The confusion matrix's rows are the true classes, its columns the predicted ones."""
    probs, labels = probs.float().cpu(), labels.long().cpu()
    C = len(classes)
    per_class = multiclass_auroc(probs, labels, num_classes=C, average=None)
    present = torch.bincount(labels, minlength=C) > 0
    return {
        "n": int(labels.numel()),
        "accuracy": float(multiclass_accuracy(probs, labels, num_classes=C, average="micro")),
        "mcc": float(multiclass_matthews_corrcoef(probs, labels, num_classes=C)),
        # a class absent from the labels has no AUROC; the macro mean is over the others
        "auroc": float(per_class[present].mean()) if present.any() else float("nan"),
        "auroc_per_class": {c: float(a) if ok else None
                            for c, a, ok in zip(classes, per_class, present)},
        "nll": float(-probs[torch.arange(len(labels)), labels].clamp_min(1e-12).log().mean()),
        "confusion": multiclass_confusion_matrix(probs, labels, num_classes=C).tolist(),
        "classes": list(classes),
    }


def plot_metrics(probs: torch.Tensor, labels: torch.Tensor, classes: list[str], path: Path,
                 title: str) -> Path:
    """The confusion matrix and each class's ROC curve, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = classification_metrics(probs, labels, classes)
    C = len(classes)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    confusion = np.array(m["confusion"])
    left.imshow(confusion, cmap="Blues")
    for i in range(C):
        for j in range(C):
            left.text(j, i, f"{int(confusion[i, j]):,}", ha="center", va="center",
                      color="white" if confusion[i, j] > confusion.max() / 2 else "black")
    left.set_xticks(range(C), classes, rotation=45 if C > 4 else 0)
    left.set_yticks(range(C), classes)
    left.set_xlabel("predicted")
    left.set_ylabel("true")
    left.set_title(f"accuracy {m['accuracy']:.3f}, MCC {m['mcc']:.3f}")
    fpr, tpr, _ = multiclass_roc(probs.float().cpu(), labels.long().cpu(), num_classes=C)
    for c, name in enumerate(classes):
        auc = m["auroc_per_class"][name]
        if auc is not None:
            right.plot(fpr[c].numpy(), tpr[c].numpy(), label=f"{name} (AUROC {auc:.3f})")
    right.plot([0, 1], [0, 1], ":", color="grey")
    right.set_xlabel("false positive rate")
    right.set_ylabel("true positive rate")
    right.set_title(f"ROC, one class against the rest (macro {m['auroc']:.3f})")
    right.legend(loc="lower right")
    fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
