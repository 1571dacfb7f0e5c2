"""A batch of short sequences (classification-sized: 32 x 200 tokens) through the band
kernel: tiles of several whole (batch x head) rows, as now, against one row per tile, as
before, alternating in one process. Times a training step of the classifier
(configs/classify-tiny.yaml's body with 2 and 4 layers, local + LSH).

    python benchmarks/short_sequences.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from seqformer.core import ReformerClassifier, ReformerConfig
from seqformer.core.attention import kernels_torch as bucketed_attention

packed_tiles = bucketed_attention._tiles


def one_row_tiles(q, k, group, look_back, width):  # noqa: ANN001, ANN201
    """The tiling before rows were packed: every (batch x head) row its own tiles."""
    for g in range(q.shape[0]):
        for _, k0, n, *rest in packed_tiles(q[g:g + 1], k[g:g + 1], group[g:g + 1],
                                            look_back, width):
            yield (slice(g, g + 1), k0, n, *rest)


def step_seconds(model: ReformerClassifier, tokens: torch.Tensor, labels: torch.Tensor) -> float:
    started = time.perf_counter()
    F.cross_entropy(model(tokens), labels).backward()
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--length", type=int, default=200)
    args = ap.parse_args()
    torch.manual_seed(0)
    tokens = torch.randint(2, 6, (args.batch, args.length))
    labels = torch.randint(0, 2, (args.batch,))
    print("| body | tiles | median s/step | tokens/s | packed speed-up |")
    print("|---|---|---:|---:|---:|")
    for d, layers, heads, ff in ((64, 2, 2, 128), (128, 4, 4, 256)):
        cfg = ReformerConfig(vocab_size=16, d_model=d, n_layers=layers, n_heads=heads,
                             d_ff=ff, attn=["local", "lsh"] * (layers // 2), bucket_size=32,
                             n_hashes=2, max_seq_len=512, kmer_embedding=6, causal=False,
                             reversible=False, attn_backend="torch")
        model = ReformerClassifier(cfg, 2, pool="max")
        times = {"packed": [], "one row": []}
        for i in range(args.repeats + 1):
            for name, tiles in (("packed", packed_tiles), ("one row", one_row_tiles)):
                bucketed_attention._tiles = tiles
                seconds = step_seconds(model, tokens, labels)
                if i:  # the first round warms up
                    times[name].append(seconds)
        bucketed_attention._tiles = packed_tiles
        med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        body = f"d_model {d}, {layers} layers, {heads} heads"
        speedup = med["one row"] / med["packed"]
        for name in ("packed", "one row"):
            print(f"| {body} | {name} | {med[name]:.3f} | {tokens.numel() / med[name]:,.0f} | "
                  + (f"{speedup:.2f}x |" if name == "packed" else " |"))

if __name__ == "__main__":
    main()
