"""The `seqformer` command: one module per verb, each parsing its options and reporting;
the work is done in seqformer.pipeline, which the Python API reaches as well."""

from __future__ import annotations

from typing import Annotated

import typer

from ..version import __version__
from . import embed, finetune, predict, sample, score, train
from .common import out
from .info import info

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Reformer models for very long sequences: genomes and music.")
for verb in (train, sample, score, embed, finetune, predict):
    app.add_typer(verb.app, name=verb.__name__.rsplit(".", 1)[-1])
app.command("info")(info)


@app.callback(invoke_without_command=True)
def main(version: Annotated[bool, typer.Option("--version")] = False) -> None:
    if version:
        out.print(f"seqformer {__version__}")
        raise typer.Exit()
