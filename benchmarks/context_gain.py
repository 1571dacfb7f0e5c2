"""Does a model use what lies far back? Bits per token at each scoring context, split into
*repeat positions* and the rest.

A position is a repeat position when the k tokens before it (16 for MIDI, 20 bases for
DNA) occurred earlier in the same record and their most recent earlier occurrence is at
least --min-distance tokens back (1,024): exactly the positions a model with a 1K
receptive field cannot copy, and one that reads its context can make nearly free. The
"copy" column is how often the token that followed that earlier occurrence follows
again: what a perfect copier gets right there. For DNA, *inverted repeat positions* are
those whose k bases' reverse complement last occurred that far back (and that are not
repeat positions): a model with reverse-complement copies (model.copy_complement) can copy
the other strand there; "elsewhere" is then neither kind. --forward-copies-only scores such
a model with its reverse-complement candidates dropped (the forward ones and their gate
weights kept): what the other strand adds, on the same weights.

    python benchmarks/context_gain.py --model runs/midi-long \\
        --midi ../shared/data/midi/planetblupi/music003.mid \\
               ../shared/data/midi/planetblupi/music005.mid \\
        --contexts 1024 4096 16384

Each context N scores every token with at most N preceding tokens of its own record, in
windows of N overlapping by half (`seqformer score --context N`; docs/long-context.md).
Contexts beyond the model's max_seq_len are skipped, except with the copy mixture: then
the windows are max_seq_len long and the copy mixture reads the rest. --first N scores
only the first N tokens of each record (quicker). The repeat positions' bits at the
longest context are also split by the kind of token there (MIDI: on, off, shift,
velocity, program, drums; DNA: the base), to see which tokens the model fails to copy.
--tail F scores only the last F of each record (the held-out tail of a `split: tail` run,
rounded as training rounds it), with the rest of the record as its context: a repeat's
earlier occurrence may then lie anywhere in the record.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from seqformer.core import ReformerLM
from seqformer.pipeline.inference import token_log_likelihoods
from seqformer.pipeline.run_dir import load_run


def repeat_sources(tokens: np.ndarray, k: int, min_distance: int,
                   complement: np.ndarray | None = None) -> np.ndarray:
    """source (n,), int: for a repeat position i, the j with i - j >= min_distance at which
    tokens[j-k:j], the latest earlier occurrence of tokens[i-k:i], ends; -1 elsewhere.
    With `complement` (id -> id), the latest tokens[j-k:j] that is the reverse complement
    of tokens[i-k:i] instead (the inverted repeats)."""
    n = len(tokens)
    source = np.full(n, -1, dtype=np.int64)
    if n <= k:
        return source
    tokens = np.asarray(tokens, dtype=np.int64)
    windows = np.lib.stride_tricks.sliding_window_view(tokens, k)
    if complement is not None:
        mirrored = np.lib.stride_tricks.sliding_window_view(complement[tokens][::-1], k)
    last: dict[bytes, int] = {}
    for i in range(k, n):
        key = windows[i - k].tobytes()  # tokens[i-k:i]
        last_key = last.get(key)
        last[key] = i
        if complement is None:
            j = last_key
        else:  # tokens[i-k:i] reverse-complemented, read from the mirrored sequence
            j = last.get(mirrored[n - i].tobytes())
        if j is not None and i - j >= min_distance and (complement is None or j > k):
            source[i] = j
    return source


def repeat_positions(tokens: np.ndarray, k: int, min_distance: int,
                     complement: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(repeat, copy_right), bool (n,): position i is a repeat when tokens[i-k:i] occurred
    before and its latest earlier occurrence, tokens[j-k:j] with j < i, has i - j >=
    min_distance (`repeat_sources`); copy_right: tokens[j] == tokens[i] there. With
    `complement`, the inverted repeats, and copy_right: complement[tokens[j-k-1]] ==
    tokens[i]."""
    source = repeat_sources(tokens, k, min_distance, complement)
    repeat = source >= 0
    copy_right = np.zeros(len(source), dtype=bool)
    tokens = np.asarray(tokens, dtype=np.int64)
    at, j = np.nonzero(repeat)[0], source[repeat]
    copy_right[at] = (tokens[j] if complement is None else complement[tokens[j - k - 1]]) \
        == tokens[at]
    return repeat, copy_right


def drop_reverse_copies(model: ReformerLM) -> None:
    """A copy_complement model -> the same model with forward copy candidates only."""
    n = len(model.cfg.copy_k)
    if not model.cfg.copy_complement:
        raise SystemExit("--forward-copies-only: the model has no reverse-complement copies")
    model.cfg.copy_complement = ()
    model.copy_complement = None
    gate = model.copy_gate
    gate.trust, gate.bias = (torch.nn.Parameter(p.detach()[:n]) for p in (gate.trust, gate.bias))


