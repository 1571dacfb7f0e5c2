"""Which attention pays: held-out bits for each attention variant at an equal budget.

Trains the same model once per variant with `seqformer train` (a fresh subprocess each,
so every run is what a user gets) and only `model.attn` / `model.n_hashes` changed:

    local      every layer local (its chunk and the one before)
    lsh-N      every layer LSH with N hash rounds (N = 1, 2, 4, 8)
    alt        local and LSH alternating, 2 hashes (the presets' choice)
    full       every layer full causal attention

Two budgets (issue 18):
    --minutes M   equal wall time: each run stops after M minutes of training and its
                  cosine schedule anneals by the clock, so every variant gets a finished
                  schedule in the same time. Run alone: a second process on the machine
                  changes how many steps fit.
    --steps S     equal steps: S optimizer steps each. Wall time does not change the
                  result, so `--jobs 2 --threads 1` runs two at once.

    python benchmarks/attention_quality.py dna --minutes 3 --out /tmp/aq
    python benchmarks/attention_quality.py midi --steps 200 --jobs 2 --threads 1 --out /tmp/aq

Each run leaves its directory under OUT/<domain>-<budget>/<variant>; the script prints a
Markdown table (steps, tokens/s, final held-out bits, bits at every validation with its
wall time) and writes OUT/<domain>-<budget>.json, which `--plot` turns into the bits
against wall-time figure of docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from seqformer.pipeline.run_dir import read_metrics

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
DATA = {
    "dna": ("--fasta", SHARED / "dna" / "ecoli_k12_mg1655.fna.gz"),
    "midi": ("--midi", SHARED / "midi" / "bach"),
}
VARIANTS = ("local", "alt", "lsh-1", "lsh-2", "lsh-4", "lsh-8", "full")


def variant_overrides(variant: str, n_layers: int) -> list[str]:
    """The config overrides of one variant; everything else is the preset's."""
    if variant == "alt":
        kinds = [("local", "lsh")[i % 2] for i in range(n_layers)]
        return [f"model.attn=[{', '.join(kinds)}]", "model.n_hashes=2"]
    if variant.startswith("lsh-"):
        return ["model.attn=lsh", f"model.n_hashes={int(variant[4:])}"]
    return [f"model.attn={variant}"]
PROGRESS = re.compile(r"step (\d+)/\d+.*?([\d,]+) tokens/s\s+elapsed ([\d:]+)")


def seconds(clock: str) -> int:
    total = 0
    for part in clock.split(":"):
        total = 60 * total + int(part)
    return total


def train_one(domain: str, data: Path, variant: str, budget: list[str], out: Path,
              threads: int, config: Path, minutes: float | None) -> dict:
    run = out / variant
    n_layers = yaml.safe_load(config.read_text())["model"]["n_layers"]
    cmd = [sys.executable, "-m", "seqformer", "train", domain, DATA[domain][0], str(data),
           "--config", str(config), "--out", str(run), "--force", *budget,
           *variant_overrides(variant, n_layers)]
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    started = time.monotonic()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env)
    (out / f"{variant}.log").write_text(proc.stdout)
    if proc.returncode != 0:
        sys.stderr.write("\n".join(proc.stdout.splitlines()[-30:]) + "\n")
        return {"variant": variant, "status": f"exit {proc.returncode}"}
    return summarize(variant, run, proc.stdout, minutes) | {
        "wall_seconds": time.monotonic() - started}


def summarize(variant: str, run: Path, log: str, minutes: float | None = None) -> dict:
    """A finished run's figures from its directory and its `seqformer train` output
    (minutes: the run's time limit, its training time when no progress line says more)."""
    clock: dict[int, int] = {}  # step -> seconds of training, from the progress lines
    rate = None
    for m in PROGRESS.finditer(log):
        clock[int(m[1])] = seconds(m[3])
        rate = float(m[2].replace(",", ""))
    vals = read_metrics(run)[1]
    steps = vals[-1][0]  # the closing validation of the final weights, at the final step
    # metrics.csv files a periodic validation under the step before it
    curve = [(step + 1, bits) for step, bits in vals[:-1]] + [(steps, vals[-1][1])]
    if clock:  # training time at the last step, from the last progress line's rate
        last = max(clock)
        clock.setdefault(steps, round(clock[last] * steps / last))
    elif minutes:
        clock[steps] = round(60 * minutes)
    return {"variant": variant, "status": "ok", "steps": steps, "final_bits": vals[-1][1],
            "tokens_per_s": rate, "curve": [(s, b, clock.get(s)) for s, b in curve],
            "train_seconds": clock.get(steps),
            "baseline": next((line.strip() for line in log.splitlines() if "Markov" in line),
                             None)}


