"""Time one causal-LM training step (forward + backward) and its peak memory.

Compares seqformer's ReformerLM with HuggingFace's Reformer, lucidrains'
reformer-pytorch and a plain dense-attention (SDPA) transformer, all at the same
width and depth. Every (implementation, length) pair runs in a fresh subprocess so
the peak-memory figure belongs to that measurement alone and a crash, OOM kill or
timeout only loses that one cell of the table.

    python benchmarks/bench_core.py                       # all impls, L = 4096 16384 65536
    python benchmarks/bench_core.py --lengths 1024 --impls hf,sdpa --out /tmp/bench_core.md

See benchmarks/README.md for installing the peer implementations.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
IMPLS = ("seqformer", "hf", "lucidrains", "sdpa")
OURS = "seqformer"
DEFAULT_LENGTHS = (4096, 16384, 65536)

# The one benchmarked configuration, shared by every implementation.
VOCAB = 16
D_MODEL = 256
N_LAYERS = 6
N_HEADS = 4
HEAD_DIM = D_MODEL // N_HEADS
D_FF = 1024
BUCKET = 64  # seqformer bucket_size, HF lsh_attn_chunk_length, lucidrains bucket_size
N_HASHES = 4

# Workers print one line with this prefix; anything else on stdout (library chatter) is ignored.
RESULT_TAG = "BENCH_RESULT "


# --------------------------------------------------------------------------- model builders


class NotAvailable(Exception):
    """The implementation cannot be imported here (not installed / not written yet)."""


def need(module: str):  # noqa: ANN201
    """Import a peer's module, or report the cell as not available."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise NotAvailable(str(exc)) from exc


def axial_shape(length: int) -> tuple[int, int]:
    # HF insists prod(axial_pos_shape) == L while training; the most square split keeps
    # both embedding tables small.
    a = max(d for d in range(1, math.isqrt(length) + 1) if length % d == 0)
    return a, length // a


