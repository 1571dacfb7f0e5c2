"""Protein -> coding-DNA pairs for E. coli: call genes with Prodigal, keep the complete ones,
split them 90/10 by gene.

    pip install -e '.[codon]'        # pyrodigal, this app's only extra dependency
    python apps/codon_design/prepare.py

Genes are called with pyrodigal (Prodigal's maintained bindings) in single-genome mode: the
gene finder is trained on the genome itself, then run on it. Each predicted gene's
nucleotide sequence is cut from the genome with Biopython (reverse-complemented on the minus
strand) and kept only when it is complete:

- Prodigal found both ends (not `partial_begin` / `partial_end`, i.e. not run off a contig
  edge) and it starts with ATG, GTG or TTG (E. coli's start codons, the ones
  `constraint.SynonymousCodons` allows);
- its length is a multiple of 3, it ends with a stop codon and has no internal stop, so
  Biopython's `translate(table=11, cds=True)` succeeds (the start codon reads as M);
- that translation equals pyrodigal's own translation of the gene;
- it has at most --max-codons sense codons (the protein's length; default 700, to keep
  training on a CPU feasible; the number dropped is reported). With `--long crop` the
  longer genes are not dropped but their first --max-codons codons are added to the
  training split (ids `..._first<N>`, no stop codon); they never enter the held-out split,
  whose genes stay whole.

Genes are split 90/10 at random (--seed). Genes with identical proteins (IS elements,
duplicated genes such as tufA/tufB) always land on the same side, so that no held-out
protein was seen in training. Four FASTA files are written to --out:

    train_protein.fa  train_cds.fa  heldout_protein.fa  heldout_cds.fa

with ids `ecoli_<begin>_<end>_<strand>` (1-based, inclusive genome coordinates of the
whole CDS, begin < end on both strands; strand `+` or `-`), the same in the protein and CDS
files and in the same order (genome order). A protein has no trailing '*'; a CDS ends with
its stop codon. When the four files hold more than 1 MB together they are written gzipped
(`.fa.gz`, with a fixed timestamp so that the bytes are reproducible). The shortest genes
of each split (--sample, default 40 train and 10 held-out) are also written uncompressed as
`sample_train_protein.fa` etc.: the small data set the tests and CI use.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from Bio import SeqIO
from Bio.Seq import Seq

APP = Path(__file__).resolve().parent
REPO = APP.parents[1]
DEFAULT_GENOME = REPO.parent / "shared" / "data" / "dna" / "ecoli_k12_mg1655.fna.gz"
DEFAULT_OUT = APP / "data"
SPLITS = ("train", "heldout")
KINDS = ("protein", "cds")
START_CODONS = ("ATG", "GTG", "TTG")
TABLE = 11
GZIP_ABOVE = 1_000_000  # bytes, all four files together
LINE_WIDTH = 60


@dataclass(frozen=True)
class Gene:
    """A complete coding sequence: `cds` includes its stop codon, `protein` has no '*'."""

    id: str
    begin: int  # 1-based, inclusive, begin < end on both strands
    end: int
    strand: int  # +1 or -1
    cds: str
    protein: str


def read_genome(path: str | Path, max_bases: int | None = None) -> list[tuple[str, str]]:
    """(record id, upper-case sequence) for each record of a FASTA file (plain or gzip); with
    `max_bases`, only the first that many bases of the first record(s)."""
    path = Path(path)
    with open(path, "rb") as fh:
        opener = gzip.open if fh.read(2) == b"\x1f\x8b" else open
    records = []
    left = max_bases
    with opener(path, "rt") as handle:
        for rec in SeqIO.parse(handle, "fasta"):
            seq = str(rec.seq).upper()
            if left is not None:
                seq = seq[:left]
                left -= len(seq)
            if seq:
                records.append((rec.id, seq))
            if left is not None and left <= 0:
                break
    if not records:
        raise ValueError(f"{path}: no sequence")
    return records


def call_genes(records: Sequence[tuple[str, str]], prefix: str = "ecoli"
               ) -> tuple[list[Gene], Counter]:
    """Train Prodigal on all the records (single-genome mode), call genes on each, and keep
    the complete ones. Returns the genes in genome order and a Counter of why the others
    were dropped."""
    import pyrodigal

    finder = pyrodigal.GeneFinder(meta=False)
    finder.train(*(seq for _, seq in records), translation_table=TABLE)
    genes: list[Gene] = []
    dropped: Counter = Counter()
    for rec_id, seq in records:
        tag = prefix if len(records) == 1 else f"{prefix}_{rec_id}"
        for pred in finder.find_genes(seq):
            strand = "+" if pred.strand == 1 else "-"
            gene_id = f"{tag}_{pred.begin}_{pred.end}_{strand}"
            reason = None
            if pred.partial_begin or pred.partial_end:
                reason = "partial (runs off the sequence's edge)"
            else:
                cds = Seq(seq[pred.begin - 1:pred.end])
                if pred.strand == -1:
                    cds = cds.reverse_complement()
                cds = str(cds)
                reason = check_cds(cds, pred.translate(include_stop=False))
            if reason:
                dropped[reason] += 1
                continue
            genes.append(Gene(gene_id, pred.begin, pred.end, pred.strand, cds,
                              cds_protein(cds)))
    return genes, dropped


def cds_protein(cds: str) -> str:
    """Biopython's translation of a complete CDS (table 11, cds=True): no '*'."""
    return str(Seq(cds).translate(table=TABLE, cds=True))


