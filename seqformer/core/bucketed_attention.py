"""Shared-QK attention inside buckets, chunked by rank within each bucket.

The paper sorts tokens by (bucket, position) and cuts the sorted sequence into global
chunks. That leaks the future in a causal model: a later token's bucket shifts the chunk
boundaries, which changes which earlier keys an earlier query sees. Here a token's chunk
is (bucket, rank // bucket_size), where rank counts the earlier members of its bucket, and
it attends to its own and the previous chunk of the same bucket. Rank depends only on the
past, so the model is exactly causal and prefix consistent.

In the sorted sequence each query's window is a contiguous run of at most 2 * bucket_size
positions ending at itself (causal), so the work is a band: query block k against key
blocks k-2..k, masked to same bucket, chunk >= own chunk - 1 and original position <= own.
Local attention is the special case of one bucket in position order (key blocks k-1..k).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import ATTN_BACKENDS
from .precision import acc_dtype

# A token attends to itself only when no other key is allowed (paper, section 2). A finite
# score rather than -inf gives exactly that: exp(-1e5 - max) == 0 whenever another key is
# present, and weight 1 when it stands alone.
SELF_SCORE = -1e5
_PAD_BUCKET = 2**31 - 1  # padding positions form their own bucket, sorted last


def bucket_order(buckets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort by (bucket, position): one stable sort of the (int16 or int32) bucket ids.

    Returns, in sorted order: the original positions (the permutation), the bucket ids (in
    the input's dtype) and each token's rank among the earlier members of its bucket.
    All (..., L).
    """
    L = buckets.shape[-1]
    keys = buckets if buckets.dtype in (torch.int16, torch.int32) else buckets.to(torch.int32)
    sorted_buckets, perm = torch.sort(keys, dim=-1, stable=True)
    is_start = torch.ones_like(sorted_buckets, dtype=torch.bool)
    is_start[..., 1:] = sorted_buckets[..., 1:] != sorted_buckets[..., :-1]
    idx = torch.arange(L, device=buckets.device).expand(sorted_buckets.shape)
    start = torch.where(is_start, idx, torch.zeros_like(idx)).cummax(dim=-1).values
    return perm, sorted_buckets.to(buckets.dtype), idx - start


# Queries processed together by the band kernel: enough for efficient batched matmuls,
# few enough that a tile's scores (TILE_QUERIES x window floats) stay in cache. A GPU is
# launch-bound with small tiles: there a tile is up to 128K queries (~100 MB of scores).
TILE_QUERIES = 2048
TILE_QUERIES_CUDA = 1 << 17


def _windows(rows: torch.Tensor, g: slice, k0: int, n: int, width: int) -> torch.Tensor:
    """rows: padded rows of blocks (G, nb + width - 1, bs, D), contiguous. A view of the
    n overlapping windows of `width` consecutive blocks starting at blocks k0.. of rows g:
    (rows in g, n, width*bs, D)."""
    _, _, bs, D = rows.shape
    return rows.as_strided((len(range(*g.indices(rows.shape[0]))), n, width * bs, D),
                           (rows.stride(0), bs * D, D, 1),
                           rows.storage_offset() + g.start * rows.stride(0) + k0 * bs * D)


def _setup(blk: int, look_back: int, look_ahead: int, causal: bool, device: torch.device):
    """The window width in blocks and the masks that are the same for every tile: a key's
    sorted offset from the query decides causality (within a bucket sorted order is
    position order) and which key is the query itself."""
    width = look_back + look_ahead + 1
    offset = (torch.arange(width * blk, device=device) - look_back * blk
              - torch.arange(blk, device=device).unsqueeze(-1))
    fixed_ok = offset <= 0 if causal else torch.ones_like(offset, dtype=torch.bool)
    return width, fixed_ok, offset == 0


def _scores(qt, kw, gq, gk, fixed_ok, is_self):  # noqa: ANN001, ANN202
    # matmuls in the inputs' dtype (bf16 under autocast), softmax in float32 or wider
    s = torch.matmul(qt, kw.transpose(-1, -2))
    s = s.to(torch.promote_types(s.dtype, torch.float32))
    d = gq.unsqueeze(-1) - gk.unsqueeze(-2)
    ok = (torch.bitwise_and(d, -2) == 0) & fixed_ok  # d in {0, 1}
    return s.masked_fill_(~ok, float("-inf")).masked_fill_(is_self, SELF_SCORE)


