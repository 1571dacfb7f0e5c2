"""Match attention (attn="match"): buckets from the tokens' contexts, checked against a
dense reference with its mask, and shown to learn what LSH and local attention cannot in
the same steps: to copy from far back."""

import pytest
import torch

from seqformer.core import ReformerConfig, ReformerLM
from seqformer.core.attention.matching import context_buckets, next_bucket
from seqformer.core.attention.module import Attention

from reference_attention import match_reference


def test_items_share_a_bucket_exactly_when_their_contexts_are_equal():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 3, (2, 60), generator=g)
    buckets = context_buckets(tokens, (1, 2, 4), pad=3)
    assert buckets.shape == (2, 1, 3, 61) and buckets.dtype == torch.int32
    ext = torch.cat([torch.full((2, 4), 3), tokens], dim=1)
    for r, k in enumerate((1, 2, 4)):
        for b in range(2):
            ctx = [tuple(ext[b, 4 + i - k:4 + i].tolist()) for i in range(61)]
            same_ctx = torch.tensor([[a == c for c in ctx] for a in ctx])
            same_bucket = buckets[b, 0, r][:, None] == buckets[b, 0, r][None, :]
            assert torch.equal(same_ctx, same_bucket)


def test_next_bucket_is_the_last_items():
    tokens = torch.randint(0, 5, (3, 40), generator=torch.Generator().manual_seed(1))
    full = context_buckets(tokens, (3, 7), pad=5)
    for t in (0, 2, 6, 39):
        history = torch.cat([torch.full((3, 7), 5), tokens[:, :t + 1]], dim=1)
        assert torch.equal(next_bucket(history, (3, 7), pad=5), full[:, 0, :, t + 1])


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("bucket_size", [2, 8])
def test_match_layer_equals_the_dense_reference(causal, bucket_size):
    """Output and every gradient of the sublayer (its own kernels and hand-written
    backward) against autograd through the dense masked softmax, in float64. Vocabulary 3
    and contexts of 1 and 2 tokens: buckets of many members that overflow their chunks."""
    torch.manual_seed(0)
    cfg = ReformerConfig(vocab_size=3, d_model=16, n_layers=1, n_heads=2, attn="match",
                         match_k=(1, 2), bucket_size=bucket_size, causal=causal,
                         max_seq_len=64)
    attn = Attention(cfg, 0).double()
    B, L = 2, 37
    tokens = torch.randint(0, 3, (B, L))
    buckets = context_buckets(tokens, cfg.match_k, pad=3)
    x = torch.randn(B, L, 16, dtype=torch.float64, requires_grad=True)
    y, _ = attn(x, buckets)
    d_y = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, *attn.parameters()], d_y)

    x_ref = x.detach().requires_grad_()
    h = attn.norm(x_ref)
    q = attn.to_qk(h).view(B, L, 2, 8).transpose(1, 2)
    v = attn.to_v(h).view(B, L, 2, 8).transpose(1, 2)
    o = torch.stack([torch.stack([match_reference(q[b, hd], v[b, hd], buckets[b, 0],
                                                  bucket_size, causal)
                                  for hd in range(2)]) for b in range(B)])
    y_ref = attn.to_out(o.transpose(1, 2).reshape(B, L, 16))
    want = torch.autograd.grad(y_ref, [x_ref, *attn.parameters()], d_y)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-10)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_no_gradient_reaches_the_future():
    """A position's output has exactly zero gradient with respect to every later input,
    although each item's own value is the next position's (the null key takes its
    weight to exactly 0)."""
    torch.manual_seed(0)
    cfg = ReformerConfig(vocab_size=3, d_model=16, n_layers=1, n_heads=2, attn="match",
                         match_k=(1,), bucket_size=4, max_seq_len=64)
    attn = Attention(cfg, 0)
    tokens = torch.randint(0, 3, (1, 30))
    x = torch.randn(1, 30, 16, requires_grad=True)
    y, _ = attn(x, context_buckets(tokens, cfg.match_k, pad=3))
    for t in (5, 17, 28):
        (g,) = torch.autograd.grad(y[0, t].sum(), x, retain_graph=True)
        assert torch.count_nonzero(g[0, t + 1:]) == 0
        assert torch.count_nonzero(g[0, :t + 1]) > 0
    # position 0's context has no earlier occurrence: it attends to nothing (the bias)
    torch.testing.assert_close(y[0, 0], attn.to_out.bias, atol=0, rtol=0)


def test_a_match_layer_needs_its_buckets():
    cfg = ReformerConfig(vocab_size=3, d_model=16, n_layers=1, n_heads=2, attn="match",
                         max_seq_len=64)
    with pytest.raises(ValueError, match="buckets of its tokens' contexts"):
        Attention(cfg, 0)(torch.randn(1, 10, 16))


def _copy_batch(g: torch.Generator, B: int = 16, half: int = 96, vocab: int = 16):
    first = torch.randint(0, vocab, (B, half), generator=g)
    return torch.cat([first, first], dim=1)


@pytest.mark.parametrize("kind,copies", [("match", True), ("lsh", False), ("local", False)])
def test_only_match_learns_to_copy_far_back_in_a_few_steps(kind, copies):
    """Random sequences whose second half repeats the first, 96 tokens back: a model with
    a match layer copies the second half (loss there near 0) after 60 steps; with LSH or
    local attention in its place the loss there stays near log(16) = 2.77 nats."""
    torch.manual_seed(0)
    cfg = ReformerConfig(vocab_size=16, d_model=64, n_layers=2, n_heads=2, d_ff=128,
                         attn=["local", kind], bucket_size=32, n_hashes=2, match_k=(4,),
                         max_seq_len=256)
    model = ReformerLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        loss = model.loss(_copy_batch(g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        nll = model.loss(_copy_batch(torch.Generator().manual_seed(99)), reduction="none")
    second_half = nll[:, 96 + 4:].mean().item()  # once the 4-token context has repeated
    if copies:
        assert second_half < 0.3
    else:
        assert second_half > 2.0
