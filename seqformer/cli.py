"""The `seqformer` command. Thin: every command is a call into seqformer.pipeline."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import __version__
from .errors import InputError, describe

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Reformer models for very long sequences: genomes and music.")
train_app = typer.Typer(no_args_is_help=True, help="Train a model on FASTA or MIDI files.")
sample_app = typer.Typer(no_args_is_help=True, help="Generate from a trained model.")
score_app = typer.Typer(no_args_is_help=True, help="Log-likelihood of sequences.")
embed_app = typer.Typer(no_args_is_help=True, help="Per-position embeddings to HDF5.")
finetune_app = typer.Typer(no_args_is_help=True,
                           help="Train a sequence classifier on labelled sequences.")
predict_app = typer.Typer(no_args_is_help=True, help="Classify sequences with a classifier.")
for name, sub in (("train", train_app), ("sample", sample_app), ("score", score_app),
                  ("embed", embed_app), ("finetune", finetune_app), ("predict", predict_app)):
    app.add_typer(sub, name=name)

out = Console()
err = Console(stderr=True)
REPO = Path(__file__).resolve().parents[1]


def clean_errors(fn):
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


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn(
        "{task.completed:,}/{task.total:,}"), TimeElapsedColumn(), console=err,
        disable=not err.is_terminal)


@contextlib.contextmanager
def _tokenizing() -> Iterator[Callable[[int], None]]:
    """A running count of tokens written to a token store; yields its advance(n)."""
    with Progress(TextColumn("tokenizing"), TextColumn("{task.completed:,} tokens"),
                  TimeElapsedColumn(), console=err, disable=not err.is_terminal) as bar:
        task = bar.add_task("tokenizing", total=None)
        yield lambda n: bar.advance(task, n)


# -- shared options ---------------------------------------------------------------------
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


@contextlib.contextmanager
def _no_half_made_run(run: Path, new_run: bool) -> Iterator[None]:
    """Bad input found before training began leaves no half-made run directory."""
    from .pipeline.training import is_first_process

    try:
        yield
    except InputError:
        if new_run and is_first_process() and not (run / "checkpoints").exists():
            shutil.rmtree(run, ignore_errors=True)
        raise


def _more_values(values: list | None, overrides: list[str] | None) -> tuple[list, list[str]]:
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


def _train_options(max_steps, batch_size, devices, num_nodes, strategy) -> dict:  # noqa: ANN001
    """The `train` config section's fields that command-line options set."""
    options = {key: value for key, value in (("max_steps", max_steps), ("batch_size", batch_size),
                                             ("num_nodes", num_nodes), ("strategy", strategy))
               if value is not None}
    if devices is not None:
        options["devices"] = int(devices) if devices.isdigit() else devices
    return options


def _preset(domain: str, config: str | None) -> Path:
    name = config or f"{domain}-quick"
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return REPO / "configs" / f"{name}.yaml"


def _inputs(paths: list[Path] | None, default: Path, what: str) -> list[Path]:
    if paths:
        for p in paths:
            if not p.exists():
                raise InputError(f"{p}: no such file or directory")
        return list(paths)
    if not default.exists():
        raise InputError(f"no {what} given and no bundled sample at {default}")
    return [default]


def _train(domain_name: str, inputs: list[Path], config: str | None, out_dir: Path | None,
           max_steps, seq_len, batch_size, resume, force, devices, num_nodes, strategy,
           overrides, options: dict, data: dict | None = None) -> None:
    from .domains import get_domain
    from .pipeline import run_config
    from .pipeline.run_dir import read_config
    from .pipeline.training import check_run_dir, is_first_process, tokenize, train

    preset = _preset(domain_name, config)
    cli = {"train": {}, "data": dict(data or {})}
    cli["train"].update(_train_options(max_steps, batch_size, devices, num_nodes, strategy))
    if seq_len is not None:
        cli["data"]["seq_len"] = seq_len
    if options:
        cli["data"]["options"] = options
    run = out_dir or Path("runs") / f"{domain_name}-{preset.stem}"
    if resume:
        cfg = read_config(run)
        if max_steps is not None:  # resuming may extend a finished run
            cfg["train"]["max_steps"] = max_steps
    else:
        probe = get_domain(domain_name, **options)
        cfg = run_config.resolve(domain_name, probe.vocab_size, preset, cli, overrides or [])
        if force and is_first_process() and run.exists():
            shutil.rmtree(run)
    check_run_dir(run, resume)
    # tokenize first, under its own progress display (Lightning's bar comes after it)
    with _tokenizing() as advance:
        tokenize(cfg, inputs, run, on_tokens=advance,
                 on_record=lambda rid, n: err.print(f"tokenized {rid} ({n:,} tokens)",
                                                    highlight=False, soft_wrap=True))
    summary = train(cfg, inputs, run, resume=resume)
    if summary:
        unit = _unit(domain_name)
        limit = cfg["train"].get("max_minutes")
        stopped = (f" (stopped by train.max_minutes={limit:g} before max_steps "
                   f"{cfg['train']['max_steps']})"
                   if limit and summary["steps"] < cfg["train"]["max_steps"] else "")
        out.print(f"[green]trained[/green] {summary['steps']} steps on {summary['tokens']:,} "
                  f"tokens ({summary['records']} records){stopped} -> {summary['run']}")
        if summary["baseline"]:
            out.print(_against_baseline(summary["val_bits"], summary["baseline"], unit))
        else:
            out.print(f"validation {summary['val_bits']:.4f} bits/{unit}")


def _unit(domain_name: str) -> str:
    return "base" if domain_name == "dna" else "token"


def _against_baseline(bits: float, baseline: dict, unit: str) -> str:
    """The model's validation bits beside the Markov baseline's, on the same tokens."""
    gap = baseline["val_bits"] - bits
    verdict = (f"[green]model ahead by {gap:.4f}[/green]" if gap > 0
               else f"[red]model behind by {-gap:.4f}[/red] (train longer or larger)")
    return (f"validation: model {bits:.4f} bits/{unit}, order-{baseline['order']} Markov "
            f"baseline {baseline['val_bits']:.4f} bits/{unit} ({baseline['val_tokens']:,} "
            f"tokens): {verdict}")


@train_app.command("dna")
@clean_errors
def train_dna(fasta: Annotated[list[Path] | None, typer.Option(
                  "--fasta", help="FASTA files (plain or gzip); default: bundled lambda")] = None,
              config: ConfigOpt = None, out_dir: OutRun = None, max_steps: MaxSteps = None,
              seq_len: SeqLen = None, batch_size: BatchSize = None, resume: Resume = False,
              force: Force = False, devices: Devices = None, num_nodes: NumNodes = None,
              strategy: Strategy = None,
              softmask: Annotated[str, typer.Option(
                  "--softmask", help="upper: fold lowercase; keep: lowercase tokens")] = "upper",
              overrides: Overrides = None) -> None:
    """Train on FASTA genomes."""
    fasta, overrides = _more_values(fasta, overrides)
    inputs = _inputs([Path(p) for p in fasta], REPO / "data" / "dna" / "lambda_phage.fa.gz",
                     "--fasta")
    _train("dna", inputs, config, out_dir, max_steps, seq_len, batch_size, resume, force,
           devices, num_nodes, strategy, overrides, {"softmask": softmask})


