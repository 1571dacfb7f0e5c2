"""The reversible stack against the plain two-stream stack, and memory counted by the
bytes autograd saves for backward."""

import pytest
import torch

from seqformer.core import ReformerConfig, ReformerLM
from seqformer.core.layers.reversible import stream_dtype


def cfg(**kw):
    base = dict(vocab_size=13, d_model=32, n_layers=3, n_heads=2, d_ff=64, attn="lsh",
                bucket_size=8, n_hashes=2, max_seq_len=512, dropout=0.1)
    base.update(kw)
    return ReformerConfig(**base)


def run(model, x, seed):
    torch.manual_seed(seed)  # same seed -> same dropout masks and rotations in both stacks
    model.zero_grad()
    logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x.flatten())
    (loss + logits.pow(2).mean()).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("kw", [dict(), dict(attn=["lsh", "local", "full"]),
                                dict(ff_chunk_size=9), dict(dropout=0.0, n_hashes=4)],
                         ids=str)
def test_reversible_equals_plain_in_training(kw):
    torch.manual_seed(0)
    rev = ReformerLM(cfg(reversible=True, **kw)).train()
    with torch.no_grad():  # biases (zero at init) too: each must come back out exactly once
        for p in rev.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    plain = ReformerLM(cfg(reversible=False, **kw)).train()
    plain.load_state_dict(rev.state_dict())
    x = torch.randint(0, 13, (2, 61), generator=torch.Generator().manual_seed(1))
    out_r, grads_r = run(rev, x, seed=5)
    out_p, grads_p = run(plain, x, seed=5)
    torch.testing.assert_close(out_r, out_p, atol=1e-6, rtol=1e-5)
    for name, g in grads_p.items():
        torch.testing.assert_close(grads_r[name], g, atol=1e-6, rtol=1e-5, msg=name)
    # and the test can tell: another seed draws other masks/rotations
    out_other, _ = run(plain, x, seed=6)
    assert not torch.allclose(out_other, out_p)


def test_reversible_under_bf16_autocast_recomputes_in_bf16():
    """Autocast runs the sublayers in bf16 while the two streams stay float32; the
    backward recompute must use the forward's autocast, or its reconstructed inputs and
    gradients drift from the plain stack's by bf16 rounding."""
    torch.manual_seed(0)
    rev = ReformerLM(cfg(reversible=True, dropout=0.0, attn=["lsh", "local"], n_layers=2))
    plain = ReformerLM(cfg(reversible=False, dropout=0.0, attn=["lsh", "local"], n_layers=2))
    plain.load_state_dict(rev.state_dict())
    x = torch.randint(0, 13, (2, 61), generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_r, grads_r = run(rev.train(), x, seed=5)
        out_p, grads_p = run(plain.train(), x, seed=5)
    assert out_r.dtype == torch.bfloat16  # the head ran in bf16 ...
    torch.testing.assert_close(out_r, out_p, atol=0, rtol=0)  # same forward computation
    for name, g in grads_p.items():  # float32 recompute instead: ~1e-2 relative
        scale = g.abs().max().item()
        torch.testing.assert_close(grads_r[name], g, atol=1e-5 * scale, rtol=1e-4, msg=name)


def test_backward_leaves_global_rng_untouched():
    torch.manual_seed(0)
    m = ReformerLM(cfg()).train()
    x = torch.randint(0, 13, (1, 40))
    torch.manual_seed(3)
    m(x).sum().backward()
    after_backward = torch.rand(3)
    torch.manual_seed(3)
    with torch.no_grad():
        m(x)
    assert torch.equal(torch.rand(3), after_backward)


def saved_bytes(model, x):
    """Bytes of the distinct tensors autograd keeps for backward during one forward."""
    seen = {}

    def pack(t):
        seen[(t.data_ptr(), t.dtype, tuple(t.shape))] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(seen.values())


MEM = dict(vocab_size=16, d_model=64, n_heads=4, d_ff=128, bucket_size=16, n_hashes=2,
           max_seq_len=8192, dropout=0.0)


def test_reversible_layers_add_almost_nothing():
    L = 1024
    x = torch.randint(0, 16, (1, L))
    by_depth = {}
    for n in (2, 12):
        torch.manual_seed(0)
        by_depth[n] = saved_bytes(ReformerLM(ReformerConfig(n_layers=n, **MEM)).train(), x)
    per_layer = (by_depth[12] - by_depth[2]) / 10
    hidden_state = L * MEM["d_model"] * 4
    assert per_layer < hidden_state / 4, (per_layer, hidden_state)
    # the plain stack stores many hidden states per layer: the count is meaningful
    torch.manual_seed(0)
    plain = saved_bytes(ReformerLM(ReformerConfig(n_layers=12, reversible=False,
                                                  **MEM)).train(), x)
    assert plain > by_depth[12] + 10 * hidden_state


@pytest.mark.parametrize("reversible", [True, False])
@pytest.mark.parametrize("attn", ["lsh", "local"])
def test_saved_bytes_grow_linearly_in_length(reversible, attn):
    sizes = {}
    for L in (1024, 4096):
        torch.manual_seed(0)
        m = ReformerLM(ReformerConfig(n_layers=2, reversible=reversible, attn=attn, **MEM))
        sizes[L] = saved_bytes(m.train(), torch.randint(0, 16, (1, L)))
    assert sizes[4096] <= 4.4 * sizes[1024], sizes



@torch.no_grad()
def _reconstruction_error(exact: bool, n_layers: int = 12) -> float:
    """Run the stack forward in place as the reversible forward does, walk it back with
    the layers' own in-place `reverse` steps (as its backward does), and compare what comes
    out at the bottom with the embeddings that went in: max |error| / max |input|."""
    torch.manual_seed(0)
    model = ReformerLM(cfg(n_layers=n_layers, dropout=0.0, d_model=64, n_heads=4, d_ff=128,
                           bucket_size=8, exact_streams=exact)).train()
    for p in model.parameters():  # biases too: every term must come back out
        p.add_(torch.randn_like(p) * 0.05)
    tokens = torch.randint(0, 13, (1, 200), generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = model._embed(tokens)
        x1 = x.to(stream_dtype(x, exact))
        x2 = x1.clone()
        bottom = x1.clone()
        buckets = []
        for layer in model.layers:
            buckets.append(layer.attn.add_to(x1, x2))
            layer.ff.add_to(x2, x1)
        dy1, dy2 = torch.zeros_like(x), torch.zeros_like(x)
        for layer, b in reversed(list(zip(model.layers, buckets))):
            layer.ff.reverse(x1, x2, dy2, dy1)
            layer.attn.reverse(x1, x2, dy1, dy2, b)
    worst = max((x1 - bottom).abs().max(), (x2 - bottom).abs().max())
    return (worst / bottom.abs().max()).item()


def test_bf16_reversible_reconstruction_is_exact_with_float64_streams():
    """Under bf16 autocast a float32 stream cannot take back y - F(x) exactly, and the
    recomputed bf16 sublayers amplify that rounding layer by layer. With float64 streams
    (exact_streams, the default) every 8-bit sublayer output adds exactly: the backward
    finds each layer's inputs bit for bit, here through 12 layers."""
    assert _reconstruction_error(exact=True) == 0.0
    assert _reconstruction_error(exact=False) > 1e-4  # the check can tell
