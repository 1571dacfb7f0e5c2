"""The Reformer paper's duplication task (Kitaev et al., ICLR 2020, section 5, Table 2).

Every example is `0 w 0 w`: w is a string of random symbols from 1..V-1 and the loss is
only on the second copy, which a 1-layer model can predict perfectly by attending half a
sequence back. One model is trained per attention setting (full, LSH with 1, 2, 4 hashes)
and each is evaluated with full attention and with LSH at 8, 4, 2 and 1 hashes: the
paper's table, rows = training attention, columns = evaluation attention.

    python apps/duplication/duplication.py --length 128 --vocab 32 --d-model 128 \
        --bucket-size 64 --steps 800 --train full lsh1 lsh2 lsh4 \
        --out apps/duplication/results.md

Positions use a plain learned table (axial_shape=(1, length)) by default: with
seqformer's factorized axial default the copy offset length/2 - 1 is not a multiple of the
inner axis, and a 1-layer shared-QK model then misses the key wherever the inner index
wraps (see README.md).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from seqformer import (
    ConfigError,
    InputError,
    ReformerConfig,
    ReformerLM,
    atomic_path,
    check_output,
)

TRAIN_KINDS = {"full": ("full", 1), "lsh1": ("lsh", 1), "lsh2": ("lsh", 2), "lsh4": ("lsh", 4),
               "lsh8": ("lsh", 8)}


# -- data --------------------------------------------------------------------------------
def make_batch(batch: int, length: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, length) sequences `0 w 0 w`, |w| = length / 2 - 1, symbols of w in 1..vocab-1."""
    n = length // 2 - 1
    w = torch.randint(1, vocab, (batch, n), generator=generator)
    zero = torch.zeros(batch, 1, dtype=torch.long)
    return torch.cat([zero, w, zero, w], dim=1)


def loss_mask(length: int) -> torch.Tensor:
    """Bool (length - 1,): which next-token predictions count. Prediction t (the logits at
    position t) targets token t + 1; only targets inside the second copy of w can be
    known, so those are positions n + 1 .. 2n with n = |w| (the paper masks the rest)."""
    n = length // 2 - 1
    t = torch.arange(length - 1)
    return (t >= n + 1) & (t <= 2 * n)


