"""Harmonize held-out chorales with a trained soprano -> ATB model, and score it.

    python apps/harmonize/harmonize.py --model runs/harmonize [--compare runs/harmonize-lm] \
        [--split heldout] [--temperature 0.8] [--pieces 4] [--out runs/harmonize/out]

For every held-out chorale: the model's bits per ATB token given the soprano (the
likelihood `score seq2seq` gives), for the encoder-decoder and for each --compare model
(e.g. the decoder-only one, `seq2seq.decoder_only=true`). For --pieces chorales: alto,
tenor and bass sampled for the real soprano (with --grammar, under the MIDI note
grammar), written as one four-voice MIDI file with a piano roll, and each voice's
range against the textbook SATB ranges and those observed in the training chorales
(voices told apart by their programs: `prepare.py --programs distinct`). Writes
metrics.json into --out.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from seqformer import (
    Domain,
    load_seq2seq,
    midi,
    pair_ids,
    read_sampling_limits,
    target_grammar,
    target_log_likelihoods,
    translate,
)
from seqformer.domains.midi.grammar import KEY_WEIGHT, PACE_WEIGHT, REGISTER_WEIGHT

APP = Path(__file__).resolve().parent


def _module(name: str):  # noqa: ANN202 - the app's own modules, by path (no name clashes)
    spec = importlib.util.spec_from_file_location(f"harmonize_{name}", APP / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


voices = _module("voices")
prepare = _module("prepare")


def read_pairs(folder: Path, soprano: Domain, atb: Domain) -> tuple[list, list]:
    """(soprano records, ATB records) of a split, paired by file name, tokenized as a
    run's domains do (its MIDI vocabulary)."""
    sopranos, atbs = list(soprano.read(folder / "soprano")), list(atb.read(folder / "atb"))
    both, _ = pair_ids([r.id for r in sopranos], [r.id for r in atbs])
    return [sopranos[i] for i, _ in both], [atbs[j] for _, j in both]


def bits(model_dir: str | Path, folder: Path) -> dict:
    """Over the pairs of `folder` the model takes: bits per ATB token (its closing
    separator included) and per chorale (comparable across MIDI vocabularies, whose token
    counts differ), and how many pairs it took."""
    model, soprano, atb, _ = load_seq2seq(model_dir)
    pairs = [(s.tokens, a.tokens) for s, a in zip(*read_pairs(folder, soprano, atb))
             if len(s.tokens) <= model.max_source_len
             and len(a.tokens) + 2 <= model.max_target_len]
    lls = target_log_likelihoods(model, pairs, atb.sep_id, batch_size=4)
    total = -sum(float(ll.sum()) for ll in lls) / np.log(2)
    return {"bits_per_token": total / sum(len(ll) for ll in lls),
            "bits_per_chorale": total / len(pairs), "pairs": len(pairs)}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--compare", nargs="*", default=[], help="other seq2seq runs to score")
    ap.add_argument("--data", default=str(prepare.DEFAULT_OUT))
    ap.add_argument("--split", default="heldout")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pieces", type=int, default=4, help="chorales to harmonize (0: only score)")
    ap.add_argument("--out", default=None, help="default: <model>/harmonized")
    ap.add_argument("--grammar", action=argparse.BooleanOptionalAction, default=True,
                    help="sample under the MIDI note grammar (default; see README)")
    ap.add_argument("--end-with-soprano", action=argparse.BooleanOptionalAction, default=True,
                    help="under the grammar, close the voices when the soprano ends")
    ap.add_argument("--redirect", action=argparse.BooleanOptionalAction, default=True,
                    help="under the grammar, a refused note-off becomes the release it most "
                    "likely meant: the switch to the voice sounding that pitch, or the "
                    "nearest pitch the voice sounds (default)")
    ap.add_argument("--key", type=float, default=KEY_WEIGHT,
                    help="under the grammar, the key steer's weight (0: off; default "
                    "%(default)g; seqformer/domains/midi/grammar.py)")
    ap.add_argument("--register", type=float, default=REGISTER_WEIGHT,
                    help="under the grammar, the register steer's weight (0: off; default "
                    "%(default)g; seqformer/domains/midi/grammar.py)")
    ap.add_argument("--pace", type=float, default=PACE_WEIGHT,
                    help="under the grammar, the pace steer's weight: each voice's notes "
                    "follow the soprano's at the training chorales' ratio (0: off; default "
                    "%(default)g; seqformer/domains/midi/grammar.py)")
    args = ap.parse_args(argv)
    out = Path(args.out or Path(args.model) / "harmonized")
    out.mkdir(parents=True, exist_ok=True)
    scores = {}
    for run in [args.model, *args.compare]:
        scores[str(run)] = got = bits(run, Path(args.data) / args.split)
        print(f"{run}: {got['bits_per_token']:.4f} bits per ATB token, "
              f"{got['bits_per_chorale']:,.1f} per chorale, on {got['pairs']} {args.split} "
              "chorales")
    pieces = []
    if args.pieces > 0:
        pieces = harmonize(args, out)
    (out / "metrics.json").write_text(json.dumps({"bits": scores, "pieces": pieces},
                                                 indent=1, default=str))
    print(f"wrote {out / 'metrics.json'}")
    return 0