@train_app.command("midi")
@clean_errors
def train_midi(midi: Annotated[list[Path] | None, typer.Option(
                   "--midi", help="MIDI files or directories; default: bundled pieces")] = None,
               config: ConfigOpt = None, out_dir: OutRun = None, max_steps: MaxSteps = None,
               seq_len: SeqLen = None, batch_size: BatchSize = None, resume: Resume = False,
               force: Force = False, devices: Devices = None, num_nodes: NumNodes = None,
               strategy: Strategy = None,
               vocabulary: Annotated[str | None, typer.Option(
                   "--vocabulary", help="events: note-on/note-off tokens (default); durations: "
                   "a duration token per note")] = None,
               overrides: Overrides = None) -> None:
    """Train on MIDI files (directories are searched recursively)."""
    bundled = REPO / "data" / "midi"
    midi, overrides = _more_values(midi, overrides)
    midi = [Path(p) for p in midi]
    inputs = _inputs(midi, bundled, "--midi")
    data = {}
    if not midi and (bundled / "heldout.txt").is_file():  # the sample's own validation pieces
        lines = (bundled / "heldout.txt").read_text().splitlines()
        data["holdout_ids"] = [x.strip() for x in lines if x.strip() and not x.startswith("#")]
    _train("midi", inputs, config, out_dir, max_steps, seq_len, batch_size, resume, force,
           devices, num_nodes, strategy, overrides,
           {"vocabulary": vocabulary} if vocabulary else {}, data)


SourceOpt = Annotated[list[Path], typer.Option(
    "--source", help="source FASTA/MIDI files or directories (repeat for several)")]
SourceDomain = Annotated[str, typer.Option("--source-domain", help="dna, protein or midi")]


@train_app.command("seq2seq")
@clean_errors
def train_seq2seq(source: SourceOpt,
                  target: Annotated[list[Path], typer.Option(
                      "--target", help="target files or directories (repeat for several)")],
                  source_domain: SourceDomain,
                  target_domain: Annotated[str, typer.Option(
                      "--target-domain", help="dna, protein or midi")],
                  config: ConfigOpt = None, out_dir: OutRun = None,
                  max_steps: MaxSteps = None,
                  seq_len: Annotated[int | None, typer.Option(
                      "--seq-len", help="longest target (tokens)")] = None,
                  batch_size: BatchSize = None, resume: Resume = False, force: Force = False,
                  devices: Devices = None, num_nodes: NumNodes = None,
                  strategy: Strategy = None, overrides: Overrides = None) -> None:
    """Train an encoder-decoder on pairs of records: a source record and the target record
    with the same id (MIDI: the same file name)."""
    from .domains import get_domain
    from .pipeline import run_config
    from .pipeline.run_dir import read_config
    from .pipeline.seq2seq import tokenize_pairs
    from .pipeline.seq2seq import train_seq2seq as train
    from .pipeline.training import check_run_dir, is_first_process

    sources = _inputs(source, Path(), "--source")
    targets = _inputs(target, Path(), "--target")
    preset = _preset("seq2seq", config)
    run = out_dir or Path("runs") / f"{source_domain}-{target_domain}-{preset.stem}"
    new_run = not resume and (force or not run.exists())
    if resume:
        cfg = read_config(run)
        if cfg.get("task") != "seq2seq":
            raise InputError(f"{run}: is not a seq2seq run, nothing to resume here")
        if max_steps is not None:
            cfg["train"]["max_steps"] = max_steps
    else:
        src_probe, tgt_probe = get_domain(source_domain), get_domain(target_domain)
        cli = {"train": _train_options(max_steps, batch_size, devices, num_nodes, strategy),
               "data": {} if seq_len is None else {"seq_len": seq_len}}
        cfg = run_config.resolve(target_domain, tgt_probe.vocab_size, preset, cli,
                                 overrides or [], task="seq2seq",
                                 source=(source_domain, src_probe.vocab_size))
        if force and is_first_process() and run.exists():
            shutil.rmtree(run)
    check_run_dir(run, resume)
    with _no_half_made_run(run, new_run):
        with _tokenizing() as advance:
            tokenize_pairs(cfg, sources, targets, run, on_tokens=advance)
        summary = train(cfg, sources, targets, run, resume=resume,
                        on_note=lambda text: err.print(text, highlight=False, soft_wrap=True))
    if summary:
        out.print(f"[green]trained[/green] {summary['steps']} steps on {summary['n_train']:,} "
                  f"pairs ({summary['n_val']:,} held out) in {summary['minutes']:.1f} min -> "
                  f"{summary['run']}")
        if not math.isnan(summary["val_bits"]):
            out.print(f"validation {summary['val_bits']:.4f} bits per target token")


# -- sample ------------------------------------------------------------------------------
Length = Annotated[int, typer.Option("--length", help="tokens to generate")]
Temperature = Annotated[float, typer.Option("--temperature", help="0 = greedy")]
TopK = Annotated[int | None, typer.Option("--top-k")]
TopP = Annotated[float | None, typer.Option("--top-p")]
Seed = Annotated[int | None, typer.Option("--seed")]
NumSamples = Annotated[int, typer.Option(
    "--num-samples", help="samples decoded as one batch (sample k draws with seed + k)")]
DeviceOpt = Annotated[str, typer.Option(
    "--device", help="cpu, cuda, cuda:N, or auto (cuda when there is one)")]
