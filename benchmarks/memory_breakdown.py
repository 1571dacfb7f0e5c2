"""Working memory of one ReformerLM training step, split by component, in bytes per token.

One training step = forward, next-token loss, backward and an AdamW step, at batch 1 on
random tokens with max_seq_len = L (the same step as benchmarks/memory.py). Instead of the
process RSS this counts tensor storages: a TorchDispatchMode registers every storage an
operator creates (its bytes count until the storage is freed) and files it under the
component whose code allocated it, so the bytes live at the step's peak come out split by
component. Parameters exist before the step and are not counted; gradients and the AdamW
moments are created in the step and are (both are constant in L and cancel in the slope).
Each length runs in its own fresh subprocess, one at a time; the per-token slope between
the first and last length closes the report, by component and in total.

    python benchmarks/memory_breakdown.py [--lengths 4096 8192] [--device cpu|cuda] [--bf16]
        [--d-model 512] [--layers 6] [--heads 8] [--d-ff 2048] [--hashes 4] [--vocab 16]
        [--bucket-size 64] [--attn lsh|local|full] [--ff-chunk-size 4096] [--threads N]
        [--src DIR] [--extra KEY=VALUE ...] [--timeout S] [--json OUT]

`--src DIR` measures another checkout (e.g. a `git worktree` of an earlier commit): the
worker imports seqformer from DIR; without `model.loss` there the loss is the full-logit
F.cross_entropy(model(tokens)). Counting every operator with a stack walk is slow: try
`--lengths 256 512 --d-model 64 --heads 2 --d-ff 128 --layers 2` first.

Which component a storage belongs to: the innermost frame of the Python stack at its
allocation whose file is inside the seqformer package decides (table CATEGORY_OF_FILE,
and model/lm.py by function, MODEL_FUNCTIONS). An operator that autograd's engine runs for
a built-in backward formula (not a custom Function's Python backward, whose own stack
is used) is filed by the stack that created its autograd node in the forward, or in a
recompute inside a custom backward (anomaly mode records it, with check_nan off).
Outside seqformer: torch/optim on the stack -> optimizer; the benchmark's own loss line
-> head and loss; anything else -> other. Storages that are a parameter's .grad at the
end of the step (and were allocated before the peak) are moved to "parameter
gradients". A per-frame table (file:function) shows the raw attribution.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import memory  # benchmarks/memory.py: benchmarks/ is sys.path[0] when this file is run
from memory import header_lines, mib, parse_args, run_one, setup_step, worker_main, write_json

# Frames in these files are the benchmark's own (memory.py builds the step and its loss_fn).
BENCH_FILES = frozenset(os.path.realpath(f) for f in (__file__, memory.__file__))
# Workers print one line with this prefix; anything else on stdout is ignored.
RESULT_TAG = "BREAKDOWN_RESULT "

STREAMS = "streams"
ATTENTION = "attention"
FEED_FORWARD = "feed-forward"
HEAD = "head and loss"
EMBEDDINGS = "embeddings"
GRADS = "parameter gradients"
OPTIMIZER = "optimizer (AdamW)"
OTHER = "other"
CATEGORIES = (STREAMS, ATTENTION, FEED_FORWARD, HEAD, EMBEDDINGS, GRADS, OPTIMIZER, OTHER)

# Path inside the seqformer package -> component.
CATEGORY_OF_FILE = {
    **{f"core/attention/{name}.py": ATTENTION
       for name in ("module", "dispatch", "buckets", "hashing", "kernels_torch",
                    "kernels_flex", "kernels_triton")},
    "core/layers/feedforward.py": FEED_FORWARD,
    "core/layers/reversible.py": STREAMS,
    "core/layers/chunked_loss.py": HEAD,
    "core/layers/axial_positions.py": EMBEDDINGS,
    "core/layers/embeddings.py": EMBEDDINGS,
}
# core/model/lm.py by function name (the final norm runs in hidden_states / _final).
MODEL_FUNCTIONS = {
    "_embed": EMBEDDINGS,
    "forward": HEAD,
    "loss": HEAD,
    "hidden_states": STREAMS,
    "_final": STREAMS,
    "_streams": STREAMS,
}
PHASES = ("forward+loss", "backward", "optimizer")
_TRACEBACK_LINE = re.compile(r'File "([^"]+)", line \d+, in (\S+)')


# --------------------------------------------------------------------------- the counter


def _live_frames(frame: Any) -> Iterator[tuple[str, str]]:
    """(filename, function) of `frame` and its callers, innermost first."""
    while frame is not None:
        yield frame.f_code.co_filename, frame.f_code.co_name
        frame = frame.f_back


def _traceback_frames(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(filename, function) of a traceback.format_stack() list, innermost first."""
    for line in reversed(list(lines)):
        match = _TRACEBACK_LINE.search(line)
        if match:
            yield match.group(1), match.group(2)


