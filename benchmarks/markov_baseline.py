"""Fixed-order Markov baselines for the learning checks, on the split training uses.

    python benchmarks/markov_baseline.py dna ../shared/data/dna/ecoli_k12_mg1655.fna.gz
    python benchmarks/markov_baseline.py midi ../shared/data/midi/bach --orders 0 1

Each record's last `--holdout` fraction ("tail", DNA) or the last fraction of the records
("records", MIDI) is held out, exactly as `seqformer train` splits. An order-k model is
fitted on the training part (add-alpha smoothing) and its held-out bits per token are
printed for each k. Tokens come from seqformer's own domain readers.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from seqformer.domains import get_domain


def kmer_codes(seq: np.ndarray, k: int, base: int) -> np.ndarray:
    """Integer code of the k tokens before each position >= k."""
    code = np.zeros(len(seq) - k, dtype=np.int64)
    for j in range(k):
        code = code * base + seq[j:len(seq) - k + j]
    return code


def markov_bits(train: list[np.ndarray], held: list[np.ndarray], k: int, vocab: int,
                alpha: float) -> float:
    """Held-out bits per token of an order-k model; the first k tokens of each held-out
    part are scored with the longest context they have (orders k-1 .. 0)."""
    total_bits, total_n = 0.0, 0
    tables = {}
    for order in range(k + 1):
        counts = np.zeros((vocab ** order, vocab), dtype=np.float64)
        for s in train:
            if len(s) > order:
                np.add.at(counts, (kmer_codes(s, order, vocab), s[order:]), 1)
        probs = (counts + alpha) / (counts.sum(1, keepdims=True) + alpha * vocab)
        tables[order] = np.log2(probs)
    for s in held:
        for i in range(min(k, len(s))):  # warm-up positions: shorter contexts
            ctx = kmer_codes(s[:i + 1], i, vocab)[-1:] if i else np.zeros(1, dtype=np.int64)
            total_bits -= tables[i][ctx[0], s[i]]
            total_n += 1
        if len(s) > k:
            total_bits -= tables[k][kmer_codes(s, k, vocab), s[k:]].sum()
            total_n += len(s) - k
    return total_bits / max(1, total_n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("domain", choices=["dna", "midi"])
    ap.add_argument("inputs", nargs="+", type=Path)
    ap.add_argument("--holdout", type=float, default=0.1)
    ap.add_argument("--orders", type=int, nargs="+", default=[2, 4, 5, 6, 7, 8])
    ap.add_argument("--alpha", type=float, default=0.5)
    args = ap.parse_args()
    domain = get_domain(args.domain)
    records = [r.tokens.astype(np.int64) for p in args.inputs for r in domain.read(p)]
    if args.domain == "dna":
        # the four bases and N are the only symbols: recode to 0..4 for small tables
        recode = np.full(domain.vocab_size, 4, dtype=np.int64)
        for i, name in enumerate("ACGT"):
            recode[domain.tokens.index(name)] = i
        records = [recode[r] for r in records]
        vocab = 5
        cut = [len(r) - int(round(len(r) * args.holdout)) for r in records]
        train = [r[:c] for r, c in zip(records, cut)]
        held = [r[c:] for r, c in zip(records, cut)]
    else:
        vocab = domain.vocab_size
        n_val = max(1, int(round(len(records) * args.holdout)))
        train, held = records[:-n_val], records[-n_val:]
    n_train, n_held = sum(map(len, train)), sum(map(len, held))
    print(f"{len(records)} records; {n_train:,} training and {n_held:,} held-out tokens")
    print("| order k | held-out bits/token |\n|---:|---:|")
    for k in args.orders:
        if vocab ** (k + 1) > 5e8:
            print(f"| {k} | (table too large) |")
            continue
        print(f"| {k} | {markov_bits(train, held, k, vocab, args.alpha):.4f} |")
    print(f"(uniform over the vocabulary: {math.log2(vocab):.4f})")


if __name__ == "__main__":
    main()
