"""Codon usage, baselines and metrics for protein -> coding-DNA design.

Conventions (every function here follows them):

- A CDS is upper-case A/C/G/T, a whole number of codons, starting with its start codon and
  normally ending with its stop codon; a protein has no '*'. Codon i of a CDS encodes
  residue i of its protein; the start codon encodes the first residue (M) whatever its
  bases (ATG, GTG, TTG read as M at the start, as in Biopython's `cds=True`).
- Synonymous families are those of the standard bacterial code (NCBI table 11, from
  Biopython's CodonTable).
- Codon usage counts the sense codons at positions 1..n-1 of the training CDSs under
  their amino acid; the start codon (position 0) and the stop codon are counted apart
  (`start`, `stop`), since a GTG start encodes M, not V.

Metrics:

- `codon_identity(design, native)`: the fraction of the protein's codons (start codon
  included, stop codon excluded) that are identical. Counting sense codons only matches
  the literature's figures (e.g. ~52% for a most-frequent-codon baseline on E. coli in
  CodonTransformer's comparisons); the stop codon is one more codon out of ~300 and would
  only add noise. `include_stop=True` counts it too.
- `cai(cds, weights)`: Sharp & Li's codon adaptation index, the geometric mean of the
  relative adaptiveness w = f / max f (within each synonymous family, from the training
  genes) over the codons at positions 1..n-1, leaving out the single-codon families (ATG
  Met, TGG Trp) and stop codons. The start codon is left out too: it encodes M whatever it
  is. A codon never seen in training gets f = 0.5 (Sharp & Li's convention), not w = 0.
- `gc_content(seq)`: the fraction of G or C bases in the whole sequence given.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from Bio.Data import CodonTable
from Bio.Seq import Seq

TABLE = 11
_CODE = CodonTable.unambiguous_dna_by_id[TABLE]
CODON_TO_AA: dict[str, str] = dict(_CODE.forward_table)
STOP_CODONS: tuple[str, ...] = tuple(sorted(_CODE.stop_codons))  # TAA TAG TGA
START_CODONS: tuple[str, ...] = ("ATG", "GTG", "TTG")  # E. coli's (Prodigal's) starts
AMINO_ACIDS = "".join(sorted(set(CODON_TO_AA.values())))
SYNONYMS: dict[str, tuple[str, ...]] = {
    aa: tuple(sorted(c for c, a in CODON_TO_AA.items() if a == aa)) for aa in AMINO_ACIDS}
# codons left out of CAI: single-codon families (ATG, TGG)
_CAI_SKIP = frozenset(c for aa, cs in SYNONYMS.items() if len(cs) == 1 for c in cs)


def codons(seq: str) -> list[str]:
    """The codons of `seq` (its length must be a multiple of 3)."""
    if len(seq) % 3:
        raise ValueError(f"length {len(seq)} is not a multiple of 3")
    return [seq[i:i + 3] for i in range(0, len(seq), 3)]


def most_frequent(candidates: Iterable[str], counts: Mapping[str, int]) -> str:
    """The candidate codon counted most often (ties: the alphabetically first)."""
    return max(candidates, key=lambda c: (counts[c], [-ord(b) for b in c]))


@dataclass
class CodonUsage:
    """Codon counts of a set of training CDSs (see the module's conventions)."""

    sense: Counter = field(default_factory=Counter)  # codon -> count, positions 1..n-1
    start: Counter = field(default_factory=Counter)
    stop: Counter = field(default_factory=Counter)
    genes: int = 0

    @classmethod
    def from_cds(cls, cds_seqs: Iterable[str]) -> CodonUsage:
        usage = cls()
        for cds in cds_seqs:
            cs = codons(cds.upper())
            if not cs:
                continue
            usage.genes += 1
            usage.start[cs[0]] += 1
            body = cs[1:]
            if body and body[-1] in STOP_CODONS:
                usage.stop[body.pop()] += 1
            usage.sense.update(c for c in body if c in CODON_TO_AA)
        return usage

    def frequencies(self, aa: str) -> dict[str, float]:
        """Each codon of `aa`'s family -> its share of the family's training count
        (uniform when the family was never seen)."""
        family = SYNONYMS[aa]
        total = sum(self.sense[c] for c in family)
        if total == 0:
            return {c: 1 / len(family) for c in family}
        return {c: self.sense[c] / total for c in family}

    def weights(self) -> dict[str, float]:
        """Sharp & Li's relative adaptiveness w = f / max f of every sense codon (an unseen
        codon counts 0.5)."""
        w = {}
        for family in SYNONYMS.values():
            counts = {c: self.sense[c] or 0.5 for c in family}
            top = max(counts.values())
            w.update({c: n / top for c, n in counts.items()})
        return w

    def top_codon(self, aa: str) -> str:
        """The family's most frequent codon (ties: alphabetical)."""
        return most_frequent(SYNONYMS[aa], self.sense)

    def top_start(self) -> str:
        return max(START_CODONS, key=lambda c: (self.start[c], c == "ATG"))

    def top_stop(self) -> str:
        return max(STOP_CODONS, key=lambda c: (self.stop[c], c == "TAA"))


def _check_protein(protein: str) -> str:
    protein = protein.upper()
    bad = set(protein) - set(AMINO_ACIDS)
    if bad:
        raise ValueError(f"not amino acids of table {TABLE}: {''.join(sorted(bad))!r} "
                         "(a protein here has no '*')")
    if not protein:
        raise ValueError("empty protein")
    return protein


def most_frequent_codon_design(protein: str, usage: CodonUsage) -> str:
    """The baseline: the most frequent start codon, then each residue's most frequent codon
    in the training genes, then the most frequent stop codon."""
    protein = _check_protein(protein)
    return (usage.top_start() + "".join(usage.top_codon(aa) for aa in protein[1:])
            + usage.top_stop())


@dataclass
class NeighbourUsage:
    """Sense-codon counts per window of residues around each residue of the training genes
    (`width` residues each side, '^' before the first residue and '$' after the last; every
    narrower window is counted too): the most frequent codon in a residue's context. Width
    1, (previous, residue, next), is a stronger baseline than the most frequent codon and
    an estimate of what a design gains from local context alone.

    `classes` (one label per gene, optional) splits the counts by gene: ceiling.py labels
    each gene with its own GC3 band to measure what knowing the gene's codon bias would
    be worth."""

    width: int = 1
    counts: dict[tuple, Counter] = field(default_factory=dict)

    @classmethod
    def from_pairs(cls, proteins: Iterable[str], cds_seqs: Iterable[str], width: int = 1,
                   classes: Iterable | None = None) -> NeighbourUsage:
        usage = cls(width)
        labels = iter(classes) if classes is not None else None
        for protein, cds in zip(proteins, cds_seqs):
            label = next(labels) if labels is not None else None
            cs = codons(cds.upper())
            for i, window in enumerate(usage.contexts(protein), start=1):
                for w in range(width + 1):
                    key = (label, window[width - w:width + w + 1])
                    usage.counts.setdefault(key, Counter())[cs[i]] += 1
        return usage

    def contexts(self, protein: str) -> list[str]:
        """The windows of residues 1..n-1 (the start codon's is not used)."""
        w = self.width
        ends = "^" * w + protein + "$" * w
        return [ends[i:i + 2 * w + 1] for i in range(1, len(protein))]

    def top_codon(self, window: str, fallback: CodonUsage, min_count: int = 5,
                  label=None) -> str:
        """The most frequent codon of the widest window (centred on the residue) seen at
        least min_count times; the residue's overall one when none was."""
        w = self.width
        for narrower in range(w, -1, -1):
            seen = self.counts.get((label, window[w - narrower:w + narrower + 1]))
            if seen is not None and sum(seen.values()) >= min_count:
                return most_frequent(seen, seen)
        return fallback.top_codon(window[w])

    def log_prior(self, protein: str, i: int, min_count: int = 5, alpha: float = 1.0
                  ) -> dict[str, float]:
        """{codon: log frequency} over residue i's synonyms (1 <= i < len(protein)) in the
        widest window around it seen at least min_count times with one of them, add-alpha
        smoothed; the baseline's counts, as a distribution for decoding to weigh by."""
        w = self.width
        window = ("^" * w + protein + "$" * w)[i:i + 2 * w + 1]
        synonyms = SYNONYMS[protein[i]]
        for narrower in range(w, -1, -1):
            seen = self.counts.get((None, window[w - narrower:w + narrower + 1]), Counter())
            if sum(seen[c] for c in synonyms) >= min_count:
                break
        total = sum(seen[c] for c in synonyms) + alpha * len(synonyms)
        return {c: math.log((seen[c] + alpha) / total) for c in synonyms}


def neighbour_codon_design(protein: str, usage: CodonUsage, neighbours: NeighbourUsage,
                           label=None) -> str:
    """The most frequent start codon, then each residue's most frequent codon given the
    residues around it, then the most frequent stop codon."""
    protein = _check_protein(protein)
    body = "".join(neighbours.top_codon(window, usage, label=label)
                   for window in neighbours.contexts(protein))
    return usage.top_start() + body + usage.top_stop()


def sampled_codon_design(protein: str, usage: CodonUsage, rng: random.Random,
                         uniform: bool = False) -> str:
    """A baseline that draws each codon at random: with the training frequencies (start and
    stop codons too), or uniformly among the synonyms (`uniform=True`; the start codon
    stays the most frequent one, the stop codon is uniform)."""
    protein = _check_protein(protein)

    def draw(counter_or_freqs: Mapping[str, float], options) -> str:
        weights = [1.0] * len(options) if uniform else [counter_or_freqs[c] for c in options]
        if sum(weights) == 0:
            weights = [1.0] * len(options)
        return rng.choices(options, weights)[0]

    start = usage.top_start() if uniform else draw(usage.start, START_CODONS)
    body = "".join(draw(usage.frequencies(aa), SYNONYMS[aa]) for aa in protein[1:])
    return start + body + draw(usage.stop, STOP_CODONS)


def codon_identity(design: str, native: str, include_stop: bool = False) -> float:
    """The fraction of codons that are identical, over the protein's codons (start codon
    included); when `native` ends with a stop codon, that last position counts only with
    `include_stop`. The two sequences must have the same number of codons."""
    a, b = codons(design.upper()), codons(native.upper())
    if len(a) != len(b):
        raise ValueError(f"{len(a)} codons against {len(b)}")
    if not include_stop and b and b[-1] in STOP_CODONS:
        a, b = a[:-1], b[:-1]
    if not a:
        raise ValueError("no codons to compare")
    return sum(x == y for x, y in zip(a, b)) / len(a)


def cai(cds: str, weights: Mapping[str, float]) -> float:
    """Sharp & Li's codon adaptation index of `cds` (see the module's conventions): the
    geometric mean of w over its codons after the start codon, leaving out ATG, TGG, stop
    codons and codons with bases other than A/C/G/T. NaN when no codon is left."""
    logs = [math.log(weights[c]) for c in codons(cds.upper())[1:]
            if c in CODON_TO_AA and c not in _CAI_SKIP]
    return math.exp(sum(logs) / len(logs)) if logs else math.nan


def gc_content(seq: str) -> float:
    """The fraction of the bases that are G or C."""
    seq = seq.upper()
    if not seq:
        return math.nan
    return (seq.count("G") + seq.count("C")) / len(seq)


def translates_to(cds: str, protein: str) -> bool:
    """Whether `cds` is a complete gene (Biopython, table 11, cds=True) encoding `protein`."""
    try:
        return str(Seq(cds.upper()).translate(table=TABLE, cds=True)) == protein.upper()
    except Exception:  # TranslationError: bad start, no stop, internal stop, length
        return False


GC_BANDS = (0.45, 0.50, 0.55)  # the held-out natives: 56, 78, 224 and 51 genes


def gc_band(gc: float, edges: Sequence[float] = GC_BANDS) -> str:
    """The band of `edges` holding `gc`, e.g. '<45%', '45-50%', '>=55%'."""
    pct = [round(100 * e) for e in edges]
    i = bisect.bisect_right(edges, gc)
    if i == 0:
        return f"<{pct[0]}%"
    return f">={pct[-1]}%" if i == len(edges) else f"{pct[i - 1]}-{pct[i]}%"


def gc_bands(edges: Sequence[float] = GC_BANDS) -> list[str]:
    """The bands of `edges`, in increasing GC."""
    return [gc_band(x, edges) for x in (-1.0, *edges)]


def identity_by_gc_band(designs: Mapping[str, str], natives: Mapping[str, str],
                        edges: Sequence[float] = GC_BANDS) -> dict[str, dict[str, float]]:
    """{band of the native gene's GC content: {"n": genes, "codon_identity": their mean}},
    bands in increasing GC (designs with the natives' number of codons only)."""
    return _identity_by_band(((gc_content(natives[g]), codon_identity(d, natives[g]))
                              for g, d in designs.items() if len(d) == len(natives[g])),
                             edges)


def _identity_by_band(gc_and_identity: Iterable[tuple[float, float]],
                      edges: Sequence[float] = GC_BANDS) -> dict[str, dict[str, float]]:
    """identity_by_gc_band from each gene's (native GC, identity)."""
    per_band: dict[str, list[float]] = {band: [] for band in gc_bands(edges)}
    for gc, identity in gc_and_identity:
        per_band[gc_band(gc, edges)].append(identity)
    return {band: {"n": len(v), "codon_identity": sum(v) / len(v) if v else math.nan}
            for band, v in per_band.items()}


def evaluate(designs: Mapping[str, str], natives: Mapping[str, str], usage: CodonUsage
             ) -> dict[str, float]:
    """Means over the designed genes (every id of `designs` must be in `natives`):

    - codon_identity: per-gene codon identity to the native CDS (sense codons), averaged
      over genes; codon_identity_pooled: identical codons / all codons, over all genes;
    - cai_design, cai_native: CAI with the weights of `usage`;
    - gc_design, gc_native: GC content of the whole CDS (stop codon included);
    - translates: the fraction of designs that are complete genes encoding the native's
      protein (1.0 for any design made under `constraint.SynonymousCodons`);
    - codon_identity_gc<band>: codon_identity over the genes whose native GC content is in
      that band of GC_BANDS (`band_columns()`), nan for an empty band; genes_gc<band>:
      how many genes that is.

    Identity is only counted for designs with the native's number of codons; `n` is the
    number of genes, `n_same_length` how many had that length."""
    missing = set(designs) - set(natives)
    if missing:
        raise KeyError(f"{len(missing)} design ids not among the natives, e.g. "
                       f"{sorted(missing)[0]}")
    if not designs:
        raise ValueError("no designs")
    w = usage.weights()
    ident, same, total = [], 0, 0
    banded = []  # (native GC, identity) of the genes whose identity counts
    out: dict[str, list[float]] = {k: [] for k in ("cai_design", "cai_native", "gc_design",
                                                   "gc_native", "translates")}
    for gid, design in designs.items():
        native = natives[gid]
        protein = str(Seq(native).translate(table=TABLE, cds=True))
        out["gc_native"].append(gc_content(native))
        if len(design) == len(native):
            ident.append(codon_identity(design, native))
            banded.append((out["gc_native"][-1], ident[-1]))
            total += len(protein)
            same += round(ident[-1] * len(protein))
        out["cai_design"].append(cai(design, w) if len(design) % 3 == 0 else math.nan)
        out["cai_native"].append(cai(native, w))
        out["gc_design"].append(gc_content(design))
        out["translates"].append(float(translates_to(design, protein)))
    result: dict[str, float] = {"n": len(designs), "n_same_length": len(ident)}
    result["codon_identity"] = sum(ident) / len(ident) if ident else math.nan
    result["codon_identity_pooled"] = same / total if total else math.nan
    for key, values in out.items():
        finite = [v for v in values if not math.isnan(v)]
        result[key] = sum(finite) / len(finite) if finite else math.nan
    for band, r in _identity_by_band(banded).items():
        result[f"codon_identity_gc{band}"] = r["codon_identity"]
        result[f"genes_gc{band}"] = r["n"]
    return result


def band_columns(prefix: str = "codon_identity_gc") -> list[str]:
    """evaluate's per-band keys of one kind (identity; "genes_gc": gene counts), in
    increasing GC."""
    return [f"{prefix}{band}" for band in gc_bands()]
