"""How far the reversible stack's reconstructed activations drift from the forward's, by
depth: float32, bf16 autocast with float32 residual streams, and bf16 autocast with the
float64 streams of `exact_streams=True` (the default).

    python benchmarks/reversible_error.py --length 4096 --layers 24 --device cpu

Runs the layers forward keeping every (x1, x2), then walks back from the top the way the
backward pass does (x2 = y2 - FF(y1), x1 = y1 - Attn(x2), LSH with the forward's buckets)
and reports max |reconstructed - true| / max |true| at each depth.
"""

from __future__ import annotations

import argparse
import contextlib

import torch

from seqformer.core import ReformerConfig, ReformerLM
from seqformer.core.layers.reversible import stream_dtype


@torch.no_grad()
def drift(model: ReformerLM, tokens: torch.Tensor, bf16: bool, exact: bool) -> list[float]:
    amp = (torch.autocast(tokens.device.type, dtype=torch.bfloat16) if bf16
           else contextlib.nullcontext())
    with amp:
        x = model._embed(tokens)
        x1 = x2 = x.to(stream_dtype(x, exact))
        states, buckets = [(x1, x2)], []
        for layer in model.layers:
            a, b = layer.attn(x2)
            x1 = x1 + a
            x2 = x2 + layer.ff(x1)
            states.append((x1, x2))
            buckets.append(b)
        errors = []
        y1, y2 = states[-1]
        for i in reversed(range(len(model.layers))):
            layer = model.layers[i]
            x2 = y2 - layer.ff(y1)
            x1 = y1 - layer.attn(x2, buckets=buckets[i])[0]
            t1, t2 = states[i]
            err = max((x1 - t1).abs().max().item(), (x2 - t2).abs().max().item())
            errors.append(err / max(t1.abs().max().item(), t2.abs().max().item()))
            y1, y2 = x1, x2
    return errors  # errors[k]: after reconstructing k + 1 layers from the top


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = ReformerConfig(vocab_size=16, d_model=args.d_model, n_layers=args.layers, n_heads=4,
                         d_ff=4 * args.d_model, attn="lsh", bucket_size=64, n_hashes=2,
                         max_seq_len=args.length)
    model = ReformerLM(cfg).to(args.device).train()  # training mode: fresh rotations
    tokens = torch.randint(0, 16, (1, args.length), device=args.device)
    columns = [drift(model, tokens, False, True), drift(model, tokens, True, False),
               drift(model, tokens, True, True)]
    print("| layers reconstructed | float32 | bf16, float32 streams | bf16, float64 streams |\n"
          "|---:|---:|---:|---:|")
    for k, row in enumerate(zip(*columns), 1):
        print(f"| {k} | " + " | ".join(f"{e:.2e}" for e in row) + " |")


if __name__ == "__main__":
    main()
