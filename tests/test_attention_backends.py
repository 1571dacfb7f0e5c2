"""The attention backend selector, and FlexAttention against the PyTorch band kernel.

On CPU torch runs FlexAttention eagerly and forward-only, which is enough to check that
its masks and log-sum-exp give the kernel's results; the GPU tests (compiled, with
gradients, bf16) run only where CUDA is present."""

from __future__ import annotations

import pytest
import torch

from seqformer.core import ConfigError, ReformerConfig, ReformerLM
from seqformer.core.attention.dispatch import bucketed_attention, resolve_backend
from seqformer.core.attention.kernels_flex import available

needs_flex = pytest.mark.skipif(not available(), reason="no FlexAttention in this torch")
CUDA = torch.cuda.is_available()


def _inputs(L: int, R: int, n_buckets: int, seed: int = 0, device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 3, L, 16, generator=g)
    v = torch.randn(2, 3, L, 16, generator=g)
    buckets = torch.randint(0, n_buckets, (2, 3, R, L), generator=g)
    return q.to(device), v.to(device), buckets.to(device)


def test_auto_is_the_torch_kernel_on_cpu_and_unknown_backends_are_refused():
    q = torch.zeros(1, 1, 4, 8)
    assert resolve_backend("auto", q) == "torch" and resolve_backend("torch", q) == "torch"
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_backend("cuda", q)
    with pytest.raises(ConfigError, match="^attn_backend:"):
        ReformerConfig(attn_backend="cuda")


@needs_flex
def test_flex_refuses_to_train_on_cpu():
    q = torch.zeros(1, 1, 4, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match="no backward on CPU"):
        resolve_backend("flex", q)


@needs_flex
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("L, bs, R, n_buckets", [
    (300, 8, 2, 4),     # buckets overflow several chunks; L not a multiple of anything
    (257, 16, 3, 32),   # many small buckets
    (130, 64, 1, 2),    # windows wider than FlexAttention's 128-row blocks
    (700, 128, 1, 2),   # windows reach two key blocks back: the band must list them
])
def test_flex_equals_torch_kernel_lsh(causal, L, bs, R, n_buckets):
    q, v, buckets = _inputs(L, R, n_buckets)
    with torch.no_grad():
        ref = bucketed_attention(q, v, buckets, bs, causal, backend="torch")
        out = bucketed_attention(q, v, buckets, bs, causal, backend="flex")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@needs_flex
@pytest.mark.parametrize("causal", [True, False])
def test_flex_equals_torch_kernel_local(causal):
    q, v, _ = _inputs(333, 1, 1)
    with torch.no_grad():
        ref = bucketed_attention(q, v, None, 32, causal, backend="torch")
        out = bucketed_attention(q, v, None, 32, causal, backend="flex")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@needs_flex
def test_model_gives_the_same_logits_with_either_backend():
    cfg = dict(vocab_size=11, d_model=32, n_layers=2, n_heads=2, d_ff=64, attn=["lsh", "local"],
               bucket_size=8, n_hashes=2, max_seq_len=256)
    torch.manual_seed(0)
    a = ReformerLM(ReformerConfig(**cfg, attn_backend="torch")).eval()
    b = ReformerLM(ReformerConfig(**cfg, attn_backend="flex")).eval()
    b.load_state_dict(a.state_dict())  # parameters do not depend on the backend
    x = torch.randint(0, 11, (2, 200))
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not (CUDA and available()), reason="needs CUDA")
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-3), (torch.bfloat16, 6e-2)])
def test_flex_on_gpu_matches_the_kernel_with_gradients(dtype, tol):
    q, v, buckets = _inputs(4096, 2, 64, device="cuda")
    q, v = q.to(dtype).requires_grad_(), v.to(dtype).requires_grad_()
    grads = {}
    for backend in ("torch", "flex"):
        out = bucketed_attention(q, v, buckets, 64, True, backend=backend)
        gq, gv = torch.autograd.grad(out.float().square().sum(), (q, v))
        grads[backend] = (out.float(), gq.float(), gv.float())
    for a, b in zip(grads["flex"], grads["torch"]):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)
