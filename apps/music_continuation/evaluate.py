"""Continue many held-out pieces with several seeds and compare the pitch-class distance of
the model's continuations to the real ones against baselines.

    python apps/music_continuation/evaluate.py --model runs/bach-cpu \
        --midi /work/shared/data/midi/bach --heldout --seconds 10 --length 10 \
        --seeds 0 1 2 --top-p 0.95 --out results.tsv --png summary.png

For every piece longer than --seconds + --length and every seed: cut the piece after
--seconds, continue it for --length seconds, and measure the total variation and
Jensen-Shannon distances between duration-weighted pitch-class histograms (see
continue_piece.py) of the real continuation and
  model     the model's continuation of the primer,
  unprimed  an unprimed sample of the same model over the same span (a random sample),
  other     the real continuation of another evaluated piece over the same span,
  primer    the primer itself (no model: the piece's own first seconds).
--heldout keeps only the pieces the model's training run held out for validation.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from continue_piece import (
    continue_piece,
    duration_steps,
    load_events_model,
    pitch_class_histogram,
    read_piece,
)

from seqformer import InputError, atomic_path, check_output, heldout_ids, midi, report_errors

CONDITIONS = ("model", "unprimed", "other", "primer")


def midi_files(paths: list[Path]) -> list[tuple[str, Path]]:
    """(id, file) the way `seqformer train midi` names records: a directory's files,
    recursively and sorted, by their path under it without the suffix; a file by its stem."""
    out = []
    for root in paths:
        if root.is_file():
            out.append((root.stem, root))
        elif root.is_dir():
            files = sorted(p for p in root.rglob("*")
                           if p.suffix.lower() in (".mid", ".midi") and p.is_file())
            out += [(p.relative_to(root).with_suffix("").as_posix(), p) for p in files]
        else:
            raise InputError(f"{root}: no such file or directory")
    if not out:
        raise InputError(f"{', '.join(map(str, paths))}: no .mid or .midi files")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="trained midi model directory")
    ap.add_argument("--midi", type=Path, nargs="+", required=True, help="pieces: files or dirs")
    ap.add_argument("--heldout", action="store_true",
                    help="only the pieces --model's training run held out")
    ap.add_argument("--seconds", type=float, default=10.0, help="primer length (s)")
    ap.add_argument("--length", type=float, default=10.0, help="continuation length (s)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=None)
    ap.add_argument("--limit", type=int, default=None, help="at most this many pieces")
    ap.add_argument("--out", type=Path, required=True, help="per piece and seed results (TSV)")
    ap.add_argument("--png", type=Path, default=None, help="summary picture")
    ap.add_argument("--force", action="store_true", help="overwrite existing outputs")
    return ap.parse_args(argv)


def _summary_png(rows: list[dict], path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4.5), dpi=100)
    ax = fig.subplots()
    pieces = sorted({r["piece"] for r in rows})
    rng = np.random.default_rng(0)
    for x, cond in enumerate(CONDITIONS):
        # one dot per piece (its mean over seeds), so every piece weighs the same
        means = [np.mean([r[f"tv_{cond}"] for r in rows if r["piece"] == p]) for p in pieces]
        ax.scatter(x + rng.uniform(-0.15, 0.15, len(means)), means, s=12, alpha=0.6)
        ax.hlines(np.mean(means), x - 0.3, x + 0.3, color="k", lw=2)
    ax.set_xticks(range(len(CONDITIONS)), ["model continuation", "unprimed sample",
                                           "another piece", "the primer"])
    ax.set_ylabel("total variation to the real continuation")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def run(args: argparse.Namespace) -> list[dict]:
    if args.seconds <= 0 or args.length <= 0:
        raise InputError("--seconds and --length must be positive")
    check_output(args.out, args.force)
    if args.png:
        check_output(args.png, args.force)
    model = load_events_model(args.model)
    pieces = midi_files(args.midi)
    if args.heldout:
        keep = set(heldout_ids(args.model))
        pieces = [(i, p) for i, p in pieces if i in keep]
        if not pieces:
            raise InputError(f"{', '.join(map(str, args.midi))}: none of the {len(keep)} pieces "
                             f"{args.model} held out is there")
    span = args.seconds + args.length
    tokens = {}
    for piece, path in pieces:
        t = read_piece(path)
        # the real continuation must cover the whole span, or the histograms compare
        # different lengths of music
        if duration_steps(t) * midi.STEP <= span:
            print(f"skip {piece}: shorter than {span:g} s")
        else:
            tokens[piece] = t
    names = list(tokens)[:args.limit]
    if len(names) < 2:
        raise InputError(f"need at least 2 pieces longer than {span:g} s, found {len(names)}")
    print(f"{len(names)} pieces x {len(args.seeds)} seeds, primer {args.seconds:g} s, "
          f"continuation {args.length:g} s", flush=True)

    rows, t0 = [], time.perf_counter()
    for i, piece in enumerate(names):
        # the real continuation of the next piece is the "another piece" baseline
        other = midi.decode(tokens[names[(i + 1) % len(names)]])[0]
        other_h = pitch_class_histogram(other, args.seconds, span)
        for s in args.seeds:
            seed = 1000 * i + s  # distinct unprimed samples for every piece
            r = continue_piece(model, tokens[piece], args.seconds, seconds=args.length,
                               temperature=args.temperature, top_p=args.top_p, seed=seed,
                               name=piece)
            r.histograms["other"] = other_h
            row = {"piece": piece, "seed": seed}
            for cond, dist in r.distances().items():
                row[f"tv_{cond}"], row[f"js_{cond}"] = dist if dist else (math.nan, math.nan)
            rows.append(row)
        print(f"[{i + 1}/{len(names)}] {piece}: model TV "
              + " ".join(f"{r['tv_model']:.2f}" for r in rows[-len(args.seeds):])
              + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)

    columns = ["piece", "seed"] + [f"{m}_{c}" for c in CONDITIONS for m in ("tv", "js")]
    with atomic_path(args.out) as tmp:
        tmp.write_text("\t".join(columns) + "\n" + "".join(
            "\t".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in columns)
            + "\n" for r in rows))
    report(rows, args)
    if args.png:
        _summary_png(rows, args.png, f"{args.model}: {len(names)} pieces x {len(args.seeds)} "
                     f"seeds, primer {args.seconds:g} s, continuation {args.length:g} s")
    print(f"wrote {args.out}" + (f" and {args.png}" if args.png else "")
          + f" in {time.perf_counter() - t0:.0f} s")
    return rows


def report(rows: list[dict], args: argparse.Namespace) -> None:
    pieces = sorted({r["piece"] for r in rows})
    print(f"distance to the real continuation: mean over {len(pieces)} pieces (each the mean "
          "of its seeds) +- standard error over pieces")
    print(f"  {'':22} {'total variation':>18} {'Jensen-Shannon':>18}")
    for cond in CONDITIONS:
        cells = []
        for metric in ("tv", "js"):
            per_piece = np.array([np.nanmean([r[f"{metric}_{cond}"] for r in rows
                                              if r["piece"] == p]) for p in pieces])
            per_piece = per_piece[np.isfinite(per_piece)]
            sem = per_piece.std(ddof=1) / math.sqrt(len(per_piece)) if len(per_piece) > 1 else 0
            cells.append(f"{per_piece.mean():.3f} +- {sem:.3f}")
        print(f"  {cond:22} {cells[0]:>18} {cells[1]:>18}")
    for cond in ("unprimed", "other", "primer"):
        wins = sum(r["tv_model"] < r[f"tv_{cond}"] for r in rows)
        print(f"model closer than {cond}: {wins} of {len(rows)} continuations (total variation)")


def main(argv: list[str] | None = None) -> int:
    return report_errors(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
