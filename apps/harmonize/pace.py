"""How fast Bach's voices move against the soprano, and which held-out voices a harmonizer
kept to the training pace cannot match.

    python apps/harmonize/pace.py [--data apps/harmonize/data]

A voice's pace is its note count per soprano note (what `train seq2seq` stores as the pace
steer's target: the median over the training chorales, `GrammarLimits.pace`). For each
voice this prints the training chorales' pace at a few percentiles, then every held-out
voice whose count the training median pace (times its soprano's notes) misses by more than
25%: the voices that `harmonize.py`'s note-count target cannot reach unless the model
departs from the typical pace, and how unusual Bach's pace is there (its percentile among
the training chorales' same voice).
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pretty_midi

APP = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("harmonize_voices", APP / "voices.py")
voices = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(voices)

TOLERANCE = 0.25  # harmonize.py's target: a voice's note count within 25% of Bach's


def split_paces(folder: Path) -> dict[str, dict[str, tuple[int, int]]]:
    """{chorale file: {voice: (its notes, the soprano's notes)}} for one prepared split."""
    out = {}
    for soprano_file in sorted((folder / "soprano").glob("*.mid")):
        soprano_pm = pretty_midi.PrettyMIDI(str(soprano_file))
        soprano = sum(len(i.notes) for i in soprano_pm.instruments if not i.is_drum)
        atb = pretty_midi.PrettyMIDI(str(folder / "atb" / soprano_file.name))
        parts, _ = voices.split_voices(atb)
        out[soprano_file.name] = {v: (len(parts[v].notes), soprano) for v in voices.ATB}
    return out


def voice_paces(split: dict) -> dict[str, np.ndarray]:
    """{voice: its pace in each chorale of a split (`split_paces`)}."""
    return {v: np.array([c[v][0] / c[v][1] for c in split.values()]) for v in voices.ATB}


def unreachable(paces: dict[str, np.ndarray], heldout: dict
                ) -> tuple[dict[str, float], list[dict]]:
    """From the training chorales' paces (`voice_paces`): (the median pace per voice, the
    held-out voices whose count that pace misses by more than TOLERANCE, each with Bach's
    pace and its percentile among the training chorales)."""
    median = {v: float(np.median(p)) for v, p in paces.items()}
    missed = []
    for name, counts in heldout.items():
        for v, (notes, soprano) in counts.items():
            if abs(median[v] * soprano - notes) > TOLERANCE * notes:
                missed.append({"chorale": name, "voice": v, "bach": notes,
                               "at_median_pace": round(median[v] * soprano, 1),
                               "pace": notes / soprano,
                               "percentile": 100.0 * float(np.mean(paces[v] < notes / soprano))})
    return median, missed


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(APP / "data"), help="prepare.py's output folder")
    args = ap.parse_args(argv)
    train, heldout = (split_paces(Path(args.data) / s) for s in ("train", "heldout"))
    paces = voice_paces(train)
    _, missed = unreachable(paces, heldout)
    for v, p in paces.items():
        q = np.percentile(p, [5, 50, 95, 99])
        print(f"{v}: notes per soprano note in {len(p)} training chorales: 5% {q[0]:.2f}, "
              f"median {q[1]:.2f}, 95% {q[2]:.2f}, 99% {q[3]:.2f}, max {p.max():.2f}")
    print(f"held-out voices the training median pace misses by more than "
          f"{TOLERANCE:.0%}: {len(missed)} of {3 * len(heldout)}")
    for m in missed:
        print(f"  {m['chorale']} {m['voice']}: Bach {m['bach']} notes ({m['pace']:.2f} per "
              f"soprano note, faster than {m['percentile']:.1f}% of the training chorales'), "
              f"at the median pace {m['at_median_pace']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
