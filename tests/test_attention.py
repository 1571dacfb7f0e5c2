"""Attention kernels against slow references; exact causality, including a check that the
same causality test catches the paper's global-chunking leak."""

import dataclasses

import pytest
import torch

from seqformer.core.attention.buckets import round_layouts
from seqformer.core.attention.dispatch import (
    attention_backward,
    attention_forward,
    bucketed_attention,
    full_attention,
)
from seqformer.core.attention.hashing import fixed_rotations, hash_buckets

from reference_attention import global_chunked_reference, rank_chunked_reference


def _qv(L, D=8, B=1, H=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, L, D, generator=g, dtype=torch.float64),
            torch.randn(B, H, L, D, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("L", [37, 64])
def test_one_bucket_spanning_sequence_equals_full(causal, L):
    q, v = _qv(L, B=2, H=3)
    q, v = q.float(), v.float()
    buckets = torch.zeros(2, 3, 4, L, dtype=torch.long)  # 4 rounds, all in one bucket
    out = bucketed_attention(q, v, buckets, bucket_size=64, causal=causal)
    ref = full_attention(q, v, causal=causal)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("L, bs", [(45, 4), (45, 6), (70, 8)])  # 8: half-size query blocks
def test_lsh_matches_rank_chunked_reference(causal, L, bs):
    # not a multiple of the chunk; buckets of ~L/3 members span several chunks
    q, v = _qv(L)
    g = torch.Generator().manual_seed(1)
    buckets = torch.randint(0, 3, (1, 1, 2, L), generator=g)
    out = bucketed_attention(q, v, buckets, bs, causal=causal)[0, 0]
    ref = rank_chunked_reference(q[0, 0], v[0, 0], buckets[0, 0], bs, causal=causal)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("causal", [True, False])
def test_local_is_one_bucket_in_position_order(causal):
    L, bs = 29, 4
    q, v = _qv(L)
    out = bucketed_attention(q, v, None, bs, causal=causal)[0, 0]
    ref = rank_chunked_reference(q[0, 0], v[0, 0], torch.zeros(1, L, dtype=torch.long), bs,
                                 causal=causal)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)


def _hashed(q, n_buckets, n_hashes=2):
    rot = fixed_rotations(q.shape[1], q.shape[-1], n_hashes, (n_buckets,), seed=3)
    return hash_buckets(q, rot.to(q.dtype), (n_buckets,))


def _max_leak(attn, L, positions):
    """Largest change of an output before t when the input at t changes."""
    q, v = _qv(L, seed=5)
    base = attn(q, v)
    leak = 0.0
    for t in positions:
        q2, v2 = q.clone(), v.clone()
        g = torch.Generator().manual_seed(t)
        q2[..., t, :] = torch.randn(q.shape[-1], generator=g, dtype=q.dtype) * 3
        v2[..., t, :] = torch.randn(q.shape[-1], generator=g, dtype=q.dtype)
        out = attn(q2, v2)
        assert not torch.allclose(out[..., t:, :], base[..., t:, :])  # t itself did change
        leak = max(leak, (out[..., :t, :] - base[..., :t, :]).abs().max().item())
    return leak


def test_causality_test_catches_global_chunking_leak():
    """The paper's global chunking: a later token's bucket moves earlier chunk boundaries."""
    L, bs, nb = 40, 4, 4

    def paper(q, v):
        return global_chunked_reference(q[0, 0], v[0, 0], _hashed(q, nb)[0, 0], bs)

    def ours(q, v):
        return bucketed_attention(q, v, _hashed(q, nb), bs, causal=True)[0, 0]

    positions = range(8, L, 3)
    assert _max_leak(paper, L, positions) > 1e-3
    assert _max_leak(ours, L, positions) < 1e-12


@pytest.mark.parametrize("kind", ["lsh", "local", "full"])
def test_kernels_exactly_causal(kind):
    L, bs = 70, 8  # across chunk boundaries, not a multiple of the chunk

    def attn(q, v):
        if kind == "full":
            return full_attention(q, v, causal=True)
        buckets = _hashed(q, 8, n_hashes=3) if kind == "lsh" else None
        return bucketed_attention(q, v, buckets, bs, causal=True)

    assert _max_leak(attn, L, [1, 7, 8, 9, 16, 33, 69]) < 1e-12


