"""benchmarks/context_gain.py's repeat positions: the positions only a model that reads
far back can copy."""

import numpy as np

from cli_helpers import REPO, load_app_module, run_cli

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


def test_inverted_repeat_positions_read_the_other_strand():
    complement = np.array([0, 1, 5, 4, 3, 2, 6])  # DNA's ids: A C G T <-> T G C A
    rng = np.random.default_rng(1)
    tokens = rng.integers(2, 6, 5000)
    tokens[3000:3200] = complement[tokens[400:600][::-1]]  # the other strand, 2,400 on
    tokens[3200] = (complement[tokens[399]] - 1) % 4 + 2  # not what the strand reads next
    repeat, _ = context_gain.repeat_positions(tokens, k=20, min_distance=1024)
    inverted, right = context_gain.repeat_positions(tokens, k=20, min_distance=1024,
                                                    complement=complement)
    assert not repeat[3000:3200].any()
    # position i reads complement(tokens[599 - (i - 3000)]) next, where the strand goes on
    assert np.flatnonzero(inverted).tolist() == list(range(3020, 3201))
    assert right[3020:3200].all() and not right[3200]


def _planted(seed: int, n_blocks: int = 4, gap: int = 1200) -> str:
    """Random bases in which each 400-base block is repeated 400 + gap bases later, every
    other block on the other strand (reverse-complemented)."""
    rng = np.random.default_rng(seed)
    other_strand = str.maketrans("ACGT", "TGCA")
    parts = []
    for i in range(n_blocks):
        block = "".join(rng.choice(list("ACGT"), 400))
        again = block if i % 2 == 0 else block.translate(other_strand)[::-1]
        between, after = (("".join(rng.choice(list("ACGT"), n))) for n in (gap, 300))
        parts += [block, between, again, after]
    return "".join(parts)


def test_a_trained_long_context_model_copies_only_with_the_context_to_see_the_repeat(tmp_path):
    """End to end: trained on records with planted repeats 1,600 bases back (half of them
    inverted), a model with a match layer and the copy mixture with reverse-complement
    candidates scores the repeats of a new record at least a quarter lower with a
    2,048-token context than with 512, which cannot see them, and the inverted repeats too;
    elsewhere the context changes little. Repeats 3,400 back, beyond its 2,048-token
    window, it copies when the copy mixture reads a context of 8,192."""
    train = tmp_path / "train.fa"
    train.write_text("".join(f">r{i}\n{_planted(i)}\n" for i in range(4)))
    run = tmp_path / "run"
    code, text = run_cli("train", "dna", "--fasta", train, "--out", run, "--max-steps", 80,
                         "--batch-size", 4, "model.d_model=32", "model.n_layers=2",
                         "model.attn=[local, match]", "model.n_heads=2", "model.d_ff=64",
                         "model.max_seq_len=2048", "model.bucket_size=32", "model.match_k=[12]",
                         "model.copy_k=[12]", "model.copy_complement=true",
                         "data.seq_len=2048", "data.val_windows=0", "train.max_minutes=null",
                         "train.lr=3e-3")
    assert code == 0, text
    held_out = tmp_path / "new.fa"
    held_out.write_text(f">new\n{_planted(99)}\n")
    result = context_gain.context_gain(run, "dna", [held_out], [512, 2048], k=20,
                                       min_distance=1024, first=None)
    short, full = result["rows"]
    assert result["repeat_share"] > 0.05 and result["copy_right"] > 0.99
    assert result["inverted_share"] > 0.05
    assert short["bits_repeat"] > 1.8 and short["bits_inverted"] > 1.8  # random: 2 bits
    assert full["bits_repeat"] < 0.75 * short["bits_repeat"], result
    assert full["bits_inverted"] < 0.75 * short["bits_inverted"], result
    assert abs(full["bits_rest"] - short["bits_rest"]) < 0.2, result

    far = tmp_path / "far.fa"
    far.write_text(f">far\n{_planted(98, gap=3000)}\n")
    result = context_gain.context_gain(run, "dna", [far], [2048, 8192], k=20,
                                       min_distance=1024, first=None)
    window, beyond = result["rows"]
    assert result["repeat_share"] > 0.03 and result["inverted_share"] > 0.03
    assert window["bits_repeat"] > 1.8 and window["bits_inverted"] > 1.8, result  # far
    assert beyond["bits_repeat"] < 0.75 * window["bits_repeat"], result
    assert beyond["bits_inverted"] < 0.75 * window["bits_inverted"], result
    # the same weights without the reverse-complement candidates copy one strand only
    forward = context_gain.context_gain(run, "dna", [far], [8192], k=20, min_distance=1024,
                                        first=None, forward_copies_only=True)["rows"][0]
    assert forward["bits_inverted"] > 1.8, forward
    assert abs(forward["bits_repeat"] - beyond["bits_repeat"]) < 0.1, (forward, beyond)
    # a tail scored given the rest of its record copies from the rest
    n = len(_planted(98, gap=3000))
    tail = context_gain.context_gain(run, "dna", [far], [8192], k=20, min_distance=1024,
                                     first=None, tail=0.25)
    assert tail["tokens"] == round(n * 0.25) and tail["inverted_share"] > 0.05, tail
    assert tail["rows"][0]["bits_inverted"] < 0.75 * window["bits_inverted"], tail
    assert abs(beyond["bits_rest"] - window["bits_rest"]) < 0.2, result
