"""Listen-free quality signals: samples of a trained MIDI model against held-out pieces.

    python benchmarks/music_quality.py runs/bach-cpu ../shared/data/midi/bach --samples 4

Held out = the last `--holdout` fraction of the pieces, the split `train midi` uses. For
both groups it prints the mean of the domain's statistics (notes, duration, pitch range,
mean polyphony, pitch-class entropy) and, for the samples, the decoder's repair counts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from seqformer.pipeline.inference import sample_tokens
from seqformer.pipeline.run_dir import load_run


def summarize(rows: list[dict]) -> dict:
    out = {}
    for key in ("notes", "duration", "mean_polyphony", "pitch_class_entropy"):
        out[key] = float(np.mean([r[key] for r in rows]))
    spans = [r["pitch_range"][1] - r["pitch_range"][0] for r in rows if r.get("pitch_range")]
    out["pitch_span"] = float(np.mean(spans)) if spans else 0.0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("pieces", type=Path)
    ap.add_argument("--holdout", type=float, default=0.1)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--length", type=int, default=1500)
    ap.add_argument("--temperature", type=float, default=1.0)
    args = ap.parse_args()
    model, domain, _ = load_run(args.model, "midi")
    records = list(domain.read(args.pieces))
    n_val = max(1, int(round(len(records) * args.holdout)))
    held = [summarize([domain.stats(domain.decode(r.tokens)[0])]) | {"id": r.id}
            for r in records[-n_val:]]
    sampled, repairs = [], {}
    for seed in range(args.samples):
        new, rate = sample_tokens(model, np.array([domain.sep_id]), args.length,
                                  args.temperature, seed=seed, allowed=domain.generatable())
        pm, fixed = domain.decode(new)
        sampled.append(summarize([domain.stats(pm)]))
        for k, v in fixed.items():
            repairs[k] = repairs.get(k, 0) + v
    print(f"{len(held)} held-out pieces; {args.samples} samples of {args.length} tokens "
          f"(temperature {args.temperature}, {rate:.0f} tokens/s)")
    print("| | notes | seconds | pitch span | polyphony | pitch-class entropy (bits) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, rows in (("held-out pieces", held), ("samples", sampled)):
        m = {k: np.mean([r[k] for r in rows]) for k in rows[0] if k != "id"}
        print(f"| {name} | {m['notes']:.0f} | {m['duration']:.1f} | {m['pitch_span']:.1f} | "
              f"{m['mean_polyphony']:.2f} | {m['pitch_class_entropy']:.3f} |")
    print(f"decoder repairs over all samples: {repairs}")


if __name__ == "__main__":
    main()
