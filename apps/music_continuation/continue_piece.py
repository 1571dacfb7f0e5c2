"""Continue a piece of music with a trained seqformer MIDI model, and measure how close the
continuation stays to the piece's real continuation.

    python apps/music_continuation/continue_piece.py --model runs/bach-cpu \
        --primer chorale.mid --seconds 10 --length 10s --seed 0 --out cont.mid

The primer is the first --seconds of the file, cut in the token stream at an event boundary:
every event before the cut is kept (so exactly the notes that start before it, with the notes
still sounding left open for the model to end), then a time shift up to the cut. The model
continues from there; the joined .mid (primer + continuation) and a PNG (piano rolls of the
result and of the original, and the pitch-class histograms) are written atomically.

The printed score: the distance between the 12-bin pitch-class histograms (weighted by note
duration) of the generated and of the real continuation, over the same time span, as total
variation and Jensen-Shannon distance (both 0 for identical histograms, 1 for disjoint ones).
Beside it, two baselines the model should beat: an unprimed sample of the same model over the
same span (same seed), and the primer's own histogram (no model at all: "the piece stays in
its key"). One piece and one seed say little; evaluate.py runs many.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pretty_midi

from seqformer import (
    InputError,
    atomic_path,
    check_output,
    load_run,
    midi,
    report_errors,
    sample_tokens,
)

PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


# ---------------------------------------------------------------------------- distances


def _as_distribution(h: np.ndarray, name: str) -> np.ndarray:
    h = np.asarray(h, dtype=np.float64)
    if h.ndim != 1 or np.any(h < 0) or not np.isfinite(h).all() or h.sum() <= 0:
        raise ValueError(f"{name}: need a 1-D histogram of non-negative weights, not all zero")
    return h / h.sum()


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Half the L1 distance of the normalised histograms: 0 identical, 1 disjoint."""
    p, q = _as_distribution(p, "p"), _as_distribution(q, "q")
    return float(0.5 * np.abs(p - q).sum())


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (the square root of the divergence in bits, which makes it a
    metric) of the normalised histograms: 0 identical, 1 disjoint."""
    p, q = _as_distribution(p, "p"), _as_distribution(q, "q")
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0  # 0 log 0 = 0; where a > 0, m > 0 too
        return float((a[nz] * np.log2(a[nz] / m[nz])).sum())

    # rounding can leave a tiny negative divergence for identical inputs
    return math.sqrt(max(0.0, (kl(p) + kl(q)) / 2))


# ---------------------------------------------------------------------------- time in tokens
# The token stream's clock: a shift token advances it, every other token happens "now".


def _steps(seconds: float) -> int:
    """Seconds -> 10 ms steps, rounding up: a cut at N s falls on the first step at or after
    N, so a note whose (floored) onset step is before it started before N."""
    return math.ceil(seconds / midi.STEP - 1e-6)


def _onset_step(seconds: float) -> int:
    """The 10 ms step a time falls in, floored as the tokenizer does (the epsilon keeps
    exact step boundaries such as 0.3 s, 29.999... steps in floating point, on their step)."""
    return math.floor(seconds / midi.STEP + 1e-6)


def _shift_steps(token: int) -> int:
    return token - midi.SHIFT + 1 if midi.SHIFT <= token < midi.VELOCITY else 0


def _shifts(steps: int) -> list[int]:
    full, rest = divmod(steps, midi.MAX_SHIFT)
    return [midi.SHIFT + midi.MAX_SHIFT - 1] * full + ([midi.SHIFT + rest - 1] if rest else [])


def duration_steps(tokens: np.ndarray) -> int:
    """How far the tokens move the clock, in 10 ms steps."""
    return sum(_shift_steps(int(t)) for t in tokens)


def clip_tokens(tokens: np.ndarray, end_step: int) -> tuple[np.ndarray, bool]:
    """The tokens before the clock reaches end_step, then shifts up to exactly end_step, and
    whether the clock got there. Events at end_step or later are dropped; state tokens
    (velocity, program) are emitted right before their event, after its shift, so a cut at a
    shift is an event boundary."""
    out: list[int] = []
    now = 0
    for token in map(int, tokens):
        k = _shift_steps(token)
        if k and now + k >= end_step:
            out += _shifts(end_step - now)
            return np.asarray(out, dtype=np.int64), True
        now += k
        out.append(token)
    return np.asarray(out, dtype=np.int64), False


# ---------------------------------------------------------------------------- notes


def _notes(pm: pretty_midi.PrettyMIDI, start: float, end: float) -> list[tuple[int, float, float]]:
    """(pitch, onset, offset clipped to end) of the pitched notes with onset in [start, end).
    Onsets are compared in 10 ms steps, the resolution of the tokens."""
    lo, hi = _steps(start), _steps(end)
    return [(n.pitch, n.start, min(n.end, end)) for inst in pm.instruments if not inst.is_drum
            for n in inst.notes if lo <= _onset_step(n.start) < hi]


def pitch_class_histogram(pm: pretty_midi.PrettyMIDI, start: float, end: float) -> np.ndarray:
    """Seconds sounded per pitch class (C..B) by the pitched notes starting in [start, end),
    cut at end; drums have no pitch class and are left out. Not normalised: all zeros when no
    note starts in the span."""
    h = np.zeros(12)
    for pitch, onset, offset in _notes(pm, start, end):
        h[pitch % 12] += max(offset - onset, 0.0)
    return h


def window(pm: pretty_midi.PrettyMIDI, start: float, end: float) -> pretty_midi.PrettyMIDI:
    """The pitched notes starting in [start, end), moved to start at 0, cut at end."""
    out = pretty_midi.PrettyMIDI(resolution=500, initial_tempo=120.0)
    inst = pretty_midi.Instrument(0)
    inst.notes = [pretty_midi.Note(80, p, a - start, b - start) for p, a, b in
                  _notes(pm, start, end)]
    out.instruments.append(inst)
    return out


# ---------------------------------------------------------------------------- generation


def generate(model, prompt: np.ndarray, *, n_tokens: int | None = None,
             seconds: float | None = None, temperature: float = 1.0, top_p: float | None = None,
             seed: int | None = None, tokens_per_second: float = 30.0, max_tokens: int = 20000
             ) -> tuple[np.ndarray, bool]:
    """New tokens after `prompt` (which starts with the separator): n_tokens of them, or as
    many as it takes to move the clock by `seconds` (the last shift is cut to land exactly
    there). Returns the tokens and whether the requested length was reached (a model that
    rarely emits time shifts can hit max_tokens first)."""
    allowed = midi.MIDIDomain().generatable()  # everything but padding and the separator
    if n_tokens is not None:
        new, _ = sample_tokens(model, prompt, n_tokens, temperature, None, top_p, seed,
                               allowed=allowed)
        return new, True
    if seconds is None:
        raise ValueError("give n_tokens or seconds")
    target = _steps(seconds)
    new = np.zeros(0, dtype=np.int64)
    chunk = 0
    # sample_tokens wants a token count up front: guess one from the primer's pace, then
    # continue in further chunks (each re-reads the whole context) until the clock is there
    while len(new) < max_tokens:
        left = (target - duration_steps(new)) * midi.STEP
        n = min(max_tokens - len(new), max(64, int(1.5 * tokens_per_second * left) + 32))
        more, _ = sample_tokens(model, np.concatenate([prompt, new]), n, temperature, None,
                                top_p, None if seed is None else seed + 7919 * chunk,
                                allowed=allowed)
        new = np.concatenate([new, more])
        clipped, reached = clip_tokens(new, target)
        if reached:
            return clipped, True
        chunk += 1
    return new, False


# ---------------------------------------------------------------------------- one piece


@dataclass
class Continuation:
    primer_seconds: float
    seconds: float  # span of the continuation that is compared
    primer: np.ndarray  # primer tokens (no separator)
    new: np.ndarray  # generated tokens
    joined: pretty_midi.PrettyMIDI  # primer + continuation, decoded
    original: pretty_midi.PrettyMIDI  # the whole input piece, decoded (10 ms quantised)
    unprimed: pretty_midi.PrettyMIDI | None  # the baseline sample, decoded
    reached: bool  # the continuation has the requested length
    repairs: dict[str, int]
    histograms: dict[str, np.ndarray] = field(default_factory=dict)

    def distances(self) -> dict[str, tuple[float, float] | None]:
        """(total variation, Jensen-Shannon) of each histogram to the real continuation's;
        None where a histogram is empty."""
        real = self.histograms["real"]
        out: dict[str, tuple[float, float] | None] = {}
        for name, h in self.histograms.items():
            if name != "real":
                ok = real.sum() > 0 and h.sum() > 0
                out[name] = (total_variation(h, real), jensen_shannon(h, real)) if ok else None
        return out


def read_piece(path: str | Path) -> np.ndarray:
    """The tokens of a MIDI file, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    try:
        pm = midi.load_midi(path)
    except Exception as error:  # mido and pretty_midi raise many kinds on bad bytes
        raise InputError(f"{path}: not a readable MIDI file ({type(error).__name__}: {error})"
                         ) from None
    tokens = midi.encode(pm)
    if len(tokens) == 0:
        raise InputError(f"{path}: no notes")
    return tokens


