"""A map of a genome from a seqformer model's embeddings.

Cuts a genome into tiles (1 kbp by default; --tile 0 keeps the records of a multi-record
FASTA whole), embeds each tile with a trained DNA model (the mean of its final hidden
states), projects the tile vectors on their first two principal components (SVD in numpy)
and plots PC1 against PC2 coloured by GC content, plus PC1 and GC along the genome.
It prints how strongly each component follows GC content: a model that has learned
base composition puts it on a leading component.

    python apps/genome_map/genome_map.py --model runs/lambda \\
        --fasta data/dna/lambda_phage.fa.gz --out runs/lambda_map

writes, under --out: tiles.fa (the tiles), emb.h5 (the embeddings, the same file
`seqformer embed dna --fasta tiles.fa --pool mean` writes), pca.tsv (id, start, end, GC,
PC1, PC2) and map.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from seqformer import (
    Domain,
    InputError,
    Record,
    ReformerLM,
    atomic_path,
    check_output,
    embed_records,
    load_run,
    report_errors,
)

OUTPUTS = ("tiles.fa", "emb.h5", "pca.tsv", "map.png")


def tile_records(records: list[Record], tile: int) -> list[Record]:
    """Tiles of `tile` bases of each record, ids "<record>:<start>-<end>" (1-based,
    inclusive); a last piece shorter than half a tile is dropped. tile=0 keeps records
    whole. Each tile's meta holds its record, start (0-based) and end."""
    if tile < 0:
        raise InputError(f"--tile {tile}: must be 0 (whole records) or a positive length")
    tiles = []
    for rec in records:
        n = len(rec.tokens)
        if tile == 0:
            tiles.append(Record(rec.id, rec.tokens, {"record": rec.id, "start": 0, "end": n}))
            continue
        for start in range(0, n, tile):
            end = min(start + tile, n)
            if end - start < tile / 2 and start > 0:
                break
            tiles.append(Record(f"{rec.id}:{start + 1}-{end}", rec.tokens[start:end],
                                {"record": rec.id, "start": start, "end": end}))
    return tiles


def gc_content(tokens: np.ndarray, domain: Domain) -> float:
    """(G + C) / (A + C + G + T) of token ids, either case; N does not count. NaN when
    there is no A, C, G or T."""
    ids = {t: domain.tokens.index(t) for t in domain.tokens if t in "ACGTacgt"}
    counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=domain.vocab_size)
    gc = sum(int(counts[ids[t]]) for t in "GCgc" if t in ids)
    acgt = sum(int(counts[i]) for i in ids.values())
    return gc / acgt if acgt else float("nan")