def _tiles(q, k, group, look_back, width):  # noqa: ANN001, ANN202
    """(rows, k0, n, q tile, key windows, query groups, key-window groups) per tile: part
    of one row of a long sequence, or several whole rows of short ones (a batch of short
    sequences then costs a few large matmuls, not one small one per sequence and head)."""
    G, nb, blk, _ = q.shape
    per_tile = max(1, (TILE_QUERIES_CUDA if q.is_cuda else TILE_QUERIES) // blk)
    rows_per_tile = max(1, per_tile // nb)
    for g0 in range(0, G, rows_per_tile):
        g = slice(g0, min(G, g0 + rows_per_tile))
        for k0 in range(0, nb, per_tile):
            n = min(per_tile, nb - k0)
            gk = group[g, k0:k0 + n + width - 1].unfold(1, width, 1).transpose(2, 3)
            yield (g, k0, n, q[g, k0:k0 + n], _windows(k, g, k0, n, width),
                   group[g, look_back + k0:look_back + k0 + n],
                   gk.reshape(gk.shape[0], n, width * blk))


def band_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: torch.Tensor,
                 look_back: int, look_ahead: int, causal: bool
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sorted query block against its window of key blocks, one tile at a time.

    Like FlashAttention it never holds all scores. Which keys a query may see is encoded in
    one integer per sorted position, its group: groups count up by 1 at each chunk boundary
    inside a bucket and by 2 at each new bucket, so a key is in the query's own or previous
    chunk of the same bucket iff group(q) - group(k) is 0 or 1. Causality and self-masking
    are then fixed patterns of the window, because inside a bucket sorted order is position
    order.

    q: (G, nb, blk, D), softmax scale included. k, v: (G, lb + nb + la, blk, D) and
    group: (G, lb + nb + la, blk) int32, with look_back (lb) empty blocks before each row
    and look_ahead (la) after it. Returns the output (G, nb, blk, D) and the log-sum-exp
    (G, nb, blk), both float32 or wider.
    """
    width, fixed_ok, is_self = _setup(q.shape[2], look_back, look_ahead, causal, q.device)
    acc = acc_dtype(q.dtype)
    out = q.new_empty(q.shape, dtype=acc)
    lse = q.new_empty(q.shape[:-1], dtype=acc)
    for g, k0, n, qt, kw, gq, gk in _tiles(q, k, group, look_back, width):
        s = _scores(qt, kw, gq, gk, fixed_ok, is_self)
        # softmax is one fused pass; the log-sum-exp follows from the largest score and its
        # probability: lse = s_max - log p_max
        m = s.amax(dim=-1)
        p = torch.softmax(s, dim=-1)
        out[g, k0:k0 + n] = torch.matmul(p.to(v.dtype), _windows(v, g, k0, n, width))
        lse[g, k0:k0 + n] = m - p.amax(dim=-1).log()
    return out, lse


def band_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: torch.Tensor,
                  look_back: int, look_ahead: int, causal: bool, lse: torch.Tensor,
                  delta: torch.Tensor, d_out: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradient of sum(d_out * out) for out_i = sum_j exp(s_ij - lse_i) v_j.

    lse (G, nb, blk, 2) as (m, log_norm) with lse = m + log_norm, and delta =
    <d_out_i, out_i>, are those of the *combined* output of all
    hashing rounds, so the probabilities are the query's weights in the one softmax over
    the union of its rounds' windows, and the result is this round's exact share of the
    gradient (as FlashAttention's backward, and ring attention's per block). Inputs as in
    `band_forward`; d_out (G, nb, blk, D). Returns dq (like q), dk and dv (like k and v),
    float32 or wider.
    """
    width, fixed_ok, is_self = _setup(q.shape[2], look_back, look_ahead, causal, q.device)
    blk = q.shape[2]
    acc = acc_dtype(q.dtype)
    dq = q.new_empty(q.shape, dtype=acc)
    dk = k.new_zeros(k.shape, dtype=acc)
    dv = v.new_zeros(v.shape, dtype=acc)
    d_out = d_out.to(q.dtype)
    for g, k0, n, qt, kw, gq, gk in _tiles(q, k, group, look_back, width):
        stats = lse[g, k0:k0 + n].unsqueeze(-2)
        p = _scores(qt, kw, gq, gk, fixed_ok, is_self).sub_(stats[..., 0]).sub_(stats[..., 1])
        p = p.exp_()
        do = d_out[g, k0:k0 + n]
        dv_w = torch.matmul(p.to(do.dtype).transpose(-1, -2), do)
        # d out_i / d s_ij = p_ij (v_j - out_i): ds = p * (<do, v_j> - delta_i)
        ds = torch.matmul(do, _windows(v, g, k0, n, width).transpose(-1, -2)).to(p.dtype)
        ds = ds.sub_(delta[g, k0:k0 + n].unsqueeze(-1)).mul_(p).to(q.dtype)
        dq[g, k0:k0 + n] = torch.matmul(ds, kw)
        dk_w = torch.matmul(ds.transpose(-1, -2), qt)
        for o in range(width):  # overlapping windows: add back block by block
            dv[g, k0 + o:k0 + o + n] += dv_w[..., o * blk:(o + 1) * blk, :]
            dk[g, k0 + o:k0 + o + n] += dk_w[..., o * blk:(o + 1) * blk, :]
    return dq, dk, dv


def _groups(is_start: torch.Tensor, rank: torch.Tensor, bucket_size: int) -> torch.Tensor:
    """Group ids along the sorted order: +2 at each bucket start, +1 at each chunk start."""
    step = torch.where(is_start, 2, (rank % bucket_size == 0).to(torch.long))
    return step.cumsum(dim=-1).to(torch.int32)


BACKENDS = ATTN_BACKENDS
KINDS = ("lsh", "local", "full")
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
        from . import flex_attention

        if not flex_attention.available():
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
    from . import triton_attention

    if not triton_attention.usable(q):
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


@dataclass
class _Round:
    """Where one hashing round puts each position: each sorted position's row in the flat
    original-order (G * Lp, D) tensors and its group id, and how far back and ahead (in
    sorted positions) a query's window reaches. The band kernel's blocks are views."""

    order: torch.Tensor  # (G, Lp) flat rows in sorted order
    group_flat: torch.Tensor  # (G, Lp) int32
    blk: int  # the band kernel's query block
    look_back: int  # ... and its window, in blocks
    look_ahead: int
    back: int  # a query at sorted position i sees keys in [i - back, i + ahead]
    ahead: int

    @property
    def rows(self) -> torch.Tensor:  # (G, nb, blk)
        return self.order.view(self.order.shape[0], -1, self.blk)

    def rows_padded(self, zero_row: int) -> torch.Tensor:
        """(G, look_back + nb + look_ahead, blk): empty blocks point at the zero row."""
        return F.pad(self.rows, (0, 0, self.look_back, self.look_ahead), value=zero_row)

    def group(self) -> torch.Tensor:
        """(G, look_back + nb + look_ahead, blk) int32, empty blocks in groups no query
        can match."""
        g = self.group_flat.view(*self.rows.shape)
        g = F.pad(g, (0, 0, self.look_back, 0), value=-4)
        return F.pad(g, (0, 0, 0, self.look_ahead), value=2**30).contiguous()


def _round(kind: str, buckets: torch.Tensor | None, G: int, L: int, Lp: int, bs: int,
           causal: bool, device: torch.device, lengths: torch.Tensor | None = None) -> _Round:
    """buckets: (G, L) bucket ids of one round (lsh); local and full need none. lengths:
    (G, 1) real positions of each row, the rest padding that no real query sees; None: all
    L are real."""
    pos = torch.arange(Lp, device=device)
    real = L if lengths is None else lengths
    # a window [start of chunk c-1, self] spans at most 2*bs sorted positions; non-causal,
    # the rest of one's own chunk may lie up to bs - 1 positions ahead
    back, ahead = 2 * bs - 1, (0 if causal else bs - 1)
    if kind == "lsh":
        if lengths is not None:
            buckets = buckets.masked_fill(pos[:L] >= lengths, _PAD_BUCKET)
        if Lp != L:  # padding positions form their own bucket, sorted last
            buckets = F.pad(buckets, (0, Lp - L), value=_PAD_BUCKET)
        order, _, rank = bucket_order(buckets)
        group = _groups(rank == 0, rank, bs)
        # A window may start anywhere, so query blocks of bs/2 against 2*bs + bs/2 keys
        # waste less than blocks of bs against 3*bs keys.
        blk = bs // 2 if bs % 2 == 0 and bs >= 8 else bs
        look_back = math.ceil((2 * bs - 1) / blk)
    else:  # one bucket in position order (+ one of padding)
        order = pos.expand(G, Lp)
        is_start = (pos == 0) | (pos == real)
        if kind == "local":  # chunks are aligned blocks: own + previous
            group = _groups(is_start, pos - torch.where(pos >= real, real, 0), bs).expand(G, Lp)
            blk, look_back = bs, 1
        else:  # full: a single chunk, one block
            group = torch.where(is_start, 2, 0).cumsum(-1).to(torch.int32).expand(G, Lp)
            blk, look_back = Lp, 0
            back, ahead = Lp, (0 if causal else Lp)
    nb = Lp // blk
    look_back = min(look_back, nb - 1)
    look_ahead = 0 if causal or kind == "full" else min(math.ceil((bs - 1) / blk), nb - 1)
    order = order + torch.arange(G, device=device).unsqueeze(-1) * Lp
    return _Round(order, group.reshape(G, Lp).to(torch.int32).contiguous(), blk, look_back,
                  look_ahead, back, ahead)


def _flat_inputs(q: torch.Tensor, v: torch.Tensor, Lp: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scaled queries (G * Lp, D), and keys (the normalized queries) and values with one
    zero row appended (G * Lp + 1, D), padded to Lp positions."""
    B, H, L, D = q.shape
    k = F.normalize(q, dim=-1).to(q.dtype)  # autocast computes norms in float32
    q = q * D ** -0.5

    def flat(t: torch.Tensor, zero_row: bool) -> torch.Tensor:
        t = F.pad(t, (0, 0, 0, Lp - L)).reshape(-1, D)
        return torch.cat([t, t.new_zeros(1, D)]) if zero_row else t

    return flat(q, False), flat(k, True), flat(v, True)


def _gather(flat: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return flat.index_select(0, rows.reshape(-1)).view(*rows.shape, flat.shape[-1])


def _round_forward(qf, kf, vf, rd: _Round, bs, causal, backend):  # noqa: ANN001, ANN202
    """One round's output and log-sum-exp in sorted order: (G * Lp, D), (G * Lp)."""
    D = qf.shape[-1]
    if backend == "flex":
        from .flex_attention import flex_band_attention

        out, lse = flex_band_attention(*(_gather(t, rd.order) for t in (qf, kf, vf)),
                                       rd.group_flat, bs, causal)
    else:
        padded = rd.rows_padded(kf.shape[0] - 1)
        out, lse = band_forward(_gather(qf, rd.rows), _gather(kf, padded), _gather(vf, padded),
                                rd.group(), rd.look_back, rd.look_ahead, causal)
    return out.reshape(-1, D), lse.reshape(-1)


def round_layouts(kind: str, buckets: torch.Tensor | None, q: torch.Tensor, bucket_size: int,
                  causal: bool, lengths: torch.Tensor | None = None) -> list[_Round]:
    """The layout of each hashing round (one for local and full attention): computed once
    by the caller when a forward and its backward both need them (the sorts are then not
    redone), 12 bytes per position and round. lengths: (B,) real positions per sequence of
    a right-padded batch (None: all real)."""
    return list(_rounds(kind, buckets, q, bucket_size, causal, lengths))


def _rounds(kind: str, buckets: torch.Tensor | None, q: torch.Tensor, bs: int, causal: bool,
            lengths: torch.Tensor | None = None):
    B, H, L, _ = q.shape
    Lp = math.ceil(L / bs) * bs
    n = buckets.shape[2] if kind == "lsh" else 1
    if lengths is not None:  # per (sequence, head) row
        lengths = lengths.to(q.device).repeat_interleave(H).view(B * H, 1)
    for r in range(n):
        b = buckets[:, :, r].reshape(B * H, L).to(torch.int32) if kind == "lsh" else None
        yield _round(kind, b, B * H, L, Lp, bs, causal, q.device, lengths)


def attention_forward(q: torch.Tensor, v: torch.Tensor, kind: str, buckets: torch.Tensor | None,
                      bucket_size: int, causal: bool, backend: str = "torch",
                      layouts: list[_Round] | None = None, lengths: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
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
    would round its probabilities by ~1%.
    """
    B, H, L, D = q.shape
    Lp = math.ceil(L / bucket_size) * bucket_size
    backend = resolve_backend(backend, q, needs_grad=False)
    qf, kf, vf = _flat_inputs(q, v, Lp)
    rounds = (_rounds(kind, buckets, q, bucket_size, causal, lengths) if layouts is None
              else layouts)
    merge = _merge_rounds_triton if backend == "triton" else _merge_rounds
    out, m, norm = merge(qf, kf, vf, rounds, bucket_size, causal, backend)
    out.div_(norm.unsqueeze(-1))
    return out.view(B, H, Lp, D), torch.stack([m, norm.log()], dim=-1).view(B, H, Lp, 2)


def _merge_rounds(qf, kf, vf, rounds, bs, causal, backend):  # noqa: ANN001, ANN202
    """Each round's output and log-sum-exp (band kernel or FlexAttention), put back in
    original order and merged by online softmax: the running (out, max, norm)."""
    acc = acc_dtype(qf.dtype)
    out = m = norm = None
    for rd in rounds:
        o_s, lse_s = _round_forward(qf, kf, vf, rd, bs, causal, backend)
        rows = rd.order.reshape(-1)
        o_r = qf.new_empty(o_s.shape, dtype=acc).index_copy_(0, rows, o_s.to(acc))
        lse_r = qf.new_empty(lse_s.shape, dtype=acc).index_copy_(0, rows, lse_s.to(acc))
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
    from . import triton_attention

    out = qf.new_empty(qf.shape, dtype=torch.float32)
    m, norm = (qf.new_empty(qf.shape[0], dtype=torch.float32) for _ in range(2))
    for r, rd in enumerate(rounds):
        triton_attention.round_forward(qf, kf, vf, rd.order, rd.group_flat, rd.back, rd.ahead,
                                       causal, out, m, norm, first=r == 0)
    return out, m, norm


def attention_backward(q: torch.Tensor, v: torch.Tensor, kind: str,
                       buckets: torch.Tensor | None, bucket_size: int, causal: bool,
                       lse: torch.Tensor, delta: torch.Tensor, d_out: torch.Tensor,
                       backend: str = "torch", layouts: list[_Round] | None = None,
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
        layouts = _rounds(kind, buckets, q, bucket_size, causal, lengths)
    for rd in layouts:
        if backend == "triton":
            from . import triton_attention

            triton_attention.round_backward(qf, kf, vf, rd.order, rd.group_flat, rd.back,
                                            rd.ahead, causal, lse, delta, do, dqf, dkf, dvf)
            continue
        if backend == "flex":
            _flex_round_backward(qf, kf, vf, rd, bucket_size, causal, lse, delta, do,
                                 (dqf, dkf, dvf))
            continue
        padded = rd.rows_padded(kf.shape[0] - 1)
        dq_s, dk_s, dv_s = band_backward(
            _gather(qf, rd.rows), _gather(kf, padded), _gather(vf, padded), rd.group(),
            rd.look_back, rd.look_ahead, causal, _gather(lse, rd.rows),
            _gather(delta.unsqueeze(-1), rd.rows).squeeze(-1), _gather(do, rd.rows))
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


def _flex_round_backward(qf, kf, vf, rd, bs, causal, lse, delta, do, grads):  # noqa: ANN001
    """FlexAttention has its own backward but no way to take an outside log-sum-exp, so the
    round is recomputed under autograd and its output and log-sum-exp get the merge's
    gradients: with w_r = exp(lse_r - lse), d o_r = w_r do and d lse_r = w_r (<do, o_r> -
    delta)."""
    from .flex_attention import flex_band_attention

    G, Lp = rd.group_flat.shape
    D = qf.shape[-1]
    rows = rd.order.reshape(-1)
    ins = [_gather(t, rd.order).detach().requires_grad_() for t in (qf, kf, vf)]
    with torch.enable_grad():
        o_r, lse_r = flex_band_attention(*ins, rd.group_flat, bs, causal)
    do_s = do.index_select(0, rows).view(G, Lp, D)
    stats = lse.index_select(0, rows).view(G, Lp, 2)
    w = torch.exp(lse_r.detach() - stats[..., 0] - stats[..., 1])
    d_lse = w * ((do_s * o_r.detach()).sum(-1) - delta.index_select(0, rows).view(G, Lp))
    torch.autograd.backward([o_r, lse_r], [(w.unsqueeze(-1) * do_s).to(o_r.dtype), d_lse])
    for total, t in zip(grads, ins):
        total.index_add_(0, rows, t.grad.reshape(-1, D).to(total.dtype))


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


def attend_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor,
               is_self: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One new query against a gathered window of keys that holds the query's own (decoding).

    q: (..., D), or with a 1 where k has a further dim (rounds sharing one query);
    k, v: (..., W, D); valid, is_self: (..., W), the window's real keys and the query's own.
    Returns the output (..., D) and its log-sum-exp (...), as the full forward computes them.
    """
    D = q.shape[-1]
    scores = torch.matmul(k, q.unsqueeze(-1)).squeeze(-1) * D ** -0.5
    scores = scores.masked_fill(~valid, float("-inf")).masked_fill(is_self, SELF_SCORE)
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    out = torch.matmul(torch.exp(scores - lse).unsqueeze(-2), v).squeeze(-2)
    return out, lse.squeeze(-1)
