"""Does a prompt say how much its piece will repeat? For each piece: the share of repeat
positions (the last 16 tokens last seen at least 1,024 tokens back, as in
context_gain.py) inside the first --prompt tokens and over the --length tokens after
them, and how often the model's far pointer (model.copy_pointer) is right inside the
prompt, by its count of mismatches over the last 32 tokens. No sampling: this is what a
sampler that reads the prompt could learn about the piece's form
(continuation_form.py measures what it does).

    python benchmarks/form_signal.py --model runs/midi-long \\
        --midi ../shared/data/midi/planetblupi/*.mid --prompt 4096 --length 20000
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from context_gain import repeat_positions

from seqformer.core import ReformerConfig
from seqformer.core.layers.copy import pointer_hit_counts
from seqformer.pipeline.run_dir import load_run

BANDS = ((0, 0), (1, 4), (5, 15), (16, 32))  # counts of mismatches


def pointer_hits_by_band(tokens: np.ndarray, cfg: ReformerConfig) -> list[tuple[int, float]]:
    """(positions with a far-pointer candidate, share right) per band of mismatches."""
    hits, seen = pointer_hit_counts([torch.as_tensor(np.asarray(tokens, dtype=np.int64))],
                                    cfg.copy_k, cfg.vocab_size, cfg.copy_pointer,
                                    cfg.copy_pointer_k)
    out = []
    for lo, hi in BANDS:
        n, right = int(seen[lo:hi + 1].sum()), float(hits[lo:hi + 1].sum())
        out.append((n, right / n if n else np.nan))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True,
                    help="a MIDI run with the far pointer (its vocabulary and pointer)")
    ap.add_argument("--midi", type=Path, nargs="+", required=True)
    ap.add_argument("--prompt", type=int, default=4096)
    ap.add_argument("--length", type=int, default=20000)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--min-distance", type=int, default=1024)
    args = ap.parse_args()
    model, domain, _ = load_run(args.model, "midi")
    if not model.cfg.copy_pointer:
        raise SystemExit(f"{args.model}: the model has no far pointer (model.copy_pointer)")
    bands = " | ".join(f"pointer right, {lo}-{hi} mismatches (positions)" if lo != hi
                       else f"pointer right, {lo} mismatches (positions)" for lo, hi in BANDS)
    print(f"| piece | repeat share, prompt (positions {args.min_distance:,}-{args.prompt:,}) | "
          f"repeat share, next {args.length:,} tokens | {bands} |\n"
          f"|---|---:|---:|{'---:|' * len(BANDS)}")
    for path in args.midi:
        tokens = list(domain.read(path))[0].tokens[:args.prompt + args.length]
        repeat, _ = repeat_positions(tokens, args.k, args.min_distance)
        hits = pointer_hits_by_band(tokens[:args.prompt + 1], model.cfg)
        cells = " | ".join(f"{r:.1%} ({n:,})" if n else "- (0)" for n, r in hits)
        print(f"| {path.name} | {repeat[args.min_distance:args.prompt].mean():.1%} | "
              f"{repeat[args.prompt:].mean():.1%} | {cells} |")


if __name__ == "__main__":
    main()