CompileOpt = Annotated[bool | None, typer.Option(
    "--compile/--no-compile", help="decode with a torch.compile'd step (CUDA graphs on a "
    "GPU): the first token waits for the compiler (15-35 s on a small CPU), then about 3x "
    "faster. Default: on a CPU from 10,000 tokens in all")]


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name}: not a device (cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: no CUDA device here")
    return name


def _sample(domain_name: str, model_dir: Path, prompt_tokens_fn, length: int, temperature,
            top_k, top_p, seed, grammar: bool = False, num_samples: int = 1,
            device: str = "cpu", compile: bool | None = None):
    """(domain, prompt, [new tokens of each sample]); the samples are decoded as one batch.
    With `grammar`, sampled under the domain's grammar (limits from the model directory)
    and each followed by the tokens it needs to close."""
    import numpy as np

    from .core import check_sampling
    from .pipeline.inference import decide_compile, sample_batch
    from .pipeline.run_dir import load_run

    if length < 1:
        raise InputError(f"--length {length}: must be at least 1")
    if num_samples < 1:
        raise InputError(f"--num-samples {num_samples}: must be at least 1")
    try:
        check_sampling(temperature, top_k, top_p)
    except ValueError as e:  # "top_k must be ..." -> "--top-k must be ..."
        raise InputError("--" + str(e).replace("_", "-", 1)) from None
    # the decoding cache is bounded by the model's context; what grows with --length is
    # the sample itself (8 bytes a token while generating, plus the domain's output)
    need = 16 * length * num_samples
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    if need > have:
        raise InputError(f"--length {length:,}: needs about {need / 2**30:.1f} GiB, more than "
                         f"the {have / 2**30:.1f} GiB of memory available")
    device = _device(device)
    model, domain, cfg = load_run(model_dir, domain_name, device=device)
    prompt = np.concatenate([[domain.sep_id], prompt_tokens_fn(domain)]).astype(np.int64)
    context = model.cfg.max_seq_len
    if len(prompt) >= context:
        err.print(f"the prompt has {len(prompt) - 1:,} tokens, more than the model's context "
                  f"({context:,}): continuing from its last {context // 2:,} tokens")
    constraint = (domain.constraint(_sampling_limits(model_dir), [prompt] * num_samples)
                  if grammar else None)
    if compile is None and decide_compile(None, length * num_samples, device):
        err.print("compiling the decoding step first (--no-compile to skip)")
        compile = True
    with _progress() as bar:
        task = bar.add_task("sampling", total=length * num_samples)
        new, rate = sample_batch(model, prompt, length, num_samples, temperature, top_k, top_p,
                                 seed, allowed=domain.generatable(),
                                 on_token=lambda n: bar.advance(task, n),
                                 device=device, constraint=constraint, compile=compile)
    batch = f" ({num_samples} samples as one batch)" if num_samples > 1 else ""
    err.print(f"{length * num_samples:,} tokens at {rate:,.0f} tokens/s{batch}")
    samples = list(new)
    if constraint is not None:
        closings = [constraint.closing(k) for k in range(num_samples)]
        removed = np.concatenate([np.asarray(r) for r in constraint.removed])
        released = sum(len([t for t in c if domain.ends_note(t)]) for c in closings)
        err.print(f"grammar: masked {removed.mean():.2%} of the model's probability per token "
                  f"on average ({(removed > 0.5).sum():,} tokens where it was most of it); "
                  f"settled {released:,} notes still open at the end (released, or given "
                  "their duration)")
        samples = [np.concatenate([row, np.asarray(c, dtype=np.int64)])
                   for row, c in zip(samples, closings)]
    return domain, prompt[1:], samples


def _numbered(path: Path, k: int, n: int) -> Path:
    """piece.mid -> piece_1.mid ... piece_n.mid when there are several samples."""
    return path if n == 1 else path.with_name(f"{path.stem}_{k}{path.suffix}")


def _sampling_limits(model_dir: Path) -> dict | None:
    from .pipeline.run_dir import SAMPLING, read_sampling_limits

    limits = read_sampling_limits(model_dir)
    if limits is None:
        err.print(f"{model_dir}: no {SAMPLING} (trained before sampling limits were stored): "
                  "the grammar uses its defaults")
    return limits


@sample_app.command("dna")
@clean_errors
def sample_dna(model: ModelOpt, length: Length,
               out_path: Annotated[Path, typer.Option("--out", help="FASTA to write")],
               prompt: Annotated[str, typer.Option("--prompt", help="bases to continue")] = "",
               temperature: Temperature = 1.0, top_k: TopK = None, top_p: TopP = None,
               seed: Seed = None, num_samples: NumSamples = 1,
               force: Force = False, device: DeviceOpt = "auto",
               compile: CompileOpt = None) -> None:
    """Generate bases; the FASTA holds the prompt followed by the new bases (one record
    per sample)."""
    from .domains import Record
    from .files import check_output

    check_output(out_path, force)

    def prompt_tokens(domain):
        try:
            return domain.encode(prompt) if prompt else []
        except InputError as e:
            raise InputError(f"--prompt: {e}") from None

    domain, p, samples = _sample("dna", model, prompt_tokens, length, temperature, top_k,
                                 top_p, seed, num_samples=num_samples, device=device,
                                 compile=compile)
    import numpy as np

    records = []
    for k, new in enumerate(samples, start=1):
        tokens = np.concatenate([p, new])
        name = f"sample_{model.name}_{len(tokens)}bp"
        records.append(Record(name if num_samples == 1 else f"{name}_{k}", tokens))
    domain.write(records, out_path)
    each = " each" if num_samples > 1 else ""
    out.print(f"wrote {out_path} ({len(records)} record{'s' * (num_samples > 1)}: "
              f"{len(p):,} prompt + {length:,} generated bases{each})")


@sample_app.command("midi")
@clean_errors
def sample_midi(model: ModelOpt, length: Length,
                out_path: Annotated[Path, typer.Option("--out", help=".mid to write")],
                primer: Annotated[Path | None, typer.Option(
                    "--primer", help="MIDI file to continue")] = None,
                temperature: Temperature = 1.0, top_k: TopK = None, top_p: TopP = None,
                seed: Seed = None, force: Force = False,
                audio: Annotated[Path | None, typer.Option(
                    "--audio", help="also render to WAV (needs FluidSynth)")] = None,
                grammar: Annotated[bool, typer.Option(
                    "--grammar/--no-grammar", help="note grammar: no unmatched note-off, no "
                    "second note-on of a sounding pitch, polyphony and note length within "
                    "the training data's")] = True,
                num_samples: NumSamples = 1, device: DeviceOpt = "auto",
                compile: CompileOpt = None) -> None:
    """Generate music; writes the .mid (primer + continuation) and a piano-roll PNG (with
    --num-samples K: piece_1.mid ... piece_K.mid, each with its PNG)."""
    from .files import check_output

    outputs = [_numbered(out_path, k, num_samples) for k in range(1, num_samples + 1)]
    for path in outputs:
        check_output(path, force)
        check_output(path.with_suffix(".png"), force)
    if audio is not None:
        if num_samples > 1:
            raise InputError("--audio renders one piece: use it with --num-samples 1")
        check_output(audio, force)

    def primer_tokens(domain):
        import numpy as np

        if primer is None:
            return np.zeros(0, dtype=np.int64)
        records = list(domain.read(primer))
        return records[0].tokens

    domain, p, samples = _sample("midi", model, primer_tokens, length, temperature, top_k,
                                 top_p, seed, grammar, num_samples, device, compile)
    import numpy as np

    for path, new in zip(outputs, samples):
        pm, repairs = domain.decode(np.concatenate([p, new]))
        png = path.with_suffix(".png")
        domain.write_midi(pm, path)
        domain.piano_roll_png(pm, png, title=path.name)
        stats = domain.stats(pm)
        out.print(f"wrote {path} and {png}")
        out.print(", ".join(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}"
                            for k, v in stats.items()))
        fixed = {k: v for k, v in repairs.items() if v}
        out.print(f"repaired: {fixed}" if fixed else "no repairs needed")
    if audio is not None:
        domain.render_audio(pm, audio)
        out.print(f"wrote {audio}")