def continue_piece(model, tokens: np.ndarray, primer_seconds: float, *,
                   n_tokens: int | None = None, seconds: float | None = None,
                   temperature: float = 1.0, top_p: float | None = None, seed: int | None = None,
                   baseline: bool = True, max_tokens: int = 20000, name: str = "the piece"
                   ) -> Continuation:
    """Cut the piece after primer_seconds, continue it by n_tokens or by `seconds`, and
    histogram the generated continuation, the real one over the same span, an unprimed
    sample over that span (if baseline) and the primer."""
    cut = _steps(primer_seconds)
    if duration_steps(tokens) <= cut:
        raise InputError(f"{name}: lasts {duration_steps(tokens) * midi.STEP:.2f} s, not longer "
                         f"than --seconds {primer_seconds:g}: nothing left to continue from")
    primer, _ = clip_tokens(tokens, cut)
    sep = np.array([midi.SEP], dtype=np.int64)
    pace = max(1.0, len(primer) / primer_seconds)  # tokens per second of this piece
    new, reached = generate(model, np.concatenate([sep, primer]), n_tokens=n_tokens,
                            seconds=seconds, temperature=temperature, top_p=top_p, seed=seed,
                            tokens_per_second=pace, max_tokens=max_tokens)
    span = duration_steps(new) * midi.STEP
    joined, repairs = midi.decode(np.concatenate([primer, new]))
    original, _ = midi.decode(tokens)
    start, end = cut * midi.STEP, cut * midi.STEP + span
    result = Continuation(cut * midi.STEP, span, primer, new, joined, original, None, reached,
                          repairs)
    result.histograms = {"real": pitch_class_histogram(original, start, end),
                         "model": pitch_class_histogram(joined, start, end)}
    if baseline and span > 0:
        base, _ = generate(model, sep, seconds=span, temperature=temperature, top_p=top_p,
                           seed=seed, tokens_per_second=pace, max_tokens=max_tokens)
        result.unprimed, _ = midi.decode(base)
        result.histograms["unprimed"] = pitch_class_histogram(result.unprimed, 0.0, span)
    result.histograms["primer"] = pitch_class_histogram(original, 0.0, start)
    return result


