"""One hashing round of bucketed attention as fused Triton kernels (attn_backend="triton").

The same computation as `band_forward` / `band_backward` in kernels_torch.py, without
their sorted copies: a program takes a tile of sorted positions, reads its query, key and
value rows straight from the original-order tensors through the round's permutation, masks
by group id (own or previous chunk of the same bucket), by sorted offset (causal; within a
bucket sorted order is position order) and scores itself SELF_SCORE, keeps an online
softmax, and in its epilogue merges the round into the original-order output and
log-sum-exp accumulators. Within one round the permutation maps each sorted position to a
distinct row, so the read-modify-write epilogues never conflict; rounds run one launch
after another.

A query at sorted position i sees keys at sorted positions [i - back, i + ahead] only (the
window of its chunk and the previous one, or everything for full attention), so a tile
visits O(back + ahead) keys: the work is linear in the length for lsh and local attention.

The backward follows FlashAttention-2: one kernel over key tiles (dk, dv: each key tile
visits the query tiles that can see it) and one over query tiles (dq), both from the
combined log-sum-exp of all rounds, so each launch adds this round's exact share of the
gradient. Programs run over (tile, batch x head): no program owns a whole head.

Without a GPU the kernels run on CPU tensors under Triton's interpreter
(TRITON_INTERPRET=1, set before this module is imported); that is how the tests check
them against the PyTorch kernel.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# kernels read only constexpr globals
SELF_SCORE = tl.constexpr(-1e5)  # the same rule as kernels_torch.SELF_SCORE
# Running maxima start here, not at -inf: below SELF_SCORE and every real score, and
# exp(-inf - FLOOR) == 0 where -inf - -inf would be NaN for a tile with no visible key.
FLOOR = tl.constexpr(-1e30)
NO_GROUP = tl.constexpr(1 << 30)  # the group of a key beyond the end: no query matches it


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def usable(t: torch.Tensor) -> bool:
    """Whether the kernels can run on t's device here."""
    return t.is_cuda or interpreted()


@triton.jit
def _visible(offs_m, offs_n, gq, gk, Lp, CAUSAL: tl.constexpr):
    d = gq[:, None] - gk[None, :]
    ok = (d >= 0) & (d <= 1) & (offs_n[None, :] < Lp)
    if CAUSAL:
        ok = ok & (offs_n[None, :] <= offs_m[:, None])
    return ok


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    """a @ b in float32. IEEE: float32 inputs multiplied in full float32 (no TF32); the
    interpreter also needs it for 16-bit inputs, whose dot it gets wrong."""
    if IEEE:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _scores(q, k, offs_m, offs_n, gq, gk, Lp, CAUSAL: tl.constexpr, IEEE: tl.constexpr):
    s = _dot(q, tl.trans(k), IEEE)
    s = tl.where(_visible(offs_m, offs_n, gq, gk, Lp, CAUSAL), s, float("-inf"))
    return tl.where(offs_n[None, :] == offs_m[:, None], SELF_SCORE, s)


@triton.jit
def _rows(ROWS, GROUP, base, offs, Lp, pad_group):
    inside = offs < Lp
    rows = tl.load(ROWS + base + offs, mask=inside, other=0).to(tl.int64)
    group = tl.load(GROUP + base + offs, mask=inside, other=pad_group)
    return rows, group, inside


@triton.jit
def _tile(X, rows, offs_d, mask, D):
    """The rows `rows` of the (rows, D) tensor at X, padded to the tile."""
    return tl.load(X + rows[:, None] * D + offs_d[None, :], mask=mask, other=0.0)


@triton.jit
def _add_to_tile(X, rows, offs_d, mask, D, value):
    """X[rows] += value: within one round the rows are distinct, so no write conflicts."""
    ptr = X + rows[:, None] * D + offs_d[None, :]
    tl.store(ptr, tl.load(ptr, mask=mask, other=0.0) + value, mask=mask)


