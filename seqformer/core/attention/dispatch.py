"""Bucketed attention over all hashing rounds, and which kernel computes each round.

`attention_forward` / `attention_backward` run one hashing round at a time through the
kernel the backend names ("torch": kernels_torch.py, "triton": kernels_triton.py, "flex":
kernels_flex.py) and merge the rounds exactly by their log-sum-exps; `bucketed_attention`
is the two as an autograd function. `resolve_backend` turns a configured backend into the
kernel that runs here: "auto" takes the Triton kernel on a GPU only once it has passed a
first-use check against the PyTorch kernel on that device (`triton_validated`).
`full_attention` is the dense reference every kernel must agree with.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from ..config import ATTN_BACKENDS
from ..precision import acc_dtype
from . import kernels_flex
from .buckets import RoundLayout, gather_rows, iter_round_layouts, round_layouts
from .kernels_torch import SELF_SCORE, band_backward, band_forward
from .matching import add_null

# -- which kernel ------------------------------------------------------------------------
BACKENDS = ATTN_BACKENDS
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, q: torch.Tensor, needs_grad: bool | None = None) -> str:
    """'auto' is the Triton kernel on a GPU once it has passed a check against the PyTorch
    kernel on that device (`triton_validated`), and the PyTorch kernel otherwise.
    'triton' where it cannot run falls back to the PyTorch kernel with a warning.
    FlexAttention stays opt-in."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r} (use one of {BACKENDS})")
    if needs_grad is None:
        needs_grad = q.requires_grad and torch.is_grad_enabled()
    if backend == "flex":
        if not kernels_flex.available():
            raise RuntimeError("attn_backend='flex' needs torch.nn.attention.flex_attention")
        if not q.is_cuda and needs_grad:
            raise RuntimeError("attn_backend='flex' has no backward on CPU (torch runs it "
                               "eagerly there); use attn_backend='torch' to train on CPU")
        return "flex"
    if backend == "triton":
        problem = _triton_problem(q)
        if problem is None:
            return "triton"
        # results do not depend on the kernel, so a model saved with "triton" on a GPU
        # still scores and samples on a CPU
        if problem not in _WARNED:
            _WARNED.add(problem)
            warnings.warn(f"attn_backend='triton': {problem}; using the PyTorch kernel",
                          stacklevel=2)
        return "torch"
    if backend == "auto" and q.is_cuda and triton_validated(q):
        return "triton"
    return "torch"


_WARNED: set[str] = set()


def _triton_problem(q: torch.Tensor) -> str | None:
    """Why the Triton kernel cannot run on q here, or None."""
    if not triton_available():
        return "Triton is not installed (pip install 'seqformer[gpu]')"
    # Imported when first needed, not for a cycle: Triton is an optional dependency, and
    # its kernels are defined (compiled, or interpreted under TRITON_INTERPRET=1) on import.
    from . import kernels_triton

    if not kernels_triton.usable(q):
        return (f"it runs on a CUDA device, not {q.device.type} (there only under "
                "TRITON_INTERPRET=1, for tests)")
    if q.dtype not in TRITON_DTYPES:
        return f"it takes {', '.join(str(t) for t in TRITON_DTYPES)}, not {q.dtype}"
    return None


_VALIDATED: dict[tuple, bool] = {}


def triton_validated(q: torch.Tensor) -> bool:
    """Whether the Triton kernel gives the PyTorch kernel's values and gradients on q's
    device, for its head size and dtype: checked once per process and setting on a small
    problem (lsh with two rounds, causal and not, a length no multiple of the tile). A
    failure, or Triton missing, keeps 'auto' on the PyTorch kernel, with a warning when
    Triton itself failed or disagreed."""
    key = (q.device, q.shape[-1], q.dtype)
    if key in _VALIDATED:
        return _VALIDATED[key]
    ok = False
    if _triton_problem(q) is None:
        try:
            ok = _check_triton(*key)
            if not ok:
                warnings.warn("the Triton attention kernel disagrees with the PyTorch kernel "
                              f"for {key}; attn_backend='auto' uses the PyTorch kernel",
                              stacklevel=2)
        except Exception as e:  # a compiler or driver failure: fall back, say why
            warnings.warn(f"the Triton attention kernel failed for {key} ({e!s:.300}); "
                          "attn_backend='auto' uses the PyTorch kernel", stacklevel=2)
    _VALIDATED[key] = ok
    return ok


