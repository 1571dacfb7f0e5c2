"""`seqformer info RUN`: what a model directory holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..pipeline.classify import METRICS
from ..pipeline.run_dir import read_baseline, read_config, read_metrics
from .common import clean_errors, out


@clean_errors
def info(run: Annotated[Path, typer.Argument(help="model directory")]) -> None:
    """What a model directory holds: domain, model size, training, validation."""
    cfg = read_config(run)
    m = cfg["model"]
    table = Table(title=str(run), show_header=False)
    table.add_column("key")
    table.add_column("value")
    options = cfg["data"].get("options") or {}
    table.add_row("domain", cfg["domain"] + "".join(f", {k} {v}" for k, v in options.items()))
    table.add_row("model", f"{m['n_layers']} layers, d_model {m['d_model']}, {m['n_heads']} "
                  f"heads, d_ff {m['d_ff']}, attn {m['attn']}, bucket {m['bucket_size']}, "
                  f"{m['n_hashes']} hashes, {m['n_buckets']} buckets")
    table.add_row("context", f"max_seq_len {m['max_seq_len']:,}, trained on windows of "
                  f"{cfg['data']['seq_len']:,}")
    table.add_row("weights", "model.safetensors" if (run / "model.safetensors").exists()
                  else "none yet (training unfinished)")
    if cfg.get("task", "lm") == "classify":
        _info_classifier(run, cfg, table)
        out.print(table)
        return
    if cfg.get("task") == "seq2seq":
        s2s, e = cfg["seq2seq"], cfg["seq2seq"]["encoder"]
        table.add_row("task", f"sequence to sequence: {s2s['source_domain']} -> "
                      f"{cfg['domain']}" + (", encoder and decoder share weights"
                                            if s2s["share_weights"] else ""))
        if s2s.get("decoder_only"):
            table.add_row("encoder", f"none: the model reads the source (up to "
                          f"{s2s['source_len']:,} tokens) as a prefix of the target")
        else:
            table.add_row("encoder", f"{e['n_layers']} layers, attn {e['attn']}, sources up "
                          f"to {s2s['source_len']:,} tokens (the model above is the decoder)")
    train, val = read_metrics(run)
    if train:
        table.add_row("trained steps", f"{train[-1][0] + 1} (train {train[-1][1]:.4f} "
                      "bits/token)")
    if val:
        best = min(v for _, v in val)
        # Lightning logs a validation during training at step - 1 and the closing one
        # (after the last step) at the step itself
        at = min(val[-1][0] + 1, train[-1][0] + 1) if train else val[-1][0] + 1
        table.add_row("validation", f"{val[-1][1]:.4f} bits/token at step {at} "
                      f"(best {best:.4f})")
    baseline = read_baseline(run)
    if baseline is not None:
        table.add_row("baseline", f"order-{baseline[1]['order']} Markov: "
                      f"{baseline[1]['val_bits']:.4f} bits/token on the same validation tokens")
    out.print(table)


def _info_classifier(run: Path, cfg: dict, table: Table) -> None:
    clf = cfg["classify"]
    start = (f"from {clf['pretrained']}" + (" (head only)" if clf["freeze"] else "")
             if clf["pretrained"] else "from scratch")
    table.add_row("task", f"classifier of {len(clf['classes'])} classes "
                  f"({', '.join(clf['classes'])}), {start}")
    train, val = read_metrics(run, "loss", "val_acc")
    if train:
        table.add_row("trained steps", f"{train[-1][0] + 1} (train loss {train[-1][1]:.4f})")
    path = run / METRICS
    if path.is_file():
        m = json.loads(path.read_text())
        v = m.get("validation")
        if v:
            table.add_row("validation", f"accuracy {v['accuracy']:.4f}, MCC {v['mcc']:.4f}, "
                          f"AUROC {v['auroc']:.4f} on {v['n']:,} held-out sequences "
                          f"({m['minutes']:.1f} min run)")
    elif val:
        table.add_row("validation", f"accuracy {val[-1][1]:.4f} (training unfinished)")