# ---------------------------------------------------------------------------- the picture


def _roll(ax, pm: pretty_midi.PrettyMIDI, split: float, colours: tuple[str, str]) -> None:
    from matplotlib.collections import LineCollection

    notes = [n for inst in pm.instruments if not inst.is_drum for n in inst.notes]
    for before, colour in ((True, colours[0]), (False, colours[1])):
        segments = [((n.start, n.pitch), (n.end, n.pitch)) for n in notes
                    if (_onset_step(n.start) < _steps(split)) == before]
        if segments:
            ax.add_collection(LineCollection(segments, linewidths=2.5, colors=colour))


def write_png(result: Continuation, path: str | Path, title: str = "") -> None:
    """Piano rolls of primer + continuation and of the original over the same span (primer
    shaded), and the pitch-class histograms of the continuations; written atomically."""
    from matplotlib.figure import Figure

    n, d = result.primer_seconds, result.seconds
    fig = Figure(figsize=(14, 7), dpi=100)
    grid = fig.add_gridspec(2, 2, width_ratios=(4, 1.3))
    top = fig.add_subplot(grid[0, 0])
    bottom = fig.add_subplot(grid[1, 0], sharex=top, sharey=top)
    hist = fig.add_subplot(grid[:, 1])
    _roll(top, result.joined, n, ("tab:blue", "tab:orange"))
    _roll(bottom, result.original, n, ("tab:blue", "tab:green"))
    pitches = [p for pm in (result.joined, result.original) for p, _, _ in _notes(pm, 0, n + d)]
    for ax, label in ((top, "primer + model continuation"),
                      (bottom, "original piece (real continuation)")):
        ax.axvspan(0, n, color="0.5", alpha=0.15, lw=0)
        ax.axvline(n, color="k", lw=1)
        ax.set_title(label, loc="left", fontsize=10)
        ax.set_ylabel("MIDI pitch")
    top.set_xlim(0, n + max(d, 0.5))
    if pitches:
        top.set_ylim(min(pitches) - 2, max(pitches) + 2)
    bottom.set_xlabel("time (s); shaded: the primer")

    colours = {"real": "tab:green", "model": "tab:orange", "unprimed": "tab:gray"}
    labels = {"real": "real continuation", "model": "model continuation",
              "unprimed": "unprimed sample"}
    shown = [k for k in colours if k in result.histograms and result.histograms[k].sum() > 0]
    width = 0.8 / max(1, len(shown))
    for i, key in enumerate(shown):
        h = result.histograms[key]
        hist.barh(np.arange(12) + (i - (len(shown) - 1) / 2) * width, h / h.sum(), width,
                  color=colours[key], label=labels[key])
    hist.set_yticks(range(12), PITCH_CLASSES)
    hist.set_xlabel("share of sounding time")
    hist.set_title(f"pitch classes, {n:g}-{n + d:g} s", fontsize=10)
    hist.legend(fontsize=8, loc="lower right")
    dist = result.distances()
    parts = [f"{k} {v[0]:.2f}" for k, v in dist.items() if v is not None and k != "primer"]
    fig.suptitle((title + "   " if title else "") + "total variation to the real continuation: "
                 + ", ".join(parts))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