def _check_triton(device: torch.device, D: int, dtype: torch.dtype) -> bool:
    g = torch.Generator().manual_seed(0)
    B, H, R, L, bs = 1, 2, 2, 200, 16
    q, v, d_out = (torch.randn(B, H, L, D, generator=g).to(device, dtype) for _ in range(3))
    buckets = torch.randint(0, 8, (B, H, R, L), generator=g).to(device)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        for causal in (True, False):
            got, want = (_forward_and_grads(q, v, buckets, bs, causal, d_out, backend)
                         for backend in ("triton", "torch"))
            if not all(torch.allclose(a.float(), b.float(), atol=tol, rtol=tol)
                       for a, b in zip(got, want)):
                return False
    return True


def _forward_and_grads(q, v, buckets, bs, causal, d_out, backend):  # noqa: ANN001, ANN202
    layouts = round_layouts("lsh", buckets, q, bs, causal)
    out, lse = attention_forward(q, v, "lsh", buckets, bs, causal, backend, layouts)
    L = q.shape[2]
    delta = (d_out.float() * out[:, :, :L].float()).sum(-1)
    dq, dv = attention_backward(q, v, "lsh", buckets, bs, causal, lse, delta, d_out, backend,
                                layouts)
    return out[:, :, :L], dq, dv