def masked_loss_and_accuracy(logits: torch.Tensor, tokens: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and greedy (teacher-forced) accuracy on the second copy only."""
    mask = loss_mask(tokens.shape[1]).to(tokens.device)
    pred = logits[:, :-1][:, mask]
    target = tokens[:, 1:][:, mask]
    loss = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1))
    acc = (pred.argmax(-1) == target).float().mean()
    return loss, acc


# -- models ------------------------------------------------------------------------------
@dataclass
class Setting:
    length: int
    vocab: int
    d_model: int
    d_ff: int
    n_heads: int
    bucket_size: int
    # (1, length) = a plain learned position table; None = seqformer's factorized default
    axial_shape: tuple[int, int] | None = None


def make_config(s: Setting, attn: str, n_hashes: int) -> ReformerConfig:
    return ReformerConfig(vocab_size=s.vocab, d_model=s.d_model, n_layers=1, n_heads=s.n_heads,
                          d_ff=s.d_ff, attn=attn, n_hashes=n_hashes, bucket_size=s.bucket_size,
                          max_seq_len=s.length, axial_shape=s.axial_shape, causal=True,
                          reversible=False, dropout=0.0)


def with_attention(model: ReformerLM, s: Setting, attn: str, n_hashes: int) -> ReformerLM:
    """The same weights under another attention kind: parameters do not depend on `attn`,
    so a full-attention model evaluates with LSH (and back) by loading its state dict."""
    other = ReformerLM(make_config(s, attn, n_hashes))
    other.load_state_dict(model.state_dict(), strict=True)
    return other.eval()


def train(s: Setting, attn: str, n_hashes: int, steps: int, batch_size: int, lr: float,
          seed: int, log_every: int = 100) -> tuple[ReformerLM, float]:
    """Train one model on freshly generated batches. Returns it and the seconds it took."""
    torch.manual_seed(seed)  # initial weights and the random LSH rotations drawn in training
    model = ReformerLM(make_config(s, attn, n_hashes)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    warmup = max(1, steps // 20)

    def schedule(step: int) -> float:  # linear warmup, cosine decay to 10%
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    data = torch.Generator().manual_seed(seed + 1)
    start = time.perf_counter()
    for step in range(steps):
        tokens = make_batch(batch_size, s.length, s.vocab, data)
        loss, acc = masked_loss_and_accuracy(model(tokens), tokens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if log_every and ((step + 1) % log_every == 0 or step + 1 == steps):
            elapsed = time.perf_counter() - start
            print(f"  [{attn}-{n_hashes}] step {step + 1}/{steps}  loss {loss.item():.3f}  "
                  f"acc {acc.item():.3f}  {elapsed / (step + 1):.2f} s/step", flush=True)
    return model.eval(), time.perf_counter() - start


@torch.no_grad()
def accuracy(model: ReformerLM, tokens: torch.Tensor, batch_size: int = 16) -> float:
    """Accuracy on the second copy over a fixed evaluation set (eval mode: LSH uses the
    fixed, seeded rotations, so the figure is reproducible)."""
    model.eval()
    correct = 0.0
    for i in range(0, len(tokens), batch_size):
        chunk = tokens[i:i + batch_size]
        _, acc = masked_loss_and_accuracy(model(chunk), chunk)
        correct += acc.item() * len(chunk)
    return correct / len(tokens)


def eval_columns(eval_hashes: list[int]) -> list[tuple[str, str, int]]:
    """(column name, attention kind, n_hashes) in the paper's order: Full, then LSH-8..1."""
    return [("Full", "full", 1)] + [(f"LSH-{h}", "lsh", h) for h in eval_hashes]


def evaluate(model: ReformerLM, s: Setting, tokens: torch.Tensor, eval_hashes: list[int]
             ) -> dict[str, float]:
    """One row of the table: the trained weights under each evaluation attention."""
    full = with_attention(model, s, "full", 1)
    lsh = with_attention(model, s, "lsh", max(eval_hashes, default=1))
    row = {}
    for name, attn, h in eval_columns(eval_hashes):
        if attn == "lsh":
            lsh.set_n_hashes(h)  # same weights, h hashing rounds
        row[name] = accuracy(full if attn == "full" else lsh, tokens)
    return row


# -- report ------------------------------------------------------------------------------
def row_name(kind: str) -> str:
    attn, h = TRAIN_KINDS[kind]
    return "Full" if attn == "full" else f"LSH-{h}"


def markdown_table(rows: dict[str, dict[str, float]], eval_hashes: list[int]) -> str:
    cols = [name for name, _, _ in eval_columns(eval_hashes)]
    lines = ["| Train \\ Eval | " + " | ".join(cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for kind, row in rows.items():
        lines.append(f"| {row_name(kind)} | "
                     + " | ".join(f"{100 * row[c]:.1f}" for c in cols) + " |")
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--length", type=int, default=128, help="sequence length (even)")
    p.add_argument("--vocab", type=int, default=32, help="V: symbols 1..V-1, plus 0")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--d-ff", type=int, default=None, help="default: d_model (as the paper)")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--bucket-size", type=int, default=64,
                   help="n_buckets = next_pow2(length / bucket_size), at least 2")
    p.add_argument("--axial", type=str, default="table",
                   help="positions: 'table' = axial_shape (1, length), a plain learned table; "
                        "'default' = seqformer's factorized axial shape; or 'A,B'")
    p.add_argument("--steps", type=int, default=800, help="training steps per model")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--train", nargs="+", default=["full", "lsh1", "lsh2", "lsh4"],
                   help=f"models to train, from {sorted(TRAIN_KINDS)}")
    p.add_argument("--eval-hashes", type=int, nargs="+", default=[8, 4, 2, 1])
    p.add_argument("--eval-size", type=int, default=256, help="held-out sequences")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=str, default=None, help="markdown table to write")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    return p.parse_args(argv)