def _report_skipped(domain) -> int:
    """List the files a domain skipped in its last read (unreadable MIDI)."""
    skipped = getattr(domain, "skipped", [])
    for path, reason in skipped:
        err.print(f"[yellow]skipped[/yellow] {path}: {reason}", soft_wrap=True)
    return len(skipped)


def _read_all(domain, inputs: list[Path]) -> list:
    """All records of all inputs; files a domain skipped (unreadable MIDI) are listed."""
    records, n_skipped = [], 0
    for path in inputs:
        records.extend(domain.read(path))
        n_skipped += _report_skipped(domain)
    if n_skipped:
        err.print(f"{len(records)} records read, {n_skipped} files skipped")
    return records


@sample_app.command("seq2seq")
@clean_errors
def sample_seq2seq(model: ModelOpt, source: SourceOpt,
                   out_path: Annotated[Path, typer.Option(
                       "--out", help="FASTA to write; MIDI: a .mid for one source, else a "
                       "directory of <id>.mid")],
                   max_length: Annotated[int | None, typer.Option(
                       "--max-length", help="most tokens per target (default: the model's)")
                   ] = None,
                   temperature: Temperature = 1.0, top_k: TopK = None, top_p: TopP = None,
                   seed: Seed = None,
                   batch_size: Annotated[int, typer.Option(
                       "--batch-size", help="sources decoded together")] = 16,
                   num_beams: Annotated[int, typer.Option(
                       "--num-beams", help="> 1: beam search for the likeliest target "
                       "instead of sampling (--temperature/--top-k/--top-p unused)")] = 1,
                   grammar: Annotated[bool, typer.Option(
                       "--grammar/--no-grammar", help="MIDI targets: the note grammar of "
                       "`sample midi` (no unmatched note-off; a target closes with no note "
                       "sounding). Off by default: a model that loses track of its notes "
                       "gets stuck under it (see apps/harmonize)")] = False,
                   force: Force = False) -> None:
    """A target for each source record, sampled until the model closes it (or
    --max-length). Sample k draws with seed + k."""
    from .core import check_sampling
    from .domains import Record
    from .files import check_output
    from .pipeline.seq2seq import check_sources, load_seq2seq, target_grammar, translate

    try:
        check_sampling(temperature, top_k, top_p)
    except ValueError as e:
        raise InputError("--" + str(e).replace("_", "-", 1)) from None
    if num_beams < 1:
        raise InputError(f"--num-beams {num_beams}: must be at least 1")
    encdec, source_domain, target_domain, cfg = load_seq2seq(model)
    rules = target_grammar(target_domain, lambda: _sampling_limits(model)) if grammar else None
    if rules is not None and num_beams > 1:
        raise InputError("--num-beams with the MIDI note grammar is not supported: add "
                         "--no-grammar")
    limit = encdec.max_target_len - 1
    if max_length is not None and not 1 <= max_length <= limit:
        raise InputError(f"--max-length {max_length}: must be in 1..{limit} (the model's "
                         "target length)")
    one_file = target_domain.name != "midi"
    records = _read_all(source_domain, list(source))
    if one_file or (len(records) == 1 and out_path.suffix.lower() in (".mid", ".midi")):
        check_output(out_path, force)
        paths = None
    else:
        paths = [out_path / (r.id.replace("/", "_") + ".mid") for r in records]
        for p in paths:
            check_output(p, force)
    check_sources(encdec, records, ", ".join(map(str, source)))
    with _progress() as bar:
        task = bar.add_task("sampling", total=len(records))
        targets = translate(encdec, [r.tokens for r in records], target_domain.sep_id,
                            max_length or limit, temperature, top_k, top_p, seed,
                            constraint=rules, allowed=target_domain.generatable(),
                            batch_size=batch_size, on_done=lambda n: bar.advance(task, n),
                            num_beams=num_beams)
    made = [Record(r.id, t) for r, t in zip(records, targets)]
    if paths is None:
        target_domain.write(made, out_path)
        written = str(out_path)
    else:
        for rec, p in zip(made, paths):
            target_domain.write([rec], p)
        written = f"{len(paths)} files in {out_path}"
    unclosed = sum(len(t) == (max_length or limit) for t in targets)
    note = f"; {unclosed} reached --max-length unclosed" if unclosed else ""
    out.print(f"wrote {written} ({len(made)} targets, {sum(map(len, targets)):,} tokens{note})")


# -- score ------------------------------------------------------------------------------
def _score(domain_name: str, model_dir: Path, inputs: list[Path], out_path: Path | None,
           force: bool, per_base: Path | None = None, both_strands: bool = False) -> None:
    import numpy as np

    from .files import atomic_path, check_output
    from .pipeline.inference import RecordScore, token_log_likelihoods
    from .pipeline.outputs import write_bigwig
    from .pipeline.run_dir import load_run, read_baseline

    for p in (out_path, per_base):
        if p is not None:
            check_output(p, force)
    if per_base is not None and _is_bigwig(per_base):
        try:
            import pyBigWig  # noqa: F401
        except ImportError:
            raise InputError(f"--per-base {per_base}: writing bigWig needs pyBigWig: pip install "
                             "'seqformer[tracks]' (a .bedgraph path needs nothing)") from None
    model, domain, cfg = load_run(model_dir, domain_name)
    window = int(cfg["data"]["seq_len"])
    records = _read_all(domain, inputs)
    scores, per_position = [], []
    with _progress() as bar:
        task = bar.add_task("scoring", total=sum(len(r.tokens) for r in records))
        for rec in records:
            ll = token_log_likelihoods(model, rec.tokens, domain.sep_id, window)
            if both_strands:
                rc = domain.reverse_complement(rec.tokens)
                ll = 0.5 * (ll + token_log_likelihoods(model, rc, domain.sep_id, window)[::-1])
            scores.append(RecordScore(rec.id, len(rec.tokens), float(ll.sum())))
            if per_base is not None:
                per_position.append((rec.id, ll))
            bar.advance(task, len(rec.tokens))
    unit = _unit(domain_name)
    baseline = read_baseline(model_dir)
    columns = ["record", "length", "total ll (nats)", "mean ll", f"bits/{unit}", "perplexity"]
    header = ["id", "length", "total_ll_nats", "mean_ll_nats", f"bits_per_{unit}", "perplexity"]
    if baseline is not None:
        columns.append(f"Markov bits/{unit}")
        header.append(f"markov_order{baseline[1]['order']}_bits_per_{unit}")
    per_second = any(rec.meta.get("duration") for rec in records)
    if per_second:
        columns.append("nll nats/s")
        header.append("nll_nats_per_second")
    table = Table(title=f"{model_dir.name}: log-likelihood")
    for col in columns:
        table.add_column(col, justify="right" if col != "record" else "left")
    rows, totals = [], np.zeros(3)
    for s, rec in zip(scores, records):
        row = [s.id, s.length, f"{s.total_ll:.4f}", f"{s.mean_ll:.6f}",
               f"{s.bits_per_token:.6f}", f"{s.perplexity:.4f}"]
        if baseline is not None:
            bits, n = baseline[0].bits([rec.tokens])
            row.append(f"{bits / max(1, n):.6f}")
            totals += (-s.total_ll / np.log(2), bits, n)
        if per_second:
            duration = rec.meta.get("duration")
            row.append(f"{-s.total_ll / duration:.4f}" if duration else "")
        rows.append(row)
        table.add_row(*map(str, row))
    out.print(table)
    if baseline is not None and totals[2]:
        model_bits, markov_bits = totals[0] / totals[2], totals[1] / totals[2]
        out.print(_against_baseline(model_bits, {**baseline[1], "val_bits": markov_bits,
                                                 "val_tokens": int(totals[2])}, unit)
                  .replace("validation: ", "all records: "))
    if out_path is not None:
        with atomic_path(out_path) as tmp:
            tmp.write_text("\t".join(header) + "\n"
                           + "".join("\t".join(map(str, r)) + "\n" for r in rows))
        out.print(f"wrote {out_path}")
    if per_base is not None and _is_bigwig(per_base):
        write_bigwig(per_base, per_position)
        out.print(f"wrote {per_base}")
    elif per_base is not None:
        with atomic_path(per_base) as tmp, open(tmp, "w") as f:
            f.write(f'track type=bedGraph name="{model_dir.name}" description="log-likelihood '
                    'per base (nats)"\n')
            for rid, ll in per_position:
                for i in range(0, len(ll), 1 << 16):
                    part = ll[i:i + (1 << 16)]
                    starts = np.arange(i, i + len(part))
                    f.writelines(f"{rid}\t{s}\t{s + 1}\t{v:.5f}\n" for s, v in zip(starts, part))
        out.print(f"wrote {per_base}")