# ---------------------------------------------------------------------------- command line


def _length(text: str) -> tuple[str, float]:
    """'500' -> 500 tokens, '12s' / '12.5s' -> 12.5 seconds."""
    try:
        if text.endswith("s"):
            value = float(text[:-1])
            if value > 0 and math.isfinite(value):
                return "seconds", value
        elif int(text) > 0:
            return "tokens", int(text)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r}: give a token count (500) or seconds (12s)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="trained midi model directory")
    ap.add_argument("--primer", type=Path, required=True, help="MIDI file to continue")
    ap.add_argument("--seconds", type=float, required=True,
                    help="primer length: continue the piece from this time")
    ap.add_argument("--length", type=_length, default=None,
                    help="continuation length: tokens (500) or seconds (10s); default: "
                         "as many seconds as --seconds")
    ap.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    ap.add_argument("--top-p", type=float, default=None, help="nucleus sampling")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--out", type=Path, required=True, help="joined .mid to write")
    ap.add_argument("--png", type=Path, default=None, help="picture (default: --out with .png)")
    ap.add_argument("--max-tokens", type=int, default=20000,
                    help="stop a seconds-long continuation after this many tokens")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the unprimed sample (halves the sampling time)")
    ap.add_argument("--force", action="store_true", help="overwrite existing outputs")
    return ap.parse_args(argv)


