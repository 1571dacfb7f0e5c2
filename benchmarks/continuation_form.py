"""Does a continuation keep the piece's form? Continue a held-out piece from its first
--prompt tokens for --length tokens and compare how much of the continuation repeats
what came 1K+ tokens before (the share of positions whose last 16 tokens were last seen
at least 1,024 tokens back, as in context_gain.py) with the real piece over the same
span; and report the longest run copied verbatim from the prompt (form, not wholesale
copying) and how many distinct 16-token contexts each holds (a sample that loops a few
bars repeats as much as the piece, with far less material). Texture, of the decoded
prompt and continuation: mean polyphony over the time something sounds, the longest note
(seconds) and the notes the decoder had to close at the end (music_quality_features.py).
--grammar samples under the note grammar, as `sample midi` does by default.

    python benchmarks/continuation_form.py --model runs/midi-long \\
        --midi ../shared/data/midi/planetblupi/music003.mid --prompt 4096 --length 20000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from context_gain import repeat_positions
from music_quality_features import piece_features

from seqformer.cli.sample import sample_lm
from seqformer.domains import Domain
from seqformer.domains.midi.grammar import KEY_WEIGHT


def longest_copied_run(source: np.ndarray, text: np.ndarray) -> int:
    """The length of the longest run of `text` that occurs in `source` (binary search over
    the length with 64-bit rolling hashes)."""
    base = np.uint64(1_000_003)

    def grams(t: np.ndarray, n: int) -> np.ndarray:
        t = t.astype(np.uint64) + np.uint64(1)
        prefix = np.zeros(len(t) + 1, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for i, v in enumerate(t):
                prefix[i + 1] = prefix[i] * base + v
            power = np.uint64(1)
            for _ in range(n):
                power *= base
            return prefix[n:] - prefix[:-n] * power

    def found(n: int) -> bool:
        return n == 0 or bool(np.isin(grams(text, n), grams(source, n)).any())

    lo, hi = 0, min(len(source), len(text))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if found(mid) else (lo, mid - 1)
    return lo


def texture(domain: Domain, tokens: np.ndarray) -> dict:
    pm, repairs = domain.decode(tokens)
    features = piece_features(pm)
    return {"mean_polyphony": features["mean_polyphony"],
            "longest_note_s": features["duration_max"],
            "unclosed_notes": repairs.get("unclosed_note", 0)}


def continuation_form(model_dir: Path, piece: Path, prompt_len: int, length: int, seed: int,
                      temperature: float, k: int, min_distance: int, grammar: bool = False,
                      top_k: int | None = None, top_p: float | None = None,
                      trust_pointer: bool = False, key: float = KEY_WEIGHT,
                      fit_trust: bool = True) -> dict:
    holder = {}

    def prompt_tokens(domain):  # noqa: ANN001, ANN202
        holder["real"] = list(domain.read(piece))[0].tokens
        return holder["real"][:prompt_len]

    domain, prompt, samples = sample_lm("midi", model_dir, prompt_tokens, length,
                                        temperature, top_k, top_p, seed, grammar=grammar,
                                        trust_pointer=trust_pointer,
                                        grammar_options={"key": key}, fit_trust=fit_trust)
    real = holder["real"][:prompt_len + length]
    made = np.concatenate([prompt, samples[0][:length]])
    tex = {"real": texture(domain, real),
           # with the grammar's closing tokens, as `sample midi` writes it
           "sample": texture(domain, np.concatenate([prompt, samples[0]]))}
    share, distinct = {}, {}
    for name, seq in (("real", real), ("sample", made)):
        repeat, _ = repeat_positions(seq, k, min_distance)
        share[name] = float(repeat[prompt_len:].mean())
        contexts = np.lib.stride_tricks.sliding_window_view(np.asarray(seq[prompt_len:]), k)
        distinct[name] = len(np.unique(contexts, axis=0))
    return {"model": str(model_dir), "piece": piece.name, "prompt": prompt_len,
            "length": length, "seed": seed, "temperature": temperature, "top_k": top_k,
            "top_p": top_p, "grammar": grammar, "trust_pointer": trust_pointer,
            "fit_trust": fit_trust, "key": key,
            "repeat_share_real": share["real"], "repeat_share_sample": share["sample"],
            "distinct_contexts_real": distinct["real"],
            "distinct_contexts_sample": distinct["sample"],
            "longest_copied_run": longest_copied_run(made[:prompt_len], made[prompt_len:]),
            **{f"{key}_{name}": value for name, t in tex.items() for key, value in t.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--midi", type=Path, required=True)
    ap.add_argument("--prompt", type=int, default=4096)
    ap.add_argument("--length", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, help="sample among the k likeliest tokens")
    ap.add_argument("--top-p", type=float, help="nucleus: the likeliest tokens up to mass p")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--min-distance", type=int, default=1024)
    ap.add_argument("--grammar", action="store_true")
    ap.add_argument("--trust-pointer", action="store_true",
                    help="as `sample midi --trust-pointer` (models with model.copy_pointer)")
    ap.add_argument("--fit-trust", action=argparse.BooleanOptionalAction, default=True,
                    help="with --trust-pointer: the pointer's hit rates fitted to the prompt "
                    "(as `sample midi`; --no-fit-trust: the training pieces', as before "
                    "2026-12-06)")
    ap.add_argument("--key", type=float, default=KEY_WEIGHT,
                    help="with --grammar, as `sample midi --key` (0: off, as before 2026-12-05 "
                    "evening; default %(default)g)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    r = continuation_form(args.model, args.midi, args.prompt, args.length, args.seed,
                          args.temperature, args.k, args.min_distance, args.grammar,
                          args.top_k, args.top_p, args.trust_pointer, args.key,
                          args.fit_trust)
    print(f"| model | piece | prompt | continuation | repeat share (real) | repeat share "
          f"(sample) | longest run copied from the prompt | distinct {args.k}-token contexts "
          f"(real / sample) | mean polyphony (real / sample) | longest note, s (real / "
          f"sample) | notes left sounding (real / sample) |\n"
          f"|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
          f"| {r['model']} | {r['piece']} | {r['prompt']:,} | {r['length']:,} | "
          f"{r['repeat_share_real']:.1%} | {r['repeat_share_sample']:.1%} | "
          f"{r['longest_copied_run']:,} tokens | {r['distinct_contexts_real']:,} / "
          f"{r['distinct_contexts_sample']:,} | {r['mean_polyphony_real']:.1f} / "
          f"{r['mean_polyphony_sample']:.1f} | {r['longest_note_s_real']:.1f} / "
          f"{r['longest_note_s_sample']:.1f} | {r['unclosed_notes_real']:,} / "
          f"{r['unclosed_notes_sample']:,} |")
    if args.json:
        args.json.write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