def _make_counter(package_dir: str) -> Any:
    """A LiveBytes dispatch mode (as in tests/test_memory.py) that also files every storage
    under a component and keeps, per phase of the step, the split at that phase's peak."""
    import torch
    from torch.autograd.function import BackwardCFunction
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    torch_dir = os.path.realpath(os.path.dirname(torch.__file__)) + os.sep
    optim_dir = torch_dir + "optim" + os.sep
    package_dir = os.path.realpath(package_dir) + os.sep

    class BreakdownBytes(TorchDispatchMode):
        """The bytes held by tensors created under this mode, now and at each phase's
        peak, split by component and by allocating frame."""

        def __init__(self) -> None:
            super().__init__()
            self.live: dict[int, tuple[int, str, str, int]] = {}  # nbytes, cat, raw, seq
            self.now = 0
            self.seq = 0
            self.by_category: dict[str, int] = {}
            self.by_frame: dict[str, int] = {}
            self.frame_category: dict[str, str] = {}
            self.phase = PHASES[0]
            # phase -> (bytes, seq, by_category, by_frame) at that phase's peak
            self.peaks: dict[str, tuple[int, int, dict[str, int], dict[str, int]]] = {}
            self._where_cache: dict[str, tuple[str, str]] = {}

        # -- attribution ------------------------------------------------------------
        def _where(self, filename: str) -> tuple[str, str]:
            """(tag, short name) of a source file: tag is seqformer, optim, bench, torch
            or other."""
            hit = self._where_cache.get(filename)
            if hit is None:
                real = os.path.realpath(filename) if filename.startswith(os.sep) else filename
                if real.startswith(package_dir):
                    hit = ("seqformer", real[len(package_dir):].replace(os.sep, "/"))
                elif real.startswith(optim_dir):
                    hit = ("optim", "torch/" + real[len(torch_dir):].replace(os.sep, "/"))
                elif real in BENCH_FILES:
                    hit = ("bench", "benchmark")
                elif real.startswith(torch_dir):
                    hit = ("torch", "torch/" + real[len(torch_dir):].replace(os.sep, "/"))
                else:
                    hit = ("other", os.path.basename(real))
                self._where_cache[filename] = hit
            return hit

        def _classify(self, frames: Iterable[tuple[str, str]]
                      ) -> tuple[str | None, str | None]:
            """(component or None, raw label) from frames given innermost first."""
            optim = loss_line = False
            innermost = first = None
            for filename, func in frames:
                tag, short = self._where(filename)
                if tag == "seqformer":
                    if short == "core/model/lm.py":
                        return MODEL_FUNCTIONS.get(func, OTHER), f"{short}:{func}"
                    return CATEGORY_OF_FILE.get(short, OTHER), f"{short}:{func}"
                if tag == "optim":
                    optim = True
                elif tag == "bench" and func == "loss_fn":
                    loss_line = True
                label = f"{short}:{func}"
                first = first or label
                if innermost is None and tag not in ("torch", "optim"):
                    innermost = label
            if optim:
                return OPTIMIZER, "torch/optim (outside seqformer)"
            if loss_line:
                return HEAD, "benchmark loss_fn (outside seqformer)"
            return None, innermost or first

        def _attribute(self, caller: Any) -> tuple[str, str]:
            node = torch._C._current_autograd_node()
            if node is not None and not isinstance(node, BackwardCFunction):
                # a built-in backward formula (maybe nested in a custom backward's
                # torch.autograd.backward): filed by the forward that made its node
                made_at = node.metadata.get("traceback_")
                if made_at:
                    category, raw = self._classify(_traceback_frames(made_at))
                    if category is not None:
                        return category, f"{raw} [autograd backward]"
            category, raw = self._classify(_live_frames(caller))
            if category is not None:
                return category, raw
            return OTHER, f"other: {raw}"

        # -- bookkeeping ------------------------------------------------------------
        def _free(self, key: int) -> None:
            nbytes, category, raw, _ = self.live.pop(key)
            self.now -= nbytes
            self.by_category[category] -= nbytes
            self.by_frame[raw] -= nbytes

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            out = func(*args, **(kwargs or {}))
            attributed = None
            for t in tree_flatten(out)[0]:
                if not isinstance(t, torch.Tensor):
                    continue
                storage = t.untyped_storage()
                key = storage._cdata
                if key in self.live:  # a view shares its base's storage
                    continue
                if attributed is None:
                    attributed = self._attribute(sys._getframe(1))
                category, raw = attributed
                nbytes = storage.nbytes()
                self.seq += 1
                self.live[key] = (nbytes, category, raw, self.seq)
                self.now += nbytes
                self.by_category[category] = self.by_category.get(category, 0) + nbytes
                self.by_frame[raw] = self.by_frame.get(raw, 0) + nbytes
                self.frame_category[raw] = category
                weakref.finalize(storage, self._free, key)
                peak = self.peaks.get(self.phase)
                if peak is None or self.now > peak[0]:
                    self.peaks[self.phase] = (self.now, self.seq, dict(self.by_category),
                                              dict(self.by_frame))
            return out

        def grads_to_own_category(self, params: Iterable[torch.Tensor]) -> None:
            """Files the storages that are parameters' .grad now under GRADS, in every
            phase peak they were live at (allocated before it; alive now, so alive then)."""
            seen = set()
            for p in params:
                if p.grad is None:
                    continue
                key = p.grad.untyped_storage()._cdata
                if key in seen or key not in self.live:
                    continue
                seen.add(key)
                nbytes, category, raw, seq = self.live[key]
                for _, peak_seq, by_category, by_frame in self.peaks.values():
                    if seq <= peak_seq:
                        by_category[category] -= nbytes
                        by_category[GRADS] = by_category.get(GRADS, 0) + nbytes
                        by_frame[raw] -= nbytes
                        by_frame["(parameter .grad)"] = (by_frame.get("(parameter .grad)", 0)
                                                         + nbytes)
                self.frame_category["(parameter .grad)"] = GRADS

    return BreakdownBytes()


