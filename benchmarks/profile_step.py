"""Where one training step spends its time, part by part, and how close it runs to the
machine's matmul rate.

    python benchmarks/profile_step.py --attn local --lengths 16384 65536
    python benchmarks/profile_step.py --attn lsh --d-model 512 --lengths 65536

The model is compare.py's unless told otherwise: vocab 16, d_model 256, 2 layers, 4 heads,
d_ff 4 x d_model, bucket 64, 2 hashes, reversible, float32, batch 1. One step is forward,
backward and an AdamW step.

- **Parts.** Under torch.profiler, each operator's self time goes to the innermost part of
  the model it ran in. The parts are labels this script alone puts around seqformer's
  functions. Layer norms are counted apart wherever they run.
- **Phases.** Each operator's time also goes to its phase:
  - forward;
  - recompute: the reversible backward re-running a layer's forward;
  - backward.
- **Efficiency.** The step's matmul FLOPs, with the recompute counted, against this
  machine's `torch.mm` rate (4096^3, float32, same threads):
  `FLOPs / (step seconds x mm rate)`.
  - Step seconds is the median of --repeats steps without the profiler.
  - The band kernel's FLOPs are those it computes, masked scores included.
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import time
from collections import defaultdict

import torch
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

from seqformer.core import ReformerConfig, ReformerLM
from seqformer.core.attention import buckets, dispatch, module
from seqformer.core.layers import feedforward
from seqformer.core.model import lm

TAG = "part:"
# (part, owner, attribute, runs a forward): each function labelled where its callers look
# it up (attention_forward is called through module.py's import of it)
PARTS = [
    ("hashing", module.Attention, "_group_buckets", True),
    ("hashing", lm, "context_buckets", True),
    ("sort and layout", buckets, "_round_layout", True),
    ("gathers into sorted order", buckets.RoundLayout, "sorted_rows", False),
    ("gathers into sorted order", buckets.RoundLayout, "sorted_padded", False),
    ("gathers into sorted order", dispatch, "_gather", False),
    ("band kernel", dispatch, "band_forward", True),
    ("band kernel", dispatch, "band_backward", False),
    ("rounds: inputs, merge, scatter", module, "attention_forward", True),
    ("rounds: inputs, merge, scatter", module, "attention_backward", False),
    ("attention projections", module.Attention, "_group_qv", True),
    ("attention projections", module.Attention, "_add_output", True),
    ("attention projections", module.Attention, "_backward", False),
    ("feed-forward", feedforward.FeedForward, "block", True),
    ("feed-forward", feedforward.FeedForward, "reverse", False),
    ("embedding", lm.ReformerLM, "_embed", True),
    ("loss", lm, "next_token_nll", True),
]


def _label(owner, attr: str) -> str:  # noqa: ANN001
    return f"{TAG}{owner.__name__}.{attr}"


FORWARD_LABELS = {_label(owner, attr) for _, owner, attr, fwd in PARTS if fwd}
REST = "reversible stack, residual streams, rest"


def _labelled(label: str, fn):  # noqa: ANN001, ANN202
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        with record_function(label):
            return fn(*args, **kwargs)
    return wrapper


def label_parts() -> dict[str, str]:
    """Wrap each function of PARTS in a record_function; returns label -> part. A function
    an older checkout lacks is skipped, so the same script profiles the code before a
    change (PYTHONPATH=that checkout)."""
    names = {}
    for part, owner, attr, _ in PARTS:
        if not hasattr(owner, attr):
            continue
        label = _label(owner, attr)
        setattr(owner, attr, _labelled(label, getattr(owner, attr)))
        names[label] = part
    return names


def attribute(events, names: dict[str, str]) -> dict[tuple[str, str], float]:  # noqa: ANN001
    """Self seconds by (part, phase) of every operator event."""
    out: dict[tuple[str, str], float] = defaultdict(float)
    for e in events:
        if e.name.startswith(TAG) or e.self_cpu_time_total == 0:
            continue
        chain, p = [], e.cpu_parent
        while p is not None:
            chain.append(p.name)
            p = p.cpu_parent
        labels = [n for n in chain if n.startswith(TAG)]
        if "layer_norm" in e.name:
            part = "layer norms"
        elif labels:
            part = names[labels[0]]
        elif any(n.startswith("Optimizer.") for n in chain):
            part = "optimizer (AdamW)"
        elif any("_ChunkedNLL" in n for n in chain):
            part = "loss"
        else:
            part = REST
        backward = any("Backward" in n for n in chain) or "Backward" in e.name
        if part.startswith("optimizer"):
            phase = "optimizer"
        elif not backward:
            phase = "forward"
        else:
            phase = "recompute" if any(n in FORWARD_LABELS for n in labels) else "backward"
        out[part, phase] += e.self_cpu_time_total / 1e6
    return out


def step_flops(cfg: ReformerConfig, L: int) -> float:
    """Matmul FLOPs of one training step: the forward, the reversible recompute (a second
    forward of every layer) and the backward (twice the forward) of every layer; the
    head's forward and backward."""
    d, bs = cfg.d_model, cfg.bucket_size
    dense = 2 * L * (3 * d * d + 2 * d * cfg.d_ff)  # one layer's projections and FF
    forward = 0.0
    for i in range(cfg.n_layers):
        kind = cfg.layer_attn(i)
        if kind == "local":  # a block of bs queries against its own and the previous
            keys, rounds = 2 * bs, 1
        else:  # blocks of bs / 2 queries against 4 blocks back and their own
            keys = bs // 2 * (1 + math.ceil((2 * bs - 1) / (bs // 2)))
            rounds = cfg.n_hashes if kind == "lsh" else len(cfg.match_k)
        forward += dense + 2 * 2 * L * d * keys * rounds  # scores and weighted values
    return 4 * forward + 3 * 2 * L * d * cfg.vocab_size


