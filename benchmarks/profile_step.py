"""Where one seqformer training step spends its time (torch.profiler, CPU or CUDA).

    python benchmarks/profile_step.py --length 16384

Same model as bench_core.py (vocab 16, d_model 256, 6 layers, 4 heads, d_ff 1024, bucket
64, 4 hashes, reversible). Prints the top operators by self time and the share of the
dense matmuls (projections and feed-forward: aten::mm/addmm) and of the batched matmuls
inside the attention kernel (aten::bmm).
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from seqformer.core import ReformerConfig, ReformerLM


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", type=int, default=16384)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--attn", default="lsh")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rows", type=int, default=15)
    args = ap.parse_args()
    cfg = ReformerConfig(vocab_size=16, d_model=256, n_layers=args.layers, n_heads=4, d_ff=1024,
                         attn=args.attn, bucket_size=64, n_hashes=4, max_seq_len=args.length)
    model = ReformerLM(cfg).to(args.device).train()
    x = torch.randint(0, 16, (1, args.length), device=args.device)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x)[0], x[0])
        loss.backward()

    step()  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                           if args.device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    by_name = {e.key: e.self_cpu_time_total for e in events}
    dense = by_name.get("aten::mm", 0) + by_name.get("aten::addmm", 0)
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    print(f"L={args.length}: total self CPU {total / 1e6:.2f} s; dense matmuls (mm+addmm) "
          f"{dense / 1e6:.2f} s ({100 * dense / total:.0f}%); attention bmm "
          f"{by_name.get('aten::bmm', 0) / 1e6:.2f} s "
          f"({100 * by_name.get('aten::bmm', 0) / total:.0f}%)")


if __name__ == "__main__":
    main()