def table(results: list[dict]) -> str:
    out = ["| variant | steps | tokens/s | held-out bits (final) | bits at each validation "
           "(step @ training time) |", "|---|---:|---:|---:|---|"]
    for r in results:
        if r["status"] != "ok":
            out.append(f"| {r['variant']} | | | {r['status']} | |")
            continue
        curve = ", ".join(f"{b:.4f} ({s} @ {t // 60}:{t % 60:02d})" if t is not None
                          else f"{b:.4f} ({s})" for s, b, t in r["curve"][:-1])
        rate = "—" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:,.0f}"
        out.append(f"| {r['variant']} | {r['steps']} | {rate} "
                   f"| **{r['final_bits']:.4f}** | {curve} |")
    return "\n".join(out)


def plot(files: list[Path], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(files), figsize=(6 * len(files), 4.2), squeeze=False)
    for ax, path in zip(axes[0], files):
        data = json.loads(path.read_text())
        finals = []
        for r in data["results"]:
            pts = [(t / 60, b) for _, b, t in r.get("curve", []) if t is not None]
            if r["status"] != "ok" or not pts:
                continue
            finals.append(r["final_bits"])
            style = "--" if r["variant"] in ("local", "full") else "-"
            ax.plot(*zip(*pts), style, marker="o", ms=3,
                    label=f"{r['variant']}: {r['final_bits']:.4f} ({r['steps']} steps)")
        markov = [float(m[1]) for r in data["results"]
                  if (m := re.search(r"Markov baseline ([\d.]+)", r.get("baseline") or ""))]
        if markov:
            ax.axhline(markov[0], color="gray", ls=":", label=f"Markov baseline: {markov[0]:.4f}")
        # the axis shows the spread of the better half; a variant far behind (full
        # attention's few steps) stays in the legend
        finals.sort()
        best, cut = finals[0], finals[(len(finals) - 1) // 2]
        low = min([best, *markov])
        ax.set_ylim(low - 0.5 * (cut - low) - 0.005, cut + 2.0 * (cut - low) + 0.02)
        ax.set_xlabel("training time (min)")
        ax.set_ylabel(data["unit"])
        ax.set_title(data["title"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("domain", nargs="?", choices=sorted(DATA))
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, help="equal wall time per variant")
    budget.add_argument("--steps", type=int, help="equal optimizer steps per variant")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="comma list of " + ",".join(VARIANTS))
    p.add_argument("--data", type=Path, help="input instead of E. coli / the Bach chorales")
    p.add_argument("--config", type=Path,
                   help="preset instead of benchmarks/configs/compare-<domain>.yaml")
    p.add_argument("--out", type=Path, default=Path("runs/attention-quality"))
    p.add_argument("--jobs", type=int, default=1, help="runs at once (only with --steps)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (0: default)")
    p.add_argument("--reread", action="store_true",
                   help="rebuild the table and JSON from the runs already in OUT")
    p.add_argument("--plot", type=Path, nargs="+", metavar="JSON",
                   help="draw these results files into --figure instead of training")
    p.add_argument("--figure", type=Path, default=Path("docs/comparison_quality.png"))
    args = p.parse_args(argv)
    if args.plot:
        plot(args.plot, args.figure)
        return
    if args.domain is None or (args.minutes is None) == (args.steps is None):
        p.error("give a domain and one of --minutes / --steps")
    if args.jobs > 1 and args.minutes is not None:
        p.error("--minutes runs must run one at a time (they share the clock)")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := set(variants) - set(VARIANTS):
        p.error(f"unknown variant(s): {', '.join(sorted(unknown))}")
    data = args.data or DATA[args.domain][1]
    if not data.exists():
        sys.exit(f"{data} is missing (the shared data directory)")

    if args.minutes is not None:
        tag, budget = f"{args.minutes:g}min", [f"train.max_minutes={args.minutes}",
                                               "train.max_steps=100000"]
    else:
        tag, budget = f"{args.steps}steps", [f"train.max_steps={args.steps}"]
    out = args.out / f"{args.domain}-{tag}"
    config = args.config or HERE / "configs" / f"compare-{args.domain}.yaml"
    if args.reread:
        results = [summarize(v, out / v, (out / f"{v}.log").read_text(), args.minutes)
                   for v in variants]
    else:
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(
                lambda v: train_one(args.domain, data, v, budget, out, args.threads, config,
                                    args.minutes),
                variants))
    unit = "held-out bits/base" if args.domain == "dna" else "held-out bits/token"
    name = "E. coli" if args.domain == "dna" else "Bach chorales"
    each = f"{args.minutes:g} min each" if args.minutes else f"{args.steps} steps each"
    title = f"{name}, {each}"
    summary = {"domain": args.domain, "budget": tag, "unit": unit, "title": title,
               "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
               "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.domain}-{tag}.json").write_text(json.dumps(summary, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
