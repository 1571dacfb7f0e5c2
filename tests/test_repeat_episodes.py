"""benchmarks/repeat_episodes.py: a piece's repeats as episodes (how long, how far back,
to the same place or elsewhere), on a sequence with planted returns."""

import sys

import numpy as np

from cli_helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))  # the benchmarks import each other by name
import context_gain  # noqa: E402
import repeat_episodes as episodes_bench  # noqa: E402


def test_repeat_sources_point_at_the_earlier_occurrence():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50, 4000)
    tokens[2500:2700] = tokens[100:300]
    source = context_gain.repeat_sources(tokens, k=8, min_distance=1024)
    assert np.flatnonzero(source >= 0).tolist() == list(range(2508, 2701))
    assert (source[2508:2701] == np.arange(108, 301)).all()  # 2,400 back


def test_planted_returns_become_episodes_with_their_distances():
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 50, 9000)
    tokens[5000:5500] = tokens[1000:1500]  # a return 4,000 back
    tokens[5310] = (tokens[5310] + 1) % 50  # one changed token, then the copy goes on
    tokens[7000:7200] = tokens[2000:2200]  # after new material, elsewhere: 5,000 back
    tokens[8000:8100] = tokens[3000:3100]  # 5,000 back again: the same copy taken up again
    source = context_gain.repeat_sources(tokens, k=16, min_distance=1024)
    episodes = episodes_bench.repeat_episodes(source, start=0, gap=64)
    assert [(e.first, e.last, e.distance) for e in episodes] == [
        (5016, 5500, 4000), (7016, 7200, 5000), (8016, 8100, 5000)]
    assert [e.length for e in episodes] == [485, 185, 85]
    # 4,000 -> 5,000 back is a return elsewhere; 5,000 -> 5,000 is not
    assert episodes_bench.returns_elsewhere(episodes, gap=64) == 1
    # a gap wider than the merge window splits the first episode in two
    split = episodes_bench.repeat_episodes(source, start=0, gap=8)
    assert [(e.first, e.last) for e in split[:2]] == [(5016, 5310), (5327, 5500)]
    # counting starts at `start`
    assert [e.first for e in episodes_bench.repeat_episodes(source, start=7100)] == [7100, 8016]
