"""Design coding sequences with a trained protein -> DNA encoder-decoder, and score them.

    python apps/codon_design/design.py --model runs/codon [--split heldout] \
        [--temperature 0 | --beams K] [--out runs/codon/designs]

Each protein of the split is decoded under `SynonymousCodons` (every design translates
back to exactly its protein), for a model over codons weighted by the neighbours
baseline's codon frequencies (`--neighbour-prior W`; 0, the model alone, by default:
the preset's model does better alone), then compared with its native gene and with the
most-frequent-codon and neighbours baselines (`codons.evaluate`: codon identity, CAI, GC,
identity by the native's GC band). The model's own bits per base on the native genes come
too (`score seq2seq`'s likelihood, without any constraint).
Writes designs.fa and metrics.json into --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline import band_table, baseline_designs, training_usage  # noqa: E402
from codons import NeighbourUsage, evaluate  # noqa: E402
from constraint import SynonymousCodons  # noqa: E402
from prepare import DEFAULT_OUT, load_pairs  # noqa: E402

from seqformer import (  # noqa: E402
    Record,
    get_domain,
    load_seq2seq,
    target_log_likelihoods,
    translate,
)
from seqformer.pipeline.seq2seq import pad_batch  # noqa: E402


def marginals(model_dir: str | Path, proteins: list[str], batch_size: int = 16
              ) -> dict[str, np.ndarray]:
    """{protein: (len + 1, V) log-probabilities of codon i given the protein} from a model
    over codons that does not read its own target (`seq2seq.read_target: false`): its
    distribution at a position is the same whatever was written before, so one forward
    pass gives every position's."""
    model, protein_domain, target, _ = load_seq2seq(model_dir)
    if target.name != "cds" or getattr(model, "read_target", True):
        raise ValueError(f"{model_dir}: not a model over codons trained with "
                         "seq2seq.read_target false")
    out = {}
    for k in range(0, len(proteins), batch_size):
        batch = proteins[k:k + batch_size]
        src, lengths = pad_batch([protein_domain.encode(p) for p in batch],
                                 protein_domain.pad_id)
        unread = torch.zeros(len(batch), src.shape[1] + 1, dtype=torch.long)
        with torch.no_grad():
            logp = torch.log_softmax(model(src, unread, src_lengths=lengths).float(), -1)
        out.update({p: logp[b, :len(p) + 1].numpy() for b, p in enumerate(batch)})
    return out


def design(model_dir: str | Path, proteins: dict[str, str], temperature: float = 0.0,
           seed: int = 0, batch_size: int = 16, beams: int = 1,
           neighbours: NeighbourUsage | None = None, prior_weight: float = 1.0
           ) -> dict[str, str]:
    """{id: designed CDS (stop codon included)} for {id: protein}. beams > 1: each design
    is beam search's likeliest CDS (temperature unused). neighbours (a model over codons
    only): decode from the model's distribution times the neighbours baseline's codon
    frequencies to the power prior_weight (a product of experts)."""
    model, protein_domain, target, _ = load_seq2seq(model_dir)
    if neighbours is not None and target.name != "cds":
        raise ValueError(f"{model_dir}: a model over {target.name} writes bases; the "
                         "neighbours prior weighs codons (--neighbour-prior 0)")

    def prior(protein: str, i: int) -> dict[str, float]:
        return {c: prior_weight * w for c, w in neighbours.log_prior(protein, i).items()}

    ids = list(proteins)
    sources = [protein_domain.encode(proteins[i]) for i in ids]
    longest = SynonymousCodons(list(proteins.values()), domain=target.name).max_steps
    targets = translate(model, sources, target.sep_id, longest, temperature, seed=seed,
                        constraint=lambda rows: SynonymousCodons(
                            [protein_domain.decode(r) for r in rows], domain=target.name,
                            prior=prior if neighbours is not None else None),
                        allowed=target.generatable(), batch_size=batch_size,
                        num_beams=beams)
    return {i: target.decode(t) for i, t in zip(ids, targets)}


def native_bits(model_dir: str | Path, proteins: dict[str, str], natives: dict[str, str]
                ) -> float:
    """The model's bits per base of the native genes given their proteins (the closing
    separator counted as one more token per gene, for a model over bases or over codons)."""
    model, protein_domain, target, _ = load_seq2seq(model_dir)
    pairs = [(protein_domain.encode(proteins[i]), target.encode(natives[i])) for i in proteins]
    lls = target_log_likelihoods(model, pairs, target.sep_id)
    bases = sum(len(natives[i]) + 1 for i in proteins)
    return float(-sum(ll.sum() for ll in lls) / np.log(2) / bases)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a `train seq2seq` protein -> dna run")
    ap.add_argument("--data", default=str(DEFAULT_OUT))
    ap.add_argument("--split", default="heldout")
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    ap.add_argument("--beams", type=int, default=1,
                    help="> 1: beam search for the likeliest CDS")
    ap.add_argument("--batch-size", type=int, default=16, help="proteins decoded together")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="only the first N proteins")
    ap.add_argument("--neighbour-prior", type=float, default=0.0, metavar="W",
                    help="weigh the model's codons by the neighbours baseline's frequencies "
                    "to the power W (models over codons); 0: the model alone")
    ap.add_argument("--out", default=None, help="default: <model>/designs")
    args = ap.parse_args(argv)
    out = Path(args.out or Path(args.model) / "designs")
    out.mkdir(parents=True, exist_ok=True)
    proteins, natives = load_pairs(args.data, args.split)
    if args.limit:
        proteins = dict(list(proteins.items())[:args.limit])
    natives = {k: natives[k] for k in proteins}
    usage, neighbours = training_usage(args.data)
    t0 = time.perf_counter()
    try:
        designs = design(args.model, proteins, args.temperature, args.seed, args.batch_size,
                         args.beams, neighbours if args.neighbour_prior else None,
                         args.neighbour_prior)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    minutes = (time.perf_counter() - t0) / 60
    baseline = baseline_designs(proteins, usage, neighbours)
    results = {"model": evaluate(designs, natives, usage),
               **{name: evaluate(baseline[name], natives, usage)
                  for name in ("most_frequent", "neighbours")},
               "model_bits_per_base_on_natives": native_bits(args.model, proteins, natives),
               "genes": len(proteins), "temperature": args.temperature, "beams": args.beams,
               "neighbour_prior": args.neighbour_prior,
               "design_minutes": minutes}
    dna = get_domain("dna")
    dna.write([Record(k, dna.encode(v)) for k, v in designs.items()], out / "designs.fa")
    (out / "metrics.json").write_text(json.dumps(results, indent=1))
    cols = ("codon_identity", "cai_design", "cai_native", "gc_design", "gc_native",
            "translates")
    how = f"{args.beams} beams" if args.beams > 1 else f"temperature {args.temperature:g}"
    how += f", neighbour prior {args.neighbour_prior:g}"
    print(f"{len(proteins)} {args.split} genes, designed in {minutes:.1f} min ({how})")
    print(f"{'':<14}" + "".join(f"{c:>16}" for c in cols))
    names = ("model", "most_frequent", "neighbours")
    for name in names:
        print(f"{name:<14}" + "".join(f"{results[name][c]:>16.4f}" for c in cols))
    print(band_table({name: results[name] for name in names}, "design"))
    print(f"model bits/base on the native genes: {results['model_bits_per_base_on_natives']:.4f}")
    print(f"wrote {out / 'designs.fa'} and {out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
