"""benchmarks/context_gain.py's repeat positions: the positions only a model that reads
far back can copy."""

import numpy as np

from cli_helpers import REPO, load_app_module

context_gain = load_app_module(REPO / "benchmarks" / "context_gain.py", "context_gain_bench")


def test_repeat_positions_are_contexts_last_seen_far_back():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50, 4000)
    tokens[2500:2700] = tokens[100:300]  # 2,400 back
    tokens[3000:3100] = tokens[2900:3000]  # 100 back: a local model's to copy
    repeat, copy_right = context_gain.repeat_positions(tokens, k=8, min_distance=1024)
    # a position is a repeat once its 8 preceding tokens lie inside the copied span
    assert np.flatnonzero(repeat).tolist() == list(range(2508, 2701))
    # what followed the earlier occurrence follows again, except after the span's end
    assert copy_right[2508:2700].all() and not copy_right[2700]
    near, _ = context_gain.repeat_positions(tokens, k=8, min_distance=50)
    assert near[3008:3100].all() and near[2508:2700].all()
