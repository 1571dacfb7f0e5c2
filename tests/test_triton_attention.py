"""The fused Triton kernel (attn_backend="triton") against the PyTorch band kernel.

Without a GPU the kernels run on CPU tensors through Triton's interpreter (conftest sets
TRITON_INTERPRET=1 before they are defined): the same kernel source, executed with numpy,
so masks, tiling, the online softmax, the epilogue merge of rounds and the backward are
all checked here; only speed needs a GPU (benchmarks/gpu_check.sh)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from seqformer.core import ReformerConfig, ReformerLM  # noqa: E402
from seqformer.core.attention import dispatch as ba  # noqa: E402
from seqformer.core.attention import kernels_triton as triton_attention  # noqa: E402

needs_kernel = pytest.mark.skipif(
    not (torch.cuda.is_available() or triton_attention.interpreted()),
    reason="needs CUDA or TRITON_INTERPRET=1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(B, H, L, D, R, n_buckets, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q, v, d_out = (torch.randn(B, H, L, D, generator=g).to(DEVICE, dtype) for _ in range(3))
    buckets = torch.randint(0, n_buckets, (B, H, R, L), generator=g).to(DEVICE)
    return q, v, d_out, buckets


def _run(backend, q, v, d_out, kind, buckets, bs, causal, null=False):
    """Output, log-sum-exp (as m + log-norm), dq and dv of one backend."""
    L = q.shape[2]
    out, lse = ba.attention_forward(q, v, kind, buckets, bs, causal, backend, null=null)
    delta = (d_out.float() * out[:, :, :L].float()).sum(-1)
    dq, dv = ba.attention_backward(q, v, kind, buckets, bs, causal, lse, delta, d_out, backend)
    return out[:, :, :L], lse[:, :, :L].sum(-1), dq, dv


def _assert_same(kind, buckets, bs, causal, q, v, d_out, tol, null=False):
    want = _run("torch", q, v, d_out, kind, buckets, bs, causal, null)
    got = _run("triton", q, v, d_out, kind, buckets, bs, causal, null)
    for name, a, b in zip(("out", "lse", "dq", "dv"), got, want):
        torch.testing.assert_close(a.float(), b.float(), atol=tol, rtol=tol, msg=name)


@needs_kernel
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("L, D, bs, R, n_buckets", [
    (200, 16, 16, 2, 4),    # buckets overflow many chunks; L no multiple of the 64 tile
    (131, 24, 8, 3, 16),    # head size no power of two; small chunks
    (97, 8, 32, 1, 2),      # head size below tl.dot's 16; windows span tiles
    (64, 16, 64, 2, 64),    # many lone tokens: each scores only itself (SELF_SCORE)
])
def test_lsh_equals_the_torch_kernel(causal, L, D, bs, R, n_buckets):
    q, v, d_out, buckets = _inputs(2, 2, L, D, R, n_buckets)
    _assert_same("lsh", buckets, bs, causal, q, v, d_out, tol=2e-5)


@needs_kernel
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_match_attention_with_its_null_key_equals_the_torch_kernel(causal):
    """Match layers' buckets come from tokens and their softmax holds a null key."""
    q, v, d_out, buckets = _inputs(2, 2, 120, 16, 2, 6, seed=3)
    _assert_same("lsh", buckets, 8, causal, q, v, d_out, tol=2e-5, null=True)


@needs_kernel
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("kind, L, bs", [("local", 150, 32), ("local", 70, 16),
                                         ("full", 90, 16)])
def test_local_and_full_equal_the_torch_kernel(causal, kind, L, bs):
    q, v, d_out, _ = _inputs(1, 3, L, 16, 1, 1, seed=1)
    _assert_same(kind, None, bs, causal, q, v, d_out, tol=2e-5)


@needs_kernel
def test_bf16_stays_within_bf16_rounding_of_the_torch_kernel():
    q, v, d_out, buckets = _inputs(1, 2, 150, 32, 2, 4, seed=2, dtype=torch.bfloat16)
    _assert_same("lsh", buckets, 16, True, q, v, d_out, tol=3e-2)


