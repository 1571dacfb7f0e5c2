"""Tokens per second of `sample` decoding: one sample and K samples as one batch, with and
without the MIDI note grammar, eager and compiled (`--compile`), side by side in one
process (each setting once per round, rounds alternate; the median of the rounds).

    python benchmarks/decode_speed.py --model runs/bach-events --length 1500 --ks 1 8

Any language model directory works; the grammar settings apply to MIDI models only. The
compiled settings first decode a few tokens untimed, so compile time is not counted (it is
printed on its own).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from seqformer.pipeline.inference import sample_batch
from seqformer.pipeline.run_dir import load_run, read_sampling_limits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--length", type=int, default=1500)
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-compile", action="store_true", help="eager settings only")
    args = ap.parse_args()
    model, domain, _ = load_run(args.model, device=args.device)
    prompt = np.array([domain.sep_id])
    limits = read_sampling_limits(args.model)
    grammars = [False, True] if domain.name == "midi" else [False]
    compiled = [False] if args.no_compile else [False, True]

    def run(k: int, grammar: bool, compile: bool, length: int) -> float:
        constraint = domain.constraint(limits, [prompt] * k) if grammar else None
        _, rate = sample_batch(model, prompt, length, k, seed=0, device=args.device,
                               allowed=domain.generatable(), constraint=constraint,
                               compile=compile)
        return rate

    if not args.no_compile:
        t = time.perf_counter()
        for k in args.ks:
            run(k, False, True, 8)
        print(f"compiling the step for K in {args.ks}: {time.perf_counter() - t:.1f} s")
    settings = [(k, g, c) for k in args.ks for g in grammars for c in compiled]
    rates: dict = {s: [] for s in settings}
    for _ in range(args.rounds):
        for s in settings:
            rates[s].append(run(*s, args.length))
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"{args.model}, {args.length} tokens per sample, {name}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} rounds")
    print("| samples (K) | grammar | step | tokens/s, all samples | tokens/s per sample |")
    print("|---:|---|---|---:|---:|")
    for (k, g, c), r in rates.items():
        m = statistics.median(r)
        print(f"| {k} | {'on' if g else 'off'} | {'compiled' if c else 'eager'} | "
              f"{m:,.0f} | {m / k:,.0f} |")


if __name__ == "__main__":
    main()