def check_args(a: argparse.Namespace) -> Setting:
    if a.length < 6 or a.length % 2:
        raise InputError(f"--length must be an even number >= 6, got {a.length}")
    if a.vocab < 3:
        raise InputError(f"--vocab must be >= 3 (0 plus at least two symbols), got {a.vocab}")
    for name in ("steps", "batch_size", "eval_size", "d_model", "heads", "bucket_size"):
        if getattr(a, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be positive")
    if a.lr <= 0:
        raise InputError(f"--lr must be positive, got {a.lr}")
    unknown = [k for k in a.train if k not in TRAIN_KINDS]
    if unknown:
        raise InputError(f"--train: unknown model {unknown[0]!r} (use {sorted(TRAIN_KINDS)})")
    if any(h < 1 for h in a.eval_hashes):
        raise InputError("--eval-hashes must be positive integers")
    if a.axial == "table":
        axial = (1, a.length)
    elif a.axial == "default":
        axial = None
    else:
        try:
            axial = tuple(int(x) for x in a.axial.split(","))
        except ValueError:
            raise InputError(f"--axial must be 'table', 'default' or like 16,16, "
                             f"got {a.axial!r}") from None
    s = Setting(a.length, a.vocab, a.d_model, a.d_ff or a.d_model, a.heads, a.bucket_size, axial)
    try:
        make_config(s, "lsh", 1)
    except ConfigError as e:
        raise InputError(f"invalid model setting: {e}") from None
    return s


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        s = check_args(a)
        if a.out:
            check_output(a.out, a.force)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = make_config(s, "lsh", 1)
    print(f"setting: length {s.length}, vocab {s.vocab}, d_model {s.d_model}, d_ff {s.d_ff}, "
          f"{s.n_heads} heads, 1 layer, bucket_size {s.bucket_size}, n_buckets {cfg.n_buckets}, "
          f"axial {cfg.axial_shape}; {a.steps} steps x batch {a.batch_size}, lr {a.lr}",
          flush=True)
    # held-out set: its own generator, seeded apart from every training stream
    eval_tokens = make_batch(a.eval_size, s.length, s.vocab,
                             torch.Generator().manual_seed(10_000 + a.seed))
    rows: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    total = time.perf_counter()
    for kind in a.train:
        attn, h = TRAIN_KINDS[kind]
        model, seconds[kind] = train(s, attn, h, a.steps, a.batch_size, a.lr, a.seed)
        rows[kind] = evaluate(model, s, eval_tokens, a.eval_hashes)
        print(f"  {row_name(kind)}: " + ", ".join(f"{k} {100 * v:.1f}%"
                                                  for k, v in rows[kind].items()), flush=True)
    total = time.perf_counter() - total
    table = markdown_table(rows, a.eval_hashes)
    print(table)
    print(f"total {total:.0f} s; training " + ", ".join(f"{row_name(k)} {v:.0f} s"
                                                          for k, v in seconds.items()))
    if a.out:
        text = (f"Duplication task, accuracy (%) on the second copy, {a.eval_size} held-out "
                f"sequences\n\nCommand: `python apps/duplication/duplication.py "
                f"{' '.join(sys.argv[1:] if argv is None else argv)}`\n\n"
                f"Setting: length {s.length}, vocab {s.vocab}, d_model {s.d_model}, d_ff "
                f"{s.d_ff}, {s.n_heads} heads, 1 layer, bucket_size {s.bucket_size}, n_buckets "
                f"{cfg.n_buckets}, axial {cfg.axial_shape}, {a.steps} steps x batch "
                f"{a.batch_size}, lr {a.lr}, seed {a.seed}\n\n{table}\n\n"
                f"Wall clock: {total:.0f} s (training " + ", ".join(
                    f"{row_name(k)} {v:.0f} s" for k, v in seconds.items()) + ")\n")
        with atomic_path(a.out) as tmp:
            tmp.write_text(text)
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