# --------------------------------------------------------------------------- worker side


def measure(args: argparse.Namespace, length: int) -> dict[str, Any]:
    import gc

    import torch

    step = setup_step(args, length)
    dev, model = step.device, step.model
    counter = _make_counter(os.path.dirname(step.seqformer_file))
    amp = step.autocast(args.bf16)
    model.zero_grad(set_to_none=True)
    gc.collect()
    start = time.perf_counter()
    # anomaly mode records the forward stack of every autograd node (no NaN checks: those
    # would allocate), which files the backward of ordinary autograd ops
    with torch.autograd.set_detect_anomaly(True, check_nan=False), counter:
        counter.phase = "forward+loss"
        with amp:
            loss = step.loss_fn()
        counter.phase = "backward"
        loss.backward()
        counter.phase = "optimizer"
        step.opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - start
    loss_value = float(loss.item())
    counter.grads_to_own_category(model.parameters())

    def split(phases: tuple[str, ...]) -> dict[str, Any]:
        phase = max((p for p in phases if p in counter.peaks),
                    key=lambda p: counter.peaks[p][0])
        total, _, by_category, by_frame = counter.peaks[phase]
        return {
            "phase": phase,
            "bytes": total,
            "by_category": {c: by_category.get(c, 0) for c in CATEGORIES},
            "by_frame": {k: v for k, v in by_frame.items() if v},
        }

    return {
        "status": memory.loss_status(loss_value),
        "length": length,
        "step_peak": split(PHASES),
        "fwd_bwd_peak": split(PHASES[:2]),
        "phase_peaks": {p: v[0] for p, v in counter.peaks.items()},
        "frame_category": counter.frame_category,
        "live_after_step_bytes": counter.now,
        "seconds": seconds,
        "loss": loss_value,
        "loss_method": step.loss_method,
        "n_params": step.n_params,
        "n_buckets": getattr(step.cfg, "n_buckets", None),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device_name": (torch.cuda.get_device_name(dev) if dev.type == "cuda"
                        else memory.cpu_model()),
        "seqformer_file": step.seqformer_file,
    }


