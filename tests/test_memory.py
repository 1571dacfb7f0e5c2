"""Working memory of a training step, counted in bytes of live tensor storages.

A TorchDispatchMode sees every tensor an operator creates; each storage counts from its
creation until it is freed. The slope of the step's peak between two lengths is the
working memory per token. The tiles of the attention kernel, the row blocks of the
projections and of the loss are constants in the sequence length; they are shrunk here so
that short sequences already show the per-token slope of long ones. No timing.
"""

import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from seqformer.core import ReformerConfig, ReformerLM
from seqformer.core.attention import kernels_torch as bucketed_attention
from seqformer.core.attention import module as attention
from seqformer.core.layers import chunked_loss


class LiveBytes(TorchDispatchMode):
    """The peak of the bytes held by tensors created under this mode."""

    def __init__(self):
        super().__init__()
        self.live = {}
        self.now = self.peak = 0

    def _free(self, key):
        self.now -= self.live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self.live:  # a view shares its base's storage
                    self.live[key] = storage.nbytes()
                    self.now += storage.nbytes()
                    self.peak = max(self.peak, self.now)
                    weakref.finalize(storage, self._free, key)
        return out


def test_counter_sees_views_saved_tensors_and_frees():
    counter = LiveBytes()
    with counter:
        a = torch.ones(1000)
        b = a.view(10, 100)
        del a
        assert counter.now == 4000  # b keeps the storage
        del b
        assert counter.now == 0
        x = torch.ones(100, requires_grad=True)
        y = (x * 2).exp()  # exp saves its output for backward
        z = y.sum()
        del y
        assert counter.now >= 800
        z.backward()
    assert counter.peak >= 4000


@pytest.fixture
def small_tiles(monkeypatch):
    monkeypatch.setattr(bucketed_attention, "TILE_QUERIES", 128)
    monkeypatch.setattr(attention, "ROW_CHUNK", 128)
    monkeypatch.setattr(chunked_loss, "ROWS", 128)


D_MODEL = 128
CFG = dict(vocab_size=16, d_model=D_MODEL, n_layers=2, n_heads=4, d_ff=256, attn="lsh",
           bucket_size=16, n_hashes=4, ff_chunk_size=128, max_seq_len=2048, dropout=0.0)


def step_bytes_per_token(lengths=(512, 1024), **kw) -> float:
    peaks = []
    for L in lengths:
        torch.manual_seed(0)
        model = ReformerLM(ReformerConfig(**{**CFG, **kw})).train()
        tokens = torch.randint(0, 16, (1, L + 1), generator=torch.Generator().manual_seed(1))
        counter = LiveBytes()
        with counter:
            model.loss(tokens).backward()
        peaks.append(counter.peak)
    return (peaks[1] - peaks[0]) / (lengths[1] - lengths[0])


STREAMS = 4 * D_MODEL * 4  # two residual streams and their gradients, float32
HEAD = D_MODEL // CFG["n_heads"] * 4  # one float32 row of one head


@pytest.mark.parametrize("attn", ["lsh", "local"])
def test_working_memory_per_token_is_the_streams_plus_one_head(small_tiles, attn):
    """A reversible training step holds the two streams and their gradients plus one head
    group's and one hashing round's working set: a head's queries and values, their flat
    and sorted copies, its output, gradients and accumulators, about 20 head-widths per
    token. The design before (every head and round at once, commit de0688c) measured 161
    head-widths above the streams here with LSH and 74 with local attention; any
    (L, d_model) activation kept per layer adds 4 head-widths per layer."""
    per_token = step_bytes_per_token(attn=attn, head_group_size=1)
    assert per_token >= STREAMS
    assert (per_token - STREAMS) / HEAD <= 24, (per_token - STREAMS) / HEAD


def test_head_groups_trade_memory_for_launches(small_tiles):
    """All heads at once holds more working memory than one head at a time, by about the
    attention working set times the number of heads."""
    one = step_bytes_per_token(head_group_size=1)
    every = step_bytes_per_token(head_group_size=4)
    assert every - STREAMS > 2.5 * (one - STREAMS), (one / STREAMS, every / STREAMS)


def test_counter_catches_quadratic_full_attention(small_tiles):
    """The same count sees full attention's (L, L) scores in the backward."""
    linear = step_bytes_per_token(attn="local", head_group_size=1)
    quadratic = step_bytes_per_token(attn="full", head_group_size=1)
    scores = 4 * (1024**2 - 512**2) / (1024 - 512)  # one float32 (L, L) matrix, per token
    assert quadratic - linear >= scores, (linear, quadratic)


def test_loss_memory_does_not_grow_with_the_vocabulary(small_tiles):
    """The loss never holds (L, vocab) logits: a 519-token vocabulary (MIDI) costs per
    token what a 16-token one does; full float32 logits and their gradient would add
    2 x 519 x 4 = 4,152 bytes per token."""
    small = step_bytes_per_token(head_group_size=1)
    large = step_bytes_per_token(head_group_size=1, vocab_size=519)
    assert large - small < 400, (small, large)
