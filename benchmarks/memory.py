"""Peak memory of one ReformerLM training step, its slope per token, and a 1M-token forecast.

One training step = forward, next-token loss, backward and an AdamW step, at batch 1 on
random tokens, with max_seq_len = L so the number of LSH buckets follows the length. Each
length runs in its own fresh subprocess (one at a time), so every peak belongs to that
step alone. The slope between the first and last length, in bytes per token, and the
memory of a 2**20-token step extrapolated linearly from it, close the report.

    python benchmarks/memory.py [--lengths 4096 8192] [--device cpu|cuda] [--bf16]
        [--d-model 512] [--layers 6] [--heads 8] [--d-ff 2048] [--hashes 4] [--vocab 16]
        [--attn lsh|local|full] [--ff-chunk-size 4096] [--threads N] [--src DIR]
        [--extra KEY=VALUE ...] [--timeout S] [--json OUT]

CPU peak = the worker's ru_maxrss (whole process: Python, torch, model, step), with
MALLOC_MMAP_THRESHOLD_=65536 so freed large tensors leave the RSS at once; CUDA peak =
torch.cuda.max_memory_allocated over the step. `--src DIR` measures another checkout
(e.g. a `git worktree` of an earlier commit) the same way.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LENGTHS = (4096, 8192)
MILLION = 2**20
# Workers print one line with this prefix; anything else on stdout is ignored.
RESULT_TAG = "MEMORY_RESULT "
# glibc: serve allocations >= 64 KiB with mmap, so a freed activation is unmapped at once
# and RSS tracks live tensors instead of the allocator's high-water mark.
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


# --------------------------------------------------------------------------- helpers


def parse_value(text: str) -> Any:
    """'none' -> None, 'true'/'false' -> bool, ints, floats; 'a,b' -> a list of those."""
    if "," in text:
        return [parse_value(t) for t in text.split(",") if t]
    low = text.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_extra(items: list[str]) -> dict[str, Any]:
    extra = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--extra wants KEY=VALUE, got {item!r}")
        extra[key.strip()] = parse_value(value.strip())
    return extra


def model_kwargs(args: argparse.Namespace, length: int) -> dict[str, Any]:
    """The ReformerConfig of one measurement (--extra overrides everything)."""
    kwargs: dict[str, Any] = {
        "vocab_size": args.vocab, "d_model": args.d_model, "n_layers": args.layers,
        "n_heads": args.heads, "d_ff": args.d_ff, "attn": args.attn,
        "bucket_size": args.bucket_size, "n_hashes": args.hashes, "causal": True,
        "reversible": True, "dropout": 0.0, "max_seq_len": length,
        "ff_chunk_size": args.ff_chunk_size or None,
    }  # fmt: skip
    kwargs.update(parse_extra(args.extra))
    return kwargs


def current_rss() -> int | None:
    """Resident set size now, in bytes (Linux /proc); None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def max_rss() -> int:
    """Peak RSS of this process so far, in bytes (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def cpu_model() -> str:
    """bench_core.cpu_model, imported when first needed: a worker measures its RSS before
    and during the step without bench_core's imports in it."""
    from bench_core import cpu_model as model_name  # benchmarks/ is sys.path[0] here

    return model_name()