def _selected_features(domain, inputs: list[Path], features: str | None,  # noqa: ANN001
                       regions: Path | None, flank: int | None, window: int) -> list:
    """(feature, its own record) pairs: the annotated features of the types named in
    `features` (GenBank/EMBL input) or the regions of a BED file (any input)."""
    from .domains.features import read_bed
    from .pipeline.inference import feature_records

    if (features is None) == (regions is None):
        raise InputError("give --features TYPES (GenBank/EMBL input) or --regions BED, not "
                         "both")
    if flank is not None and flank < 0:
        raise InputError(f"--flank {flank}: must be at least 0")
    records = _read_all(domain, inputs)
    if regions is not None:
        by_record = read_bed(regions, {r.id: len(r.tokens) for r in records})
        for rec in records:
            rec.meta["features"] = by_record.get(rec.id, [])
        wanted = {"region"}
    else:
        wanted = {t.strip() for t in features.split(",") if t.strip()}
        if not wanted:
            raise InputError(f"--features {features!r}: name at least one feature type, e.g. "
                             "CDS")
        plain = [r for r in records if "features" not in r.meta]
        if plain:
            raise InputError(f"{plain[0].meta.get('path', 'the input')}: --features needs "
                             "annotated input (GenBank or EMBL; --regions BED for FASTA); "
                             f"record {plain[0].id!r} has no features")
        found = {f.type for r in records for f in r.meta["features"]}
        if not wanted & found:
            raise InputError(f"--features {features}: none in the input (it has "
                             f"{', '.join(sorted(found)) or 'no features'})")
    return feature_records(records, wanted, flank, window, domain.reverse_complement)


def _score_features(model_dir: Path, inputs: list[Path], out_path: Path | None, force: bool,
                    features: str | None, regions: Path | None, flank: int | None) -> None:
    """One row per annotated feature of the given types, or per BED region."""
    import numpy as np

    from .files import atomic_path, check_output
    from .pipeline.inference import score_features
    from .pipeline.run_dir import load_run

    if out_path is not None:
        check_output(out_path, force)
    model, domain, cfg = load_run(model_dir, "dna")
    window = int(cfg["data"]["seq_len"])
    pairs = _selected_features(domain, inputs, features, regions, flank, window)
    with _progress() as bar:
        task = bar.add_task("scoring features", total=sum(len(r.tokens) for _, r in pairs))
        scores = score_features(model, pairs, domain.sep_id, window,
                                on_feature=lambda n: bar.advance(task, n))
    header = ["id", "type", "record", "location", "strand", "length", "total_ll_nats",
              "bits_per_base"]
    rows = [[f.id, f.type, f.record, f.location, {1: "+", -1: "-"}.get(f.strand, "."),
             str(f.length), f"{ll:.4f}", f"{-ll / np.log(2) / f.length:.6f}"]
            for f, ll in scores]
    # on screen the columns that fit a terminal; the TSV has them all
    shown = {"id": 0, "type": 1, "location": 3, "strand": 4, "length": 5, "bits/base": 7}
    table = Table(title=f"{model_dir.name}: log-likelihood per feature")
    for col in shown:
        table.add_column(col, justify="right" if col in ("length", "bits/base") else "left",
                         overflow="fold", no_wrap=col not in ("location", "id"))
    for row in rows[:40]:
        table.add_row(*(escape(row[i]) for i in shown.values()))
    out.print(table)
    if len(rows) > 40:
        out.print(f"... {len(rows) - 40} more rows" + (f" in {out_path}" if out_path else ""))
    bits = sum(-ll for _, ll in scores) / np.log(2) / max(1, sum(f.length for f, _ in scores))
    kinds = ", ".join(sorted({f.type for f, _ in scores}))
    out.print(f"{len(rows):,} features ({kinds}): {bits:.4f} bits/base over all of them")
    if out_path is not None:
        with atomic_path(out_path) as tmp:
            tmp.write_text("\t".join(header) + "\n"
                           + "".join("\t".join(r) + "\n" for r in rows))
        out.print(f"wrote {out_path}")


Features = Annotated[str | None, typer.Option(
    "--features", help="each annotated feature of these types instead of each record, e.g. "
    "CDS,rRNA (GenBank/EMBL input)")]
Regions = Annotated[Path | None, typer.Option(
    "--regions", help="each region of a BED file instead of each record (BED6 strand "
    "respected)")]
Flank = Annotated[int | None, typer.Option(
    "--flank", help="bases of the record 5' of a feature read as its context (default: "
    "enough to fill the window, at least half of it)")]


def _is_bigwig(path: Path) -> bool:
    return path.suffix.lower() in (".bw", ".bigwig")


