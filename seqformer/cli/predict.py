"""`seqformer predict dna`: class probabilities from a classifier."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer

from ..errors import InputError
from ..files import check_output
from ..pipeline.classify import load_classifier, predict_probabilities
from ..pipeline.labelled import class_index, read_label_table
from ..pipeline.outputs import write_tsv
from .common import Force, ModelOpt, clean_errors, out, progress, read_all, verb
from .finetune import print_metrics

app = verb("Classify sequences with a classifier.")


def predict_files(domain_name: str, model_dir: Path, inputs: list[Path], out_path: Path,
                  both_strands: bool | None, labels: Path | None, batch_size: int,
                  force: bool) -> None:
    check_output(out_path, force)
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be at least 1")
    model, domain, cfg = load_classifier(model_dir, domain_name)
    classes = cfg["classify"]["classes"]
    table = read_label_table(labels) if labels is not None else None
    index = class_index(table, classes, labels) if table is not None else None
    records = read_all(domain, inputs)
    with progress() as bar:
        task = bar.add_task("classifying", total=None)
        probs = predict_probabilities(model, domain, cfg, records, both_strands, batch_size,
                                      on_batch=lambda n: bar.advance(task, n))
    predicted = probs.argmax(-1).tolist()
    write_tsv(out_path, ["id", "predicted", *(f"prob_{c}" for c in classes)],
              [[rec.id, classes[k], *(f"{p:.6f}" for p in row)]
               for rec, k, row in zip(records, predicted, probs.tolist())])
    counts = ", ".join(f"{c} {predicted.count(i):,}" for i, c in enumerate(classes))
    out.print(f"wrote {out_path} ({len(records):,} sequences: {counts})")
    if table is not None:
        have = [i for i, r in enumerate(records) if r.id in table]
        if not have:
            raise InputError(f"{labels}: none of its ids is in the input")
        # torchmetrics takes a second to import: only when there is something to measure
        from ..pipeline.class_metrics import classification_metrics

        truth = torch.tensor([index[table[records[i].id]] for i in have])
        print_metrics(classification_metrics(probs[have], truth, classes),
                      f"against {labels.name}")


@app.command("dna")
@clean_errors
def predict_dna(model: ModelOpt, fasta: Annotated[list[Path], typer.Option("--fasta")],
                out_path: Annotated[Path, typer.Option("--out", help="TSV to write")],
                both_strands: Annotated[bool | None, typer.Option(
                    "--both-strands/--forward-only", help="average the two strands' "
                    "probabilities (default: as the model was validated)")] = None,
                labels: Annotated[Path | None, typer.Option(
                    "--labels", help="TSV of id and true label: also report metrics")] = None,
                batch_size: Annotated[int, typer.Option("--batch-size")] = 64,
                force: Force = False) -> None:
    """Class probabilities of each FASTA record (windows of a long one averaged)."""
    predict_files("dna", model, fasta, out_path, both_strands, labels, batch_size, force)