def slope(first: float, last: float, span: int) -> float:
    return (last - first) / span


def split_table(ok: list[dict[str, Any]], which: str, d_model: int) -> list[str]:
    """Rows: components; columns: MiB live at the peak per length, then the slope."""
    lengths = [r["length"] for r in ok]
    two = len(ok) >= 2 and lengths[-1] != lengths[0]
    span = lengths[-1] - lengths[0] if two else 1
    width = 4 * d_model  # one float32 row of d_model
    head = "| component | " + " | ".join(f"L={n} MiB" for n in lengths)
    rule = "|---|" + "---:|" * len(lengths)
    if two:
        head += f" | slope bytes/token | slope in fp32 d_model rows ({width} B)"
        rule += "---:|---:|"
    lines = [head + " |", rule]

    def row(name: str, values: list[int]) -> str:
        text = f"| {name} | " + " | ".join(mib(v) for v in values)
        if two:
            s = slope(values[0], values[-1], span)
            text += f" | {s:,.0f} | {s / width:,.2f}"
        return text + " |"

    for category in CATEGORIES:
        values = [r[which]["by_category"].get(category, 0) for r in ok]
        if any(values):
            lines.append(row(category, values))
    lines.append(row("**total**", [r[which]["bytes"] for r in ok]))
    lines.append("| phase of the peak | " + " | ".join(r[which]["phase"] for r in ok)
                 + (" | | |" if two else " |"))
    return lines


def frame_table(ok: list[dict[str, Any]], which: str) -> list[str]:
    """The raw attribution: allocating frame (file:function) -> component, MiB at the peak."""
    lengths = [r["length"] for r in ok]
    two = len(ok) >= 2 and lengths[-1] != lengths[0]
    span = lengths[-1] - lengths[0] if two else 1
    frames: dict[str, str] = {}
    for r in ok:
        for raw in r[which]["by_frame"]:
            frames.setdefault(raw, r["frame_category"].get(raw, OTHER))
    order = sorted(frames, key=lambda f: (CATEGORIES.index(frames[f]), f))
    head = "| allocating frame | component | " + " | ".join(f"L={n} MiB" for n in lengths)
    rule = "|---|---|" + "---:|" * len(lengths)
    if two:
        head += " | slope bytes/token"
        rule += "---:|"
    lines = [head + " |", rule]
    for raw in order:
        values = [r[which]["by_frame"].get(raw, 0) for r in ok]
        text = f"| `{raw}` | {frames[raw]} | " + " | ".join(mib(v) for v in values)
        if two:
            text += f" | {slope(values[0], values[-1], span):,.0f}"
        lines.append(text + " |")
    return lines


def same_peak(ok: list[dict[str, Any]]) -> bool:
    return all(r["step_peak"]["phase"] != "optimizer" for r in ok)