@score_app.command("dna")
@clean_errors
def score_dna(model: ModelOpt, fasta: Annotated[list[Path], typer.Option(
                  "--fasta", help="FASTA, GenBank or EMBL files (plain or gzip)")],
              out_path: Annotated[Path | None, typer.Option("--out")] = None,
              per_base: Annotated[Path | None, typer.Option(
                  "--per-base", help="per-base log-likelihood track: bigWig (.bw, .bigwig; "
                  "needs seqformer[tracks]) or bedGraph (any other name)")] = None,
              both_strands: Annotated[bool, typer.Option(
                  "--both-strands", help="average with the reverse complement")] = False,
              features: Features = None,
              regions: Regions = None, flank: Flank = None,
              force: Force = False) -> None:
    """Log-likelihood, bits per base and perplexity of each record, or of each feature."""
    if features is not None or regions is not None:
        if per_base is not None or both_strands:
            raise InputError("--features/--regions score each feature on its own strand: "
                             "they do not combine with --per-base or --both-strands")
        _score_features(model, fasta, out_path, force, features, regions, flank)
        return
    if flank is not None:
        raise InputError("--flank goes with --features or --regions")
    _score("dna", model, fasta, out_path, force, per_base, both_strands)


@score_app.command("midi")
@clean_errors
def score_midi(model: ModelOpt, midi: Annotated[list[Path], typer.Option("--midi")],
               out_path: Annotated[Path | None, typer.Option("--out")] = None,
               force: Force = False) -> None:
    """Negative log-likelihood per token and per second of each piece."""
    _score("midi", model, midi, out_path, force)


@score_app.command("seq2seq")
@clean_errors
def score_seq2seq(model: ModelOpt, source: SourceOpt,
                  target: Annotated[list[Path], typer.Option("--target")],
                  out_path: Annotated[Path | None, typer.Option("--out", help="TSV to write")
                                      ] = None,
                  force: Force = False) -> None:
    """Log-likelihood of each target given its source (pairs by record id): the target's
    tokens and its closing separator, never a sampling constraint."""
    import numpy as np

    from .files import atomic_path, check_output
    from .pipeline.seq2seq import check_sources, load_seq2seq, pair_ids, target_log_likelihoods

    if out_path is not None:
        check_output(out_path, force)
    encdec, source_domain, target_domain, _ = load_seq2seq(model)
    sources, targets = _read_all(source_domain, list(source)), _read_all(target_domain,
                                                                        list(target))
    both, unpaired = pair_ids([r.id for r in sources], [r.id for r in targets])
    names = ", ".join(map(str, [*source, *target]))
    if unpaired:
        err.print(f"{len(unpaired)} records unpaired, skipped: {', '.join(unpaired[:5])}",
                  highlight=False, soft_wrap=True)
    if not both:
        raise InputError(f"{names}: no source and target share a record id")
    check_sources(encdec, [sources[i] for i, _ in both], ", ".join(map(str, source)))
    for _, j in both:
        if len(targets[j].tokens) + 2 > encdec.max_target_len:
            raise InputError(f"{', '.join(map(str, target))}: record {targets[j].id!r} has "
                             f"{len(targets[j].tokens):,} tokens, more than the model's target "
                             f"length ({encdec.max_target_len - 2:,})")
    pairs = [(sources[i].tokens, targets[j].tokens) for i, j in both]
    lls = target_log_likelihoods(encdec, pairs, target_domain.sep_id)
    header = ["id", "source_length", "target_length", "total_ll_nats", "bits_per_token"]
    table = Table(title=f"{model.name}: log-likelihood of each target given its source")
    for col in ("record", "source", "target", "total ll (nats)", "bits/token"):
        table.add_column(col, justify="left" if col == "record" else "right")
    rows = []
    for (i, j), ll in zip(both, lls):
        total = float(ll.sum())
        rows.append([sources[i].id, len(sources[i].tokens), len(targets[j].tokens),
                     f"{total:.4f}", f"{-total / np.log(2) / len(ll):.6f}"])
        table.add_row(*map(str, rows[-1]))
    out.print(table)
    if out_path is not None:
        with atomic_path(out_path) as tmp:
            tmp.write_text("\t".join(header) + "\n"
                           + "".join("\t".join(map(str, r)) + "\n" for r in rows))
        out.print(f"wrote {out_path}")


# -- embed ------------------------------------------------------------------------------
def _check_layer(model, layer: int) -> None:  # noqa: ANN001
    if not -1 <= layer < model.cfg.n_layers:
        raise InputError(f"--layer {layer}: the model has layers 0..{model.cfg.n_layers - 1} "
                         "(-1 = final)")


def _embed(domain_name: str, model_dir: Path, inputs: list[Path], out_path: Path, pool,
           layer: int, force: bool, resume: bool) -> None:
    from .files import check_output
    from .pipeline.inference import embed_records, partial_path
    from .pipeline.run_dir import load_run
    from .pipeline.token_store import TokenStore

    check_output(out_path, force)
    model, domain, cfg = load_run(model_dir, domain_name)
    _check_layer(model, layer)
    if not resume and partial_path(out_path).exists():
        err.print(f"note: starting over; {partial_path(out_path)} is an unfinished earlier "
                  "run (--resume continues it)", soft_wrap=True)
    # a memory-mapped token store next to the output: a chromosome is never in RAM, and
    # an interrupted run finds it again on --resume
    work = out_path.with_name(f".{out_path.name}.tokens")
    with _tokenizing() as advance:
        try:
            store = TokenStore.build(work, domain, inputs, on_tokens=advance,
                                     on_input=lambda _: _report_skipped(domain))
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)  # bad input: leave nothing behind
            raise
    with _progress() as bar:
        task = bar.add_task("embedding", total=store.total)
        n = embed_records(model, store.as_records(), domain.sep_id, int(cfg["data"]["seq_len"]),
                          out_path, layer=layer, pool=pool, resume=resume,
                          attrs={"domain": domain_name, "model_dir": str(model_dir)},
                          on_window=lambda k: bar.advance(task, k))
    shutil.rmtree(work, ignore_errors=True)
    out.print(f"wrote {out_path} ({n} records, d_model {model.cfg.d_model})")


Pool = Annotated[str | None, typer.Option(
    "--pool", help="also store a pooled vector per record: mean")]
Layer = Annotated[int, typer.Option("--layer", help="-1 = final normalized states")]
EmbedResume = Annotated[bool, typer.Option(
    "--resume", help="continue an interrupted run: records already in <out>.partial are kept")]


def _embed_features(model_dir: Path, inputs: list[Path], out_path: Path, pool, layer: int,
                    force: bool, resume: bool, features: str | None, regions: Path | None,
                    flank: int | None) -> None:
    """One HDF5 entry per annotated feature or BED region, in order, with its fields as
    attributes; each read on its own strand after its context, which is not stored."""
    from .files import check_output
    from .pipeline.inference import embed_records
    from .pipeline.run_dir import load_run

    check_output(out_path, force)
    model, domain, cfg = load_run(model_dir, "dna")
    _check_layer(model, layer)
    window = int(cfg["data"]["seq_len"])
    pairs = _selected_features(domain, inputs, features, regions, flank, window)
    with _progress() as bar:
        task = bar.add_task("embedding features", total=sum(f.length for f, _ in pairs))
        n = embed_records(model, [r for _, r in pairs], domain.sep_id, window, out_path,
                          layer=layer, pool=pool, resume=resume,
                          attrs={"domain": "dna", "model_dir": str(model_dir),
                                 "features": features or f"regions of {regions}",
                                 "flank": -1 if flank is None else flank},
                          on_window=lambda k: bar.advance(task, k))
    out.print(f"wrote {out_path} ({n} features, d_model {model.cfg.d_model})")


