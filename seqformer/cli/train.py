"""`seqformer train dna|midi|seq2seq`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from ..domains import get_domain
from ..pipeline import run_config
from ..pipeline.run_dir import no_half_made_run, prepare_run
from ..pipeline.seq2seq import tokenize_pairs
from ..pipeline.token_store import tokenize
from .common import (
    REPO,
    BatchSize,
    ConfigOpt,
    Devices,
    Force,
    MaxSteps,
    NumNodes,
    OutRun,
    Overrides,
    Resume,
    SeqLen,
    Softmask,
    SourceOpt,
    Strategy,
    Training,
    against_baseline,
    clean_errors,
    existing_inputs,
    more_values,
    note,
    out,
    tokenizing,
    unit,
    verb,
)

app = verb("Train a model on FASTA or MIDI files.")


def train_lm(domain_name: str, inputs: list[Path], opts: Training, options: dict,
             data: dict | None = None) -> None:
    """Train a language model of `domain_name` (tokenizing options `options`, `data`
    section fields set by the command) and report how it did against its baseline."""
    # here, not at the top: importing Lightning (and torch._dynamo with it) takes about 5 s,
    # which only the verbs that train should pay
    from ..pipeline.training import train

    preset = opts.preset(f"{domain_name}-quick")
    run = opts.run(f"{domain_name}-{preset.stem}")

    def new_config() -> dict:
        cli = {"train": opts.train_section(), "data": dict(data or {})}
        if opts.seq_len is not None:
            cli["data"]["seq_len"] = opts.seq_len
        if options:
            cli["data"]["options"] = options
        vocab_size = get_domain(domain_name, **options).vocab_size
        return run_config.resolve(domain_name, vocab_size, preset, cli, opts.overrides or [])

    cfg = prepare_run(run, "lm", opts.resume, opts.force, opts.max_steps, new_config)
    # tokenize first, under its own progress display (Lightning's bar comes after it)
    records = RecordNotes()
    with tokenizing() as advance:
        store = tokenize(cfg, inputs, run, on_tokens=advance, on_record=records)
    records.done()
    long_context_hint(cfg, [r.length for r in store.records])
    summary = train(cfg, inputs, run, resume=opts.resume)
    if not summary:
        return
    limit = cfg["train"].get("max_minutes")
    stopped = (f" (stopped by train.max_minutes={limit:g} before max_steps "
               f"{cfg['train']['max_steps']})"
               if limit and summary["steps"] < cfg["train"]["max_steps"] else "")
    out.print(f"[green]trained[/green] {summary['steps']} steps on {summary['tokens']:,} "
              f"tokens ({summary['records']} records){stopped} -> {summary['run']}")
    if summary["baseline"]:
        out.print(against_baseline(summary["val_bits"], summary["baseline"], unit(domain_name),
                                   summary["best_val_bits"]))
    else:
        out.print(f"validation {summary['val_bits']:.4f} bits/{unit(domain_name)}")
    if summary["calibration"]:
        out.print(f"sampling: {summary['calibration']}")


class RecordNotes:
    """on_record for tokenizing: a line for each of the first SHOWN records, and `done`
    sums up the rest (a corpus of hundreds of pieces is not a screen of hundreds of
    lines)."""

    SHOWN = 10

    def __init__(self) -> None:
        self.records = self.tokens = 0

    def __call__(self, record_id: str, n_tokens: int) -> None:
        self.records += 1
        self.tokens += n_tokens
        if self.records <= self.SHOWN:
            note(f"tokenized {record_id} ({n_tokens:,} tokens)")

    def done(self) -> None:
        if self.records > self.SHOWN:
            note(f"... and {self.records - self.SHOWN:,} more: {self.records:,} records, "
                 f"{self.tokens:,} tokens")


def long_context_hint(cfg: dict, lengths: list[int]) -> None:
    """Pieces many windows long, for a model that sees one window and cannot copy from
    further back: say that the long-context preset exists."""
    if cfg["domain"] != "midi" or run_config.model_config(cfg).has_match:
        return
    window = int(cfg["data"]["seq_len"])
    long = [n for n in lengths if n > 4 * window]
    if long:
        note(f"note: {len(long)} of these pieces are over 4 windows of {window:,} tokens long "
             f"(the longest {max(long):,}); this model cannot use what repeats further back. "
             "--config midi-long reads 16,384 tokens at once and copies from far back with "
             "match attention (docs/long-context.md).")


@app.command("dna")
@clean_errors
def train_dna(fasta: Annotated[list[Path] | None, typer.Option(
                  "--fasta", help="FASTA files (plain or gzip); default: bundled lambda")] = None,
              config: ConfigOpt = None, out_dir: OutRun = None, max_steps: MaxSteps = None,
              seq_len: SeqLen = None, batch_size: BatchSize = None, resume: Resume = False,
              force: Force = False, devices: Devices = None, num_nodes: NumNodes = None,
              strategy: Strategy = None, softmask: Softmask = "upper",
              overrides: Overrides = None) -> None:
    """Train on FASTA genomes."""
    fasta, overrides = more_values(fasta, overrides)
    inputs = existing_inputs([Path(p) for p in fasta],
                             REPO / "data" / "dna" / "lambda_phage.fa.gz", "--fasta")
    train_lm("dna", inputs, Training(config, out_dir, max_steps, seq_len, batch_size, resume,
                                     force, devices, num_nodes, strategy, overrides),
             {"softmask": softmask})


@app.command("midi")
@clean_errors
def train_midi(midi: Annotated[list[Path] | None, typer.Option(
                   "--midi", help="MIDI files or directories; default: bundled pieces")] = None,
               config: ConfigOpt = None, out_dir: OutRun = None, max_steps: MaxSteps = None,
               seq_len: SeqLen = None, batch_size: BatchSize = None, resume: Resume = False,
               force: Force = False, devices: Devices = None, num_nodes: NumNodes = None,
               strategy: Strategy = None,
               vocabulary: Annotated[str | None, typer.Option(
                   "--vocabulary", help="durations: a duration token per note (the main "
                   "job's, midi-quick); events: note-on/note-off tokens (the other presets' "
                   "and the Python API's default)")] = None,
               overrides: Overrides = None) -> None:
    """Train on MIDI files (directories are searched recursively)."""
    bundled = REPO / "data" / "midi"
    midi, overrides = more_values(midi, overrides)
    midi = [Path(p) for p in midi]
    inputs = existing_inputs(midi, bundled, "--midi")
    data = {}
    if not midi and (bundled / "heldout.txt").is_file():  # the sample's own validation pieces
        lines = (bundled / "heldout.txt").read_text().splitlines()
        data["holdout_ids"] = [x.strip() for x in lines if x.strip() and not x.startswith("#")]
    train_lm("midi", inputs, Training(config, out_dir, max_steps, seq_len, batch_size, resume,
                                      force, devices, num_nodes, strategy, overrides),
             {"vocabulary": vocabulary} if vocabulary else {}, data)


@app.command("seq2seq")
@clean_errors
def train_seq2seq_pairs(
        source: SourceOpt,
        target: Annotated[list[Path], typer.Option(
            "--target", help="target files or directories (repeat for several)")],
        source_domain: Annotated[str, typer.Option("--source-domain",
                                                   help="dna, protein or midi")],
        target_domain: Annotated[str, typer.Option("--target-domain",
                                                   help="dna, protein or midi")],
        config: ConfigOpt = None, out_dir: OutRun = None, max_steps: MaxSteps = None,
        seq_len: Annotated[int | None, typer.Option(
            "--seq-len", help="longest target (tokens)")] = None,
        batch_size: BatchSize = None, resume: Resume = False, force: Force = False,
        devices: Devices = None, num_nodes: NumNodes = None, strategy: Strategy = None,
        overrides: Overrides = None) -> None:
    """Train an encoder-decoder on pairs of records: a source record and the target record
    with the same id (MIDI: the same file name)."""
    from ..pipeline.seq2seq_training import train_seq2seq  # Lightning: see train_lm

    opts = Training(config, out_dir, max_steps, seq_len, batch_size, resume, force, devices,
                    num_nodes, strategy, overrides)
    sources = existing_inputs(source, None, "--source")
    targets = existing_inputs(target, None, "--target")
    preset = opts.preset("seq2seq-quick")
    run = opts.run(f"{source_domain}-{target_domain}-{preset.stem}")
    new_run = opts.is_new_run(run)

    def new_config() -> dict:
        src_probe, tgt_probe = get_domain(source_domain), get_domain(target_domain)
        cli = {"train": opts.train_section(),
               "data": {} if seq_len is None else {"seq_len": seq_len}}
        return run_config.resolve(target_domain, tgt_probe.vocab_size, preset, cli,
                                  opts.overrides or [], task="seq2seq",
                                  source=(source_domain, src_probe.vocab_size))

    cfg = prepare_run(run, "seq2seq", resume, force, max_steps, new_config)
    with no_half_made_run(run, new_run):
        with tokenizing() as advance:
            tokenize_pairs(cfg, sources, targets, run, on_tokens=advance)
        summary = train_seq2seq(cfg, sources, targets, run, resume=resume, on_note=note)
    if summary:
        out.print(f"[green]trained[/green] {summary['steps']} steps on {summary['n_train']:,} "
                  f"pairs ({summary['n_val']:,} held out) in {summary['minutes']:.1f} min -> "
                  f"{summary['run']}")
        if not math.isnan(summary["val_bits"]):
            out.print(f"validation {summary['val_bits']:.4f} bits per target "
                      f"{unit(target_domain)}")


