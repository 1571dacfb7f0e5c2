"""Listen-free quality: generated pieces against real ones, feature by feature
(benchmarks/music_quality_features.py: polyphony, note durations, pitch-class entropy, pitch
span, scale consistency, notes per second), with the overlapping area of the two sets'
distributions (Yang and Lerch, 2018).

    # samples of a trained model (under its note grammar unless --no-grammar)
    python benchmarks/music_quality.py --model runs/bach --reference data/midi/bach \\
        --samples 8 --length 1500
    # any folder of .mid files against any other
    python benchmarks/music_quality.py --generated out/ --reference ../shared/data/midi/bach \\
        --holdout 1

Reference pieces: the last `--holdout` fraction of the files under each --reference (the
split `train midi` makes when no holdout ids are given; 1 = all of them), less any piece
also under --exclude (e.g. data/midi, the bundled sample the main job trains on). With
`--validation`, the block of the same size just before it instead: pieces to choose a
sampler's settings on, so that the held-out ones only report. Both sets are read through
the MIDI tokenization (10 ms, velocity bins), as the model sees music. With `--weigh-like
DIR` the reference folders count as the folders of the same name count among the pieces
under DIR (the training pieces): the held-out tenth of the four composers below is 72%
Palestrina, whose notes are twice as long as Bach's, and the main job's 234 training
pieces are 55% Bach.

    # the main job's model against pieces of the same composers it never trained on
    python benchmarks/music_quality.py --model runs/quick --samples 8 --length 1500 \
        --reference ../shared/data/midi/{bach,palestrina,monteverdi,josquin} \
        --holdout 0.1 --exclude data/midi [--weigh-like data/midi]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from music_quality_features import (  # benchmarks/ is sys.path[0] when this file is run
    FEATURES,
    compare,
    mix_weights,
    piece_features,
    reference_block,
)

from seqformer.domains import get_domain
from seqformer.domains.midi.grammar import (
    KEY_WEIGHT,
    REGISTER_WEIGHT,
    TEXTURE_WEIGHT,
    VOICE_WEIGHT,
)


def generate(model_dir: Path, samples: int, length: int, temperature: float,
             grammar: bool, grammar_options: dict | None = None
             ) -> tuple[list, dict, float, int]:
    """Pieces sampled from a model as one batch (sample k with seed k), the decoder's
    repairs over all, tokens/s over all, and how many notes the grammar had to release
    (or complete) at the end of the samples."""
    from seqformer.pipeline.inference import sample_batch
    from seqformer.pipeline.run_dir import load_run, read_sampling_limits

    model, domain, _ = load_run(model_dir, "midi")
    prompt = np.array([domain.sep_id])
    constraint = (domain.constraint(read_sampling_limits(model_dir), [prompt] * samples,
                                    **(grammar_options or {})) if grammar else None)
    new, rate = sample_batch(model, prompt, length, samples, temperature, seed=0,
                             allowed=domain.generatable(), constraint=constraint)
    pieces, repairs, closed = [], {}, 0
    for k, row in enumerate(new):
        if constraint is not None:
            closing = constraint.closing(k)
            closed += sum(map(domain.ends_note, closing))
            row = np.concatenate([row, np.asarray(closing, dtype=np.int64)])
        pm, fixed = domain.decode(row)
        pieces.append(pm)
        for key, v in fixed.items():
            repairs[key] = repairs.get(key, 0) + v
    return pieces, repairs, rate, closed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", type=Path, nargs="+", required=True)
    ap.add_argument("--holdout", type=float, default=0.1)
    ap.add_argument("--exclude", type=Path, help="skip reference pieces also found here")
    ap.add_argument("--weigh-like", type=Path,
                    help="weigh each reference folder as the folders of its name count "
                         "among the pieces here (e.g. data/midi, the training pieces)")
    ap.add_argument("--validation", action="store_true",
                    help="compare with the block of files just before the held-out ones")
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path)
    source.add_argument("--generated", type=Path)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--length", type=int, default=1500)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--no-grammar", action="store_true")
    ap.add_argument("--texture", type=float, default=TEXTURE_WEIGHT,
                    help="the duration grammar's texture steer (0: off; default %(default)g)")
    ap.add_argument("--voice", type=float, default=VOICE_WEIGHT,
                    help="the duration grammar's voice steer (0: off; default %(default)g)")
    ap.add_argument("--key", type=float, default=KEY_WEIGHT,
                    help="the grammar's key steer (0: off; default %(default)g)")
    ap.add_argument("--register", type=float, default=REGISTER_WEIGHT,
                    help="the grammar's register steer (0: off; default %(default)g)")
    ap.add_argument("--no-redirect", action="store_true",
                    help="events: refuse, not redirect, the note-offs the grammar refuses")
    args = ap.parse_args()
    domain = get_domain("midi")
    skip = ({r.id.split("/")[-1] for r in domain.read(args.exclude)} if args.exclude
            else set())
    reference, folders = [], []
    for folder in args.reference:
        try:
            block = reference_block(list(domain.read(folder)), args.holdout, args.validation)
        except ValueError as e:
            ap.error(f"{folder}: {e}")
        block = [r for r in block if r.id.split("/")[-1] not in skip]
        reference += [piece_features(domain.decode(r.tokens)[0]) for r in block]
        folders += [folder.resolve().name] * len(block)
    weights = None
    if args.weigh_like is not None:
        like = [p.parent.name for p in sorted(args.weigh_like.rglob("*"))
                if p.suffix.lower() in (".mid", ".midi")]
        if not like:
            ap.error(f"--weigh-like {args.weigh_like}: no .mid files there")
        try:
            weights = mix_weights(folders, like)
        except ValueError as e:
            ap.error(f"--weigh-like {args.weigh_like}: {e}")
        shares = {f: round(float(weights[np.array(folders) == f].sum()), 3)
                  for f in dict.fromkeys(folders)}
        print(f"reference weighed as the pieces under {args.weigh_like}: {shares}")
    if args.model is not None:
        options = {"redirect": not args.no_redirect, "texture": args.texture,
                   "voice": args.voice, "key": args.key, "register": args.register}
        pms, repairs, rate, closed = generate(args.model, args.samples, args.length,
                                              args.temperature, not args.no_grammar,
                                              options)
        generated = [piece_features(pm) for pm in pms]
        what = (f"{args.samples} samples of {args.length} tokens from {args.model} "
                f"(temperature {args.temperature}, grammar "
                f"{'off' if args.no_grammar else 'on'}, {rate:.0f} tokens/s)")
    else:
        generated = [piece_features(domain.decode(r.tokens)[0])
                     for r in domain.read(args.generated)]
        repairs, closed, what = None, 0, f"{len(generated)} pieces under {args.generated}"
    print(f"generated: {what}; reference: {len(reference)} "
          f"{'validation' if args.validation else 'held-out'} pieces under "
          f"{', '.join(map(str, args.reference))}"
          + (f", none also under {args.exclude}" if args.exclude else ""))
    print("| feature | generated (mean) | reference (mean) | overlapping area |")
    print("|---|---:|---:|---:|")
    for key, row in compare(generated, reference, weights).items():
        assert key in FEATURES
        print(f"| {key} | {row['generated']:.3f} | {row['reference']:.3f} | "
              f"{row['overlap']:.3f} |")
    if repairs is not None:
        print(f"decoder repairs over all samples: "
              f"{ {k: v for k, v in repairs.items() if v} or 'none'}")
        if not args.no_grammar:
            print(f"notes the grammar released or completed at the end of the samples: "
                  f"{closed}")


if __name__ == "__main__":
    main()