def render(args: argparse.Namespace, results: list[dict[str, Any]]) -> str:
    ok = [r for r in results if r["status"].startswith("ok")]
    info = ok[0] if ok else {}
    lines = header_lines(args, info) + [
        "- one step = forward + loss + backward + AdamW step; bytes = live tensor storages "
        "created in the step (parameters excluded; grads and AdamW moments included)",
    ]
    if info:
        lines.append(f"- {info['n_params']:,} parameters (fp32 grads = "
                     f"{mib(4 * info['n_params'])} MiB, AdamW moments = "
                     f"{mib(8 * info['n_params'])} MiB)")
    lines += [f"- L={r['length']}: {r['status']}"
              + (f", n_buckets {r.get('n_buckets')}, step {r['seconds']:.1f} s under the "
                 f"counter, worker {r['worker_seconds']:.1f} s, loss {r['loss']:.4f}, "
                 "phase peaks MiB: " + ", ".join(f"{p} {mib(b)}"
                                                 for p, b in r["phase_peaks"].items())
                 if r["status"].startswith("ok") else "")
              for r in results]
    if not ok:
        return "\n".join(lines)
    lines += ["", "### Live at the step's peak, by component", ""]
    lines += split_table(ok, "step_peak", args.d_model)
    if not same_peak(ok):
        lines += ["", "The step's peak falls in the optimizer step at some length (activations "
                  "are freed by then), so its slope is not the activation memory per token. "
                  "The peak of forward + backward alone:", "",
                  "### Live at the forward + backward peak, by component", ""]
        lines += split_table(ok, "fwd_bwd_peak", args.d_model)
    lines += ["", "### Raw attribution at the step's peak (innermost seqformer frame)", ""]
    lines += frame_table(ok, "step_peak")
    if not same_peak(ok):
        lines += ["", "### Raw attribution at the forward + backward peak", ""]
        lines += frame_table(ok, "fwd_bwd_peak")
    lines += [
        "",
        "Components: streams = core/reversible.py and model.py hidden_states (the residual "
        "streams, their gradients, the final norm); attention = core/{attention, "
        "bucketed_attention, hashing, flex_attention}.py; feed-forward = "
        "core/feedforward.py; head and loss = core/chunked_loss.py, model.py loss/forward "
        "and the benchmark's F.cross_entropy; embeddings = model.py _embed and "
        "core/{axial_positions, embeddings}.py; parameter gradients = storages that are a "
        "parameter's .grad after the step; optimizer = allocated under torch/optim. `[autograd "
        "backward]` = an op of a built-in backward formula, filed by the stack that made its "
        "autograd node (forward or recompute). Slope "
        f"= (bytes at L={ok[-1]['length']} - bytes at L={ok[0]['length']}) / "
        f"({ok[-1]['length']} - {ok[0]['length']}).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv, doc=__doc__, timeout=3600.0)
    if args.worker is not None:
        worker_main(args, measure, RESULT_TAG)
        return
    results = []
    for length in args.lengths:  # one worker at a time
        print(f"[breakdown] L={length} ...", file=sys.stderr, flush=True)
        result = run_one(args, length, script=__file__, tag=RESULT_TAG, child_env=None,
                         timed=True)
        peak = result.get("step_peak", {}).get("bytes")
        print(f"[breakdown]   {result['status']}, step peak {mib(peak)} MiB, "
              f"{result.get('worker_seconds', 0):.0f} s", file=sys.stderr, flush=True)
        results.append(result)
    report = render(args, results)
    print(report)
    if args.json:
        ok = [r for r in results if r["status"].startswith("ok")]
        slopes: dict[str, Any] = {}
        if len(ok) >= 2 and ok[-1]["length"] != ok[0]["length"]:
            span = ok[-1]["length"] - ok[0]["length"]
            for which in ("step_peak", "fwd_bwd_peak"):
                first, last = ok[0][which], ok[-1][which]
                slopes[which] = {
                    "total": slope(first["bytes"], last["bytes"], span),
                    "by_category": {c: slope(first["by_category"][c], last["by_category"][c],
                                             span) for c in CATEGORIES},
                }
        write_json(args, results, report, {"slopes_bytes_per_token": slopes})


if __name__ == "__main__":
    main()
