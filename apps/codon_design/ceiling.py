"""How much codon identity the protein can give: counting designs with wider contexts, and
designs that are told something about the native gene that a design never knows.

    python apps/codon_design/ceiling.py [--data apps/codon_design/data] [--widths 0 1 2 3]

Each design picks, for every residue, the codon most frequent in the training genes in its
context (`NeighbourUsage`, backing off to narrower windows seen fewer than 5 times):

- width w: the residue and w residues each side (width 1 is baseline.py's neighbours);
- oracle GC3 k-tiles, width w: the same counts split by the gene's GC content at third
  codon positions (k bands cut at the training genes' quantiles), each held-out gene
  designed with the counts of its *own native* band. No design can know that band; it
  estimates what inferring the gene's codon bias from its protein (the encoder's job)
  could add to local context.
- paralog: where the held-out protein aligns to its closest training protein (local
  alignment, BLOSUM62) at `--paralog-identity` or more and a residue is the same in both,
  the training gene's codon there; the width-1 design elsewhere. A design can do this (it
  reads only the training genes); it measures how much identity the split's remaining
  paralogs could give.
"""

from __future__ import annotations

import argparse
import bisect
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from Bio import Align
from Bio.Align import substitution_matrices

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline import COLUMNS, band_table, table  # noqa: E402
from codons import CodonUsage, NeighbourUsage, codons, evaluate, neighbour_codon_design  # noqa: E402
from prepare import DEFAULT_OUT, load_pairs  # noqa: E402


def gc3(cds: str) -> float:
    """GC at the third position of the sense codons after the start codon."""
    body = codons(cds.upper())[1:-1]
    return sum(c[2] in "GC" for c in body) / max(1, len(body))


PARALOG_K = 4  # a paralog candidate shares k-mers of this length with the protein


def paralog_design(protein: str, base: str, train: list[tuple[str, str]],
                   index: dict[str, set[int]], min_identity: float = 0.9) -> str:
    """`base` (a design of `protein`) with the codons of the training gene whose protein
    shares the most k-mers with `protein` (of the three sharing most, the best local
    alignment) where the alignment is at least `min_identity` identical and the residues
    agree; `index`: `kmer_index` of the training proteins."""
    k = PARALOG_K
    shared = Counter(j for i in range(len(protein) - k + 1)
                     for j in index.get(protein[i:i + k], ()))
    best = None
    for j, _ in shared.most_common(3):
        alignment = _ALIGNER.align(protein, train[j][0])[0]
        if best is None or alignment.score > best[0].score:
            best = (alignment, j)
    if best is None:
        return base
    alignment, j = best
    other, other_codons = train[j][0], codons(train[j][1])
    pairs = [(x, y) for (a0, a1), (b0, b1) in zip(*alignment.aligned)
             for x, y in zip(range(a0, a1), range(b0, b1))]
    if sum(protein[x] == other[y] for x, y in pairs) < min_identity * len(pairs):
        return base
    design = codons(base)
    for x, y in pairs:
        if x > 0 and protein[x] == other[y]:  # the start codon stays the design's
            design[x] = other_codons[y]
    return "".join(design)


def kmer_index(proteins: Sequence[str]) -> dict[str, set[int]]:
    """PARALOG_K-mer -> the indices of the proteins holding it."""
    index: dict[str, set[int]] = defaultdict(set)
    for j, p in enumerate(proteins):
        for i in range(len(p) - PARALOG_K + 1):
            index[p[i:i + PARALOG_K]].add(j)
    return index


_ALIGNER = Align.PairwiseAligner(mode="local", open_gap_score=-10, extend_gap_score=-0.5,
                                 substitution_matrix=substitution_matrices.load("BLOSUM62"))


def ceiling(data_dir: str | Path = DEFAULT_OUT, widths: Sequence[int] = (0, 1, 2, 3),
            oracle_bands: Sequence[int] = (3, 5), oracle_width: int = 1,
            heldout: str = "heldout", train_split: str = "train",
            paralog_identity: float | None = 0.9) -> dict[str, dict[str, float]]:
    """{design name: evaluate(...)} on the genes of `heldout`, counts from `train_split`."""
    train_proteins, train_cds = load_pairs(data_dir, train_split)
    proteins, natives = load_pairs(data_dir, heldout)
    usage = CodonUsage.from_cds(train_cds.values())
    train = [(p, train_cds[k]) for k, p in train_proteins.items()]
    results = {}
    for w in widths:
        counts = NeighbourUsage.from_pairs(*zip(*train), width=w)
        designs = {k: neighbour_codon_design(p, usage, counts) for k, p in proteins.items()}
        results[f"width {w}"] = evaluate(designs, natives, usage)
    ranked = sorted(gc3(c) for _, c in train)
    for k in oracle_bands:
        edges = [ranked[len(ranked) * i // k] for i in range(1, k)]

        def band(cds: str, edges=edges) -> int:
            return bisect.bisect_right(edges, gc3(cds))

        counts = NeighbourUsage.from_pairs(*zip(*train), width=oracle_width,
                                           classes=[band(c) for _, c in train])
        designs = {g: neighbour_codon_design(p, usage, counts, label=band(natives[g]))
                   for g, p in proteins.items()}
        results[f"oracle GC3/{k}"] = evaluate(designs, natives, usage)
    if paralog_identity is not None:
        counts = NeighbourUsage.from_pairs(*zip(*train), width=1)
        index = kmer_index([p for p, _ in train])
        designs = {g: paralog_design(p, neighbour_codon_design(p, usage, counts), train, index,
                                     paralog_identity) for g, p in proteins.items()}
        results[f"paralog >= {paralog_identity:g}"] = evaluate(designs, natives, usage)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_OUT), help="prepare.py's output folder")
    parser.add_argument("--widths", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--oracle-bands", type=int, nargs="*", default=[3, 5])
    parser.add_argument("--oracle-width", type=int, default=1)
    parser.add_argument("--paralog-identity", type=float, default=0.9,
                        help="the paralog design's least protein identity (-1: no such row)")
    args = parser.parse_args(argv)
    results = ceiling(args.data, args.widths, args.oracle_bands, args.oracle_width,
                      paralog_identity=None if args.paralog_identity < 0 else args.paralog_identity)
    print(f"{next(iter(results.values()))['n']} heldout genes, counts from train "
          f"(oracle rows: width {args.oracle_width})")
    print(table(results, COLUMNS, "design"))
    print(band_table(results, "design"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
