"""How a piece repeats: its repeat positions (the k tokens before them occurred at least
min_distance tokens back, `context_gain.repeat_sources`) merged into episodes across gaps
of up to --gap tokens, with each episode's length, the new material before the next, and
how far back it reaches; a return "elsewhere" is an episode whose distance differs from
the one before by more than --gap. No model: counts only.

    python benchmarks/repeat_episodes.py --midi ../shared/data/midi/planetblupi/*.mid
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from context_gain import repeat_sources

from seqformer.domains import get_domain


@dataclass(frozen=True)
class Episode:
    first: int  # position of its first repeat position
    last: int  # and of its last
    distance: int  # how far back its first position's context occurred

    @property
    def length(self) -> int:
        return self.last - self.first + 1


def repeat_episodes(source: np.ndarray, start: int = 0, gap: int = 64) -> list[Episode]:
    """The repeat positions at or after `start` (`source` >= 0, as `repeat_sources` gives
    them), merged into episodes wherever fewer than `gap` + 1 positions separate them."""
    episodes: list[Episode] = []
    for p in (np.nonzero(source[start:] >= 0)[0] + start).tolist():
        if episodes and p - episodes[-1].last <= gap:
            episodes[-1] = Episode(episodes[-1].first, p, episodes[-1].distance)
        else:
            episodes.append(Episode(p, p, p - int(source[p])))
    return episodes


def returns_elsewhere(episodes: list[Episode], gap: int = 64) -> int:
    """How many episodes reach back a different distance than the one before (more than
    `gap` apart): a return to another place, not the same copy taken up again."""
    return sum(abs(b.distance - a.distance) > gap for a, b in zip(episodes, episodes[1:]))


def _median(values: list[int]) -> str:
    return f"{int(np.median(values)):,}" if values else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--midi", type=Path, nargs="+", required=True)
    ap.add_argument("--start", type=int, default=4096, help="first position counted")
    ap.add_argument("--end", type=int, default=24096, help="tokens read from each piece")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--min-distance", type=int, default=1024)
    ap.add_argument("--gap", type=int, default=64)
    args = ap.parse_args()
    domain = get_domain("midi")
    print("| piece | repeat share | episodes | median length | median gap between | "
          "median distance | longest | returns elsewhere |\n|---|" + "---:|" * 7)
    for path in args.midi:
        tokens = np.asarray(list(domain.read(path))[0].tokens[:args.end], dtype=np.int64)
        source = repeat_sources(tokens, args.k, args.min_distance)
        episodes = repeat_episodes(source, args.start, args.gap)
        lengths = [e.length for e in episodes]
        gaps = [b.first - a.last for a, b in zip(episodes, episodes[1:])]
        print(f"| {path.stem} | {(source[args.start:] >= 0).mean():.1%} | {len(episodes)} | "
              f"{_median(lengths)} | {_median(gaps)} | {_median([e.distance for e in episodes])} | "
              f"{max(lengths, default=0):,} | {returns_elsewhere(episodes, args.gap)} of "
              f"{max(len(episodes) - 1, 0)} |")


if __name__ == "__main__":
    main()
