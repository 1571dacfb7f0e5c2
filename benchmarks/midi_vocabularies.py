"""The two MIDI vocabularies on the same held-out pieces, in bits per second of music.

Bits per token do not compare across vocabularies (a note is a different number of tokens
in each), bits per second do: each model's total negative log-likelihood of a held-out
piece, [sep] + its tokens, over the piece's length in seconds (the same for both, from
the file). The duration vocabulary codes durations in bins (within 3.5%), so it scores a
slightly coarser description of the same notes.

    python benchmarks/midi_vocabularies.py --models runs/bach-events runs/bach-durations \\
        --reference ../shared/data/midi/bach

Held-out pieces: the last `--holdout` fraction of the files under --reference, the split
`train midi` makes with `data.split: records` (the default holdout 0.1).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from seqformer.pipeline.inference import token_log_likelihoods
from seqformer.pipeline.run_dir import load_run


def bits_per_second(model_dir: Path, reference: Path, holdout: float) -> dict:
    model, domain, cfg = load_run(model_dir, "midi")
    records = list(domain.read(reference))
    held = records[-max(1, int(round(len(records) * holdout))):]
    nats = tokens = seconds = 0.0
    for rec in held:
        nats -= token_log_likelihoods(model, rec.tokens, domain.sep_id,
                                      model.cfg.max_seq_len).sum()
        tokens += len(rec.tokens)
        seconds += rec.meta["duration"]
    bits = nats / np.log(2)
    return {"model": str(model_dir), "vocabulary": domain.config().get("vocabulary"),
            "pieces": len(held), "tokens": int(tokens), "seconds": round(seconds, 1),
            "bits_per_token": bits / tokens, "bits_per_second": bits / seconds,
            "tokens_per_second_of_music": tokens / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, nargs="+", required=True)
    ap.add_argument("--reference", type=Path, required=True)
    ap.add_argument("--holdout", type=float, default=0.1)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    rows = [bits_per_second(m, args.reference, args.holdout) for m in args.models]
    print("| model | vocabulary | pieces | tokens | seconds | tokens per second of music "
          "| bits/token | **bits/second** |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['vocabulary']} | {r['pieces']} | {r['tokens']:,} | "
              f"{r['seconds']:,.1f} | {r['tokens_per_second_of_music']:.2f} | "
              f"{r['bits_per_token']:.4f} | **{r['bits_per_second']:.3f}** |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
