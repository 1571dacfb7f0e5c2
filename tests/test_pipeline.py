"""Domain-agnostic pipeline pieces: token store, stream windows, stitched scoring and
embedding, run configs."""

import numpy as np
import pytest
import torch

from seqformer.core import ReformerConfig, ReformerLM
from seqformer.domains import Domain, Record
from seqformer.errors import InputError
from seqformer.pipeline import run_config
from seqformer.pipeline.inference import stitched_windows, token_log_likelihoods
from seqformer.pipeline.token_store import TokenStore
from seqformer.pipeline.windows import Stream, TrainWindows, ValWindows, split_streams

from cli_helpers import LONG_MIDI


class ListDomain(Domain):
    """A minimal domain over in-memory records (the store only needs read + vocabulary)."""

    name, tokens, pad_id, sep_id = "list", tuple(str(i) for i in range(10)), 0, 1

    def __init__(self, records):
        self.records = records

    def read(self, path, on_skip=None):
        yield from self.records[str(path)]

    def vocabulary(self):
        return {"domain": "list", "tokens": list(range(10))}


def _store(tmp_path, lengths=(7, 3, 12)):
    f = tmp_path / "in.txt"
    f.write_text("x")
    rng = np.random.default_rng(0)
    recs = [Record(f"r{i}", rng.integers(2, 10, n).astype(np.uint8))
            for i, n in enumerate(lengths)]
    dom = ListDomain({str(f): recs})
    return TokenStore.build(tmp_path / "store", dom, [f]), recs, dom, f


def test_token_store_round_trip_and_reuse(tmp_path):
    store, recs, dom, f = _store(tmp_path)
    assert store.tokens.dtype == np.uint8 and len(store) == 3
    for i, r in enumerate(recs):
        assert store.records[i].id == r.id
        np.testing.assert_array_equal(store.record_tokens(i), r.tokens)
    mtime = (tmp_path / "store" / "tokens.bin").stat().st_mtime_ns
    again = TokenStore.build(tmp_path / "store", dom, [f])  # unchanged input: reused
    assert (tmp_path / "store" / "tokens.bin").stat().st_mtime_ns == mtime
    assert again.fingerprint == store.fingerprint
    f.write_text("changed")  # input changed: rebuilt
    dom.records[str(f)] = recs[:1]
    assert len(TokenStore.build(tmp_path / "store", dom, [f])) == 1


def test_token_store_rejects_duplicate_ids_across_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("a")
    b.write_text("b")
    rec = Record("same", np.array([2, 3], dtype=np.uint8))
    dom = ListDomain({str(a): [rec], str(b): [rec]})
    with pytest.raises(InputError, match="'same' also appears"):
        TokenStore.build(tmp_path / "s", dom, [a, b])


def test_stream_is_records_with_separators(tmp_path):
    store, recs, dom, _ = _store(tmp_path)
    stream = Stream(store, [(r.offset, r.length) for r in store.records], sep_id=1)
    naive = np.concatenate([np.concatenate([[1], r.tokens]) for r in recs])
    assert len(stream) == len(naive)
    for start in range(len(naive)):
        for n in (1, 5, len(naive) - start):
            if start + n <= len(naive):
                np.testing.assert_array_equal(stream.slice(start, n), naive[start:start + n])


def test_splits_hold_out_tails_or_records(tmp_path):
    store, recs, _, _ = _store(tmp_path, lengths=(100, 50))
    train, val = split_streams(store, 0.1, "tail", sep_id=1)
    assert len(train) == (90 + 1) + (45 + 1) and len(val) == (10 + 1) + (5 + 1)
    np.testing.assert_array_equal(val.slice(1, 10), recs[0].tokens[90:])
    train, val = split_streams(store, 0.1, "records", sep_id=1)
    assert len(train) == 101 and len(val) == 51
    train, val = split_streams(store, 0.1, "tail", sep_id=1, holdout_ids=["r0"])
    assert len(train) == 51 and len(val) == 101
    with pytest.raises(InputError, match="holdout_ids.*'nope'"):
        split_streams(store, 0.1, "tail", sep_id=1, holdout_ids=["nope"])


def test_windows_are_seeded_and_cover_validation_once(tmp_path):
    store, _, _, _ = _store(tmp_path, lengths=(300, 200))
    train, val = split_streams(store, 0.2, "tail", sep_id=1)
    ds = TrainWindows(train, 64, n_items=10, seed=3)
    assert ds[4].shape == (65,) and torch.equal(ds[4], TrainWindows(train, 64, 10, 3)[4])
    assert not torch.equal(ds[4], ds[5])
    resumed = TrainWindows(train, 64, n_items=10, seed=3, start=4)
    assert torch.equal(resumed[0], ds[4])
    vw = ValWindows(val, 32, max_windows=100, pad_id=0)
    targets = torch.cat([vw[i][1:] for i in range(len(vw))])
    real = targets[targets != 0]
    assert len(real) == len(val) - 1  # every validation token is a target exactly once
    with pytest.raises(InputError, match="fewer than one window"):
        TrainWindows(val, 1000, 1, 0)


