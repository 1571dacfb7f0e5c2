"""`seqformer finetune dna`: a classifier, from scratch or from a language model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..domains import get_domain
from ..errors import InputError
from ..pipeline import run_config
from ..pipeline.classify import pretrained_model
from ..pipeline.labelled import parse_classes, read_label_table
from ..pipeline.run_dir import no_half_made_run, prepare_run
from ..pipeline.token_store import tokenize
from .common import (
    BatchSize,
    ConfigOpt,
    Devices,
    Force,
    MaxSteps,
    NumNodes,
    OutRun,
    Overrides,
    Resume,
    Softmask,
    Strategy,
    Training,
    clean_errors,
    existing_inputs,
    more_values,
    note,
    out,
    tokenizing,
    verb,
)

app = verb("Train a sequence classifier on labelled sequences.")


def classify_inputs(classes: list[str] | None, labels: Path | None, fasta: list[Path] | None
                    ) -> tuple[list[str], list[Path], dict[str, str] | None]:
    """(class names or [], input files, id -> label table or None) from the options."""
    if classes and (labels or fasta):
        raise InputError("give either --classes NAME=FILE ... or --labels TSV with --fasta, "
                         "not both")
    if classes:
        names, files = parse_classes(classes)
        return names, files, None
    if labels is None or not fasta:
        raise InputError("no labelled sequences: give --classes NAME=FILE (one per class) or "
                         "--labels TSV (id and label) with --fasta")
    return [], existing_inputs(fasta, None, "--fasta"), read_label_table(labels)


def sets_seq_len(preset: Path, overrides: list[str]) -> bool:
    return ("seq_len" in (run_config.load_yaml(preset).get("data") or {})
            or any(o.strip().startswith("data.seq_len=") for o in overrides))


def classifier_config(domain_name: str, names: list[str], inputs: list[Path],
                      table: dict[str, str] | None, model_dir: Path | None, freeze: bool,
                      preset: Path, run: Path, opts: Training, options: dict) -> dict:
    """The resolved classifier config of a new run (tokenizing the inputs first when the
    window is to fit the longest sequence), or the stored one of a resumed run."""
    fit_window = opts.seq_len is None and not sets_seq_len(preset, opts.overrides or [])
    cli: dict = {"train": opts.train_section(), "data": {"options": options},
                 "classify": {"classes": names, "freeze": freeze}}

    def resolve() -> dict:
        vocab_size = get_domain(domain_name, **cli["data"]["options"]).vocab_size
        return run_config.resolve(domain_name, vocab_size, preset, cli, opts.overrides or [],
                                  task="classify")

    def new_config() -> dict:
        if model_dir is not None:  # the body is the language model: its shape and tokens
            lm_model, cli["data"]["options"] = pretrained_model(model_dir, domain_name)
            cli["model"] = {k: v for k, v in lm_model.items() if k != "vocab_size"}
            cli["classify"]["pretrained"] = str(model_dir)
        elif freeze:
            raise InputError("--freeze trains the head only: it needs a pretrained --model")
        # checked before anything is written (a window fitted to the data comes after)
        if fit_window or opts.seq_len is not None:
            cli["data"]["seq_len"] = 1 if fit_window else opts.seq_len
        return resolve()

    cfg = prepare_run(run, "classify", opts.resume, opts.force, opts.max_steps, new_config)
    if opts.resume:
        if names and names != cfg["classify"]["classes"]:
            raise InputError(f"--classes: the run was trained on {cfg['classify']['classes']}, "
                             f"not {names}")
        return cfg
    if not fit_window:
        return cfg
    # the window fits the longest labelled sequence, within the model's context
    with tokenizing() as advance:
        store = tokenize(cfg, inputs, run, on_tokens=advance)
    lengths = [r.length for r in store.records if table is None or r.id in table]
    cli["data"]["seq_len"] = min(max(lengths, default=1), cfg["model"]["max_seq_len"])
    return resolve()


def print_metrics(m: dict, what: str) -> None:
    """Accuracy, MCC and AUROC in a line, then the confusion matrix."""
    per_class = ", ".join(f"{c} {a:.4f}" for c, a in m["auroc_per_class"].items()
                          if a is not None)
    out.print(f"{what}: accuracy {m['accuracy']:.4f}, MCC {m['mcc']:.4f}, AUROC {m['auroc']:.4f}"
              f" ({per_class}) on {m['n']:,} sequences")
    out.print("confusion matrix (rows: true class, columns: predicted):")
    table = Table()
    table.add_column("")
    for c in m["classes"]:
        table.add_column(c, justify="right")
    for c, row in zip(m["classes"], m["confusion"]):
        table.add_row(c, *(f"{v:,}" for v in row))
    out.print(table)


def finetune_classifier(domain_name: str, classes: list[str] | None, labels: Path | None,
                        fasta: list[Path] | None, model_dir: Path | None, freeze: bool,
                        opts: Training, options: dict) -> None:
    # Lightning loads only for the verbs that train (about 5 s, with torch._dynamo)
    from ..pipeline.classify_training import finetune

    names, inputs, table = classify_inputs(classes, labels, fasta)
    preset = opts.preset("classify-tiny")
    run = opts.run(f"{domain_name}-{preset.stem}")
    with no_half_made_run(run, opts.is_new_run(run)):
        cfg = classifier_config(domain_name, names, inputs, table, model_dir, freeze, preset,
                                run, opts, options)
        with tokenizing() as advance:
            tokenize(cfg, inputs, run, on_tokens=advance)
        summary = finetune(cfg, inputs, run, resume=opts.resume, table=table,
                           table_path=labels, on_note=note)
    if summary:
        out.print(f"[green]trained[/green] {summary['steps']} steps on {summary['n_train']:,} "
                  f"sequences ({summary['n_val']:,} held out for validation) in "
                  f"{summary['minutes']:.1f} min -> {summary['run']}")
        if summary["validation"]:
            print_metrics(summary["validation"], "validation")


@app.command("dna")
@clean_errors
def finetune_dna(
        classes: Annotated[list[str] | None, typer.Option(
            "--classes", help="NAME=FILE, one per class (FASTA, plain or gzip)")] = None,
        labels: Annotated[Path | None, typer.Option(
            "--labels", help="TSV of id and label, for the records of --fasta")] = None,
        fasta: Annotated[list[Path] | None, typer.Option(
            "--fasta", help="FASTA files whose records --labels names")] = None,
        model: Annotated[Path | None, typer.Option(
            "--model", help="pretrained language model to start from (default: from "
            "scratch)")] = None,
        freeze: Annotated[bool, typer.Option(
            "--freeze", help="train the head only (the --model's weights stay)")] = False,
        config: ConfigOpt = None, out_dir: OutRun = None, max_steps: MaxSteps = None,
        seq_len: Annotated[int | None, typer.Option(
            "--seq-len", help="window (tokens); default: the longest sequence")] = None,
        batch_size: BatchSize = None, resume: Resume = False, force: Force = False,
        devices: Devices = None, num_nodes: NumNodes = None, strategy: Strategy = None,
        softmask: Softmask = "upper", overrides: Overrides = None) -> None:
    """Train a classifier of DNA sequences (from scratch, or from a language model)."""
    classes, overrides = more_values(classes, overrides)
    fasta, overrides = more_values(fasta, overrides)
    finetune_classifier("dna", classes, labels, [Path(p) for p in fasta], model, freeze,
                        Training(config, out_dir, max_steps, seq_len, batch_size, resume, force,
                                 devices, num_nodes, strategy, overrides),
                        {"softmask": softmask})