def check_cds(cds: str, expected_protein: str | None = None) -> str | None:
    """None when `cds` is a complete gene (start codon ATG/GTG/TTG, stop, no internal stop,
    translates with table 11 and cds=True [to `expected_protein`]); else why not."""
    if len(cds) % 3:
        return "length not a multiple of 3"
    if set(cds) - set("ACGT"):
        return "bases other than A/C/G/T"
    if cds[:3] not in START_CODONS:
        return f"start codon not {'/'.join(START_CODONS)}"
    try:
        protein = cds_protein(cds)
    except Exception:  # Biopython's TranslationError: no stop, internal stop, ...
        return "no stop codon or an internal stop"
    if expected_protein is not None and protein != expected_protein:
        return "Biopython's translation differs from pyrodigal's"
    return None


def cap_length(genes: Iterable[Gene], max_codons: int | None) -> tuple[list[Gene], int]:
    """The genes whose protein has at most `max_codons` residues (sense codons), and how
    many were dropped."""
    genes = list(genes)
    if max_codons is None:
        return genes, 0
    kept = [g for g in genes if len(g.protein) <= max_codons]
    return kept, len(genes) - len(kept)


def crop_long(genes: Iterable[Gene], max_codons: int) -> list[Gene]:
    """The genes whose protein is longer than `max_codons`, cut to their first `max_codons`
    residues and codons (so without their stop codon): id `<gene id>_first<max_codons>`,
    the coordinates still the whole gene's. Position 0 stays the start codon, which is
    what a cut elsewhere would lose."""
    return [Gene(f"{g.id}_first{max_codons}", g.begin, g.end, g.strand,
                 g.cds[:3 * max_codons], g.protein[:max_codons])
            for g in genes if len(g.protein) > max_codons]


def split_genes(genes: Sequence[Gene], heldout_fraction: float = 0.1, seed: int = 0
                ) -> tuple[list[Gene], list[Gene]]:
    """(train, heldout), each in genome order. Genes sharing a protein sequence are one
    unit: the units are shuffled with `seed` and the first ones held out until they hold
    round(heldout_fraction * len(genes)) genes (at least that many)."""
    groups: dict[str, list[Gene]] = {}
    for g in genes:
        groups.setdefault(g.protein, []).append(g)
    units = list(groups.values())
    random.Random(seed).shuffle(units)
    target = round(heldout_fraction * len(genes))
    heldout: list[Gene] = []
    train: list[Gene] = []
    for unit in units:
        (heldout if len(heldout) < target else train).extend(unit)
    order = {g.id: i for i, g in enumerate(genes)}
    return (sorted(train, key=lambda g: order[g.id]),
            sorted(heldout, key=lambda g: order[g.id]))