def _check_numbers(args: argparse.Namespace) -> None:
    if not (math.isfinite(args.seconds) and args.seconds > 0):
        raise InputError(f"--seconds {args.seconds:g}: must be a positive number of seconds")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise InputError(f"--temperature {args.temperature:g}: must be >= 0")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise InputError(f"--top-p {args.top_p:g}: must be in (0, 1]")
    if args.max_tokens < 1:
        raise InputError(f"--max-tokens {args.max_tokens}: must be at least 1")


def load_events_model(path: Path):  # noqa: ANN201
    """The model of a run directory, if it reads the event vocabulary (what this app cuts
    and counts in); a clean error for a duration-vocabulary model."""
    model, domain, _ = load_run(path, "midi")
    vocabulary = domain.config().get("vocabulary", "events")
    if vocabulary != "events":
        raise InputError(f"{path}: a model of the {vocabulary} vocabulary; this app reads "
                         "the event vocabulary (train with --vocabulary events)")
    return model


def run(args: argparse.Namespace) -> Continuation:
    _check_numbers(args)
    tokens = read_piece(args.primer)
    png = args.png or args.out.with_suffix(".png")
    if png.resolve() == args.out.resolve():
        raise InputError(f"{png}: --png and --out are the same file")
    check_output(args.out, args.force)
    check_output(png, args.force)
    model = load_events_model(args.model)
    kind, value = args.length or ("seconds", args.seconds)
    result = continue_piece(model, tokens, args.seconds,
                            n_tokens=int(value) if kind == "tokens" else None,
                            seconds=value if kind == "seconds" else None,
                            temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                            baseline=not args.no_baseline, max_tokens=args.max_tokens,
                            name=str(args.primer))
    midi.write_midi(result.joined, args.out)
    write_png(result, png, title=args.primer.name)
    report(result, args)
    print(f"wrote {args.out} and {png}")
    return result


def report(result: Continuation, args: argparse.Namespace) -> None:
    n, d = result.primer_seconds, result.seconds
    print(f"primer: {args.primer} up to {n:g} s ({len(result.primer):,} tokens, "
          f"{len(_notes(result.original, 0, n))} notes)")
    print(f"continuation: {len(result.new):,} tokens, {d:.2f} s "
          f"({len(_notes(result.joined, n, n + d))} notes)")
    if not result.reached:
        print(f"warning: stopped at --max-tokens {args.max_tokens} before the requested length")
    real_end = result.original.get_end_time()
    if real_end < n + d:
        print(f"note: the original piece ends at {real_end:.2f} s, before the span's end "
              f"({n + d:.2f} s)")
    fixed = {k: v for k, v in result.repairs.items() if v and k != "unclosed_note"}
    if fixed:
        print(f"decoder repairs: {fixed}")
    for name, pm in (("real", result.original), ("model", result.joined)):
        s = midi.stats(window(pm, n, n + d))
        print(f"  {name:>8} continuation: {s['notes']} notes, mean polyphony "
              f"{s['mean_polyphony']:.2f}, pitch-class entropy {s['pitch_class_entropy']:.2f} bits")
    print(f"pitch-class distance to the real continuation ({n:g}-{n + d:.2f} s), "
          "duration-weighted 12-bin histograms:")
    print(f"  {'':40} {'total var.':>10} {'Jensen-Sh.':>10}")
    names = {"model": "model continuation (primed)",
             "unprimed": "baseline: unprimed sample, same seed",
             "primer": "baseline: the primer's own histogram"}
    for key, dist in result.distances().items():
        shown = f"{dist[0]:>10.3f} {dist[1]:>10.3f}" if dist else f"{'n/a (no notes)':>21}"
        print(f"  {names[key]:40} {shown}")


def main(argv: list[str] | None = None) -> int:
    return report_errors(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