# -- the rounds ---------------------------------------------------------------------------
def _flat_inputs(q: torch.Tensor, v: torch.Tensor, Lp: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scaled queries (G * Lp, D), and keys (the normalized queries) and values with one
    zero row appended (G * Lp + 1, D), padded to Lp positions: each written once into its
    new tensor (they are the largest tensors of the step besides the projections')."""
    B, H, L, D = q.shape
    # in float32 under autocast; the keys are rounded to q's dtype once, as normalize's are
    inv_norm = torch.linalg.vector_norm(q, dim=-1, keepdim=True).clamp_min_(1e-12).reciprocal_()

    def flat(zero_row: bool, a: torch.Tensor, b: torch.Tensor | float) -> torch.Tensor:
        out = q.new_empty(B * H * Lp + zero_row, D)
        body = out[:B * H * Lp].view(B, H, Lp, D)
        torch.mul(a, b, out=body[:, :, :L])
        body[:, :, L:].zero_()
        out[B * H * Lp:].zero_()
        return out

    return flat(False, q, D ** -0.5), flat(True, q, inv_norm), flat(True, v, 1.0)


def _round_forward(qf, kf, vf, rd: RoundLayout, bs, causal, backend):  # noqa: ANN001, ANN202
    """One round's output and log-sum-exp in sorted order: (G * Lp, D), (G * Lp)."""
    D = qf.shape[-1]
    if backend == "flex":
        out, lse = kernels_flex.flex_band_attention(
            *(gather_rows(t, rd.order) for t in (qf, kf, vf)), rd.group_flat, bs, causal)
    else:
        out, lse = band_forward(rd.sorted_rows(qf), rd.sorted_padded(kf), rd.sorted_padded(vf),
                                rd.group(), rd.look_back, rd.look_ahead, causal)
    return out.reshape(-1, D), lse.reshape(-1)


def attention_forward(q: torch.Tensor, v: torch.Tensor, kind: str, buckets: torch.Tensor | None,
                      bucket_size: int, causal: bool, backend: str = "torch",
                      layouts: list[RoundLayout] | None = None, lengths: torch.Tensor | None = None,
                      null: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Shared-QK attention, one hashing round at a time.

    The output over several rounds is one softmax over the union of the rounds' windows,
    so merging each round into a running output and log-sum-exp (in original order, in
    float32 or wider) is exact, and nothing of a round outlives it: within a round the sort
    is a permutation, so its output lands in original order by one index_copy (by the
    Triton kernel's epilogue with backend "triton").

    q, v: (B, H, L, D); kind "lsh" (buckets (B, H, R, L)), "local" or "full"; layouts
    from `round_layouts`, or None to lay out each round as it comes. Returns the output
    (B, H, Lp, D), Lp = L padded to a multiple of bucket_size, and its log-sum-exp as
    (B, H, Lp, 2): the largest round's log-sum-exp m and log(sum_r exp(lse_r - m)). Kept
    apart because a lone token's score is SELF_SCORE: at -1e5 a float32 sum of the two
    would round its probabilities by ~1%. null: every softmax also holds a key of score 0
    and value 0 (match attention, matching.py); the backward needs nothing more, as it
    works from the combined log-sum-exp.
    """
    B, H, L, D = q.shape
    Lp = math.ceil(L / bucket_size) * bucket_size
    backend = resolve_backend(backend, q, needs_grad=False)
    qf, kf, vf = _flat_inputs(q, v, Lp)
    rounds = (iter_round_layouts(kind, buckets, q, bucket_size, causal, lengths)
              if layouts is None else layouts)
    merge = _merge_rounds_triton if backend == "triton" else _merge_rounds
    out, m, norm = merge(qf, kf, vf, rounds, bucket_size, causal, backend)
    if null:
        m, norm = add_null(out, m, norm)
    out.div_(norm.unsqueeze(-1))
    return out.view(B, H, Lp, D), torch.stack([m, norm.log()], dim=-1).view(B, H, Lp, 2)


def _merge_rounds(qf, kf, vf, rounds, bs, causal, backend):  # noqa: ANN001, ANN202
    """Each round's output and log-sum-exp (band kernel or FlexAttention), put back in
    original order and merged by online softmax: the running (out, max, norm)."""
    acc = acc_dtype(qf.dtype)
    out = m = norm = None
    for rd in rounds:
        o_r, lse_r = _round_forward(qf, kf, vf, rd, bs, causal, backend)
        o_r, lse_r = o_r.to(acc), lse_r.to(acc)
        if not rd.in_order:
            rows = rd.order.reshape(-1)
            o_r = torch.empty_like(o_r).index_copy_(0, rows, o_r)
            lse_r = torch.empty_like(lse_r).index_copy_(0, rows, lse_r)
        if out is None:
            out, m, norm = o_r, lse_r, torch.ones_like(lse_r)
            continue
        m_new = torch.maximum(m, lse_r)
        old, new = torch.exp(m - m_new), torch.exp(lse_r - m_new)
        out.mul_(old.unsqueeze(-1)).add_(o_r.mul_(new.unsqueeze(-1)))
        norm.mul_(old).add_(new)
        m = m_new
    return out, m, norm


def _merge_rounds_triton(qf, kf, vf, rounds, bs, causal, backend):  # noqa: ANN001, ANN202
    """The same with the fused kernel, which merges each round in its epilogue."""
    # imported when first needed (see _triton_problem); round_forward is looked up on the
    # module at each call, so a test can replace it
    from . import kernels_triton

    out = qf.new_empty(qf.shape, dtype=torch.float32)
    m, norm = (qf.new_empty(qf.shape[0], dtype=torch.float32) for _ in range(2))
    for r, rd in enumerate(rounds):
        kernels_triton.round_forward(qf, kf, vf, rd.order, rd.group_flat, rd.back, rd.ahead,
                                     causal, out, m, norm, first=r == 0)
    return out, m, norm


def attention_backward(q: torch.Tensor, v: torch.Tensor, kind: str,
                       buckets: torch.Tensor | None, bucket_size: int, causal: bool,
                       lse: torch.Tensor, delta: torch.Tensor, d_out: torch.Tensor,
                       backend: str = "torch", layouts: list[RoundLayout] | None = None,
                       lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """dq, dv (float32 or wider, like q and v), one round at a time, from the combined
    log-sum-exp of `attention_forward` (B, H, Lp, 2), delta = <d_out, out> (B, H, L or Lp)
    and d_out (B, H, L or Lp, D): the probability of key j for query i is
    exp((s_ij - m_i) - log_norm_i)."""
    B, H, L, D = q.shape
    Lp = lse.shape[2]
    backend = resolve_backend(backend, q, needs_grad=False)
    acc = torch.float32 if backend == "triton" else acc_dtype(q.dtype)
    qf, kf, vf = _flat_inputs(q, v, Lp)
    # the Triton kernel's matmuls take d_out in the inputs' dtype, as FlashAttention's do
    do_dtype = q.dtype if backend == "triton" else acc
    do = F.pad(d_out.to(do_dtype), (0, 0, 0, Lp - d_out.shape[2])).reshape(-1, D)
    delta = F.pad(delta.to(acc), (0, Lp - delta.shape[2])).reshape(-1)
    lse = lse.to(acc).reshape(-1, 2)
    dqf = qf.new_zeros(qf.shape, dtype=acc)
    dkf = kf.new_zeros(kf.shape, dtype=acc)
    dvf = vf.new_zeros(vf.shape, dtype=acc)
    if layouts is None:
        layouts = iter_round_layouts(kind, buckets, q, bucket_size, causal, lengths)
    for rd in layouts:
        if backend == "triton":
            from . import kernels_triton  # when first needed (see _triton_problem)

            kernels_triton.round_backward(qf, kf, vf, rd.order, rd.group_flat, rd.back,
                                          rd.ahead, causal, lse, delta, do, dqf, dkf, dvf)
            continue
        if backend == "flex":
            kernels_flex.round_backward(qf, kf, vf, rd.order, rd.group_flat, bucket_size,
                                        causal, lse, delta, do, (dqf, dkf, dvf))
            continue
        dq_s, dk_s, dv_s = band_backward(
            rd.sorted_rows(qf), rd.sorted_padded(kf), rd.sorted_padded(vf), rd.group(),
            rd.look_back, rd.look_ahead, causal, rd.sorted_rows(lse), rd.sorted_rows(delta),
            rd.sorted_rows(do))
        if rd.in_order:  # the empty blocks' gradients belong to no key
            nb = dq_s.shape[1]
            dqf.add_(dq_s.view(dqf.shape))
            for acc_flat, d_s in ((dkf, dk_s), (dvf, dv_s)):
                acc_flat[:-1].view(dq_s.shape).add_(d_s[:, rd.look_back:rd.look_back + nb])
        else:
            padded = rd.rows_padded(kf.shape[0] - 1)
            dqf.index_add_(0, rd.order.reshape(-1), dq_s.reshape(-1, D))
            dkf.index_add_(0, padded.reshape(-1), dk_s.reshape(-1, D))
            dvf.index_add_(0, padded.reshape(-1), dv_s.reshape(-1, D))
        del dq_s, dk_s, dv_s
    del qf, kf, vf, do, delta
    # keys are the normalized queries k = q / |q|: dq += (dk - k <k, dk>) / |q|
    dk = dkf[:-1].view(B, H, Lp, D)[:, :, :L]
    norm = q.to(acc).norm(dim=-1, keepdim=True).clamp_min(1e-12)
    k = q.to(acc) / norm
    dk = dk.sub_(k.mul_((k * dk).sum(-1, keepdim=True))).div_(norm)
    dq = dqf.view(B, H, Lp, D)[:, :, :L].mul_(D ** -0.5).add_(dk)
    return dq, dvf[:-1].view(B, H, Lp, D)[:, :, :L]


# -- with autograd, and the reference ----------------------------------------------------
class _BucketedAttention(torch.autograd.Function):
    """attention_forward / attention_backward as an autograd function: saves q, v, the
    buckets and the combined output and log-sum-exp."""

    @staticmethod
    def forward(ctx, q, v, kind, buckets, bucket_size, causal, backend):  # noqa: ANN001
        with torch.autocast(q.device.type, enabled=False):  # explicit dtypes, as in backward
            out, lse = attention_forward(q, v, kind, buckets, bucket_size, causal, backend)
        ctx.save_for_backward(q, v, buckets, out, lse)
        ctx.args = (kind, bucket_size, causal, backend)
        return out[:, :, :q.shape[2]].to(q.dtype)

    @staticmethod
    def backward(ctx, d_out):  # noqa: ANN001
        q, v, buckets, out, lse = ctx.saved_tensors
        kind, bucket_size, causal, backend = ctx.args
        L = q.shape[2]
        delta = (d_out.to(out.dtype) * out[:, :, :L]).sum(-1)
        with torch.autocast(q.device.type, enabled=False):
            dq, dv = attention_backward(q, v, kind, buckets, bucket_size, causal, lse, delta,
                                        d_out, backend)
        return dq.to(q.dtype), dv.to(v.dtype), None, None, None, None, None


def bucketed_attention(q: torch.Tensor, v: torch.Tensor, buckets: torch.Tensor | None,
                       bucket_size: int, causal: bool, backend: str = "auto") -> torch.Tensor:
    """Shared-QK attention within buckets, with autograd.

    q, v: (B, H, L, D); keys are the L2-normalized queries. buckets: (B, H, R, L) bucket
    ids per hashing round, or None for local attention (chunk + previous chunk in position
    order). Rounds are combined with their log-sum-exp weights. Returns (B, H, L, D).
    backend: "torch" (the band kernel), "triton" (the fused kernel), "flex"
    (FlexAttention) or "auto".
    """
    backend = resolve_backend(backend, q)
    kind = "local" if buckets is None else "lsh"
    return _BucketedAttention.apply(q, v, kind, buckets, bucket_size, causal, backend)


def full_attention(q: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """Dense shared-QK attention with the same self-masking rule (the reference)."""
    L, D = q.shape[-2], q.shape[-1]
    k = F.normalize(q, dim=-1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * D ** -0.5
    i = torch.arange(L, device=q.device)
    if causal:
        scores = scores.masked_fill(i[None, :] > i[:, None], float("-inf"))
    scores = scores.masked_fill(torch.eye(L, dtype=torch.bool, device=q.device), SELF_SCORE)
    return torch.matmul(torch.softmax(scores, dim=-1), v)