def context_gain(model_dir: Path, domain_name: str, files: list[Path], contexts: list[int],
                 k: int, min_distance: int, first: int | None,
                 forward_copies_only: bool = False, tail: float | None = None) -> dict:
    model, domain, _ = load_run(model_dir, domain_name)
    if forward_copies_only:
        drop_reverse_copies(model)
    records = [rec for f in files for rec in domain.read(f)]
    tokens = [rec.tokens[:first] if first else rec.tokens for rec in records]
    starts = [len(t) - int(round(len(t) * tail)) if tail else 0 for t in tokens]

    def scored(masks: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([m[s:] for m, s in zip(masks, starts)])

    masks = [repeat_positions(t, k, min_distance) for t in tokens]
    repeat = scored([m[0] for m in masks])
    copy = scored([m[1] for m in masks])
    inverted = np.zeros_like(repeat)
    if hasattr(domain, "complement_ids"):
        complement = np.array(domain.complement_ids())
        inverted = scored([repeat_positions(t, k, min_distance, complement)[0]
                           for t in tokens]) & ~repeat
    rest = ~repeat & ~inverted
    rows, bits = [], None
    for n in contexts:
        if n > model.max_seq_len and model.copy_gate is None:
            print(f"context {n:,}: beyond the model's max_seq_len ({model.max_seq_len:,}), "
                  "skipped")
            continue
        # beyond max_seq_len the copy mixture alone reads the rest (`score --context`)
        window = min(n, model.max_seq_len)
        bits = -np.concatenate([token_log_likelihoods(model, t, domain.sep_id, window,
                                                      context=n, start=s)
                                for t, s in zip(tokens, starts)]) / np.log(2)
        rows.append({"context": n, "bits": float(bits.mean()),
                     "bits_repeat": float(bits[repeat].mean()) if repeat.any() else None,
                     "bits_inverted": float(bits[inverted].mean()) if inverted.any() else None,
                     "bits_rest": float(bits[rest].mean())})
    result = {"model": str(model_dir), "records": [r.id for r in records],
              "tokens": int(len(repeat)), "repeat_share": float(repeat.mean()),
              "inverted_share": float(inverted.mean()),
              "copy_right": float(copy[repeat].mean()) if repeat.any() else None,
              "k": k, "min_distance": min_distance, "tail": tail, "rows": rows}
    if bits is not None and repeat.any():
        names = domain.vocabulary()["tokens"]
        kinds = np.array([names[t].split("_")[0]
                          for t in np.concatenate([t[s:] for t, s in zip(tokens, starts)])])
        total = bits[repeat].sum()
        result["by_kind"] = {
            kind: {"share": float((kinds[repeat] == kind).mean()),
                   "bits": float(bits[repeat & (kinds == kind)].mean()),
                   "median": float(np.median(bits[repeat & (kinds == kind)])),
                   "share_of_bits": float(bits[repeat & (kinds == kind)].sum() / total)}
            for kind in sorted(set(kinds[repeat]))}
    return result


def markdown(result: dict) -> str:
    scope = (f" (the last {result['tail']:.0%} of each, given the rest)" if result.get("tail")
             else "")
    lines = [f"{result['model']} on {', '.join(result['records'])}{scope}: "
             f"{result['tokens']:,} tokens, {result['repeat_share']:.1%} repeat positions "
             f"(last {result['k']} tokens seen >= {result['min_distance']:,} back; a copy is right "
             f"{(result['copy_right'] or 0):.1%} of the time there)"
             + (f"; {result['inverted_share']:.1%} inverted repeat positions"
                if result["inverted_share"] else ""), "",
             "| context | bits/token | on repeat positions |"
             + (" on inverted repeats |" if result["inverted_share"] else "")
             + " elsewhere |",
             "|---:|---:|---:|" + ("---:|" if result["inverted_share"] else "") + "---:|"]
    for r in result["rows"]:
        cells = [f"{r['context']:,}", f"{r['bits']:.3f}"]
        for key in ("bits_repeat", "bits_inverted")[:2 if result["inverted_share"] else 1]:
            cells.append("-" if r[key] is None else f"{r[key]:.3f}")
        lines.append("| " + " | ".join(cells + [f"{r['bits_rest']:.3f}"]) + " |")
    if "by_kind" in result:
        lines += ["", f"Repeat positions at context {result['rows'][-1]['context']:,}, by the "
                  "kind of token there:", "",
                  "| token | share of repeat positions | bits | median | share of their bits |",
                  "|---|---:|---:|---:|---:|"]
        for kind, r in result["by_kind"].items():
            lines.append(f"| {kind} | {r['share']:.1%} | {r['bits']:.3f} | {r['median']:.3f} "
                         f"| {r['share_of_bits']:.1%} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    inputs = ap.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--midi", type=Path, nargs="+")
    inputs.add_argument("--fasta", type=Path, nargs="+")
    ap.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    ap.add_argument("--k", type=int, help="context tokens that must repeat (16 MIDI, 20 DNA)")
    ap.add_argument("--min-distance", type=int, default=1024)
    ap.add_argument("--first", type=int, help="score only the first N tokens of each record")
    ap.add_argument("--json", type=Path, help="also write the result here")
    ap.add_argument("--tail", type=float,
                    help="score only the last fraction of each record, given the rest")
    ap.add_argument("--forward-copies-only", action="store_true",
                    help="drop a model's reverse-complement copy candidates")
    args = ap.parse_args()
    domain = "midi" if args.midi else "dna"
    k = args.k or (16 if domain == "midi" else 20)
    result = context_gain(args.model, domain, args.midi or args.fasta, args.contexts, k,
                          args.min_distance, args.first, args.forward_copies_only, args.tail)
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
