"""What every verb shares: the consoles, the one error reporter, progress displays, the
options several verbs take, and small checks of option values."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ..core import check_sampling
from ..domains import Domain, Record, get_domain
from ..errors import InputError, describe
from ..pipeline.run_dir import SAMPLING, read_sampling_limits

out = Console()
err = Console(stderr=True)
REPO = Path(__file__).resolve().parents[2]


def verb(help: str) -> typer.Typer:
    """A verb's command group. Help texts are shown as written: with Rich markup on,
    "seqformer[tracks]" lost its "[tracks]"."""
    return typer.Typer(no_args_is_help=True, rich_markup_mode=None, help=help)


def clean_errors(fn: Callable) -> Callable:
    """Bad input ends with one line naming the file and the problem, exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (Exception, KeyboardInterrupt) as e:
            described = describe(e)
            if described is None:
                raise
            code, message = described
            if code == 130 and isinstance(e, KeyboardInterrupt):
                err.print("[yellow]interrupted[/yellow]")
            else:  # escaped: a message may hold brackets ("seqformer[tracks]", "[10:70](-)")
                err.print(f"[red]error:[/red] {escape(message)}", highlight=False,
                          soft_wrap=True)
            raise typer.Exit(code) from None

    return wrapper


def note(text: str) -> None:
    """A line for the user on stderr, printed as it is."""
    err.print(text, highlight=False, soft_wrap=True)


def progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn(
        "{task.completed:,}/{task.total:,}"), TimeElapsedColumn(), console=err,
        disable=not err.is_terminal)


@contextlib.contextmanager
def tokenizing() -> Iterator[Callable[[int], None]]:
    """A running count of tokens written to a token store; yields its advance(n)."""
    with Progress(TextColumn("tokenizing"), TextColumn("{task.completed:,} tokens"),
                  TimeElapsedColumn(), console=err, disable=not err.is_terminal) as bar:
        task = bar.add_task("tokenizing", total=None)
        yield lambda n: bar.advance(task, n)


# -- options several verbs take -------------------------------------------------------------
ConfigOpt = Annotated[str | None, typer.Option(
    "--config", help="YAML preset: a path, or a name under configs/ (e.g. dna-100k)")]
OutRun = Annotated[Path | None, typer.Option(
    "--out", help="run directory (default runs/<domain>-<config>)")]
MaxSteps = Annotated[int | None, typer.Option("--max-steps")]
SeqLen = Annotated[int | None, typer.Option(
    "--seq-len", help="training window (tokens)")]
BatchSize = Annotated[int | None, typer.Option("--batch-size")]
Resume = Annotated[bool, typer.Option("--resume", help="continue from checkpoints/last.ckpt")]
Force = Annotated[bool, typer.Option("--force", help="overwrite existing outputs")]
Devices = Annotated[str | None, typer.Option("--devices")]
NumNodes = Annotated[int | None, typer.Option("--num-nodes")]
Strategy = Annotated[str | None, typer.Option("--strategy")]
Overrides = Annotated[list[str] | None, typer.Argument(
    help="config overrides, e.g. model.n_hashes=8 train.lr=3e-4")]
ModelOpt = Annotated[Path, typer.Option("--model", help="trained model directory")]
SourceOpt = Annotated[list[Path], typer.Option(
    "--source", help="source FASTA/MIDI files or directories (repeat for several)")]
Softmask = Annotated[str, typer.Option(
    "--softmask", help="upper: fold lowercase; keep: lowercase tokens")]