def mm_rate(n: int = 4096, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[16384, 65536])
    ap.add_argument("--attn", default="lsh", help="lsh, local, match, or a list: local,lsh")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--hashes", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timed steps without profiler")
    args = ap.parse_args()
    names = label_parts()
    attn = args.attn.split(",") if "," in args.attn else args.attn
    rate = mm_rate()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, torch.mm "
          f"4096^3 float32: {rate / 1e9:.1f} GFLOP/s")
    for L in args.lengths:
        cfg = ReformerConfig(vocab_size=16, d_model=args.d_model, n_layers=args.layers,
                             n_heads=args.heads, d_ff=4 * args.d_model, attn=attn,
                             bucket_size=64, n_hashes=args.hashes, max_seq_len=L,
                             dropout=0.0, reversible=True)
        seconds, shares = profile_length(cfg, L, args.repeats, names)
        flops = step_flops(cfg, L)
        total = sum(shares.values())
        print(f"\n### {args.attn}, L = {L:,}, d_model {args.d_model}, {args.layers} layers\n")
        print(f"step {seconds:.2f} s (median of {args.repeats}, no profiler); "
              f"{flops / 1e9:.0f} GFLOP of matmuls -> {flops / seconds / 1e9:.1f} GFLOP/s, "
              f"**{100 * flops / seconds / rate:.0f}% of the torch.mm rate**; under the "
              f"profiler {total:.2f} s of operator self time, shared as:\n")
        print(table(shares))


def profile_length(cfg: ReformerConfig, L: int, repeats: int, names: dict[str, str]
                   ) -> tuple[float, dict[tuple[str, str], float]]:
    """The median step time without the profiler, and one profiled step's shares."""
    model = ReformerLM(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, 16, (1, L + 1))

    def step() -> None:
        model.loss(x).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return statistics.median(times), attribute(prof.events(), names)


def table(shares: dict[tuple[str, str], float]) -> str:
    phases = ["forward", "recompute", "backward", "optimizer"]
    total = sum(shares.values())
    lines = ["| part | " + " | ".join(phases) + " | total | share |",
             "|---|" + "---:|" * (len(phases) + 2)]
    parts = sorted({p for p, _ in shares},
                   key=lambda p: -sum(v for (q, _), v in shares.items() if q == p))
    for part in parts:
        row = [shares.get((part, ph), 0.0) for ph in phases]
        lines.append(f"| {part} | " + " | ".join(f"{v:.3f}" if v else "" for v in row)
                     + f" | {sum(row):.3f} | {100 * sum(row) / total:.0f}% |")
    col = [sum(v for (_, q), v in shares.items() if q == ph) for ph in phases]
    lines.append("| **all** | " + " | ".join(f"{v:.3f}" for v in col) + f" | {total:.3f} | |")
    return "\n".join(lines)

if __name__ == "__main__":
    main()