def fasta_text(items: Iterable[tuple[str, str]]) -> str:
    out = io.StringIO()
    for name, seq in items:
        out.write(f">{name}\n")
        for i in range(0, len(seq), LINE_WIDTH):
            out.write(seq[i:i + LINE_WIDTH] + "\n")
    return out.getvalue()


def write_text(path: Path, text: str, compress: bool) -> None:
    """Write `text` to `path` (gzip, with mtime 0 so that the bytes are reproducible)
    through a temporary file, so that a crash leaves no half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    data = text.encode()
    if compress:
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
            gz.write(data)
        data = buf.getvalue()
    tmp.write_bytes(data)
    tmp.replace(path)


def write_pairs(out: Path, splits: dict[str, Sequence[Gene]], prefix: str = "",
                compress: bool | None = None) -> dict[str, int]:
    """Write `<prefix><split>_protein.fa` and `<prefix><split>_cds.fa` for each split;
    `compress=None` gzips when the files hold more than 1 MB together. Returns
    {file name: bytes written}. A stale file of the other form (.fa vs .fa.gz) is
    removed, so that `load_pairs` finds one file per name."""
    out.mkdir(parents=True, exist_ok=True)
    texts = {}
    for split, genes in splits.items():
        texts[f"{prefix}{split}_protein"] = fasta_text((g.id, g.protein) for g in genes)
        texts[f"{prefix}{split}_cds"] = fasta_text((g.id, g.cds) for g in genes)
    if compress is None:
        compress = sum(len(t) for t in texts.values()) > GZIP_ABOVE
    sizes = {}
    for stem, text in texts.items():
        path = out / (stem + (".fa.gz" if compress else ".fa"))
        stale = out / (stem + (".fa" if compress else ".fa.gz"))
        stale.unlink(missing_ok=True)
        write_text(path, text, compress)
        sizes[path.name] = path.stat().st_size
    return sizes


def read_fasta(path: str | Path) -> dict[str, str]:
    """{id: sequence} of a FASTA file, plain or gzip, in file order."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        return {rec.id: str(rec.seq) for rec in SeqIO.parse(handle, "fasta")}


def find_file(data_dir: str | Path, stem: str) -> Path:
    """`<stem>.fa` or `<stem>.fa.gz` in `data_dir`."""
    for suffix in (".fa", ".fa.gz"):
        path = Path(data_dir) / (stem + suffix)
        if path.exists():
            return path
    raise FileNotFoundError(f"no {stem}.fa or {stem}.fa.gz in {data_dir}; "
                            "run apps/codon_design/prepare.py")


def load_pairs(data_dir: str | Path, split: str) -> tuple[dict[str, str], dict[str, str]]:
    """({id: protein}, {id: cds}) of one split ("train", "heldout", "sample_train",
    "sample_heldout"), checking that the ids pair up."""
    proteins = read_fasta(find_file(data_dir, f"{split}_protein"))
    cds = read_fasta(find_file(data_dir, f"{split}_cds"))
    if list(proteins) != list(cds):
        raise ValueError(f"{data_dir}: the ids of {split}_protein and {split}_cds differ")
    return proteins, cds


def shortest(genes: Sequence[Gene], n: int) -> list[Gene]:
    """The n shortest genes (ties: genome order), in genome order."""
    picked = sorted(range(len(genes)), key=lambda i: (len(genes[i].cds), i))[:n]
    return [genes[i] for i in sorted(picked)]


