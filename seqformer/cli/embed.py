"""`seqformer embed dna|midi`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

from ..core import ReformerLM
from ..errors import InputError
from ..files import check_output
from ..pipeline.inference import embed_records, partial_path
from ..pipeline.run_dir import load_run
from ..pipeline.token_store import TokenStore
from .common import (
    Force,
    ModelOpt,
    clean_errors,
    err,
    out,
    progress,
    report_skip,
    tokenizing,
    verb,
)
from .score import Features, Flank, Regions, selected_features

app = verb("Per-position embeddings to HDF5.")

Pool = Annotated[str | None, typer.Option(
    "--pool", help="also store a pooled vector per record: mean")]
Layer = Annotated[int, typer.Option("--layer", help="-1 = final normalized states")]
EmbedResume = Annotated[bool, typer.Option(
    "--resume", help="continue an interrupted run: records already in <out>.partial are kept")]


def checked_layer(model: ReformerLM, layer: int) -> None:
    if not -1 <= layer < model.cfg.n_layers:
        raise InputError(f"--layer {layer}: the model has layers 0..{model.cfg.n_layers - 1} "
                         "(-1 = final)")


def embed_files(domain_name: str, model_dir: Path, inputs: list[Path], out_path: Path,
                pool: str | None, layer: int, force: bool, resume: bool) -> None:
    """One HDF5 dataset per record of the inputs."""
    check_output(out_path, force)
    model, domain, cfg = load_run(model_dir, domain_name)
    checked_layer(model, layer)
    if not resume and partial_path(out_path).exists():
        err.print(f"note: starting over; {partial_path(out_path)} is an unfinished earlier "
                  "run (--resume continues it)", soft_wrap=True)
    # a memory-mapped token store next to the output: a chromosome is never in RAM, and
    # an interrupted run finds it again on --resume
    work = out_path.with_name(f".{out_path.name}.tokens")
    with tokenizing() as advance:
        try:
            store = TokenStore.build(work, domain, inputs, on_tokens=advance,
                                     on_skip=report_skip)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)  # bad input: leave nothing behind
            raise
    with progress() as bar:
        task = bar.add_task("embedding", total=store.total)
        n = embed_records(model, store.as_records(), domain.sep_id, int(cfg["data"]["seq_len"]),
                          out_path, layer=layer, pool=pool, resume=resume,
                          attrs={"domain": domain_name, "model_dir": str(model_dir)},
                          on_window=lambda k: bar.advance(task, k))
    shutil.rmtree(work, ignore_errors=True)
    out.print(f"wrote {out_path} ({n} records, d_model {model.cfg.d_model})")


def embed_each_feature(model_dir: Path, inputs: list[Path], out_path: Path, pool: str | None,
                       layer: int, force: bool, resume: bool, features: str | None,
                       regions: Path | None, flank: int | None) -> None:
    """One HDF5 entry per annotated feature or BED region, in order, with its fields as
    attributes; each read on its own strand after its context, which is not stored."""
    check_output(out_path, force)
    model, domain, cfg = load_run(model_dir, "dna")
    checked_layer(model, layer)
    window = int(cfg["data"]["seq_len"])
    pairs = selected_features(domain, inputs, features, regions, flank, window)
    with progress() as bar:
        task = bar.add_task("embedding features", total=sum(f.length for f, _ in pairs))
        n = embed_records(model, [r for _, r in pairs], domain.sep_id, window, out_path,
                          layer=layer, pool=pool, resume=resume,
                          attrs={"domain": "dna", "model_dir": str(model_dir),
                                 "features": features or f"regions of {regions}",
                                 "flank": -1 if flank is None else flank},
                          on_window=lambda k: bar.advance(task, k))
    out.print(f"wrote {out_path} ({n} features, d_model {model.cfg.d_model})")


@app.command("dna")
@clean_errors
def embed_dna(model: ModelOpt, fasta: Annotated[list[Path], typer.Option(
                  "--fasta", help="FASTA, GenBank or EMBL files (plain or gzip)")],
              out_path: Annotated[Path, typer.Option("--out")], pool: Pool = None,
              layer: Layer = -1, features: Features = None, regions: Regions = None,
              flank: Flank = None, force: Force = False,
              resume: EmbedResume = False) -> None:
    """Per-base embeddings of each record (or each feature) into HDF5."""
    if features is not None or regions is not None:
        embed_each_feature(model, fasta, out_path, pool, layer, force, resume, features,
                           regions, flank)
        return
    if flank is not None:
        raise InputError("--flank goes with --features or --regions")
    embed_files("dna", model, fasta, out_path, pool, layer, force, resume)


@app.command("midi")
@clean_errors
def embed_midi(model: ModelOpt, midi: Annotated[list[Path], typer.Option("--midi")],
               out_path: Annotated[Path, typer.Option("--out")], pool: Pool = None,
               layer: Layer = -1, force: Force = False, resume: EmbedResume = False) -> None:
    """Per-token embeddings of each piece into HDF5."""
    embed_files("midi", model, midi, out_path, pool, layer, force, resume)
