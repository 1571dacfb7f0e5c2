"""Does torch.compile (Inductor) pay for a training step on this machine? compare.py's model
(d_model 256, 2 layers, 4 heads, d_ff 1024, bucket 64, 2 hashes, reversible, float32,
batch 1), forward + backward of the loss, no optimizer; eager and compiled steps
alternate in one process after a warm-up of each, so both see the same machine.

    python benchmarks/compile_step.py --length 16384 --attn local --part ff --pairs 7
    python benchmarks/compile_step.py --length 16384 --attn local --part step

--part ff compiles each layer's feed-forward alone; --part step compiles model.loss whole.
Results: docs/performance.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from seqformer.core import ReformerConfig, ReformerLM


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", type=int, default=16384)
    ap.add_argument("--attn", default="local")
    ap.add_argument("--part", choices=["ff", "step"], default="ff")
    ap.add_argument("--pairs", type=int, default=7)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = ReformerConfig(vocab_size=256, d_model=256, n_layers=2, n_heads=4, d_ff=1024,
                         attn=args.attn, bucket_size=64, n_hashes=2, causal=True,
                         reversible=True, max_seq_len=args.length, dropout=0.0)
    model = ReformerLM(cfg)
    tokens = torch.randint(0, 256, (1, args.length))
    eager_ff = [layer.ff for layer in model.layers]
    compiled_ff = [torch.compile(ff) for ff in eager_ff]
    compiled_loss = torch.compile(model.loss)

    def loss(compiled: bool) -> torch.Tensor:
        for layer, ff in zip(model.layers, compiled_ff if compiled else eager_ff):
            layer.ff = ff
        if compiled and args.part == "step":
            return compiled_loss(tokens)
        return model.loss(tokens)

    def step(compiled: bool) -> float:
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        loss(compiled).backward()
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    step(True)
    print(f"compile and first step: {time.perf_counter() - t0:.1f} s")
    step(False)
    eager, compiled = [], []
    for _ in range(args.pairs):
        eager.append(step(False))
        compiled.append(step(True))
    with torch.no_grad():
        same = (loss(False) - loss(True)).abs().item()
    print(f"{args.attn} {args.length:,} tokens, {args.part} compiled: median s/step eager "
          f"{statistics.median(eager):.3f}, compiled {statistics.median(compiled):.3f} "
          f"(x{statistics.median(eager) / statistics.median(compiled):.2f}); "
          f"|loss difference| {same:.2e}")


if __name__ == "__main__":
    main()