def test_factorized_hashing_covers_all_buckets():
    factors = (32, 32)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 20000, 16, generator=g)
    rot = fixed_rotations(2, 16, 1, factors, seed=0)
    assert rot.shape == (2, 16, 1, 32)  # 16 + 16 columns, not 512
    b = hash_buckets(q, rot, factors)
    assert b.min() >= 0 and b.max() < 1024
    assert b.unique().numel() > 900  # the factors combine into (nearly) all 1024 buckets


def test_hashing_is_angular():
    q, _ = _qv(50, H=2)
    rot = fixed_rotations(2, 8, 3, (16,), seed=0).double()
    torch.testing.assert_close(hash_buckets(q, rot, (16,)), hash_buckets(q * 7.5, rot, (16,)))


@pytest.mark.parametrize("kind, causal", [("lsh", True), ("lsh", False), ("local", True),
                                          ("local", False)])
@pytest.mark.parametrize("bs", [4, 8])
def test_band_kernel_gradients(kind, causal, bs):
    """The tiled kernel's hand-written backward against finite differences (float64)."""
    L = 21
    q, v = _qv(L, H=2)
    q.requires_grad_()
    v.requires_grad_()
    buckets = torch.randint(0, 3, (1, 2, 2, L), generator=torch.Generator().manual_seed(2))
    b = buckets if kind == "lsh" else None
    assert torch.autograd.gradcheck(lambda q, v: bucketed_attention(q, v, b, bs, causal),
                                    (q, v))


def test_one_bucket_gradients_equal_full_attention():
    q, v = _qv(50, H=2)
    q2, v2 = q.clone().requires_grad_(), v.clone().requires_grad_()
    q.requires_grad_()
    v.requires_grad_()
    w = torch.randn(50, 8, dtype=torch.float64)
    (bucketed_attention(q, v, torch.zeros(1, 2, 3, 50, dtype=torch.long), 64, True) * w).sum(
    ).backward()
    (full_attention(q2, v2, True) * w).sum().backward()
    torch.testing.assert_close(q.grad, q2.grad)
    torch.testing.assert_close(v.grad, v2.grad)


@pytest.mark.parametrize("group", [1, 3])
def test_sublayer_backward_equals_autograd_reference(group):
    """The attention sublayer's hand-written, head-group-wise backward (layer norm, shared-QK
    and value projections, output projection) against plain autograd through the dense
    reference, with random biases and norm weights."""
    from seqformer.core import ReformerConfig
    from seqformer.core.attention.module import Attention

    torch.manual_seed(0)
    cfg = ReformerConfig(d_model=24, n_heads=3, attn="full", bucket_size=8, max_seq_len=64,
                         head_group_size=group)
    attn = Attention(cfg, 0).double()
    with torch.no_grad():
        for p in attn.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(2, 37, 24, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 37, 24, dtype=torch.float64)
    (attn(x)[0] * w).sum().backward()
    ours = [x.grad.clone()] + [p.grad.clone() for p in attn.parameters()]

    x.grad = None
    attn.zero_grad()
    h = attn.norm(x)
    q, v = attn._heads(attn.to_qk(h)), attn._heads(attn.to_v(h))
    ref = attn.to_out(attn._merge(full_attention(q, v, causal=True)))
    torch.testing.assert_close(attn(x)[0], ref, atol=1e-12, rtol=1e-10)
    (ref * w).sum().backward()
    theirs = [x.grad] + [p.grad for p in attn.parameters()]
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("kind", ["local", "full"])
@pytest.mark.parametrize("causal", [True, False])
def test_position_order_views_equal_gathers(kind, causal):
    """Local and full rounds are in position order, so the kernels read their blocks as
    views of the inputs instead of gathering them (RoundLayout.in_order): the same values
    and gradients as the gathered layout, bit for bit."""
    L, bs = 45, 4  # padded to 48
    q, v = _qv(L, H=2)
    d_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(9), dtype=q.dtype)
    views = round_layouts(kind, None, q, bs, causal)
    gathers = [dataclasses.replace(rd, in_order=False) for rd in views]
    assert all(rd.in_order for rd in views)
    results = []
    for layouts in (views, gathers):
        out, lse = attention_forward(q, v, kind, None, bs, causal, "torch", layouts)
        delta = (d_out * out[:, :, :L]).sum(-1)
        dq, dv = attention_backward(q, v, kind, None, bs, causal, lse, delta, d_out, "torch",
                                    layouts)
        results.append((out, lse, dq, dv))
    for a, b in zip(*results):
        assert torch.equal(a, b)