@embed_app.command("dna")
@clean_errors
def embed_dna(model: ModelOpt, fasta: Annotated[list[Path], typer.Option(
                  "--fasta", help="FASTA, GenBank or EMBL files (plain or gzip)")],
              out_path: Annotated[Path, typer.Option("--out")], pool: Pool = None,
              layer: Layer = -1, features: Features = None, regions: Regions = None,
              flank: Flank = None, force: Force = False,
              resume: EmbedResume = False) -> None:
    """Per-base embeddings of each record (or each feature) into HDF5."""
    if features is not None or regions is not None:
        _embed_features(model, fasta, out_path, pool, layer, force, resume, features, regions,
                        flank)
        return
    if flank is not None:
        raise InputError("--flank goes with --features or --regions")
    _embed("dna", model, fasta, out_path, pool, layer, force, resume)


@embed_app.command("midi")
@clean_errors
def embed_midi(model: ModelOpt, midi: Annotated[list[Path], typer.Option("--midi")],
               out_path: Annotated[Path, typer.Option("--out")], pool: Pool = None,
               layer: Layer = -1, force: Force = False, resume: EmbedResume = False) -> None:
    """Per-token embeddings of each piece into HDF5."""
    _embed("midi", model, midi, out_path, pool, layer, force, resume)


# -- finetune / predict -----------------------------------------------------------------
def _classify_inputs(classes: list[str] | None, labels: Path | None, fasta: list[Path] | None
                     ) -> tuple[list[str], list[Path], dict[str, str] | None]:
    """(class names or [], input files, id -> label table or None) from the options."""
    from .pipeline.labelled import parse_classes, read_label_table

    if classes and (labels or fasta):
        raise InputError("give either --classes NAME=FILE ... or --labels TSV with --fasta, "
                         "not both")
    if classes:
        names, files = parse_classes(classes)
        return names, files, None
    if labels is None or not fasta:
        raise InputError("no labelled sequences: give --classes NAME=FILE (one per class) or "
                         "--labels TSV (id and label) with --fasta")
    return [], _inputs(fasta, Path(), "--fasta"), read_label_table(labels)


def _finetune(domain_name: str, classes, labels, fasta, model_dir, freeze, config, out_dir,
              max_steps, seq_len, batch_size, resume, force, devices, num_nodes, strategy,
              overrides, options: dict) -> None:
    from .pipeline.classify import finetune
    from .pipeline.training import tokenize

    names, inputs, table = _classify_inputs(classes, labels, fasta)
    preset = _preset(domain_name, config or "classify-tiny")
    run = out_dir or Path("runs") / f"{domain_name}-{preset.stem}"
    new_run = not resume and (force or not run.exists())
    with _no_half_made_run(run, new_run):
        cfg = _finetune_config(domain_name, names, inputs, table, model_dir, freeze, preset,
                               run, max_steps, seq_len, batch_size, resume, force, devices,
                               num_nodes, strategy, overrides, options)
        with _tokenizing() as advance:
            tokenize(cfg, inputs, run, on_tokens=advance)
        summary = finetune(cfg, inputs, run, resume=resume, table=table, table_path=labels,
                           on_note=lambda text: err.print(text, highlight=False,
                                                          soft_wrap=True))
    if summary:
        out.print(f"[green]trained[/green] {summary['steps']} steps on {summary['n_train']:,} "
                  f"sequences ({summary['n_val']:,} held out for validation) in "
                  f"{summary['minutes']:.1f} min -> {summary['run']}")
        if summary["validation"]:
            _print_metrics(summary["validation"], "validation")


def _finetune_config(domain_name, names, inputs, table, model_dir, freeze, preset, run,
                     max_steps, seq_len, batch_size, resume, force, devices, num_nodes,
                     strategy, overrides, options: dict) -> dict:
    """The resolved classifier config of a new run (tokenizing the inputs first when the
    window is to fit the longest sequence), or the stored one of a resumed run."""
    from .domains import get_domain
    from .pipeline import run_config
    from .pipeline.classify import pretrained_model
    from .pipeline.run_dir import read_config
    from .pipeline.training import check_run_dir, is_first_process, tokenize

    if resume:
        cfg = read_config(run)
        if cfg.get("task") != "classify":
            raise InputError(f"{run}: is not a classifier run, nothing to resume here")
        if names and names != cfg["classify"]["classes"]:
            raise InputError(f"--classes: the run was trained on {cfg['classify']['classes']}, "
                             f"not {names}")
        if max_steps is not None:
            cfg["train"]["max_steps"] = max_steps
        check_run_dir(run, resume)
        return cfg
    cli: dict = {"train": {}, "data": {}, "classify": {"classes": names, "freeze": freeze}}
    if model_dir is not None:  # the body is the language model: its shape and tokens
        lm_model, options = pretrained_model(model_dir, domain_name)
        cli["model"] = {k: v for k, v in lm_model.items() if k != "vocab_size"}
        cli["classify"]["pretrained"] = str(model_dir)
    elif freeze:
        raise InputError("--freeze trains the head only: it needs a pretrained --model")
    cli["train"].update(_train_options(max_steps, batch_size, devices, num_nodes, strategy))
    cli["data"]["options"] = options
    probe = get_domain(domain_name, **options)
    fit_window = seq_len is None and not _sets_seq_len(preset, overrides or [])
    # checked before anything is written (a window fitted to the data comes after)
    if fit_window or seq_len is not None:
        cli["data"]["seq_len"] = 1 if fit_window else seq_len
    cfg = run_config.resolve(domain_name, probe.vocab_size, preset, cli, overrides or [],
                             task="classify")
    if force and is_first_process() and run.exists():
        shutil.rmtree(run)
    check_run_dir(run, resume)
    if not fit_window:
        return cfg
    # the window fits the longest labelled sequence, within the model's context
    with _tokenizing() as advance:
        store = tokenize(cfg, inputs, run, on_tokens=advance)
    lengths = [r.length for r in store.records if table is None or r.id in table]
    cli["data"]["seq_len"] = min(max(lengths, default=1), cfg["model"]["max_seq_len"])
    return run_config.resolve(domain_name, probe.vocab_size, preset, cli, overrides or [],
                              task="classify")


def _sets_seq_len(preset: Path, overrides: list[str]) -> bool:
    from .pipeline.run_config import load_yaml

    return ("seq_len" in (load_yaml(preset).get("data") or {})
            or any(o.strip().startswith("data.seq_len=") for o in overrides))


def _print_metrics(m: dict, what: str) -> None:
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