@triton.jit
def _key_range(start, back, ahead, Lp, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr):
    """The key tiles [lo, hi) the query tile at sorted position `start` can see."""
    lo = (tl.maximum(start - back, 0) // BLOCK_N) * BLOCK_N
    if CAUSAL:
        hi = tl.minimum(start + BLOCK_M, Lp)
    else:
        hi = tl.minimum(start + BLOCK_M + ahead, Lp)
    return lo, hi


@triton.jit
def _query_stats(LSE, DELTA, rows_q, m_ok):
    """The combined log-sum-exp as (max, log-norm), and delta = <d_out, out>."""
    stat_m = tl.load(LSE + rows_q * 2, mask=m_ok, other=0.0)
    stat_n = tl.load(LSE + rows_q * 2 + 1, mask=m_ok, other=0.0)
    return stat_m, stat_n, tl.load(DELTA + rows_q, mask=m_ok, other=0.0)


@triton.jit
def _forward_kernel(Q, K, V, ROWS, GROUP, OUT, M, NORM, Lp, back, ahead, D,
                    CAUSAL: tl.constexpr, FIRST: tl.constexpr, IEEE: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    start = tl.program_id(0) * BLOCK_M
    base = tl.program_id(1).to(tl.int64) * Lp
    offs_m = start + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    rows_q, gq, m_ok = _rows(ROWS, GROUP, base, offs_m, Lp, -4)
    q_mask = m_ok[:, None] & d_ok[None, :]
    q = _tile(Q, rows_q, offs_d, q_mask, D)

    m_i = tl.full([BLOCK_M], FLOOR, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lo, hi = _key_range(start, back, ahead, Lp, CAUSAL, BLOCK_M, BLOCK_N)
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        rows_k, gk, n_ok = _rows(ROWS, GROUP, base, offs_n, Lp, NO_GROUP)
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = _tile(K, rows_k, offs_d, kv_mask, D)
        v = _tile(V, rows_k, offs_d, kv_mask, D)
        s = _scores(q, k, offs_m, offs_n, gq, gk, Lp, CAUSAL, IEEE)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
        m_i = m_new

    # l_i >= 1: every query sees itself, and the largest score contributes exp(0)
    o = acc / l_i[:, None]
    lse = m_i + tl.log(l_i)
    out_ptr = OUT + rows_q[:, None] * D + offs_d[None, :]
    if FIRST:
        tl.store(out_ptr, o, mask=q_mask)
        tl.store(M + rows_q, lse, mask=m_ok)
        tl.store(NORM + rows_q, tl.full([BLOCK_M], 1.0, tl.float32), mask=m_ok)
    else:  # online softmax over rounds, as dispatch.attention_forward does in torch
        m_old = tl.load(M + rows_q, mask=m_ok, other=0.0)
        norm_old = tl.load(NORM + rows_q, mask=m_ok, other=0.0)
        out_old = tl.load(out_ptr, mask=q_mask, other=0.0)
        m_new = tl.maximum(m_old, lse)
        w_old = tl.exp(m_old - m_new)
        w_new = tl.exp(lse - m_new)
        tl.store(out_ptr, out_old * w_old[:, None] + o * w_new[:, None], mask=q_mask)
        tl.store(NORM + rows_q, norm_old * w_old + w_new, mask=m_ok)
        tl.store(M + rows_q, m_new, mask=m_ok)


@triton.jit
def _probabilities(q, k, offs_m, offs_n, gq, gk, stat_m, stat_n, Lp,
                   CAUSAL: tl.constexpr, IEEE: tl.constexpr):
    """exp(s - lse) with the combined log-sum-exp kept as (max, log-norm), and whether
    each score depends on q and k (not masked, not the constant self score)."""
    s = _scores(q, k, offs_m, offs_n, gq, gk, Lp, CAUSAL, IEEE)
    p = tl.exp(s - stat_m[:, None] - stat_n[:, None])
    live = _visible(offs_m, offs_n, gq, gk, Lp, CAUSAL) & (offs_n[None, :] != offs_m[:, None])
    return p, live


@triton.jit
def _backward_kv_kernel(Q, K, V, ROWS, GROUP, LSE, DELTA, DO, DK, DV, Lp, back, ahead, D,
                        CAUSAL: tl.constexpr, IEEE: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    start = tl.program_id(0) * BLOCK_N
    base = tl.program_id(1).to(tl.int64) * Lp
    offs_n = start + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    rows_k, gk, n_ok = _rows(ROWS, GROUP, base, offs_n, Lp, NO_GROUP)
    kv_mask = n_ok[:, None] & d_ok[None, :]
    k = _tile(K, rows_k, offs_d, kv_mask, D)
    v = _tile(V, rows_k, offs_d, kv_mask, D)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    # the queries that can see key j sit at sorted positions [j - ahead, j + back]
    if CAUSAL:
        lo = (start // BLOCK_M) * BLOCK_M
    else:
        lo = (tl.maximum(start - ahead, 0) // BLOCK_M) * BLOCK_M
    hi = tl.minimum(start + BLOCK_N + back, Lp)
    for m0 in range(lo, hi, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        rows_q, gq, m_ok = _rows(ROWS, GROUP, base, offs_m, Lp, -4)
        q_mask = m_ok[:, None] & d_ok[None, :]
        q = _tile(Q, rows_q, offs_d, q_mask, D)
        do = _tile(DO, rows_q, offs_d, q_mask, D)
        stat_m, stat_n, delta = _query_stats(LSE, DELTA, rows_q, m_ok)
        p, live = _probabilities(q, k, offs_m, offs_n, gq, gk, stat_m, stat_n, Lp,
                                 CAUSAL, IEEE)
        dv += _dot(tl.trans(p.to(do.dtype)), do, IEEE)
        dp = _dot(do, tl.trans(v), IEEE)
        ds = tl.where(live, p * (dp - delta[:, None]), 0.0)
        dk += _dot(tl.trans(ds.to(q.dtype)), q, IEEE)
    _add_to_tile(DK, rows_k, offs_d, kv_mask, D, dk)
    _add_to_tile(DV, rows_k, offs_d, kv_mask, D, dv)


@triton.jit
def _backward_q_kernel(Q, K, V, ROWS, GROUP, LSE, DELTA, DO, DQ, Lp, back, ahead, D,
                       CAUSAL: tl.constexpr, IEEE: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    start = tl.program_id(0) * BLOCK_M
    base = tl.program_id(1).to(tl.int64) * Lp
    offs_m = start + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    rows_q, gq, m_ok = _rows(ROWS, GROUP, base, offs_m, Lp, -4)
    q_mask = m_ok[:, None] & d_ok[None, :]
    q = _tile(Q, rows_q, offs_d, q_mask, D)
    do = _tile(DO, rows_q, offs_d, q_mask, D)
    stat_m, stat_n, delta = _query_stats(LSE, DELTA, rows_q, m_ok)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lo, hi = _key_range(start, back, ahead, Lp, CAUSAL, BLOCK_M, BLOCK_N)
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        rows_k, gk, n_ok = _rows(ROWS, GROUP, base, offs_n, Lp, NO_GROUP)
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = _tile(K, rows_k, offs_d, kv_mask, D)
        v = _tile(V, rows_k, offs_d, kv_mask, D)
        p, live = _probabilities(q, k, offs_m, offs_n, gq, gk, stat_m, stat_n, Lp,
                                 CAUSAL, IEEE)
        dp = _dot(do, tl.trans(v), IEEE)
        ds = tl.where(live, p * (dp - delta[:, None]), 0.0)
        dq += _dot(ds.to(k.dtype), k, IEEE)
    _add_to_tile(DQ, rows_q, offs_d, q_mask, D, dq)


# Tiles: 64 sorted queries against 64-key tiles. For lsh with bucket_size 64 a causal
# query tile visits 3-4 key tiles (its window reaches 2 * bucket_size - 1 back).
BLOCK_M = 64
BLOCK_N = 64


def _launch_args(q: torch.Tensor, rows: torch.Tensor) -> tuple[int, int, int, bool]:
    G, Lp = rows.shape
    D = q.shape[-1]
    # tl.dot wants every tile dimension >= 16
    return G, Lp, max(16, triton.next_power_of_2(D)), q.dtype == torch.float32 or interpreted()


def round_forward(qf: torch.Tensor, kf: torch.Tensor, vf: torch.Tensor, rows: torch.Tensor,
                  group: torch.Tensor, back: int, ahead: int, causal: bool,
                  out: torch.Tensor, m: torch.Tensor, norm: torch.Tensor, first: bool) -> None:
    """Merge one round into the running (out, m, norm) of `attention_forward`, in place.

    qf (scaled queries), kf, vf: original-order rows (>= G * Lp, D), contiguous. rows:
    (G, Lp) the flat row of each sorted position; group: (G, Lp) int32 group ids. out
    (G * Lp, D), m and norm (G * Lp): float32, written (first) or merged into.
    """
    G, Lp, BLOCK_D, ieee = _launch_args(qf, rows)
    grid = (triton.cdiv(Lp, BLOCK_M), G)
    _forward_kernel[grid](qf, kf, vf, rows.contiguous(), group.contiguous(), out, m, norm,
                          Lp, back, ahead, qf.shape[-1], CAUSAL=causal, FIRST=first,
                          IEEE=ieee, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D)


def round_backward(qf: torch.Tensor, kf: torch.Tensor, vf: torch.Tensor, rows: torch.Tensor,
                   group: torch.Tensor, back: int, ahead: int, causal: bool,
                   lse: torch.Tensor, delta: torch.Tensor, d_out: torch.Tensor,
                   dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor) -> None:
    """Add one round's share of the gradients into dq, dk, dv (float32, like qf, kf, vf),
    from the combined lse (G * Lp, 2) as (max, log-norm), delta = <d_out, out> (G * Lp)
    and d_out (G * Lp, D), all float32 and in original order."""
    G, Lp, BLOCK_D, ieee = _launch_args(qf, rows)
    rows, group = rows.contiguous(), group.contiguous()
    d_out = d_out.to(qf.dtype).contiguous()
    args = (qf, kf, vf, rows, group, lse.contiguous(), delta.contiguous(), d_out)
    meta = dict(CAUSAL=causal, IEEE=ieee, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D)
    D = qf.shape[-1]
    _backward_kv_kernel[(triton.cdiv(Lp, BLOCK_N), G)](*args, dk, dv, Lp, back, ahead, D,
                                                        **meta)
    _backward_q_kernel[(triton.cdiv(Lp, BLOCK_M), G)](*args, dq, Lp, back, ahead, D, **meta)