@needs_kernel
def test_lsh_one_bucket_is_full_attention():
    q, v, _, _ = _inputs(1, 2, 77, 16, 1, 1, seed=3)
    buckets = torch.zeros(1, 2, 1, 77, dtype=torch.long, device=DEVICE)
    out, _ = ba.attention_forward(q, v, "lsh", buckets, 128, True, "triton")
    torch.testing.assert_close(out[:, :, :77], ba.full_attention(q, v, True),
                               atol=1e-5, rtol=1e-5)


@needs_kernel
@pytest.mark.parametrize("reversible", [True, False])
def test_model_trains_the_same_with_either_kernel(reversible):
    """Loss and every parameter's gradient of a training step (dropout, fresh rotations,
    lsh + local + full layers) with the Triton kernel equal the PyTorch kernel's."""
    kw = dict(vocab_size=11, d_model=32, n_layers=3, n_heads=2, d_ff=64,
              attn=["lsh", "local", "full"], bucket_size=8, n_hashes=2, max_seq_len=256,
              dropout=0.1, reversible=reversible)
    torch.manual_seed(0)
    models = {b: ReformerLM(ReformerConfig(**kw, attn_backend=b)).train()
              for b in ("torch", "triton")}
    models["triton"].load_state_dict(models["torch"].state_dict())
    x = torch.randint(0, 11, (2, 150), generator=torch.Generator().manual_seed(1))
    results = {}
    for backend, model in models.items():
        torch.manual_seed(5)  # same dropout masks and rotations
        loss = model.loss(x)
        loss.backward()
        results[backend] = (loss.detach(), {n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(results["triton"][0], results["torch"][0], atol=1e-5, rtol=1e-5)
    for name, g in results["torch"][1].items():
        torch.testing.assert_close(results["triton"][1][name], g, atol=1e-5, rtol=1e-4,
                                   msg=name)


@needs_kernel
def test_the_first_use_check_passes_and_catches_a_wrong_kernel(monkeypatch):
    q = torch.zeros(1, 1, 8, 16, device=DEVICE)
    monkeypatch.setattr(ba, "_VALIDATED", {})
    assert ba.triton_validated(q)

    def off_by_a_little(qf, kf, vf, rows, group, back, ahead, causal, out, m, norm, first):
        real_round_forward(qf, kf, vf, rows, group, back, ahead, causal, out, m, norm, first)
        out.add_(1e-2)

    real_round_forward = triton_attention.round_forward
    monkeypatch.setattr(ba, "_VALIDATED", {})
    monkeypatch.setattr(triton_attention, "round_forward", off_by_a_little)
    with pytest.warns(UserWarning, match="disagrees"):
        assert not ba.triton_validated(q)


def test_triton_where_it_cannot_run_falls_back_to_torch_with_a_warning(monkeypatch):
    """A model saved with attn_backend="triton" on a GPU still runs on a CPU."""
    if torch.cuda.is_available():
        pytest.skip("CUDA present: triton runs")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(ba, "_WARNED", set())
    q = torch.zeros(1, 1, 8, 16)
    with pytest.warns(UserWarning, match="runs on a CUDA device, not cpu"):
        assert ba.resolve_backend("triton", q) == "torch"
    assert ba.resolve_backend("auto", q) == "torch"  # auto never picks it on the CPU
    cfg = ReformerConfig(vocab_size=11, d_model=32, n_layers=1, n_heads=2, d_ff=64,
                         bucket_size=8, n_hashes=2, max_seq_len=64)
    torch.manual_seed(0)
    a = ReformerLM(cfg).eval()
    b = ReformerLM(ReformerConfig(**{**cfg.__dict__, "attn_backend": "triton"})).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 11, (1, 40))
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x))


@needs_kernel
def test_float64_falls_back_with_a_clear_message(monkeypatch):
    monkeypatch.setattr(ba, "_WARNED", set())
    with pytest.warns(UserWarning, match="not torch.float64; using the PyTorch kernel"):
        q = torch.zeros(1, 1, 8, 16, dtype=torch.float64, device=DEVICE)
        assert ba.resolve_backend("triton", q) == "torch"
