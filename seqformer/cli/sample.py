"""`seqformer sample dna|midi|seq2seq`."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer

from ..domains import Domain, Record
from ..domains.midi.grammar import (
    KEY_WEIGHT,
    PACE_WEIGHT,
    REGISTER_NOTES,
    REGISTER_WEIGHT,
    TEXTURE_WEIGHT,
    VOICE_WEIGHT,
)
from ..errors import InputError
from ..files import check_output
from ..pipeline.inference import decide_compile, fit_trust_to_prompt, sample_batch
from ..pipeline.run_dir import load_run, read_pointer_hit_rates
from ..pipeline.seq2seq import check_sources, load_seq2seq, target_grammar, translate
from .common import (
    Force,
    ModelOpt,
    SourceOpt,
    checked_sampling,
    clean_errors,
    err,
    out,
    progress,
    read_all,
    sampling_limits,
    verb,
)

app = verb("Generate from a trained model.")

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


def checked_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name}: not a device (cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: no CUDA device here")
    return name


def sample_lm(domain_name: str, model_dir: Path, prompt_tokens: Callable[[Domain], np.ndarray],
              length: int, temperature: float, top_k: int | None, top_p: float | None,
              seed: int | None, grammar: bool = False, num_samples: int = 1,
              device: str = "cpu", compile: bool | None = None, trust_pointer: bool = False,
              grammar_options: dict | None = None, fit_trust: bool = True
              ) -> tuple[Domain, np.ndarray, list[np.ndarray]]:
    """(domain, prompt, [new tokens of each sample]); the samples are decoded as one batch.
    With `grammar`, sampled under the domain's grammar (limits from the model directory;
    `grammar_options`: keyword arguments of the domain's `constraint`, e.g. MIDI's
    `texture`) and each followed by the tokens it needs to close. `trust_pointer`: copy the
    far pointer as often as it was right in training, or with `fit_trust` in the prompt
    where it has the evidence (`fit_trust_to_prompt`)."""
    if length < 1:
        raise InputError(f"--length {length}: must be at least 1")
    if num_samples < 1:
        raise InputError(f"--num-samples {num_samples}: must be at least 1")
    checked_sampling(temperature, top_k, top_p)
    # the decoding cache is bounded by the model's context; what grows with --length is
    # the sample itself (8 bytes a token while generating, plus the domain's output)
    need = 16 * length * num_samples
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    if need > have:
        raise InputError(f"--length {length:,}: needs about {need / 2**30:.1f} GiB, more than "
                         f"the {have / 2**30:.1f} GiB of memory available")
    device = checked_device(device)
    model, domain, cfg = load_run(model_dir, domain_name, device=device)
    prompt = np.concatenate([[domain.sep_id], prompt_tokens(domain)]).astype(np.int64)
    context = model.cfg.max_seq_len
    if len(prompt) >= context:
        err.print(f"the prompt has {len(prompt) - 1:,} tokens, more than the model's context "
                  f"({context:,}): continuing from its last {context // 2:,} tokens")
    constraint = (domain.constraint(sampling_limits(model_dir), [prompt] * num_samples,
                                    **(grammar_options or {})) if grammar else None)
    pointer_trust = read_pointer_hit_rates(model_dir) if trust_pointer else None
    if pointer_trust is not None and fit_trust:
        fitted = fit_trust_to_prompt(pointer_trust, prompt, model.cfg)
        pointer_trust = fitted.trust
        if fitted.positions:
            err.print(f"--trust-pointer: the far pointer had a candidate at "
                      f"{fitted.positions:,} positions of the primer, right at {fitted.right:.0%}"
                      f" of them: trusted as there, by count of mismatches (--training-trust:"
                      f" as in training)")
    if compile is None and decide_compile(None, length * num_samples, device):
        err.print("compiling the decoding step first (--no-compile to skip)")
        compile = True
    with progress() as bar:
        task = bar.add_task("sampling", total=length * num_samples)
        new, rate = sample_batch(model, prompt, length, num_samples, temperature, top_k, top_p,
                                 seed, allowed=domain.generatable(),
                                 on_token=lambda n: bar.advance(task, n),
                                 device=device, constraint=constraint, compile=compile,
                                 pointer_trust=pointer_trust)
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


def numbered(path: Path, k: int, n: int) -> Path:
    """piece.mid -> piece_1.mid ... piece_n.mid when there are several samples."""
    return path if n == 1 else path.with_name(f"{path.stem}_{k}{path.suffix}")


@app.command("dna")
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
    check_output(out_path, force)

    def prompt_tokens(domain: Domain) -> np.ndarray:
        try:
            return domain.encode(prompt) if prompt else np.zeros(0, dtype=np.int64)
        except InputError as e:
            raise InputError(f"--prompt: {e}") from None

    domain, p, samples = sample_lm("dna", model, prompt_tokens, length, temperature, top_k,
                                   top_p, seed, num_samples=num_samples, device=device,
                                   compile=compile)
    records = []
    for k, new in enumerate(samples, start=1):
        tokens = np.concatenate([p, new])
        name = f"sample_{model.name}_{len(tokens)}bp"
        records.append(Record(name if num_samples == 1 else f"{name}_{k}", tokens))
    domain.write(records, out_path)
    each = " each" if num_samples > 1 else ""
    out.print(f"wrote {out_path} ({len(records)} record{'s' * (num_samples > 1)}: "
              f"{len(p):,} prompt + {length:,} generated bases{each})")


@app.command("midi")
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
                compile: CompileOpt = None,
                trust_pointer: Annotated[bool, typer.Option(
                    "--trust-pointer", help="hold repeats: trust the far pointer "
                    "(model.copy_pointer) as often as it was right in the primer, or in "
                    "training where the primer shows nothing")] = False,
                fit_trust: Annotated[bool, typer.Option(
                    "--fit-trust/--training-trust", help="with --trust-pointer: trust the "
                    "pointer as often as it was right in the primer, where the primer "
                    "says, rather than in the training pieces")] = True,
                texture: Annotated[float, typer.Option(
                    "--texture", help="duration vocabulary, under the grammar: while fewer "
                    "notes sound than the training music's mean, favour longer notes and "
                    "hold back time shifts that would thin it, this strongly (0: off; "
                    f"default {TEXTURE_WEIGHT:g})")] = TEXTURE_WEIGHT,
                voice: Annotated[float, typer.Option(
                    "--voice", help="duration vocabulary, under the grammar: weigh a time "
                    "shift by exp(-VOICE) per note that ended there and no new note "
                    f"replaced (0: off; default {VOICE_WEIGHT:g})")] = VOICE_WEIGHT,
                key: Annotated[float, typer.Option(
                    "--key", help="under the grammar: weigh note-ons outside the major or "
                    "minor scale that the piece's recent notes fit best by exp(-KEY) "
                    f"(0: off; default {KEY_WEIGHT:g})")] = KEY_WEIGHT,
                register: Annotated[float, typer.Option(
                    "--register", help="under the grammar: weigh a note-on by "
                    "exp(-REGISTER) per semitone it would take the piece's last "
                    f"{REGISTER_NOTES} notes past the span typical of the training music "
                    "(0: off; default "
                    f"{REGISTER_WEIGHT:g})")] = REGISTER_WEIGHT,
                redirect: Annotated[bool, typer.Option(
                    "--redirect/--no-redirect", help="under the grammar: a note before the "
                    "piece names an instrument and a velocity becomes those tokens; event "
                    "vocabulary: a note-off it refuses becomes the switch to the instrument "
                    "sounding that pitch, or the release of the nearest pitch sounding "
                    "(within an octave)")] = True
                ) -> None:
    """Generate music; writes the .mid (primer + continuation) and a piano-roll PNG (with
    --num-samples K: piece_1.mid ... piece_K.mid, each with its PNG)."""
    outputs = [numbered(out_path, k, num_samples) for k in range(1, num_samples + 1)]
    for path in outputs:
        check_output(path, force)
        check_output(path.with_suffix(".png"), force)
    if audio is not None:
        if num_samples > 1:
            raise InputError("--audio renders one piece: use it with --num-samples 1")
        check_output(audio, force)

    def primer_tokens(domain: Domain) -> np.ndarray:
        if primer is None:
            return np.zeros(0, dtype=np.int64)
        return list(domain.read(primer))[0].tokens

    if trust_pointer and not grammar:
        err.print("--trust-pointer without the note grammar: what a draw between copies "
                  "starts is never released, and notes sound for minutes "
                  "(docs/long-context.md); drop --no-grammar")
    grammar_options = {"redirect": redirect, "texture": texture, "voice": voice, "key": key,
                       "register": register}
    domain, p, samples = sample_lm("midi", model, primer_tokens, length, temperature, top_k,
                                   top_p, seed, grammar, num_samples, device, compile,
                                   trust_pointer, grammar_options, fit_trust)
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


@app.command("seq2seq")
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
                   grammar: Annotated[bool | None, typer.Option(
                       "--grammar/--no-grammar", help="MIDI targets: the note grammar of "
                       "`sample midi` (no unmatched note-off; the notes still sounding when "
                       "a target closes are released). Default: on, except with "
                       "--num-beams")] = None,
                   end_with_source: Annotated[bool, typer.Option(
                       "--end-with-source/--free-end", help="MIDI to MIDI under the "
                       "grammar: each target closes when its time reaches its source's end "
                       "(a harmonization's voices end with the melody)")] = True,
                   pace: Annotated[float, typer.Option(
                       "--pace", help="MIDI to MIDI under the grammar: weigh a note-on by "
                       "exp(-K) per note its instrument is ahead of its training pace (its "
                       "notes per source note; with events its note-offs too, so it holds "
                       "rather than rests), and a time shift by exp(-K) per note one is "
                       "behind; 0: off")] = PACE_WEIGHT,
                   force: Force = False) -> None:
    """A target for each source record, sampled until the model closes it (or
    --max-length). Sample k draws with seed + k."""
    checked_sampling(temperature, top_k, top_p)
    if num_beams < 1:
        raise InputError(f"--num-beams {num_beams}: must be at least 1")
    encdec, source_domain, target_domain, cfg = load_seq2seq(model)
    if grammar is None:
        grammar = num_beams == 1
    rules = (target_grammar(target_domain, lambda: sampling_limits(model), source_domain,
                            end_with_source, pace=pace) if grammar else None)
    if rules is not None and num_beams > 1:
        raise InputError("--num-beams with the MIDI note grammar is not supported: add "
                         "--no-grammar")
    limit = encdec.max_target_len - 1
    if max_length is not None and not 1 <= max_length <= limit:
        raise InputError(f"--max-length {max_length}: must be in 1..{limit} (the model's "
                         "target length)")
    one_file = target_domain.name != "midi"
    records = read_all(source_domain, list(source))
    if one_file or (len(records) == 1 and out_path.suffix.lower() in (".mid", ".midi")):
        check_output(out_path, force)
        paths = None
    else:
        paths = [out_path / (r.id.replace("/", "_") + ".mid") for r in records]
        for p in paths:
            check_output(p, force)
    check_sources(encdec, records, ", ".join(map(str, source)))
    with progress() as bar:
        task = bar.add_task("sampling", total=len(records))
        targets = translate(encdec, [r.tokens for r in records], target_domain.sep_id,
                            max_length or limit, temperature, top_k, top_p, seed,
                            constraint=rules, allowed=target_domain.generatable(),
                            batch_size=batch_size, on_done=lambda n: bar.advance(task, n),
                            num_beams=num_beams)
    made = [Record(r.id, t) for r, t in zip(records, targets)]
    if paths is None:
        repairs = [target_domain.write(made, out_path)]
        written = str(out_path)
    else:
        repairs = [target_domain.write([rec], p) for rec, p in zip(made, paths)]
        written = f"{len(paths)} files in {out_path}"
    unclosed = sum(len(t) == (max_length or limit) for t in targets)
    closing = f"; {unclosed} reached --max-length unclosed" if unclosed else ""
    if target_domain.name == "midi":  # what the MIDI decoder had to fix (none under the grammar)
        fixed = {k: sum(r[k] for r in repairs) for k in ("unmatched_note_off", "unclosed_note")}
        closing += (f"; the MIDI decoder dropped {fixed['unmatched_note_off']} unmatched "
                    f"note-offs and closed {fixed['unclosed_note']} notes" if any(fixed.values())
                    else "; no note repaired")
    out.print(f"wrote {written} ({len(made)} targets, {sum(map(len, targets)):,} "
              f"tokens{closing})")