def harmonize(args: argparse.Namespace, out: Path) -> list[dict]:
    """Sample alto, tenor and bass for --pieces held-out sopranos; write each as MIDI and a
    piano roll; return each piece's voices against Bach's."""
    model, soprano, atb, _ = load_seq2seq(args.model)
    sopranos, atbs = read_pairs(Path(args.data) / args.split, soprano, atb)
    chosen = sorted(range(len(sopranos)), key=lambda k: len(sopranos[k].tokens))
    chosen = [k for k in chosen if len(atbs[k].tokens) + 2 <= model.max_target_len]
    chosen = chosen[::max(1, len(chosen) // args.pieces)][:args.pieces]
    grammar = (target_grammar(atb, lambda: read_sampling_limits(args.model), soprano,
                              args.end_with_soprano, redirect=args.redirect, key=args.key,
                              register=args.register, pace=args.pace)
               if args.grammar else None)
    made = translate(model, [sopranos[k].tokens for k in chosen], atb.sep_id,
                     model.max_target_len - 1, args.temperature, seed=args.seed,
                     constraint=grammar, allowed=atb.generatable(), batch_size=len(chosen))
    observed = voices.load_observed_ranges(Path(args.data) / "summary.json")
    programs = prepare.VOICE_PROGRAMS
    pieces = []
    for k, tokens in zip(chosen, made):
        name = sopranos[k].id.replace("/", "_")
        atb_pm, repairs = atb.decode(tokens)  # the vocabulary the model was trained on
        soprano_pm = midi.load_midi(sopranos[k].meta["path"])
        midi.write_midi(voices.combine(soprano_pm, atb_pm, programs), out / f"{name}.mid")
        voices.piano_roll_png(soprano_pm, atb_pm, out / f"{name}.png",
                              f"{name}: given soprano, generated alto, tenor, bass", programs)
        report = voices.analyse(atb_pm, observed, programs=programs)
        native = voices.analyse(midi.load_midi(atbs[k].meta["path"]), observed, programs=programs)
        pieces.append({"id": sopranos[k].id, "tokens": len(tokens), "repairs": repairs,
                       "generated": report, "bach": native})
        line = ", ".join(f"{v} {report[v]['notes']} notes {report[v]['min']}-{report[v]['max']}"
                         f" ({report[v]['outside_observed']} outside)"
                         for v in voices.ATB)
        print(f"{name}: {line}; wrote {name}.mid and {name}.png")
    return pieces


if __name__ == "__main__":
    raise SystemExit(main())