def hf_num_buckets(length: int) -> int | list[int]:
    # Same rule HF applies when num_buckets=None (ReformerAttention._set_num_buckets, with
    # max_position_embeddings == L): ~2 * L / chunk rounded down to a power of two, factorised
    # into two hash rotations once it exceeds 2 * max(sqrt(L / chunk), chunk). Set explicitly
    # so the choice is visible and HF does not log a warning per layer.
    pow2 = (2 * (length // BUCKET)).bit_length() - 1
    limit = 2 * max(int((length // BUCKET) ** 0.5), BUCKET)
    if 2**pow2 > limit:
        return [2 ** (pow2 // 2), 2 ** (pow2 - pow2 // 2)]
    return 2**pow2


def configure(d_model: int, n_layers: int, n_hashes: int, backend: str, n_heads: int = 4,
              head_group_size: int = 0) -> None:
    """Set the shared configuration (--d-model, --layers, --hashes, --backend, --heads,
    --head-group-size)."""
    global D_MODEL, N_LAYERS, N_HASHES, N_HEADS, HEAD_DIM, D_FF, BACKEND, HEAD_GROUP
    D_MODEL, N_LAYERS, N_HASHES, N_HEADS, BACKEND = d_model, n_layers, n_hashes, n_heads, backend
    HEAD_GROUP = head_group_size or None
    HEAD_DIM, D_FF = d_model // N_HEADS, 4 * d_model


BACKEND = "torch"
HEAD_GROUP: int | None = None  # seqformer's head_group_size (None: chosen by length)


def model_flops_per_step(length: int) -> float:
    """Training FLOPs of one step, the usual MFU count (no recompute): 6 x non-embedding
    parameters x tokens for the dense layers, plus attention: per layer, hash round and
    token, a query meets at most 2 x bucket keys, 4 FLOPs per (query, key, dim) for
    QK^T and PV, x3 for forward + backward. The reversible stack also recomputes each
    layer's forward in the backward: with it the device does 8/6 of this (RECOMPUTE)."""
    per_layer = 3 * D_MODEL * D_MODEL + 2 * D_MODEL * D_FF  # qk, v, out; two FF matrices
    dense = 6 * N_LAYERS * per_layer * length
    attention = 3 * 4 * N_LAYERS * N_HASHES * length * 2 * BUCKET * D_MODEL
    return float(dense + attention)


RECOMPUTE = 8 / 6  # forward 2 + recomputed forward 2 + backward 4, per 6 counted


def build_seqformer(length: int, attn: str | list[str] = "lsh"):  # noqa: ANN201
    core = need("seqformer.core")
    cfg = core.ReformerConfig(
        vocab_size=VOCAB, d_model=D_MODEL, n_layers=N_LAYERS, n_heads=N_HEADS, d_ff=D_FF,
        attn=attn, bucket_size=BUCKET, n_hashes=N_HASHES, causal=True, reversible=True,
        ff_chunk_size=None, max_seq_len=length, dropout=0.0, attn_backend=BACKEND,
        head_group_size=HEAD_GROUP,
    )  # fmt: skip
    model = core.ReformerLM(cfg)
    return model, model


def build_hf(length: int):
    hf = need("transformers")
    cfg = hf.ReformerConfig(
        vocab_size=VOCAB,
        attn_layers=["lsh"] * N_LAYERS,
        hidden_size=D_MODEL,
        num_attention_heads=N_HEADS,
        attention_head_size=HEAD_DIM,
        feed_forward_size=D_FF,
        hidden_act="gelu",  # HF defaults to relu; the other three use GELU
        lsh_attn_chunk_length=BUCKET,
        num_hashes=N_HASHES,
        num_buckets=hf_num_buckets(length),
        is_decoder=True,  # causal masking in LSH attention
        axial_pos_embds=True,
        axial_pos_shape=axial_shape(length),
        axial_pos_embds_dim=(64, D_MODEL - 64),
        max_position_embeddings=length,
        hidden_dropout_prob=0.0,
        lsh_attention_probs_dropout_prob=0.0,
        local_attention_probs_dropout_prob=0.0,
        chunk_size_lm_head=0,
        use_cache=False,
    )
    model = hf.ReformerModelWithLMHead(cfg)
    return model, lambda tokens: model(input_ids=tokens, use_cache=False).logits


def build_lucidrains(length: int):
    model = need("reformer_pytorch").ReformerLM(
        num_tokens=VOCAB,
        dim=D_MODEL,
        depth=N_LAYERS,
        max_seq_len=length,
        heads=N_HEADS,
        dim_head=HEAD_DIM,
        bucket_size=BUCKET,
        n_hashes=N_HASHES,
        ff_chunks=1,  # no feed-forward chunking, like ff_chunk_size=None
        attn_chunks=1,
        ff_mult=D_FF // D_MODEL,
        causal=True,
        lsh_dropout=0.0,
        ff_dropout=0.0,
        post_attn_dropout=0.0,
        layer_dropout=0.0,
        reverse_thres=0,  # always reversible
        axial_position_emb=True,
        axial_position_shape=axial_shape(length),
    )
    return model, model


def build_sdpa(length: int):
    from baselines import SdpaLM  # benchmarks/ is sys.path[0] when this file is run

    model = SdpaLM(VOCAB, D_MODEL, N_LAYERS, N_HEADS, D_FF)
    return model, model


BUILDERS: dict[str, Callable] = {
    "seqformer": build_seqformer,
    "hf": build_hf,
    "lucidrains": build_lucidrains,
    "sdpa": build_sdpa,
}


# --------------------------------------------------------------------------- worker side


def measure(impl: str, length: int, device: str, repeats: int, warmup: bool, seed: int,
            bf16: bool = False, optimizer: bool = False) -> dict:
    import contextlib

    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    dev = torch.device(device)
    model, forward = BUILDERS[impl](length)
    model.to(dev).train()
    tokens = torch.randint(0, VOCAB, (1, length), device=dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4) if optimizer else None

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step() -> float:
        model.zero_grad(set_to_none=True)
        amp = (torch.autocast(dev.type, dtype=torch.bfloat16) if bf16
               else contextlib.nullcontext())
        with amp:
            logits = forward(tokens)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB).float(), tokens[:, 1:].reshape(-1))
        loss.backward()
        if opt is not None:
            opt.step()
        sync()
        return loss.item()

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    if warmup:
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - start)

    if dev.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    status = "ok" if math.isfinite(loss) else f"non-finite loss {loss}"
    if not warmup:
        status += " (no warm-up)"
    return {
        "status": status,
        "seconds": statistics.median(times),
        "times": times,
        "peak_mib": peak_mib,
        "loss": loss,
        "threads": torch.get_num_threads(),
        "flops": model_flops_per_step(length) if impl == OURS else None,
    }


def worker_main(args: argparse.Namespace) -> None:
    import torch

    impl, length = args.worker[0], int(args.worker[1])
    configure(args.d_model, args.layers, args.hashes, args.backend, args.heads,
              args.head_group_size)
    if args.mem_limit_gb:
        # a peer that wants more fails with MemoryError in its own cell, instead of waking
        # the OOM killer, which may pick another process of the machine
        limit = int(args.mem_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = measure(
            impl, length, args.device, args.repeats, length <= args.warmup_max_len, args.seed,
            args.bf16, args.optimizer,
        )
    except NotAvailable as exc:
        result = {"status": f"not available ({exc})"}
    except MemoryError:
        result = {"status": f"out of memory (> {args.mem_limit_gb:g} GB address space)"}
    except Exception as exc:  # report and let the parent carry on with the next cell
        traceback.print_exc()
        msg = str(exc).splitlines()[0][:200] if str(exc) else ""
        oom = "can't allocate memory" in msg or "not enough memory" in msg
        result = {"status": f"out of memory (> {args.mem_limit_gb:g} GB address space)" if oom
                  else f"error: {type(exc).__name__}: {msg}"}
    print(RESULT_TAG + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- parent side


@dataclass
class Result:
    impl: str
    length: int
    status: str
    seconds: float | None = None
    peak_mib: float | None = None
    flops: float | None = None

    @property
    def ok(self) -> bool:
        return self.status.startswith("ok")


def run_one(impl: str, length: int, args: argparse.Namespace, script: Path = Path(__file__)
            ) -> Result:
    """Measure one cell in a fresh `script --worker IMPL L` process (this file, or a
    benchmark that adds builders to BUILDERS and calls `main`)."""
    cmd = [
        sys.executable, str(script.resolve()), "--worker", impl, str(length),
        "--device", args.device, "--repeats", str(args.repeats), "--seed", str(args.seed),
        "--warmup-max-len", str(args.warmup_max_len), "--threads", str(args.threads or 0),
        "--d-model", str(args.d_model), "--layers", str(args.layers), "--hashes", str(args.hashes),
        "--heads", str(args.heads), "--backend", args.backend,
        "--mem-limit-gb", str(args.mem_limit_gb),
        "--head-group-size", str(args.head_group_size),
    ] + (["--bf16"] if args.bf16 else []) + (["--optimizer"] if args.optimizer else [])  # fmt: skip
    env = dict(os.environ)
    # seqformer imports from the checkout even when it is not pip-installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    # HF must never try the network, and its per-call warnings would drown the progress log.
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        return Result(impl, length, f"timeout (>{args.timeout:g} s)")

    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            data = json.loads(line[len(RESULT_TAG) :])
            if data["status"].startswith("error"):
                sys.stderr.write(proc.stderr[-3000:])
            return Result(impl, length, data["status"], data.get("seconds"), data.get("peak_mib"),
                          data.get("flops"))
    # No result line: the worker died hard (SIGKILL from the OOM killer, segfault, ...).
    sys.stderr.write(proc.stderr[-3000:])
    if proc.returncode < 0:
        return Result(impl, length, f"killed by signal {-proc.returncode} (OOM?)")
    return Result(impl, length, f"crashed (exit {proc.returncode})")


def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def render(results: list[Result], impls: list[str], lengths: list[int], device: str,
           peak_tflops: float = 989.0, ours: str = OURS, notes: dict[str, str] | None = None
           ) -> str:
    """The Markdown table, ratios against `ours` and its scaling; `notes` adds a column
    describing each implementation."""
    mem_label = "peak CUDA alloc MiB" if device == "cuda" else "peak RSS MiB"
    note_head, note_rule = ("attention | ", "---|") if notes else ("", "")
    lines = [
        f"| implementation | {note_head}L | s/step | tokens/s | {mem_label} | MFU "
        "| MFU + recompute | status |",
        f"|---|{note_rule}---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        note = f"{notes.get(r.impl, '')} | " if notes else ""
        tps = r.length / r.seconds if r.seconds else None
        mfu = (r.flops / r.seconds / (peak_tflops * 1e12) if r.flops and r.seconds
               and device == "cuda" else None)
        lines.append(
            f"| {r.impl} | {note}{r.length} | {fmt(r.seconds, '.3f')} | {fmt(tps, ',.0f')} "
            f"| {fmt(r.peak_mib, ',.0f')} | {fmt(mfu and 100 * mfu, '.1f')} "
            f"| {fmt(mfu and 100 * mfu * RECOMPUTE, '.1f')} | {r.status} |"
        )

    by_key = {(r.impl, r.length): r for r in results if r.ok}
    others = [i for i in impls if i != ours]
    if ours in impls and others:
        lines += [
            "",
            f"Ratios vs {ours} (speed = their s/step / ours, >1 means {ours} is faster; "
            f"memory = their peak / ours, >1 means {ours} uses less):",
            "",
            "| L | other | speed ratio | memory ratio |",
            "|---:|---|---:|---:|",
        ]
        for length in lengths:
            mine = by_key.get((ours, length))
            for other in others:
                theirs = by_key.get((other, length))
                if mine and theirs:
                    speed = f"{theirs.seconds / mine.seconds:.2f}"
                    memory = f"{theirs.peak_mib / mine.peak_mib:.2f}"
                else:
                    speed = memory = "—"
                lines.append(f"| {length} | {other} | {speed} | {memory} |")

    if ours in impls and len(lengths) > 1:
        lines += ["", f"{ours} scaling (time ratio between consecutive lengths):", ""]
        for short, long in itertools.pairwise(lengths):
            a, b = by_key.get((ours, short)), by_key.get((ours, long))
            factor = long / short
            ratio = f"{b.seconds / a.seconds:.2f}" if a and b else "—"
            lines.append(
                f"- t({long}) / t({short}) = {ratio} "
                f"(linear would be {factor:g}, quadratic {factor**2:g})"
            )
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment_lines(args: argparse.Namespace) -> list[str]:
    import torch

    threads = args.threads or torch.get_num_threads()
    source = "--threads" if args.threads else "torch default"
    lines = [
        f"- command: `python {shlex.join(sys.argv)}`",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- torch {torch.__version__}, python {platform.python_version()}",
        f"- CPU: {cpu_model()} ({os.cpu_count()} logical cores), torch threads: {threads} "
        f"({source})",
        f"- device: {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else ""),
        f"- config: vocab {VOCAB}, d_model {D_MODEL}, {N_LAYERS} layers, {N_HEADS} heads, "
        f"d_ff {D_FF}, bucket/chunk {BUCKET}, {N_HASHES} hashes, batch 1"
        + (", bf16 autocast" if args.bf16 else ", float32")
        + (", AdamW step included" if args.optimizer else ", forward + backward")
        + f", seqformer attention backend: {args.backend}"
        + (f", head_group_size {args.head_group_size}" if args.head_group_size else ""),
        "- MFU (seqformer only, CUDA): model FLOPs / time / peak, model FLOPs = 6 x "
        "non-embedding dense parameters x L + 12 x layers x hashes x L x 2 x bucket x "
        f"d_model (attention), peak {args.peak_tflops:g} TFLOP/s; MFU + recompute also "
        "counts the reversible stack's recomputed forward (x 8/6)",
        f"- {args.repeats} timed step(s), median reported; 1 warm-up step when "
        f"L <= {args.warmup_max_len}",
    ]
    return lines


def parse_args(argv: list[str] | None = None, impls: tuple[str, ...] = IMPLS,
               description: str = __doc__, **defaults: object) -> argparse.Namespace:
    """The shared options; `impls` and `defaults` (e.g. layers=2) for a benchmark built on
    this one."""
    p = argparse.ArgumentParser(description=description.split("\n\n")[0])
    p.add_argument("--impls", default=",".join(impls), help="comma list of " + ",".join(impls))
    p.add_argument("--lengths", type=int, nargs="+", default=list(DEFAULT_LENGTHS))
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--repeats", type=int, default=1, help="timed steps per measurement")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds per measurement")
    p.add_argument(
        "--warmup-max-len", type=int, default=16384,
        help="do one untimed warm-up step only up to this length (it would double the cost "
        "of the longest runs)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--d-model", type=int, default=D_MODEL, help="width (d_ff = 4 x d_model)")
    p.add_argument("--layers", type=int, default=N_LAYERS)
    p.add_argument("--hashes", type=int, default=N_HASHES)
    p.add_argument("--heads", type=int, default=N_HEADS)
    p.add_argument("--backend", choices=("torch", "triton", "flex", "auto"), default="torch",
                   help="seqformer's attention backend")
    p.add_argument("--head-group-size", type=int, default=0,
                   help="seqformer's heads per attention pass (0 = its default, by length)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (every implementation)")
    p.add_argument("--optimizer", action="store_true", help="include an AdamW step")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="the device's dense bf16 peak, for MFU (H100 SXM: 989)")
    p.add_argument("--mem-limit-gb", type=float, default=0,
                   help="address-space limit per measurement (0 = none): past it a cell "
                   "reports 'out of memory' instead of meeting the OOM killer")
    p.add_argument("--out", type=Path, help="append the results as Markdown to this file")
    p.add_argument("--worker", nargs=2, metavar=("IMPL", "L"), help=argparse.SUPPRESS)
    p.set_defaults(**defaults)
    args = p.parse_args(argv)

    configure(args.d_model, args.layers, args.hashes, args.backend, args.heads,
              args.head_group_size)
    args.impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    unknown = set(args.impls) - set(impls)
    if unknown:
        p.error(f"unknown implementation(s): {', '.join(sorted(unknown))}")
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    # lucidrains needs L % (2 * bucket) == 0, HF needs L % chunk == 0.
    bad = [n for n in args.lengths if n % (2 * BUCKET)]
    if bad:
        p.error(f"lengths must be multiples of {2 * BUCKET}: {bad}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            sys.exit("--device cuda, but torch.cuda.is_available() is False")

    env = environment_lines(args)
    print("\n".join(env), file=sys.stderr)
    results = []
    for length in args.lengths:
        for impl in args.impls:
            print(f"[bench] {impl} L={length} ...", file=sys.stderr, flush=True)
            result = run_one(impl, length, args)
            print(f"[bench]   {result.status} {fmt(result.seconds, '.3f')} s", file=sys.stderr)
            results.append(result)

    table = render(results, args.impls, args.lengths, args.device, args.peak_tflops)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as fh:
            fh.write(f"\n## bench_core run {datetime.date.today().isoformat()}\n\n")
            fh.write("\n".join(env) + "\n\n" + table + "\n")


if __name__ == "__main__":
    main()
