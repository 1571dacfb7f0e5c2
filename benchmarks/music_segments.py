"""Does a long sample keep its statistics to the end? The quality features of
benchmarks/music_quality_features.py for consecutive equal stretches of one piece.

    seqformer sample midi --model runs/bach-events --length 100000 --out long.mid --compile
    python benchmarks/music_segments.py long.mid --segments 10

A sample that runs away (notes piling up, pitches drifting to the edges) shows it as a
trend down the table; the last column set is the reference pieces' mean when --reference
is given.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pretty_midi
from music_quality_features import piece_features  # benchmarks/ is sys.path[0] when run

from seqformer.domains import get_domain
from seqformer.domains.midi import load_midi

SHOWN = ("mean_polyphony", "duration_median", "pitch_class_entropy", "pitch_span",
         "scale_consistency", "notes_per_second")


def segments(pm: pretty_midi.PrettyMIDI, n: int) -> list[tuple[float, float, dict]]:
    """(start s, end s, features) of n equal stretches of time; a note belongs to the
    stretch where it starts."""
    end = pm.get_end_time()
    edges = np.linspace(0.0, end, n + 1)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        part = pretty_midi.PrettyMIDI()
        for inst in pm.instruments:
            keep = pretty_midi.Instrument(inst.program, inst.is_drum)
            keep.notes = [note for note in inst.notes if lo <= note.start < hi]
            part.instruments.append(keep)
        out.append((float(lo), float(hi), piece_features(part)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("piece", type=Path)
    ap.add_argument("--segments", type=int, default=10)
    ap.add_argument("--reference", type=Path, help="real pieces (their last --holdout)")
    ap.add_argument("--holdout", type=float, default=0.1)
    args = ap.parse_args()
    pm = load_midi(args.piece)
    notes = sum(len(i.notes) for i in pm.instruments)
    print(f"{args.piece}: {notes:,} notes, {pm.get_end_time():,.1f} s")
    print("| seconds | " + " | ".join(SHOWN) + " |")
    print("|---|" + "---:|" * len(SHOWN))
    rows = [(f"{lo:,.0f}-{hi:,.0f}", f) for lo, hi, f in segments(pm, args.segments)]
    if args.reference:
        domain = get_domain("midi")
        records = list(domain.read(args.reference))
        held = records[-max(1, int(round(len(records) * args.holdout))):]
        feats = [piece_features(domain.decode(r.tokens)[0]) for r in held]
        rows.append((f"reference ({len(held)} pieces, mean)",
                     {k: float(np.nanmean([f[k] for f in feats])) for k in SHOWN}))
    for label, f in rows:
        print(f"| {label} | " + " | ".join(f"{f[k]:.3f}" for k in SHOWN) + " |")


if __name__ == "__main__":
    main()