@finetune_app.command("dna")
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
        softmask: Annotated[str, typer.Option(
            "--softmask", help="upper: fold lowercase; keep: lowercase tokens")] = "upper",
        overrides: Overrides = None) -> None:
    """Train a classifier of DNA sequences (from scratch, or from a language model)."""
    classes, overrides = _more_values(classes, overrides)
    fasta, overrides = _more_values(fasta, overrides)
    fasta = [Path(p) for p in fasta]
    _finetune("dna", classes, labels, fasta, model, freeze, config, out_dir, max_steps,
              seq_len, batch_size, resume, force, devices, num_nodes, strategy, overrides,
              {"softmask": softmask})


def _predict(domain_name: str, model_dir: Path, inputs: list[Path], out_path: Path,
             both_strands: bool | None, labels: Path | None, batch_size: int,
             force: bool) -> None:
    import torch

    from .files import atomic_path, check_output
    from .pipeline.class_metrics import classification_metrics
    from .pipeline.classify import load_classifier, predict_probabilities
    from .pipeline.labelled import class_index, read_label_table

    check_output(out_path, force)
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be at least 1")
    model, domain, cfg = load_classifier(model_dir, domain_name)
    classes = cfg["classify"]["classes"]
    table = read_label_table(labels) if labels is not None else None
    index = class_index(table, classes, labels) if table is not None else None
    records = _read_all(domain, inputs)
    with _progress() as bar:
        task = bar.add_task("classifying", total=None)
        probs = predict_probabilities(model, domain, cfg, records, both_strands, batch_size,
                                      on_batch=lambda n: bar.advance(task, n))
    predicted = probs.argmax(-1).tolist()
    header = ["id", "predicted", *(f"prob_{c}" for c in classes)]
    with atomic_path(out_path) as tmp:
        tmp.write_text("\t".join(header) + "\n" + "".join(
            "\t".join([rec.id, classes[k], *(f"{p:.6f}" for p in row)]) + "\n"
            for rec, k, row in zip(records, predicted, probs.tolist())))
    counts = ", ".join(f"{c} {predicted.count(i):,}" for i, c in enumerate(classes))
    out.print(f"wrote {out_path} ({len(records):,} sequences: {counts})")
    if table is not None:
        have = [i for i, r in enumerate(records) if r.id in table]
        if not have:
            raise InputError(f"{labels}: none of its ids is in the input")
        truth = torch.tensor([index[table[records[i].id]] for i in have])
        _print_metrics(classification_metrics(probs[have], truth, classes),
                       f"against {labels.name}")


@predict_app.command("dna")
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
    _predict("dna", model, fasta, out_path, both_strands, labels, batch_size, force)


# -- info ------------------------------------------------------------------------------
@app.command("info")
@clean_errors
def info(run: Annotated[Path, typer.Argument(help="model directory")]) -> None:
    """What a model directory holds: domain, model size, training, validation."""
    from .pipeline.run_dir import read_baseline, read_config
    from .pipeline.training import read_metrics

    cfg = read_config(run)
    m = cfg["model"]
    table = Table(title=str(run), show_header=False)
    table.add_column("key")
    table.add_column("value")
    options = cfg["data"].get("options") or {}
    table.add_row("domain", cfg["domain"] + "".join(f", {k} {v}" for k, v in options.items()))
    table.add_row("model", f"{m['n_layers']} layers, d_model {m['d_model']}, {m['n_heads']} "
                  f"heads, d_ff {m['d_ff']}, attn {m['attn']}, bucket {m['bucket_size']}, "
                  f"{m['n_hashes']} hashes, {m['n_buckets']} buckets")
    table.add_row("context", f"max_seq_len {m['max_seq_len']:,}, trained on windows of "
                  f"{cfg['data']['seq_len']:,}")
    table.add_row("weights", "model.safetensors" if (run / "model.safetensors").exists()
                  else "none yet (training unfinished)")
    if cfg.get("task", "lm") == "classify":
        _info_classifier(run, cfg, table)
        out.print(table)
        return
    if cfg.get("task") == "seq2seq":
        s2s, e = cfg["seq2seq"], cfg["seq2seq"]["encoder"]
        table.add_row("task", f"sequence to sequence: {s2s['source_domain']} -> "
                      f"{cfg['domain']}" + (", encoder and decoder share weights"
                                            if s2s["share_weights"] else ""))
        if s2s.get("decoder_only"):
            table.add_row("encoder", f"none: the model reads the source (up to "
                          f"{s2s['source_len']:,} tokens) as a prefix of the target")
        else:
            table.add_row("encoder", f"{e['n_layers']} layers, attn {e['attn']}, sources up "
                          f"to {s2s['source_len']:,} tokens (the model above is the decoder)")
    train, val = read_metrics(run)
    if train:
        table.add_row("trained steps", f"{train[-1][0] + 1} (train {train[-1][1]:.4f} "
                      "bits/token)")
    if val:
        best = min(v for _, v in val)
        # Lightning logs a validation during training at step - 1 and the closing one
        # (after the last step) at the step itself
        at = min(val[-1][0] + 1, train[-1][0] + 1) if train else val[-1][0] + 1
        table.add_row("validation", f"{val[-1][1]:.4f} bits/token at step {at} "
                      f"(best {best:.4f})")
    baseline = read_baseline(run)
    if baseline is not None:
        table.add_row("baseline", f"order-{baseline[1]['order']} Markov: "
                      f"{baseline[1]['val_bits']:.4f} bits/token on the same validation tokens")
    out.print(table)


def _info_classifier(run: Path, cfg: dict, table: Table) -> None:
    import json

    from .pipeline.classify import METRICS
    from .pipeline.training import read_metrics

    clf = cfg["classify"]
    start = (f"from {clf['pretrained']}" + (" (head only)" if clf["freeze"] else "")
             if clf["pretrained"] else "from scratch")
    table.add_row("task", f"classifier of {len(clf['classes'])} classes "
                  f"({', '.join(clf['classes'])}), {start}")
    train, val = read_metrics(run, "loss", "val_acc")
    if train:
        table.add_row("trained steps", f"{train[-1][0] + 1} (train loss {train[-1][1]:.4f})")
    path = run / METRICS
    if path.is_file():
        m = json.loads(path.read_text())
        v = m.get("validation")
        if v:
            table.add_row("validation", f"accuracy {v['accuracy']:.4f}, MCC {v['mcc']:.4f}, "
                          f"AUROC {v['auroc']:.4f} on {v['n']:,} held-out sequences "
                          f"({m['minutes']:.1f} min run)")
    elif val:
        table.add_row("validation", f"accuracy {val[-1][1]:.4f} (training unfinished)")


@app.callback(invoke_without_command=True)
def main(version: Annotated[bool, typer.Option("--version")] = False) -> None:
    if version:
        out.print(f"seqformer {__version__}")
        raise typer.Exit()


if __name__ == "__main__":
    sys.exit(app())
