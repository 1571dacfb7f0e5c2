"""Peak memory of tokenizing an E. coli-sized genome (4.6 Mbp, one record) from FASTA and
from GenBank into a token store, each in a fresh process, side by side.

    python benchmarks/annotated_memory.py [--fasta ../shared/data/dna/ecoli_k12_mg1655.fna.gz]

The GenBank file is written from the FASTA by Biopython (with one CDS feature per 1,000
bases, about 4,600, so the feature table is not empty). Peak RSS is the child's
ru_maxrss, which includes the Python interpreter, numpy and Biopython themselves; the
baseline row imports them and reads nothing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "dna"

CHILD = """
import resource, sys, time
from pathlib import Path
import Bio.SeqIO  # noqa: F401 (in every row, so the rows differ only by the reading)
from seqformer.domains import get_domain
from seqformer.pipeline.token_store import TokenStore
t = time.perf_counter()
if sys.argv[1] != "-":
    store = TokenStore.build(Path(sys.argv[2]), get_domain("dna"), [Path(sys.argv[1])])
    n = store.total
else:
    n = 0
print(n, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def measure(path: str, store: Path) -> tuple[int, float, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, path, str(store)], check=True,
                         capture_output=True, text=True).stdout.split()
    return int(out[0]), float(out[1]), int(out[2]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fasta", type=Path, default=SHARED / "ecoli_k12_mg1655.fna.gz")
    args = ap.parse_args()
    if not args.fasta.is_file():
        sys.exit(f"{args.fasta}: not found")
    from Bio import SeqIO
    from Bio.SeqFeature import FeatureLocation, SeqFeature

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        import gzip

        with gzip.open(args.fasta, "rt") as handle:
            rec = next(SeqIO.parse(handle, "fasta"))
        rec.annotations["molecule_type"] = "DNA"
        rec.features = [SeqFeature(FeatureLocation(i, i + 900, strand=1), type="CDS",
                                   qualifiers={"locus_tag": [f"b{i // 1000:05d}"]})
                        for i in range(0, len(rec) - 900, 1000)]
        gb = tmp / "ecoli.gb"
        started = time.perf_counter()
        SeqIO.write(rec, gb, "genbank")
        print(f"wrote {gb.stat().st_size / 2**20:.1f} MiB GenBank with {len(rec.features):,} "
              f"features in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        del rec
        rows = [("imports only", *measure("-", tmp / "none")),
                ("FASTA (gzip)", *measure(str(args.fasta), tmp / "fa")),
                ("GenBank (plain)", *measure(str(gb), tmp / "gb"))]
    print("| input | tokens | seconds | peak RSS (MiB) |")
    print("|---|---:|---:|---:|")
    for name, n, seconds, rss in rows:
        print(f"| {name} | {n:,} | {seconds:.1f} | {rss:,.0f} |")


if __name__ == "__main__":
    main()