def prepare(genome: str | Path = DEFAULT_GENOME, out: str | Path = DEFAULT_OUT,
            max_codons: int | None = 700, heldout_fraction: float = 0.1, seed: int = 0,
            sample: tuple[int, int] = (40, 10), max_bases: int | None = None,
            prefix: str = "ecoli", long_genes: str = "drop", log=print) -> dict:
    """The whole preparation; returns a summary (also written to `out/summary.json`)."""
    if long_genes not in ("drop", "crop"):
        raise ValueError(f"long_genes must be 'drop' or 'crop', got {long_genes!r}")
    out = Path(out)
    t0 = time.perf_counter()
    records = read_genome(genome, max_bases)
    n_bases = sum(len(s) for _, s in records)
    log(f"read {len(records)} record(s), {n_bases:,} bases from {genome}")
    genes, dropped = call_genes(records, prefix)
    n_called = len(genes) + sum(dropped.values())
    t_call = time.perf_counter() - t0
    log(f"Prodigal called {n_called:,} genes ({t_call:.1f} s); {len(genes):,} complete")
    for reason, n in dropped.most_common():
        log(f"  dropped {n:,}: {reason}")
    called = genes
    crops = crop_long(genes, max_codons) if long_genes == "crop" and max_codons else []
    genes, n_long = cap_length(genes, max_codons)
    if max_codons is not None:
        log(f"  dropped {n_long:,} longer than {max_codons} codons; {len(genes):,} kept")
    train, heldout = split_genes(genes, heldout_fraction, seed)
    log(f"split (seed {seed}): {len(train):,} train, {len(heldout):,} held-out genes")
    if crops:
        rank = {g.id: i for i, g in enumerate(called)}
        train = sorted(train + crops, key=lambda g: rank[g.id.split("_first")[0]])
        log(f"  {len(crops):,} genes longer than {max_codons} codons: their first "
            f"{max_codons} codons added to train")
    sizes = write_pairs(out, {"train": train, "heldout": heldout})
    sample_sizes = write_pairs(out, {"train": shortest(train, sample[0]),
                                     "heldout": shortest(heldout, sample[1])},
                               prefix="sample_", compress=False)
    seconds = time.perf_counter() - t0
    for name, size in {**sizes, **sample_sizes}.items():
        log(f"  wrote {out / name} ({size:,} bytes)")
    log(f"done in {seconds:.1f} s")
    summary = {
        "genome": Path(genome).name, "bases": n_bases, "called": n_called,
        "complete": len(genes) + n_long, "dropped": dict(dropped.most_common()),
        "max_codons": max_codons, "dropped_long": n_long, "kept": len(genes),
        "long_genes": long_genes, "cropped_long": len(crops),
        "seed": seed, "train": len(train), "heldout": len(heldout),
        "train_codons": sum(len(g.cds) // 3 for g in train),
        "heldout_codons": sum(len(g.cds) // 3 for g in heldout),
        "sample": list(sample), "bytes": {**sizes, **sample_sizes},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    summary["seconds"] = round(seconds, 1)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--genome", default=str(DEFAULT_GENOME),
                        help="FASTA genome, plain or gzip (default: E. coli K-12 MG1655)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder")
    parser.add_argument("--max-codons", type=int, default=700,
                        help="drop genes with more sense codons than this (0: keep all)")
    parser.add_argument("--long", choices=("drop", "crop"), default="drop",
                        help="genes over --max-codons: drop them, or add their first "
                             "--max-codons codons to the training split")
    parser.add_argument("--heldout", type=float, default=0.1, help="held-out fraction")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample", type=int, nargs=2, default=(40, 10),
                        metavar=("TRAIN", "HELDOUT"),
                        help="shortest genes per split written as sample_*.fa")
    parser.add_argument("--max-bases", type=int, default=None,
                        help="use only the genome's first bases (quick runs, tests)")
    parser.add_argument("--prefix", default="ecoli", help="gene id prefix")
    args = parser.parse_args(argv)
    try:
        import pyrodigal  # noqa: F401
    except ImportError:
        print("prepare.py needs pyrodigal: pip install -e '.[codon]'", file=sys.stderr)
        return 2
    prepare(args.genome, args.out, args.max_codons or None, args.heldout, args.seed,
            tuple(args.sample), args.max_bases, args.prefix, args.long)
    return 0


if __name__ == "__main__":
    sys.exit(main())