def test_record_starts_put_a_record_start_at_window_position_zero(tmp_path):
    store, recs, _, _ = _store(tmp_path, lengths=(300, 200, 250, 220))
    train, _ = split_streams(store, 0.0, "records", sep_id=1)
    plain = TrainWindows(train, 64, n_items=400, seed=3)
    # the old draws are kept when the option is off
    expected_at = [int(np.random.default_rng([3, i]).integers(0, len(train) - 64))
                   for i in range(400)]
    assert all(torch.equal(plain[i], torch.from_numpy(train.slice(at, 65)))
               for i, at in enumerate(expected_at))
    starts = {tuple(r.tokens[:64].tolist()) for r in recs}
    mixed = TrainWindows(train, 64, n_items=400, seed=3, record_starts=0.25)
    at_start = [w for w in (mixed[i] for i in range(400)) if int(w[0]) == 1
                and tuple(w[1:].tolist()) in starts]
    assert 70 <= len(at_start) <= 130  # about a quarter, each a record's own beginning
    assert {tuple(w[1:].tolist()) for w in at_start} == starts  # every record in turn
    every = TrainWindows(train, 64, n_items=50, seed=3, record_starts=1.0)
    assert all(int(every[i][0]) == 1 for i in range(50))


@pytest.mark.parametrize("length, window, stride", [(10, 4, 2), (9, 4, 4), (3, 8, 4),
                                                    (100, 16, 5)])
def test_stitched_windows_keep_each_position_once_with_most_context(length, window, stride):
    kept = []
    for start, lo, hi in stitched_windows(length, window, stride):
        assert start <= lo < hi <= min(start + window, length)
        # the earliest window covering a position: at least window - stride of context
        assert lo == 0 or lo - start >= window - stride
        kept.extend(range(lo, hi))
    assert kept == list(range(length))


def test_stitched_scores_equal_a_direct_forward_where_the_window_covers_it():
    torch.manual_seed(0)
    cfg = ReformerConfig(vocab_size=8, d_model=32, n_layers=2, n_heads=2, d_ff=64,
                         bucket_size=8, n_hashes=2, max_seq_len=512)
    model = ReformerLM(cfg).eval()
    tokens = np.random.default_rng(1).integers(2, 8, 300)
    full = token_log_likelihoods(model, tokens, sep_id=1, window=512)
    with torch.no_grad():
        seq = torch.tensor([[1, *tokens]])
        direct = torch.log_softmax(model(seq[:, :-1]), -1)[0].gather(
            -1, seq[0, 1:, None])[:, 0].numpy()
    np.testing.assert_allclose(full, direct, atol=1e-5)
    windowed = token_log_likelihoods(model, tokens, sep_id=1, window=64)
    # the first window is a prefix of the direct forward: identical up to float noise
    np.testing.assert_allclose(windowed[:64], direct[:64], atol=1e-5)
    # later positions see 32..63 tokens of context instead of all: close, not equal
    assert np.abs(windowed[64:] - direct[64:]).max() > 1e-6


def test_run_config_checks_every_field(tmp_path):
    cfg = run_config.resolve("dna", 12, None, {"train": {"max_steps": 5}},
                             ["model.n_hashes=8", "data.seq_len=128", "model.max_seq_len=256"])
    assert cfg["model"]["n_hashes"] == 8 and cfg["train"]["max_steps"] == 5
    assert cfg["model"]["vocab_size"] == 12 and cfg["model"]["n_buckets"] == 4
    for bad, field in [("train.max_step=3", "train.max_step"),
                       ("model.n_layer=3", "model.n_layer"),
                       ("model.d_model=30", "model.d_model"),
                       ("data.seq_len=999999999", "data.seq_len"),
                       ("data.record_starts=1.5", "data.record_starts"),
                       ("nosuch.x=1", "nosuch")]:
        with pytest.raises(InputError, match=f"^{field}"):
            run_config.resolve("dna", 12, None, {}, [bad])
    preset = tmp_path / "p.yaml"
    preset.write_text("domain: midi\n")
    with pytest.raises(InputError, match="domain"):
        run_config.resolve("dna", 12, preset)


def test_program_shuffle_changes_only_the_programs_of_training_windows(tmp_path):
    from seqformer.domains import get_domain
    from seqformer.domains.midi import DRUMS, PROGRAM
    from seqformer.pipeline.training import window_augment

    midi = get_domain("midi")
    store = TokenStore.build(tmp_path / "store", midi, [LONG_MIDI])
    train, _ = split_streams(store, 0.0, "records", sep_id=midi.sep_id)
    off = {"data": {"rc_augment": True, "program_shuffle": False}}
    on = {"data": {"rc_augment": True, "program_shuffle": True}}
    assert window_augment(midi, off) is None  # the switch off: the plain windows
    plain = TrainWindows(train, 2048, n_items=20, seed=5)
    shuffled = TrainWindows(train, 2048, n_items=20, seed=5, augment=window_augment(midi, on))
    changed = 0
    for i in range(20):
        a, b = plain[i].numpy(), shuffled[i].numpy()
        is_program = (a >= PROGRAM) & (a < DRUMS)
        assert np.array_equal(a[~is_program], b[~is_program])  # the same window, same place
        changed += int((a[is_program] != b[is_program]).any())
    assert changed >= 18  # a random permutation keeps a window's programs almost never