def read_embeddings(path: str | Path) -> tuple[list[str], np.ndarray, dict]:
    """(record ids, pooled vectors (records, d_model) float32, file attributes) of an HDF5
    file written by `seqformer embed ... --pool mean`."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if "pooled" not in f:
                raise InputError(f"{path}: no /pooled dataset (embed with --pool mean)")
            ids = list(f["ids"].asstr()[:])
            pooled = f["pooled"][:].astype(np.float32)
            attrs = dict(f.attrs)
    except OSError as e:
        raise InputError(f"{path}: not a readable HDF5 file ({e})") from None
    return ids, pooled, attrs


def pca(x: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Principal components of the rows of x: (scores (n, k), explained variance ratio
    (k,), components (k, d)). Each component's sign is fixed so its largest loading is
    positive, which makes the output reproducible."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need a 2-D array with at least 2 rows, got shape {x.shape}")
    k = min(k, *x.shape)
    centred = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    vt = vt[:k]
    signs = np.sign(vt[np.arange(k), np.abs(vt).argmax(axis=1)])
    vt = vt * signs[:, None]
    var = s**2
    ratio = var[:k] / var.sum() if var.sum() > 0 else np.zeros(k)
    return centred @ vt.T, ratio, vt


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation over the pairs where both are finite (a tile of only N has no
    GC content); NaN when either side is constant."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def plot_map(scores: np.ndarray, ratio: np.ndarray, gc: np.ndarray, tiles: list[Record],
             path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pc2 = scores[:, 1] if scores.shape[1] > 1 else np.zeros(len(scores))
    fig, (ax, along) = plt.subplots(1, 2, figsize=(12, 4.8),
                                    gridspec_kw={"width_ratios": [1, 1.4]})
    points = ax.scatter(scores[:, 0], pc2, c=gc * 100, cmap="viridis", s=28,
                        edgecolors="black", linewidths=0.3)
    fig.colorbar(points, ax=ax, label="GC content (%)")
    ax.set_xlabel(f"PC1 ({ratio[0]:.1%} of variance)")
    ax.set_ylabel(f"PC2 ({ratio[1]:.1%} of variance)" if len(ratio) > 1 else "PC2")
    ax.set_title(title)
    # along the genome: PC1 and GC of each tile at its midpoint (records one after another)
    offset, mid, last = 0, [], None
    for t in tiles:
        if last is not None and t.meta["record"] != last[0]:
            offset += last[1]
        mid.append(offset + (t.meta["start"] + t.meta["end"]) / 2)
        last = (t.meta["record"], t.meta["end"])
    mid = np.array(mid) / 1000
    along.plot(mid, scores[:, 0], color="tab:blue", marker=".", label="PC1")
    along.set_xlabel("position (kbp)")
    along.set_ylabel("PC1", color="tab:blue")
    twin = along.twinx()
    twin.plot(mid, gc * 100, color="tab:orange", marker=".", label="GC")
    twin.set_ylabel("GC content (%)", color="tab:orange")
    along.set_title("PC1 and GC content along the genome")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def write_table(path: Path, tiles: list[Record], ids: list[str], gc: np.ndarray,
                scores: np.ndarray) -> None:
    rows = ["id\trecord\tstart\tend\tgc\tpc1\tpc2"]
    for t, i, g, s in zip(tiles, ids, gc, scores):
        pc2 = s[1] if len(s) > 1 else 0.0
        rows.append(f"{i}\t{t.meta['record']}\t{t.meta['start'] + 1}\t{t.meta['end']}\t"
                    f"{g:.4f}\t{s[0]:.6f}\t{pc2:.6f}")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(rows) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="trained DNA model directory")
    p.add_argument("--fasta", required=True, type=Path, help="genome FASTA (plain or .gz)")
    p.add_argument("--out", required=True, type=Path,
                   help=f"output folder for {', '.join(OUTPUTS)}")
    p.add_argument("--tile", type=int, default=1000,
                   help="tile length in bases; 0 = one point per FASTA record")
    p.add_argument("--layer", type=int, default=-1, help="-1 = final normalized states")
    p.add_argument("--untrained", action="store_true",
                   help="control: the same architecture with fresh random weights (seed 0), "
                   "to see what the map owes to training")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    return report_errors(run, p.parse_args(argv))


def run(args: argparse.Namespace) -> None:
    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"{args.out}: exists and is not a folder")
    paths = {name: check_output(args.out / name, args.force) for name in OUTPUTS}
    t0 = time.perf_counter()
    model, domain, cfg = load_run(args.model, "dna", device=args.device)
    if not -1 <= args.layer < model.cfg.n_layers:
        raise InputError(f"--layer {args.layer}: {args.model} has layers "
                         f"0..{model.cfg.n_layers - 1} (-1 = final)")
    weights = "trained"
    if args.untrained:
        torch.manual_seed(0)
        model = ReformerLM(model.cfg).to(args.device).eval()
        weights = "untrained (random, seed 0)"
    tiles = tile_records(list(domain.read(args.fasta)), args.tile)
    if len(tiles) < 3:
        raise InputError(f"{args.fasta}: only {len(tiles)} tile(s) of {args.tile} bases; a "
                         "map needs at least 3 (use a smaller --tile)")
    domain.write(tiles, paths["tiles.fa"])
    t_embed = time.perf_counter()
    embed_records(model, tiles, domain.sep_id, int(cfg["data"]["seq_len"]), paths["emb.h5"],
                  layer=args.layer, pool="mean", device=args.device,
                  attrs={"domain": "dna", "model_dir": str(args.model), "weights": weights})
    t_embed = time.perf_counter() - t_embed

    # from here on only the files: the same analysis works on any `seqformer embed` output
    ids, pooled, attrs = read_embeddings(paths["emb.h5"])
    gc = np.array([gc_content(t.tokens, domain) for t in tiles])
    scores, ratio, _ = pca(pooled, k=2)
    write_table(paths["pca.tsv"], tiles, ids, gc, scores)
    d_model = json.loads(attrs["model_config"])["d_model"]
    plot_map(scores, ratio, gc, tiles, paths["map.png"],
             f"{args.fasta.name}: {len(tiles)} tiles, model {args.model.name}"
             + (" (untrained)" if args.untrained else ""))
    r1 = correlation(scores[:, 0], gc)
    r2 = correlation(scores[:, 1], gc) if scores.shape[1] > 1 else float("nan")
    print(f"{len(tiles)} tiles of {args.tile or 'whole-record'} bases, d_model {d_model}; "
          f"embedded in {t_embed:.1f} s, total {time.perf_counter() - t0:.1f} s")
    print(f"GC content: mean {np.nanmean(gc):.1%}, range {np.nanmin(gc):.1%}-"
          f"{np.nanmax(gc):.1%}")
    print(f"PC1 explains {ratio[0]:.1%} of the variance, correlation with GC r = {r1:+.3f}")
    if len(ratio) > 1:
        print(f"PC2 explains {ratio[1]:.1%} of the variance, correlation with GC r = {r2:+.3f}")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")


if __name__ == "__main__":
    sys.exit(main())
