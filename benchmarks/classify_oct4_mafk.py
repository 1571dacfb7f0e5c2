"""Oct4 against MafK ChIP-seq peaks (../shared/data/dna/classify, 200 bp, ~3,900 each):
`seqformer finetune` variants one after another, each timed, then one table of their
validation metrics (the same seeded 10% of each class held out in every variant).

    python benchmarks/classify_oct4_mafk.py --out runs/bench-classify [--variants max,mean,lm]

Variants:
  max   the default preset (configs/classify-tiny.yaml): from scratch, max pooling
  mean  the same with classify.pool=mean
  lm    a language model pretrained on the E. coli genome (configs/dna-quick.yaml, 5
        minutes), then the classifier from it (its 10-minute share of the budget)
Never run two benchmarks at once on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "dna"
OCT4, MAFK = SHARED / "classify" / "oct4_train.fa.gz", SHARED / "classify" / "mafk_train.fa.gz"
ECOLI = SHARED / "ecoli_k12_mg1655.fna.gz"
CLASSES = ["--classes", f"oct4={OCT4}", f"mafk={MAFK}"]


def seqformer(*args: object) -> float:
    """Run the command line as a user would; its wall time in minutes."""
    started = time.monotonic()
    subprocess.run(["seqformer", *map(str, args)], check=True)
    return (time.monotonic() - started) / 60


def variant(name: str, out: Path) -> dict:
    run = out / name
    if name == "max":
        minutes = seqformer("finetune", "dna", *CLASSES, "--out", run)
    elif name == "mean":
        minutes = seqformer("finetune", "dna", *CLASSES, "--out", run, "classify.pool=mean")
    elif name == "lm":
        lm = out / "lm-ecoli"
        minutes = seqformer("train", "dna", "--fasta", ECOLI, "--out", lm,
                            "train.max_minutes=5", "train.max_steps=10000")
        minutes += seqformer("finetune", "dna", *CLASSES, "--model", lm, "--out", run,
                             "train.max_minutes=9")
    else:
        raise SystemExit(f"unknown variant {name!r}")
    m = json.loads((run / "metrics.json").read_text())
    return {"variant": name, "minutes": minutes, "steps": m["steps"], **m["validation"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--variants", default="max,mean,lm")
    args = ap.parse_args()
    if not OCT4.is_file():
        sys.exit(f"needs the shared data at {SHARED}")
    rows = [variant(name, args.out) for name in args.variants.split(",")]
    print("| variant | wall time (min) | steps | accuracy | MCC | AUROC | n |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['minutes']:.1f} | {r['steps']} | {r['accuracy']:.4f} | "
              f"{r['mcc']:.4f} | {r['auroc']:.4f} | {r['n']} |")


if __name__ == "__main__":
    main()
