"""Fixed-order Markov baselines at every order, on the split training uses.

    python benchmarks/markov_baseline.py dna ../shared/data/dna/ecoli_k12_mg1655.fna.gz
    python benchmarks/markov_baseline.py midi ../shared/data/midi/bach --orders 0 1

Each record's last `--holdout` fraction ("tail", DNA) or the last fraction of the records
("records", MIDI) is held out, as `seqformer train` splits. `seqformer train` itself fits
the order it picks on the training split alone and prints it beside the model's figure
(seqformer/pipeline/markov.py, the one implementation); this table shows every order's
held-out bits per token, and the order `train` would pick.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from seqformer.domains import get_domain
from seqformer.pipeline.markov import MAX_TABLE, MarkovModel, fit_baseline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("domain", choices=["dna", "midi"])
    ap.add_argument("inputs", nargs="+", type=Path)
    ap.add_argument("--holdout", type=float, default=0.1)
    ap.add_argument("--orders", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5, 6, 7, 8])
    args = ap.parse_args()
    domain = get_domain(args.domain)
    records = [r.tokens.astype(np.int64) for p in args.inputs for r in domain.read(p)]
    if args.domain == "dna":
        cut = [len(r) - int(round(len(r) * args.holdout)) for r in records]
        train = [r[:c] for r, c in zip(records, cut)]
        held = [r[c:] for r, c in zip(records, cut)]
    else:
        n_val = max(1, int(round(len(records) * args.holdout)))
        train, held = records[:-n_val], records[-n_val:]
    alphabet = np.unique(np.concatenate(train))
    n_train, n_held = sum(map(len, train)), sum(map(len, held))
    print(f"{len(records)} records; {n_train:,} training and {n_held:,} held-out tokens; "
          f"{len(alphabet)} symbols in training")
    print("| order k | held-out bits/token |\n|---:|---:|")
    for k in args.orders:
        if (len(alphabet) + 1) ** (k + 1) > MAX_TABLE:
            print(f"| {k} | (table too large) |")
            continue
        total, n = MarkovModel.fit(train, k, alphabet).bits(held)
        print(f"| {k} | {total / n:.4f} |")
    chosen, _ = fit_baseline(train)
    print(f"(`train` picks order {chosen.order}; uniform over the symbols seen: "
          f"{math.log2(len(alphabet)):.4f})")


if __name__ == "__main__":
    main()
