"""Peak RSS of training and embedding against genome size: memory should stay at the token
store's page cache plus a constant, not grow with the FASTA.

    python benchmarks/bench_whole_chromosome.py ../shared/data/dna/yeast_s288c.fna.gz \
        --copies 6 --workdir /tmp/chrom

Builds one-record FASTA files of 1/8 and all of `copies` x the input genome (real
sequence, concatenated), then, each in a fresh process under GNU time: `seqformer train
dna` for a few steps of a tiny model (tokenization included) and `seqformer embed dna` on
a record of 1 and 8 Mbp.
"""

from __future__ import annotations

import argparse
import gzip
import os
import subprocess
import sys
import time
from pathlib import Path

TINY = ["model.d_model=32", "model.n_layers=2", "model.attn=[local, lsh]", "model.n_heads=2",
        "model.d_ff=64", "model.max_seq_len=4096", "model.bucket_size=64", "data.seq_len=4096",
        "train.val_every=1000", "data.val_windows=2", "train.batch_size=2"]


def write_fasta(path: Path, genome: bytes, n_bases: int) -> None:
    with open(path, "wb") as f:
        f.write(b">chrSynth\n")
        done = 0
        while done < n_bases:
            part = genome[:n_bases - done]
            for i in range(0, len(part), 80):
                f.write(part[i:i + 80] + b"\n")
            done += len(part)


def measured(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS MiB, seconds) of a command in a fresh process."""
    t = time.perf_counter()
    out = subprocess.run(["/usr/bin/time", "-f", "MAXRSS %M", *cmd], capture_output=True,
                         text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode != 0:
        sys.exit(out.stderr[-2000:])
    rss = next(int(line.split()[1]) for line in out.stderr.splitlines()
               if line.startswith("MAXRSS"))
    return rss / 1024, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("genome", type=Path, help="FASTA(.gz) whose sequence is concatenated")
    ap.add_argument("--copies", type=int, default=6)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/whole-chromosome"))
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if args.genome.suffix == ".gz" else open
    with opener(args.genome, "rb") as f:
        genome = b"".join(line.strip() for line in f if not line.startswith(b">"))
    total = len(genome) * args.copies
    seqformer = [sys.executable, "-m", "seqformer"]
    rows = []
    for n in (total // 8, total):
        fasta = args.workdir / f"chr_{n}.fa"
        write_fasta(fasta, genome, n)
        run = args.workdir / f"run_{n}"
        rss, secs = measured([*seqformer, "train", "dna", "--fasta", str(fasta), "--out",
                              str(run), "--force", "--max-steps", "3", *TINY])
        rows.append(("train 3 steps (tokenize + windows)", n, rss, secs))
    model = args.workdir / f"run_{total}"
    for n in (1_000_000, 8_000_000):
        fasta = args.workdir / f"rec_{n}.fa"
        write_fasta(fasta, genome, n)
        out = args.workdir / f"emb_{n}.h5"
        out.unlink(missing_ok=True)
        rss, secs = measured([*seqformer, "embed", "dna", "--model", str(model), "--fasta",
                              str(fasta), "--out", str(out), "--pool", "mean"])
        rows.append(("embed one record (float16 HDF5)", n, rss, secs))
    print("| job | bases in one record | peak RSS MiB | wall s |\n|---|---:|---:|---:|")
    for job, n, rss, secs in rows:
        print(f"| {job} | {n:,} | {rss:,.0f} | {secs:.1f} |")


if __name__ == "__main__":
    main()
