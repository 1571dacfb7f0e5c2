"""Tokens per second of cached generation against full-recompute decoding.

    python benchmarks/bench_generate.py --device cuda --tokens 2000 --recompute 100

Cached: ReformerLM.generate (prefill + one step per token, DESIGN.md's caches).
Recompute: a full forward over the sequence so far for every new token, the way a model
without caches decodes (timed for fewer tokens, from the same prompt length).
"""

from __future__ import annotations

import argparse
import time

import torch

from seqformer.core import ReformerConfig, ReformerLM


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokens", type=int, default=1000, help="tokens to generate (cached)")
    ap.add_argument("--recompute", type=int, default=50, help="tokens to generate (recompute)")
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--max-seq-len", type=int, default=131072)
    ap.add_argument("--attn", default="lsh")
    args = ap.parse_args()

    torch.manual_seed(0)
    cfg = ReformerConfig(vocab_size=16, d_model=256, n_layers=6, n_heads=4, d_ff=1024,
                         attn=args.attn, bucket_size=64, n_hashes=4,
                         max_seq_len=args.max_seq_len)
    model = ReformerLM(cfg).to(args.device).eval()
    prompt = torch.randint(0, 16, (1, args.prompt), device=args.device)

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    model.generate(prompt, 8, temperature=0)  # warm-up
    sync()
    t = time.perf_counter()
    model.generate(prompt, args.tokens, temperature=0)
    sync()
    cached = args.tokens / (time.perf_counter() - t)

    seq = prompt
    sync()
    t = time.perf_counter()
    with torch.no_grad():
        for _ in range(args.recompute):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    sync()
    recompute = args.recompute / (time.perf_counter() - t)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"| {name} | {args.attn} | {args.prompt} | {args.tokens} | {cached:,.1f} "
          f"| {recompute:,.2f} | {cached / recompute:,.0f}x |")


if __name__ == "__main__":
    main()