def git_describe(path: Path) -> str:
    """Short commit of the checkout at `path`, '+dirty' when it has uncommitted changes."""
    def git(*cmd: str) -> str:
        proc = subprocess.run(["git", "-C", str(path), *cmd], capture_output=True, text=True,
                              check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "not a git checkout"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


# --------------------------------------------------------------------------- worker side


@dataclass
class Step:
    """What one measured training step runs on, built by `setup_step` (nothing run yet)."""

    device: Any  # torch.device
    cfg: Any  # ReformerConfig
    model: Any  # ReformerLM
    opt: Any  # AdamW; its two moment buffers are allocated lazily, inside the step
    n_params: int  # tied weights counted once
    has_loss: bool
    loss_fn: Callable[[], Any]  # mean next-token cross-entropy over tokens[:, 1:]
    seqformer_file: str

    @property
    def loss_method(self) -> str:
        return "model.loss" if self.has_loss else "F.cross_entropy(model(tokens))"

    def autocast(self, bf16: bool) -> Any:
        import contextlib

        import torch

        if bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def setup_step(args: argparse.Namespace, length: int) -> Step:
    """Seeded model, random tokens, optimizer and loss of the step at length `length`."""
    import torch
    import torch.nn.functional as F

    import seqformer
    from seqformer.core import ReformerConfig, ReformerLM

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    cfg = ReformerConfig(**model_kwargs(args, length))
    model = ReformerLM(cfg).to(dev).train()
    tokens = torch.randint(0, args.vocab, (1, length), device=dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    has_loss = callable(getattr(model, "loss", None))

    def loss_fn() -> torch.Tensor:
        if has_loss:  # mean next-token cross-entropy over tokens[:, 1:], chunked
            return model.loss(tokens)
        logits = model(tokens)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten())

    return Step(dev, cfg, model, opt, sum(p.numel() for p in model.parameters()), has_loss,
                loss_fn, str(Path(seqformer.__file__).resolve()))


def loss_status(loss_value: float) -> str:
    """'ok', or why the step's loss is not a finite number."""
    if loss_value != loss_value or abs(loss_value) == float("inf"):
        return f"non-finite loss {loss_value}"
    return "ok"


def measure(args: argparse.Namespace, length: int) -> dict[str, Any]:
    import gc

    import torch

    step = setup_step(args, length)
    dev, model = step.device, step.model
    cuda = dev.type == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.synchronize(dev)
        before = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    else:
        before = current_rss()
    peak_before = max_rss()

    start = time.perf_counter()
    model.zero_grad(set_to_none=True)
    with step.autocast(args.bf16):
        loss = step.loss_fn()
    loss.backward()
    step.opt.step()
    if cuda:
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - start
    loss_value = float(loss.item())

    if cuda:
        peak = torch.cuda.max_memory_allocated(dev)
        reserved = torch.cuda.max_memory_reserved(dev)
        device_name = torch.cuda.get_device_name(dev)
    else:
        peak, reserved, device_name = max_rss(), None, cpu_model()

    status = loss_status(loss_value)
    if status == "ok" and not cuda and peak <= peak_before:
        status = "ok (RSS peak set before the step)"
    return {
        "status": status,
        "length": length,
        "peak_bytes": peak,
        "before_bytes": before,
        "maxrss_before_step_bytes": peak_before,
        "max_reserved_bytes": reserved,
        "seconds": seconds,
        "loss": loss_value,
        "loss_method": step.loss_method,
        "n_params": step.n_params,
        "param_state_bytes": 4 * step.n_params * 4,  # params + grads + AdamW moments, fp32
        "n_buckets": getattr(step.cfg, "n_buckets", None),
        "axial_shape": list(getattr(step.cfg, "axial_shape", None) or []),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device_name": device_name,
        "seqformer_file": step.seqformer_file,
    }


def worker_main(args: argparse.Namespace,
                measure: Callable[[argparse.Namespace, int], dict[str, Any]] = measure,
                tag: str = RESULT_TAG) -> None:
    """Measures length args.worker (seqformer from --src when given) and prints the result
    as one `tag` line."""
    if args.src:
        sys.path.insert(0, str(Path(args.src).resolve()))
    try:
        result = measure(args, args.worker)
    except Exception as exc:  # report it; the parent carries on with the next length
        traceback.print_exc()
        result = {"status": f"error: {type(exc).__name__}: {exc}", "length": args.worker}
    print(tag + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- parent side


def worker_command(args: argparse.Namespace, length: int, script: str = __file__) -> list[str]:
    cmd = [
        sys.executable, str(Path(script).resolve()), "--worker", str(length),
        "--device", args.device, "--d-model", str(args.d_model), "--layers", str(args.layers),
        "--heads", str(args.heads), "--d-ff", str(args.d_ff), "--hashes", str(args.hashes),
        "--vocab", str(args.vocab), "--attn", args.attn, "--bucket-size", str(args.bucket_size),
        "--ff-chunk-size", str(args.ff_chunk_size), "--threads", str(args.threads),
        "--seed", str(args.seed),
    ]  # fmt: skip
    if args.bf16:
        cmd.append("--bf16")
    if args.src:
        cmd += ["--src", str(args.src.resolve())]
    if args.extra:
        cmd += ["--extra", *args.extra]
    return cmd


def run_one(args: argparse.Namespace, length: int, *, script: str = __file__,
            tag: str = RESULT_TAG, child_env: dict[str, str] | None = CHILD_ENV,
            timed: bool = False) -> dict[str, Any]:
    """Runs `script --worker length` in a fresh subprocess and returns its `tag` result, or
    a status saying how it failed; `timed` adds the subprocess's wall time as
    worker_seconds to a result that came back."""
    env = dict(os.environ, **(child_env or {}))
    source = str(args.src.resolve()) if args.src else str(REPO_ROOT)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    start = time.perf_counter()
    try:
        proc = subprocess.run(worker_command(args, length, script), capture_output=True,
                              text=True, env=env, timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout (>{args.timeout:g} s)", "length": length}
    wall = time.perf_counter() - start
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(tag):
            result = json.loads(line[len(tag) :])
            if timed:
                result["worker_seconds"] = wall
            if not result["status"].startswith("ok"):
                sys.stderr.write(proc.stderr[-3000:])
            return result
    sys.stderr.write(proc.stderr[-3000:])  # died without a result: OOM kill, segfault, ...
    if proc.returncode < 0:
        return {"status": f"killed by signal {-proc.returncode} (OOM?)", "length": length}
    return {"status": f"crashed (exit {proc.returncode})", "length": length}


def mib(n: float | None) -> str:
    return "—" if n is None else f"{n / 2**20:,.1f}"


def slope_and_forecast(results: list[dict[str, Any]]) -> tuple[float, float] | None:
    """(bytes per token, bytes at 2**20 tokens) from the first and last length, or None."""
    first, last = results[0], results[-1]
    if len(results) < 2 or not all(r["status"].startswith("ok") for r in (first, last)):
        return None
    if last["length"] == first["length"]:
        return None
    slope = (last["peak_bytes"] - first["peak_bytes"]) / (last["length"] - first["length"])
    return slope, first["peak_bytes"] + slope * (MILLION - first["length"])


def header_lines(args: argparse.Namespace, info: dict[str, Any]) -> list[str]:
    """The report's first lines: command, date, versions, device, source and config; `info`
    is the first successful result ({} when none)."""
    source = Path(args.src).resolve() if args.src else REPO_ROOT
    threads = info.get("threads", "?")
    return [
        f"- command: `python {shlex.join(sys.argv)}`",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- torch {info.get('torch', '?')}, python {platform.python_version()}",
        f"- device: {args.device}, {info.get('device_name') or cpu_model()}"
        + ("" if args.device == "cuda"
           else f" ({os.cpu_count()} logical cores, torch threads {threads})"),
        f"- seqformer: {info.get('seqformer_file', source)} ({git_describe(source)}), "
        f"loss via {info.get('loss_method', '?')}",
        f"- config: vocab {args.vocab}, d_model {args.d_model}, {args.layers} layers, "
        f"{args.heads} heads, d_ff {args.d_ff}, attn {args.attn}, bucket {args.bucket_size}, "
        f"{args.hashes} hashes, causal, reversible, dropout 0, batch 1, max_seq_len = L, "
        f"ff_chunk_size {args.ff_chunk_size or None}"
        + (", bf16 autocast" if args.bf16 else ", float32")
        + (f", extra {parse_extra(args.extra)}" if args.extra else ""),
    ]


def render(args: argparse.Namespace, results: list[dict[str, Any]]) -> str:
    ok = [r for r in results if r["status"].startswith("ok")]
    info = ok[0] if ok else {}
    cuda = args.device == "cuda"
    before_label = "allocated before step MiB" if cuda else "RSS before step MiB"
    peak_label = "peak CUDA alloc MiB" if cuda else "peak RSS MiB"
    lines = header_lines(args, info)
    if info:
        lines.append(
            f"- {info['n_params']:,} parameters; params + grads + AdamW moments (fp32) = "
            f"{mib(info['param_state_bytes'])} MiB, constant in L (it cancels in the slope)"
        )
    lines += [
        "- one step = forward + loss + backward + AdamW step (moments allocated in it); "
        + ("peak = torch.cuda.max_memory_allocated over the step" if cuda else
           "peak = worker ru_maxrss (whole process), MALLOC_MMAP_THRESHOLD_=65536"),
        "",
        f"| L | n_buckets | {peak_label} | {before_label} | step above it MiB | step s | loss "
        "| status |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        peak, before = r.get("peak_bytes"), r.get("before_bytes")
        above = peak - before if peak is not None and before is not None else None
        secs = f"{r['seconds']:.2f}" if "seconds" in r else "—"
        loss = f"{r['loss']:.4f}" if "loss" in r else "—"
        lines.append(
            f"| {r['length']} | {r.get('n_buckets', '—')} | {mib(peak)} | {mib(before)} "
            f"| {mib(above)} | {secs} | {loss} | {r['status']} |"
        )
    fit = slope_and_forecast(results)
    lines.append("")
    if fit is None:
        lines.append("slope: — (needs two different lengths whose first and last runs succeeded)")
    else:
        slope, forecast = fit
        first, last = results[0]["length"], results[-1]["length"]
        lines.append(
            f"slope: {slope:,.0f} bytes/token ({slope / 1e3:,.1f} KB/token), predicted 1M-token "
            f"step: {forecast / 1e9:,.1f} GB ({forecast / 2**30:,.1f} GiB)"
        )
        lines.append(
            f"(from L = {first} and {last}: slope = (peak_{last} - peak_{first}) / "
            f"({last} - {first}); predicted = peak_{first} + slope x (2**20 - {first}))"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None, *, doc: str = __doc__,
               timeout: float = 1800.0) -> argparse.Namespace:
    """The options of this script and of memory_breakdown.py (its `doc` and `timeout`)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=list(DEFAULT_LENGTHS),
                   help="sequence lengths, each measured in its own subprocess")
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--d-ff", type=int, default=2048)
    p.add_argument("--hashes", type=int, default=4)
    p.add_argument("--vocab", type=int, default=16)
    p.add_argument("--bucket-size", type=int, default=64)
    p.add_argument("--attn", choices=("lsh", "local", "full"), default="lsh",
                   help="attention kind of every layer")
    p.add_argument("--ff-chunk-size", type=int, default=4096,
                   help="feed-forward chunk in tokens (0 = None, unchunked)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast around forward + loss")
    p.add_argument("--threads", type=int, default=0,
                   help="torch.set_num_threads in the worker (0 = torch default)")
    p.add_argument("--src", type=Path,
                   help="checkout to import seqformer from (default: this repo)")
    p.add_argument("--extra", nargs="+", default=[], metavar="KEY=VALUE",
                   help="more ReformerConfig kwargs (ints, floats, true/false, none, a,b lists)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=timeout, help="seconds per worker")
    p.add_argument("--json", type=Path, metavar="OUT", help="write the results as JSON here")
    p.add_argument("--worker", type=int, metavar="L", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        parse_extra(args.extra)
    except ValueError as exc:
        p.error(str(exc))
    if args.src and not (args.src / "seqformer").is_dir():
        p.error(f"--src {args.src}: no seqformer/ package there")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        worker_main(args)
        return
    results = []
    for length in args.lengths:  # one worker at a time: peaks must not overlap
        print(f"[memory] L={length} ...", file=sys.stderr, flush=True)
        result = run_one(args, length)
        print(f"[memory]   {result['status']}, peak {mib(result.get('peak_bytes'))} MiB",
              file=sys.stderr, flush=True)
        results.append(result)
    report = render(args, results)
    print(report)
    if args.json:
        fit = slope_and_forecast(results)
        write_json(args, results, report, {"slope_bytes_per_token": fit and fit[0],
                                           "predicted_bytes_1m_tokens": fit and fit[1]})


def write_json(args: argparse.Namespace, results: list[dict[str, Any]], report: str,
               summary: dict[str, Any]) -> None:
    """--json OUT: the command, the options, the results, `summary` and the report."""
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "command": sys.argv,
        "args": {k: str(v) if isinstance(v, Path) else v
                 for k, v in vars(args).items() if k != "worker"},
        "results": results,
        **summary,
        "report": report,
    }, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
