"""seqformer's attention kinds against the other efficient transformers: one training step.

One forward + backward at batch 1 on random tokens, same width, depth, heads and FF for
every model, each (model, length) cell in a fresh subprocess (bench_core.py's machinery:
peak memory is that cell's own, a crash or timeout loses one cell):

    lsh          seqformer, every layer LSH (causal)
    local        seqformer, every layer local: own chunk and the one before (causal)
    alt          seqformer, local and LSH alternating, the presets' choice (causal)
    sdpa         full attention, F.scaled_dot_product_attention(is_causal=True) (causal)
    sparse       Sparse Transformer strided pattern, benchmarks/baselines.py (causal)
    local-attn   lucidrains local-attention LocalTransformer, window = bucket (causal)
    performer    performer-pytorch PerformerLM, FAVOR+ (causal; its CPU path)
    longformer   HuggingFace LongformerModel, window 2 x bucket (bidirectional only)
    bigbird      HuggingFace BigBirdModel, block-sparse, block = bucket (bidirectional only)
    linformer    linformer LinformerLM, k = 256 (bidirectional only)

    python benchmarks/compare.py                                  # L = 4096 16384 65536
    python benchmarks/compare.py --lengths 1024 --impls lsh,sdpa,linformer   # smoke test
    python benchmarks/compare.py --out /tmp/compare.md    # also writes /tmp/compare.json
    python benchmarks/compare.py --plot /tmp/compare.json docs/comparison_speed.png

The peers are the `compare` extra (`pip install -e '.[compare]'`), never a dependency of
seqformer. A peer that cannot reach a length (timeout, out of memory) is not tried at the
longer ones. Results: docs/performance.md.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import bench_core as core  # benchmarks/ is sys.path[0] when this file is run

NOTES = {
    "lsh": "seqformer LSH, causal",
    "local": "seqformer local, causal",
    "alt": "seqformer local/LSH alternating, causal",
    "sdpa": "full (SDPA), causal",
    "sparse": "Sparse Transformer strided, causal",
    "local-attn": "local-attention sliding window, causal",
    "performer": "Performer FAVOR+, causal",
    "longformer": "Longformer, bidirectional",
    "bigbird": "BigBird block-sparse, bidirectional",
    "linformer": "Linformer k=256, bidirectional",
}


def build_local(length: int):  # noqa: ANN201
    return core.build_seqformer(length, "local")


def build_alternating(length: int):  # noqa: ANN201
    kinds = ["local", "lsh"] * (core.N_LAYERS // 2) + ["local"] * (core.N_LAYERS % 2)
    return core.build_seqformer(length, kinds)


def build_sparse(length: int):  # noqa: ANN201
    from baselines import SparseTransformerLM

    model = SparseTransformerLM(core.VOCAB, core.D_MODEL, core.N_LAYERS, core.N_HEADS,
                                core.D_FF)
    return model, model


def build_local_attn(length: int):  # noqa: ANN201
    local = core.need("local_attention")
    model = local.LocalTransformer(
        num_tokens=core.VOCAB, max_seq_len=length, dim=core.D_MODEL, depth=core.N_LAYERS,
        causal=True, local_attn_window_size=core.BUCKET, heads=core.N_HEADS,
        dim_head=core.HEAD_DIM, ff_mult=core.D_FF // core.D_MODEL, num_residual_streams=1)
    return model, model


def build_performer(length: int):  # noqa: ANN201
    performer = core.need("performer_pytorch")
    model = performer.PerformerLM(
        num_tokens=core.VOCAB, max_seq_len=length, dim=core.D_MODEL, depth=core.N_LAYERS,
        heads=core.N_HEADS, dim_head=core.HEAD_DIM, causal=True,
        ff_mult=core.D_FF // core.D_MODEL)
    return model, model


def with_head(body, width: int):  # noqa: ANN001, ANN201
    """An encoder body (input_ids -> last_hidden_state) with a token head on top."""
    import torch.nn as nn

    head = nn.Linear(width, core.VOCAB)
    model = nn.ModuleDict({"body": body, "head": head})
    return model, lambda tokens: head(body(input_ids=tokens).last_hidden_state)


def build_longformer(length: int):  # noqa: ANN201
    hf = core.need("transformers")
    cfg = hf.LongformerConfig(
        vocab_size=core.VOCAB, hidden_size=core.D_MODEL, num_hidden_layers=core.N_LAYERS,
        num_attention_heads=core.N_HEADS, intermediate_size=core.D_FF, hidden_act="gelu",
        attention_window=2 * core.BUCKET, max_position_embeddings=length + 2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=1)
    return with_head(hf.LongformerModel(cfg, add_pooling_layer=False), core.D_MODEL)


def build_bigbird(length: int):  # noqa: ANN201
    hf = core.need("transformers")
    cfg = hf.BigBirdConfig(
        vocab_size=core.VOCAB, hidden_size=core.D_MODEL, num_hidden_layers=core.N_LAYERS,
        num_attention_heads=core.N_HEADS, intermediate_size=core.D_FF, hidden_act="gelu",
        attention_type="block_sparse", block_size=core.BUCKET, num_random_blocks=3,
        max_position_embeddings=length, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)
    return with_head(hf.BigBirdModel(cfg, add_pooling_layer=False), core.D_MODEL)


def build_linformer(length: int):  # noqa: ANN201
    linformer = core.need("linformer")
    model = linformer.LinformerLM(num_tokens=core.VOCAB, dim=core.D_MODEL, seq_len=length,
                                  depth=core.N_LAYERS, k=256, heads=core.N_HEADS)
    return model, model


BUILDERS = {
    "lsh": core.build_seqformer,
    "local": build_local,
    "alt": build_alternating,
    "sdpa": core.build_sdpa,
    "sparse": build_sparse,
    "local-attn": build_local_attn,
    "performer": build_performer,
    "longformer": build_longformer,
    "bigbird": build_bigbird,
    "linformer": build_linformer,
}
core.BUILDERS.update(BUILDERS)  # a worker process looks its builder up there


def plot(results: list[dict], out: Path) -> None:
    """tokens/s and peak memory against length, one line per implementation (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (speed, memory) = plt.subplots(1, 2, figsize=(12, 4.5))
    for impl in dict.fromkeys(r["impl"] for r in results):
        ok = [r for r in results if r["impl"] == impl and r["status"].startswith("ok")]
        if not ok:
            continue
        style = "-" if impl in ("lsh", "local", "alt") else "--"
        lengths = [r["length"] for r in ok]
        speed.plot(lengths, [r["length"] / r["seconds"] for r in ok], style, marker="o",
                   label=NOTES.get(impl, impl))
        memory.plot(lengths, [r["peak_mib"] for r in ok], style, marker="o")
    for ax, label in ((speed, "tokens/s (forward + backward)"), (memory, "peak RSS (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    speed.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--plot"]:  # --plot RESULTS.json FIGURE.png
        plot(json.loads(Path(argv[1]).read_text()), Path(argv[2]))
        return
    args = core.parse_args(argv, impls=tuple(BUILDERS), description=__doc__, layers=2,
                           hashes=2, timeout=300.0, mem_limit_gb=20.0)
    if args.worker:
        core.worker_main(args)
        return
    env = core.environment_lines(args)
    print("\n".join(env), file=sys.stderr)
    results, failed_at = [], {}
    for length in args.lengths:
        for impl in args.impls:
            if impl in failed_at:
                results.append(core.Result(impl, length, f"not run ({failed_at[impl]})"))
                continue
            print(f"[compare] {impl} L={length} ...", file=sys.stderr, flush=True)
            result = core.run_one(impl, length, args, script=Path(__file__))
            print(f"[compare]   {result.status} {core.fmt(result.seconds, '.3f')} s",
                  file=sys.stderr, flush=True)
            if not result.ok:
                failed_at[impl] = f"{result.status.split(' (')[0]} at {length}"
            results.append(result)
    table = core.render(results, args.impls, args.lengths, args.device, args.peak_tflops,
                        ours="lsh", notes=NOTES)
    print(table)
    if args.out:
        with args.out.open("a") as fh:
            fh.write("\n".join(env) + "\n\n" + table + "\n")
        args.out.with_suffix(".json").write_text(
            json.dumps([dataclasses.asdict(r) for r in results], indent=1))


if __name__ == "__main__":
    main()