@dataclass
class Training:
    """The options every training verb (train, finetune) takes."""

    config: str | None = None
    out_dir: Path | None = None
    max_steps: int | None = None
    seq_len: int | None = None
    batch_size: int | None = None
    resume: bool = False
    force: bool = False
    devices: str | None = None
    num_nodes: int | None = None
    strategy: str | None = None
    overrides: list[str] | None = None

    def train_section(self) -> dict:
        """The `train` config section's fields that command-line options set."""
        options = {key: value for key, value in (
            ("max_steps", self.max_steps), ("batch_size", self.batch_size),
            ("num_nodes", self.num_nodes), ("strategy", self.strategy)) if value is not None}
        if self.devices is not None:
            options["devices"] = int(self.devices) if self.devices.isdigit() else self.devices
        return options

    def preset(self, default: str) -> Path:
        """The YAML preset: --config as a path, or a name under configs/."""
        name = self.config or default
        path = Path(name)
        if path.suffix in (".yaml", ".yml") or path.exists():
            return path
        return REPO / "configs" / f"{name}.yaml"

    def run(self, default_name: str) -> Path:
        return self.out_dir or Path("runs") / default_name

    def is_new_run(self, run: Path) -> bool:
        return not self.resume and (self.force or not run.exists())


def more_values(values: list | None, overrides: list[str] | None) -> tuple[list, list[str]]:
    """`--fasta a.fa b.fa` and `--classes a=x.fa b=y.fa`: an option takes one word, and the
    words after it arrive with the positional overrides. An override is
    section.key=value; the other words belong to the multi-value option before them."""
    if not values:
        return values or [], list(overrides or [])
    extra, rest = [], []
    for word in overrides or []:
        key, is_pair, _ = word.partition("=")
        (rest if is_pair and "." in key else extra).append(word)
    return [*values, *extra], rest


def existing_inputs(paths: list[Path] | None, default: Path | None, what: str) -> list[Path]:
    """The input paths, each checked to exist; the bundled `default` when none is given."""
    if paths:
        for p in paths:
            if not p.exists():
                raise InputError(f"{p}: no such file or directory")
        return list(paths)
    if default is None or not default.exists():
        raise InputError(f"no {what} given and no bundled sample at {default}")
    return [default]


def read_all(domain: Domain, inputs: list[Path]) -> list[Record]:
    """All records of all inputs; files the domain skipped (unreadable MIDI) are listed."""
    records, skipped = [], []
    for path in inputs:
        records.extend(domain.read(path, on_skip=lambda *s: skipped.append(report_skip(*s))))
    if skipped:
        err.print(f"{len(records)} records read, {len(skipped)} files skipped")
    return records


def report_skip(path: str, reason: str) -> str:
    err.print(f"[yellow]skipped[/yellow] {escape(str(path))}: {escape(reason)}", soft_wrap=True)
    return path


def unit(domain_name: str) -> str:
    """What one of the domain's tokens is (bits/base, bits/residue, bits/token)."""
    return get_domain(domain_name).unit


def against_baseline(bits: float, baseline: dict, unit: str,
                     best_bits: float | None = None) -> str:
    """The model's validation bits beside the Markov baseline's, on the same tokens; and,
    when an earlier validation of the run (`best_bits`) was clearly lower, that it overfit
    (training longer would not help then)."""
    gap = baseline["val_bits"] - bits
    overfit = best_bits is not None and best_bits < bits - 0.02 * abs(bits)
    verdict = (f"[green]model ahead by {gap:.4f}[/green]" if gap > 0
               else f"[red]model behind by {-gap:.4f}[/red]"
               + ("" if overfit else " (train longer or larger)"))
    line = (f"validation: model {bits:.4f} bits/{unit}, order-{baseline['order']} Markov "
            f"baseline {baseline['val_bits']:.4f} bits/{unit} ({baseline['val_tokens']:,} "
            f"tokens): {verdict}")
    if overfit:
        line += (f"\nvalidation was {best_bits:.4f} bits/{unit} earlier in this run: the model "
                 "has overfit its training data (train.export=best keeps the best weights; "
                 "more data or more dropout helps)")
    return line


def sampling_limits(model_dir: Path) -> dict | None:
    limits = read_sampling_limits(model_dir)
    if limits is None:
        err.print(f"{model_dir}: no {SAMPLING} (trained before sampling limits were stored): "
                  "the grammar uses its defaults")
    return limits


def checked_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    try:
        check_sampling(temperature, top_k, top_p)
    except ValueError as e:  # "top_k must be ..." -> "--top-k must be ..."
        raise InputError("--" + str(e).replace("_", "-", 1)) from None
