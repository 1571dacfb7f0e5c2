"""Memory of one ReformerEncDec training step against the source and target lengths:
blockwise cross-attention (seqformer's) beside dense cross-attention (plain autograd
softmax attention, which keeps the (T, S) probabilities for the backward), each length in
its own fresh process, one at a time.

    python benchmarks/seq2seq_memory.py [--lengths 1024 4096 16384] [--device cpu|cuda]
        [--d-model 256] [--layers 2] [--heads 4] [--attn lsh] [--kinds blockwise dense]

One step = encode, decode, chunked loss, backward and an AdamW step at batch 1, S = T = L.
Reports the bytes autograd saved for the backward (counted with saved_tensors_hooks), the
process's peak (CPU: ru_maxrss minus the peak before the step; CUDA:
max_memory_allocated) and the step's time. A dense row that would not fit is skipped past
--dense-max.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, time
import torch
from seqformer.core import ReformerConfig, ReformerEncDec
from seqformer.core.attention import cross as ca

args = json.loads(sys.argv[1])
L, device = args["length"], torch.device(args["device"])
if args["kind"] == "dense":
    def dense(q, k, v, valid):
        s = torch.matmul(q, k.transpose(-1, -2)).float()
        if valid is not None:
            s = s.masked_fill(~valid, float("-inf"))
        return torch.matmul(s.softmax(-1).to(v.dtype), v)
    ca.cross_attention = dense
common = dict(d_model=args["d_model"], n_layers=args["layers"], n_heads=args["heads"],
              d_ff=4 * args["d_model"], attn=args["attn"], bucket_size=64, n_hashes=2,
              max_seq_len=L, ff_chunk_size=4096)
torch.manual_seed(0)
model = ReformerEncDec(ReformerConfig(vocab_size=24, causal=False, **common),
                       ReformerConfig(vocab_size=16, causal=True, **common)).to(device)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
src = torch.randint(2, 24, (1, L), device=device)
tgt = torch.randint(2, 16, (1, L), device=device)
if device.type == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
saved = 0
def pack(t):
    global saved
    saved += t.numel() * t.element_size()
    return t
t0 = time.perf_counter()
with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
    loss = model.loss(src, tgt)
loss.backward()
opt.step()
if device.type == "cuda":
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
else:
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(json.dumps({"saved": saved, "peak": peak, "seconds": time.perf_counter() - t0,
                  "loss": loss.item()}))
"""


def measure(kind: str, length: int, args: argparse.Namespace) -> dict | None:
    spec = {"kind": kind, "length": length, "device": args.device, "d_model": args.d_model,
            "layers": args.layers, "heads": args.heads, "attn": args.attn}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    run = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True,
                         text=True, env=env, timeout=args.timeout)
    if run.returncode != 0:
        print(f"  {kind} L={length}: failed: {run.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    ap.add_argument("--kinds", nargs="+", default=["blockwise", "dense"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--attn", default="lsh")
    ap.add_argument("--dense-max", type=int, default=16384)
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    print(f"ReformerEncDec training step, S = T = L, d_model {args.d_model}, {args.layers}+"
          f"{args.layers} layers, {args.heads} heads, attn {args.attn}, on {args.device}")
    print(f"{'cross-attention':<16}{'L':>8}{'saved MiB':>12}{'saved B/token':>15}"
          f"{'peak MiB':>11}{'step s':>9}")
    for length in args.lengths:
        for kind in args.kinds:
            if kind == "dense" and length > args.dense_max:
                continue
            r = measure(kind, length, args)
            if r is None:
                continue
            rows.append({"kind": kind, "length": length, **r})
            print(f"{kind:<16}{length:>8}{r['saved'] / 2**20:>12.1f}"
                  f"{r['saved'] / (2 * length):>15.0f}{r['peak'] / 2**20:>11.1f}"
                  f"{r['seconds']:>9.1f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
