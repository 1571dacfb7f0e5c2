"""Baselines for protein -> coding-DNA design on the held-out E. coli genes.

    python apps/codon_design/baseline.py [--data apps/codon_design/data] [--split heldout]

Codon usage is counted on the training CDSs (`train_cds.fa[.gz]`); each held-out protein
is then designed three ways and scored against its native CDS with `codons.evaluate`:

- most_frequent: each residue's most frequent training codon (the usual baseline);
- neighbours: each residue's most frequent training codon given its previous and next
  residues (backing off to most_frequent for contexts seen fewer than 5 times): what
  local context alone gives;
- sampled: codons drawn with their training frequencies (seeded);
- uniform: codons drawn uniformly among the synonyms (seeded).

A model is worth something when it beats the most-frequent baseline's codon identity while
keeping CAI and GC near the natives'.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from codons import (  # noqa: E402
    CodonUsage,
    NeighbourUsage,
    band_columns,
    evaluate,
    most_frequent_codon_design,
    neighbour_codon_design,
    sampled_codon_design,
)
from prepare import DEFAULT_OUT, load_pairs  # noqa: E402

COLUMNS = ("codon_identity", "codon_identity_pooled", "cai_design", "cai_native",
           "gc_design", "gc_native", "translates")


def training_usage(data_dir: str | Path = DEFAULT_OUT, train_split: str = "train"
                   ) -> tuple[CodonUsage, NeighbourUsage]:
    """The training genes' codon usage, overall and around each residue."""
    train_proteins, train_cds = load_pairs(data_dir, train_split)
    return (CodonUsage.from_cds(train_cds.values()),
            NeighbourUsage.from_pairs(train_proteins.values(),
                                      (train_cds[k] for k in train_proteins)))


def baseline_designs(proteins: dict[str, str], usage: CodonUsage, neighbours: NeighbourUsage,
                     seed: int = 0) -> dict[str, dict[str, str]]:
    """{baseline name: {id: design}} for `proteins`, from the training usage."""
    rng = random.Random(seed)
    return {
        "most_frequent": {k: most_frequent_codon_design(p, usage) for k, p in proteins.items()},
        "neighbours": {k: neighbour_codon_design(p, usage, neighbours)
                       for k, p in proteins.items()},
        "sampled": {k: sampled_codon_design(p, usage, rng) for k, p in proteins.items()},
        "uniform": {k: sampled_codon_design(p, usage, rng, uniform=True)
                    for k, p in proteins.items()},
    }


def baselines(data_dir: str | Path = DEFAULT_OUT, split: str = "heldout", seed: int = 0,
              train_split: str = "train") -> dict[str, dict[str, float]]:
    """{baseline name: evaluate(...)} for the proteins of `split`."""
    proteins, natives = load_pairs(data_dir, split)
    usage, neighbours = training_usage(data_dir, train_split)
    designs = baseline_designs(proteins, usage, neighbours, seed)
    return {name: evaluate(d, natives, usage) for name, d in designs.items()}


def table(results: dict[str, dict[str, float]], columns: Sequence[str] = COLUMNS,
          first: str = "baseline", strip: str = "") -> str:
    """One row per entry of `results`, one column per key (its name less `strip`)."""
    names = [c.removeprefix(strip) for c in columns]
    widths = [max(len(n), 6) + 2 for n in names]
    lines = [f"{first:<14}" + "".join(f"{n:>{w}}" for n, w in zip(names, widths))]
    for name, r in results.items():
        lines.append(f"{name:<14}" + "".join(f"{r[c]:>{w}.4f}" for c, w in zip(columns, widths)))
    return "\n".join(lines)


def band_table(results: dict[str, dict[str, float]], first: str = "baseline") -> str:
    """Codon identity per band of the native genes' GC content."""
    some = next(iter(results.values()))
    genes = ", ".join(str(int(some[c])) for c in band_columns("genes_gc"))
    return (f"codon identity by the native gene's GC content (genes: {genes})\n"
            + table(results, band_columns(), first, strip="codon_identity_gc"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_OUT), help="prepare.py's output folder")
    parser.add_argument("--split", default="heldout",
                        help="heldout | train | sample_heldout | sample_train")
    parser.add_argument("--train-split", default="train",
                        help="the split codon usage is counted on (sample_train for the "
                             "bundled sample)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    results = baselines(args.data, args.split, args.seed, args.train_split)
    n = next(iter(results.values()))["n"]
    print(f"{n} {args.split} genes, codon usage from {args.train_split}")
    print(table(results))
    print(band_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
