"""The attention kernels alone, side by side in one run: forward + backward of one causal
LSH attention call (all hashing rounds) per backend, against FlashAttention through SDPA
(causal, same heads and head size), with the Triton kernel's largest difference from the
PyTorch kernel.

    python benchmarks/attention_kernels.py --device cuda --lengths 16384 65536 262144
    python benchmarks/attention_kernels.py --lengths 4096 --backends torch  # CPU

Times are medians of --repeats after one warm-up call (which compiles the Triton kernel).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from seqformer.core.attention import dispatch as ba  # noqa: E402


def lsh_step(backend, q, v, buckets, bs, d_out):  # noqa: ANN001, ANN201
    layouts = ba.round_layouts("lsh", buckets, q, bs, True)
    out, lse = ba.attention_forward(q, v, "lsh", buckets, bs, True, backend, layouts)
    L = q.shape[2]
    delta = (d_out.float() * out[:, :, :L]).sum(-1)
    dq, dv = ba.attention_backward(q, v, "lsh", buckets, bs, True, lse, delta, d_out, backend,
                                   layouts)
    return out[:, :, :L], dq, dv


def sdpa_step(q, v, d_out):  # noqa: ANN001, ANN201
    q, v = q.detach().requires_grad_(), v.detach().requires_grad_()
    k = F.normalize(q, dim=-1)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    out.backward(d_out)
    return out, q.grad, v.grad


def timed(fn, repeats: int, device: torch.device) -> float:  # noqa: ANN001
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--lengths", type=int, nargs="+", default=[16384, 65536, 262144])
    p.add_argument("--backends", default="torch,triton,sdpa")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--hashes", type=int, default=4)
    p.add_argument("--bucket-size", type=int, default=64)
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    backends = args.backends.split(",")
    H, D, R, bs = args.heads, args.head_dim, args.hashes, args.bucket_size
    print(f"device {device}" + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda"
                                else "") + f", torch {torch.__version__}, {args.dtype}, "
          f"batch 1, {H} heads x {D}, {R} hashes, bucket {bs}, causal, forward + backward\n")
    print("| L | " + " | ".join(f"{b} ms" for b in backends)
          + " | sdpa / triton | torch / triton | triton vs torch max abs diff (out, dq, dv) |")
    print("|---:|" + "---:|" * (len(backends) + 3))
    for L in args.lengths:
        print(row(L, args, device, dtype, backends), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()


def row(L: int, args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
        backends: list[str]) -> str:
    H, D, R, bs = args.heads, args.head_dim, args.hashes, args.bucket_size
    g = torch.Generator().manual_seed(0)
    q, v, d_out = (torch.randn(1, H, L, D, generator=g).to(device, dtype) for _ in range(3))
    buckets = torch.randint(0, max(2, 2 * L // bs), (1, H, R, L), generator=g).to(device)
    ms = {}
    for b in backends:
        if b == "sdpa":
            def fn() -> object:
                return sdpa_step(q, v, d_out)
        else:
            def fn(b: str = b) -> object:
                return lsh_step(b, q, v, buckets, bs, d_out)
        try:
            ms[b] = 1e3 * timed(fn, args.repeats, device)
        except Exception as e:  # one backend failing must not lose the row
            print(f"<!-- {b} at {L}: {type(e).__name__}: {e!s:.300} -->")
    diff = "—"
    if {"torch", "triton"} <= ms.keys():
        got = lsh_step("triton", q, v, buckets, bs, d_out)
        want = lsh_step("torch", q, v, buckets, bs, d_out)
        diff = ", ".join(f"{(a.float() - b.float()).abs().max().item():.1e}"
                         for a, b in zip(got, want))

    def ratio(a: str, b: str) -> str:
        return f"{ms[a] / ms[b]:.2f}" if a in ms and b in ms else "—"

    return (f"| {L} | " + " | ".join(f"{ms[b]:.1f}" if b in ms else "—" for b in backends)
            + f" | {ratio('sdpa', 'triton')} | {ratio('torch', 'triton')} | {diff} |")

if __name__ == "__main__":
    main()
