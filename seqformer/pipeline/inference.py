"""score / embed / sample over records of any length with a trained model.

A record is read as [sep] + tokens, the same way training streams present it. Records
longer than the window are covered by overlapping windows (stride = window / 2), and
each position takes its output from the earliest window that covers it: the one where
it has the most left context (at least window - stride tokens, or all of them). Because
the model is exactly causal and prefix consistent, a position whose record fits in one
window gets exactly what a single forward over the whole record gives.

So with window N and stride S = N // 2, token i (0-based) is predicted by the window
starting at 0 if i < N, from [sep] and all i tokens before it; otherwise by the window
starting at s = S * (1 + (i - N) // S), from the i - s + 1 tokens t[s-1 .. i-1]: between
N - S + 1 and N tokens of context.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from ..core import Constraint, ReformerConfig, ReformerLM, sample_next
from ..core.decoding.cache import CopyCache
from ..core.decoding.sampling import apply_constraint
from ..core.layers.copy import POINTER_WINDOW, mismatch_flags, pointer_hit_counts
from ..domains import Record
from ..domains.annotations import Feature, feature_tokens, select
from ..errors import WRITE_FAILURES, InputError, write_failed
from ..files import check_room
from ..version import __version__


def stitched_windows(length: int, window: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """(start, keep_from, keep_to) in absolute positions for a sequence of `length`
    positions: run the model on [start, start + window) and keep [keep_from, keep_to)."""
    if not 0 < stride <= window:
        raise ValueError("need 0 < stride <= window")
    start, kept = 0, 0
    while kept < length:
        end = min(start + window, length)
        yield start, kept, end
        kept = end
        start += stride


def _with_sep(tokens: np.ndarray, sep_id: int, start: int, end: int) -> np.ndarray:
    """Positions [start, end) of the sequence [sep] + tokens, copied out of `tokens`
    (which may be a memory map: only one window is ever in RAM)."""
    if start == 0:
        return np.concatenate([[sep_id], tokens[:end - 1]])
    return np.asarray(tokens[start - 1:end - 1])


def _windows_of(tokens: np.ndarray, sep_id: int, length: int, window: int, stride: int,
                fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
                device: str | torch.device, lookahead: int = 0, history: int = 0,
                first: int = 0) -> Iterator[tuple[int, torch.Tensor]]:
    """Apply fn(x, before) to each window x (1, w) of positions first..length - 1 of
    [sep] + tokens (plus `lookahead` more positions, for next-token targets), with `before`
    the up to `history` positions that precede it (1, h) or None, and yield (keep_from,
    kept outputs)."""
    def part(a: int, b: int) -> torch.Tensor:
        x = _with_sep(tokens, sep_id, a, b).astype(np.int64)
        return torch.from_numpy(x).to(device).unsqueeze(0)

    for start, keep_from, keep_to in stitched_windows(length - first, window, stride):
        start, keep_from, keep_to = start + first, keep_from + first, keep_to + first
        end = min(start + window, length) + lookahead
        before = part(max(0, start - history), start) if history and start else None
        out = fn(part(start, end), before)[0]
        yield keep_from, out[keep_from - start:keep_to - start]


@torch.no_grad()
def token_log_likelihoods(model: ReformerLM, tokens: np.ndarray, sep_id: int, window: int,
                          stride: int | None = None, device: str | torch.device = "cpu",
                          context: int | None = None, start: int = 0) -> np.ndarray:
    """log P(token_i | [sep] + tokens[:i]) in nats for every token i >= start, float64
    (n - start,).

    context > window (a model with the copy mixture): each window's copy mixture also
    reads the context - window positions before it, so every token is scored with at most
    `context` preceding tokens, the last window - stride to window of them attended.
    start > 0: the tokens before it are context only (a held-out tail scored given its
    chromosome): the windows are laid from position start - (window - stride) on, so the
    first scored token, like every later one, has window - stride to window attended."""
    n = len(tokens)
    stride = stride or window // 2
    out = np.empty(n - start, dtype=np.float64)
    history = max(0, (context or window) - window)
    if history and model.copy_gate is None:
        raise ValueError(f"a context of {context} beyond the window ({window}) needs a model "
                         "with the copy mixture (model.copy_k)")

    def logp(x: torch.Tensor, before: torch.Tensor | None) -> torch.Tensor:
        # the window plus its last position's target
        return -model.loss(x, reduction="none", copy_history=before)

    # input position i holds [sep] + tokens at i and predicts token i
    first = max(0, start - (window - stride))
    for keep_from, lp in _windows_of(tokens, sep_id, n, window, stride, logp, device,
                                     lookahead=1, history=history, first=first):
        lp = lp[max(0, start - keep_from):]
        at = max(keep_from, start) - start
        out[at:at + lp.shape[0]] = lp.double().cpu().numpy()
    return out


def feature_records(records: list[Record], types: set[str], flank: int | None, window: int,
                    reverse_complement: Callable[[np.ndarray], np.ndarray]
                    ) -> list[tuple[Feature, Record]]:
    """Each feature of `types` in the records (their meta["features"]), in order, as a
    record of its own: up to `flank` bases of its record 5' of it (None: as many as fill
    the window, and at least half a window; never across records) then the feature, both
    on the feature's strand. meta["context"] says how many tokens lead."""
    out = []
    for rec in records:
        for f in select(rec.meta.get("features", []), types):
            # [sep] + context + feature fill one window when the feature fits in half
            fill = max(window - 1 - f.length, window // 2)
            context, body = feature_tokens(rec.tokens, f, fill if flank is None else flank,
                                           reverse_complement)
            attrs = {"id": f.id, "type": f.type, "record": f.record, "location": f.location,
                     "strand": f.strand, "length": f.length}
            out.append((f, Record(f.id, np.concatenate([context, body]),
                                  {"context": len(context), "attrs": attrs})))
    return out


def score_features(model: ReformerLM, features: list[tuple[Feature, Record]], sep_id: int,
                   window: int, on_feature: Callable[[int], None] | None = None
                   ) -> list[tuple[Feature, float]]:
    """(feature, total log-likelihood in nats of its own bases after its context)."""
    scores = []
    for feature, rec in features:
        ll = token_log_likelihoods(model, rec.tokens, sep_id, window)
        scores.append((feature, float(ll[rec.meta["context"]:].sum())))
        if on_feature:
            on_feature(len(rec.tokens))
    return scores


@dataclass
class RecordScore:
    id: str
    length: int
    total_ll: float  # nats

    @property
    def mean_ll(self) -> float:
        return self.total_ll / max(1, self.length)

    @property
    def bits_per_token(self) -> float:
        return -self.mean_ll / np.log(2)

    @property
    def perplexity(self) -> float:
        return float(np.exp(-self.mean_ll))


def partial_path(out: Path) -> Path:
    """Where embed_records writes until it finishes: kept when interrupted, for resume."""
    return out.with_name(out.name + ".partial")


@torch.no_grad()
def embed_records(model: ReformerLM, records, sep_id: int, window: int, out: Path,
                  layer: int = -1, pool: str | None = None, dtype: str = "float16",
                  attrs: dict | None = None, on_window: Callable[[int], None] | None = None,
                  device: str | torch.device = "cpu", resume: bool = False) -> int:
    """Write one (length, d_model) dataset per record to an HDF5 file, window by window.

    Layout: /embeddings/<n> datasets (attrs: id, length, and a record's meta["attrs"]),
    /ids (utf-8, record order),
    /pooled (n_records, d_model) float32 when pool == "mean"; file attributes:
    seqformer_version, domain, layer, pool, window, model_config (JSON).

    The file is built as `<out>.partial` and renamed onto `out` at the end. A record's
    dataset is marked complete (and the file flushed) as soon as it is written, so with
    resume=True an interrupted run skips the complete records and redoes the rest.
    A record's first meta["context"] tokens (a feature's flank) are read, not stored."""
    if pool not in (None, "mean"):
        raise InputError(f"--pool {pool}: only 'mean' is supported")
    d = model.cfg.d_model
    stride = window // 2
    settings = {"seqformer_version": __version__, "layer": layer, "pool": pool or "",
                "window": window, "model_config": json.dumps(model.cfg.to_dict()),
                "dtype": dtype, **(attrs or {})}
    partial = partial_path(Path(out))
    # a full disk keeps the partial file: its complete records are what --resume skips
    with _write_failure_keeps(out, f"{partial} keeps the records finished so far: free "
                              "space, then run again with --resume"):
        h5 = _open_partial(partial, settings, resume)
        ids, pooled = [], []
        try:
            group = h5.require_group("embeddings")
            for n, rec in enumerate(records):
                # leading context tokens (a feature's flank) are read but not stored
                skip = int(rec.meta.get("context", 0))
                length = len(rec.tokens) - skip
                ds = group.get(str(n))
                if ds is not None and ds.attrs.get("complete") and ds.attrs["id"] == rec.id \
                        and ds.shape == (length, d):
                    ids.append(rec.id)
                    pooled.append(np.asarray(ds.attrs["mean"], dtype=np.float32))
                    if on_window:
                        on_window(length)
                    continue
                if ds is not None:  # partly written, or another record: redo it
                    del group[str(n)]
                # room for every byte it may take (uncompressed) and HDF5's chunk cache
                check_room(partial, length * d * np.dtype(dtype).itemsize + (1 << 20))
                ds = group.create_dataset(str(n), shape=(length, d), dtype=dtype,
                                          chunks=(min(length, 4096), d), compression="gzip",
                                          compression_opts=1, shuffle=True)
                ds.attrs.update(rec.meta.get("attrs", {}))
                ds.attrs["id"] = rec.id
                ds.attrs["length"] = length
                total = torch.zeros(d, dtype=torch.float64, device=device)
                # input position i + 1 holds token i: drop the leading separator's output
                for keep_from, h in _windows_of(rec.tokens, sep_id, len(rec.tokens) + 1, window,
                                                stride,
                                                lambda x, _: model.hidden_states(x, layer=layer),
                                                device):
                    first = keep_from - 1  # the token h[0] belongs to (-1: the separator)
                    h = h[max(0, skip - first):]
                    first = max(first, skip)
                    if h.shape[0]:
                        ds[first - skip:first - skip + h.shape[0]] = h.float().cpu().numpy()
                        total += h.double().sum(0)
                    if on_window:
                        on_window(h.shape[0])
                mean = (total / max(1, length)).float().cpu().numpy()
                ds.attrs["mean"] = mean
                ds.attrs["complete"] = True
                h5.flush()
                ids.append(rec.id)
                pooled.append(mean)
            for stale in [k for k in group if int(k) >= len(ids)]:
                del group[stale]
            for name in ("ids", "pooled"):
                if name in h5:
                    del h5[name]
            h5.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
            if pool == "mean":
                h5.create_dataset("pooled", data=np.stack(pooled) if pooled else np.zeros((0, d)))
        finally:
            h5.close()
        os.replace(partial, out)
    return len(ids)


@contextlib.contextmanager
def _write_failure_keeps(out: Path, kept: str) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        if e.errno not in WRITE_FAILURES:
            raise
        raise write_failed(out, e, kept) from None


def _open_partial(partial: Path, settings: dict, resume: bool) -> h5py.File:
    """The partial HDF5 file: reopened when resuming with the same settings, else new."""
    if resume and partial.exists():
        try:
            h5 = h5py.File(partial, "a")
        except OSError:  # killed while its metadata was being written: start over
            partial.unlink()
        else:
            same = all(h5.attrs.get(k) == v for k, v in settings.items())
            if same:
                return h5
            h5.close()
            raise InputError(f"{partial}: written with another model or other options; "
                             "run without --resume to start over")
    partial.parent.mkdir(parents=True, exist_ok=True)
    h5 = h5py.File(partial, "w")
    h5.attrs.update(settings)
    return h5


@torch.no_grad()
def sample_tokens(model: ReformerLM, prompt: np.ndarray, n_tokens: int, temperature: float = 1.0,
                  top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                  allowed: list[int] | None = None, on_token: Callable[[int], None] | None = None,
                  device: str | torch.device = "cpu", constraint: Constraint | None = None
                  ) -> tuple[np.ndarray, float]:
    """One sample: `sample_batch` with one sequence; returns its new tokens (n_tokens,)
    and the tokens per second."""
    new, rate = sample_batch(model, prompt, n_tokens, 1, temperature, top_k, top_p, seed,
                             allowed, on_token, device, constraint)
    return new[0], rate


# Compiling the decoding step takes 15-35 s on a 2-core CPU, after which decoding runs
# about 3x faster (docs/music.md, "Sampling speed"): it pays from about 10,000 tokens.
COMPILE_FROM_TOKENS = 10_000


def decide_compile(compile: bool | None, total_tokens: int, device: str | torch.device) -> bool:
    """`sample_batch`'s compile=None: compile on a CPU once the samples reach
    COMPILE_FROM_TOKENS in all, if the C++ compiler Inductor will call ($CXX, else g++) is
    installed. A GPU decodes eagerly unless asked: its compiled step is not measured yet."""
    if compile is not None:
        return compile
    if torch.device(device).type != "cpu" or total_tokens < COMPILE_FROM_TOKENS:
        return False
    from torch._inductor import config as inductor_config

    return shutil.which(inductor_config.cpp.cxx[-1]) is not None


# `sample --trust-pointer`: the training pieces' hit rate at each count of mismatches
# weighs as this many positions of the prompt (docs/long-context.md, "A trust fitted to
# the prompt")
POINTER_PRIOR_POSITIONS = 20.0


@dataclass(frozen=True)
class FittedTrust:
    """`fit_trust_to_prompt`'s answer: the trust per count of mismatches, and the prompt's
    evidence (positions with a far-pointer candidate, and the share of them it was right)."""
    trust: list[float]
    positions: int
    right: float


def fit_trust_to_prompt(rates: Sequence[float], prompt: np.ndarray, cfg: ReformerConfig,
                        prior_positions: float = POINTER_PRIOR_POSITIONS) -> FittedTrust:
    """The far pointer's hit rate per count of mismatches for a sampler continuing
    `prompt`: the prompt's own where it has evidence, the training pieces' (`rates`)
    where it has none, (hits + n rate) / (seen + n) with n = prior_positions. How much a
    piece repeats varies from piece to piece (the training pieces of docs/long-context.md:
    from 0.0% to 75% of positions), and a prompt whose approximate repeats the pointer
    often gets wrong is a piece that does not repeat verbatim."""
    hits, seen = pointer_hit_counts([torch.as_tensor(prompt)], cfg.copy_k, cfg.vocab_size,
                                    cfg.copy_pointer, cfg.copy_pointer_k)
    prior = torch.as_tensor(rates, dtype=torch.float64)
    trust = ((hits + prior_positions * prior) / (seen + prior_positions)).tolist()
    return FittedTrust(trust, int(seen.sum()), float(hits.sum() / seen.sum().clamp_min(1)))


class _PointerTrust:
    """`sample_batch`'s pointer_trust: each step copies the far pointer's candidate with
    probability trust[mismatches]. A copy passes the constraint unchecked, except for its
    forced moves (the one token it allows: the grammar's release of a note held too long).
    Such a move is inserted before the candidate, which comes next: replacing it (a note-off,
    say) leaves a note sounding until its own forced release, which replaces another.
    Inserted, the samples of music005 sound 7.7 notes at once on average, against 9.9 when
    replaced and 6.8 in the piece (docs/long-context.md).

    So the sampler keeps its own alignment: the candidate is the pointer's, `lag` inserted
    moves further back, until the pointer's distance moves with the copy; and its own
    mismatches over the last POINTER_WINDOW positions (`left`, one slot per position
    modulo the window): where the sample left the copy, a forced move not counted (counted,
    forced moves ended all 37 verbatim runs of a music003 sample). They start, and start
    again wherever the pointer moves elsewhere, as the pointer's own."""

    def __init__(self, trust: Sequence[float], num_samples: int, device: str | torch.device,
                 gens: list[torch.Generator] | None):
        self.trust = torch.tensor(trust, dtype=torch.float32, device=device)
        self.gens = gens
        self.left = torch.ones(num_samples, POINTER_WINDOW, dtype=torch.bool, device=device)
        self.lag = torch.zeros(num_samples, dtype=torch.long, device=device)
        # no distance the pointer has (-1: none), so the first step starts from its own
        self.distance = torch.full((num_samples,), -2, dtype=torch.long, device=device)

    def __call__(self, tok: torch.Tensor, logits: torch.Tensor, copy: CopyCache,
                 bias: torch.Tensor) -> torch.Tensor:
        """The tokens (B,) after the copies; `tok`: the model's draws from `logits`, masked
        by the constraint and `bias` (-inf for tokens never generated)."""
        d, length = copy.distance, copy.length[:1]  # the next token goes at `length`
        caught_up = (self.lag > 0) & (d == self.distance + self.lag)
        moved = (d != self.distance) & ~caught_up
        self.lag = torch.where(caught_up | moved, 0, self.lag)
        self.distance = d.clone()
        slots = (length - 1 - torch.arange(POINTER_WINDOW, device=d.device)) % POINTER_WINDOW
        own = mismatch_flags(copy.tokens, length - 1, d.unsqueeze(-1))[:, 0]  # (B, W)
        self.left = torch.where(moved.unsqueeze(-1), own.gather(1, slots.expand_as(own)),
                                self.left)
        src = length - d - self.lag
        candidate = torch.where((d > 0) & (src >= 0), copy.tokens.gather(
            1, src.clamp_min(0).unsqueeze(-1))[:, 0], -1)
        w = torch.where(candidate >= 0, self.trust[self.left.sum(-1).clamp(
            max=len(self.trust) - 1)], 0.0)
        if self.gens is None:
            u = torch.rand(w.shape, device=w.device)
        else:
            u = torch.cat([torch.rand(1, generator=g) for g in self.gens]).to(w.device)
        forced = torch.isfinite(logits).sum(-1) == 1
        copies = (u < w) & ~forced & (bias[candidate.clamp_min(0)] == 0)
        out = torch.where(copies, candidate, tok)
        inserted = forced & (candidate >= 0) & (out != candidate)
        self.lag += inserted
        self.left[:, length % POINTER_WINDOW] = ((out != candidate) & ~inserted).unsqueeze(-1)
        return out


def sample_batch(model: ReformerLM, prompt: np.ndarray, n_tokens: int, num_samples: int,
                 temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None,
                 allowed: list[int] | None = None,
                 on_token: Callable[[int], None] | None = None,
                 device: str | torch.device = "cpu", constraint: Constraint | None = None,
                 compile: bool | None = None, pointer_trust: Sequence[float] | None = None
                 ) -> tuple[np.ndarray, float]:
    """Continue `prompt` (token ids, starting with the separator) by n_tokens in
    `num_samples` sequences decoded as one batch with the decoding cache, emitting only
    `allowed` token ids and those `constraint` allows (see core/decoding/sampling.py; one row per
    sample). Sample k draws with its own generator seeded seed + k, so it is the sample a
    run of its own with that seed gives. Returns the new tokens (num_samples, n_tokens)
    and the tokens per second over all samples.

    compile: decode with a compiled step (`ReformerLM.compile_decoding`; CUDA graphs on a
    GPU). Its caches then always hold the whole context, so one compiled graph serves the
    first context and every restart. None: as `decide_compile` says.

    Past the model's max_seq_len the cache cannot grow (positions are absolute), so the
    context restarts from the last half window: exact within a context, approximate
    across the restart. The copy mixture (model.copy_k) keeps every token: its candidates
    come from the whole prompt and sample, across restarts. Tokens stay on the device
    until the end: without a constraint or seeded generators (which draw on the CPU)
    nothing is read back per token.

    pointer_trust (one weight per count of mismatches, `fit_trust_to_prompt`): a
    sampling rule for models with the far pointer (model.copy_pointer), not their
    likelihood: each step copies the pointer's candidate with probability w =
    pointer_trust[its mismatches], and otherwise samples as above, so a sample holds a
    repeat about as often as the pointer is right in the training data (the trained gate
    trusts it far less after a changed token; docs/long-context.md). A copied token is
    not checked by `constraint` (`_PointerTrust` says which are): it is the piece's own
    material, and a grammar fitted to where the sample stands refuses it wherever the
    sample's state (the notes sounding, the instrument) differs from the source's, which
    broke nearly every repeat. Temperature, top-k and top-p shape only the model's
    draws."""
    if pointer_trust is not None and not model.cfg.copy_pointer:
        raise ValueError("pointer_trust needs a model with the far pointer (copy_pointer)")
    gens = ([torch.Generator().manual_seed(seed + k) for k in range(num_samples)]
            if seed is not None else None)
    trust = (_PointerTrust(pointer_trust, num_samples, device, gens)
             if pointer_trust is not None else None)
    bias = torch.zeros(model.cfg.vocab_size, device=device)
    if allowed is not None:
        bias.fill_(float("-inf"))
        bias[torch.as_tensor(allowed, device=device)] = 0.0
    ctx = model.cfg.max_seq_len
    compile = decide_compile(compile, n_tokens * num_samples, device)
    model.compile_decoding("reduce-overhead" if torch.device(device).type == "cuda" else None,
                           enabled=compile)

    def room(used: int, left: int) -> int:
        return ctx if compile else min(ctx, used + left)

    seq = torch.as_tensor(np.asarray(prompt, dtype=np.int64), device=device)
    seq_ctx = seq[-(ctx // 2):] if len(seq) >= ctx else seq
    # fixed, so that one compiled step serves every restart; room for the history and a
    # whole context after it, as prefill asks even when fewer tokens are left to decode
    copy_capacity = len(seq) + n_tokens + ctx
    t0 = time.perf_counter()
    new = torch.empty(num_samples, n_tokens, dtype=torch.long, device=device)
    with torch.inference_mode():
        logits, cache = model.prefill(seq_ctx.expand(num_samples, -1),
                                      capacity=room(len(seq_ctx), n_tokens),
                                      copy_history=seq[:len(seq) - len(seq_ctx)].expand(
                                          num_samples, -1),
                                      copy_capacity=copy_capacity)
        nxt = logits[:, -1]
        for i in range(n_tokens):
            nxt, removed = apply_constraint(nxt + bias, constraint)
            tok = sample_next(nxt, temperature, top_k, top_p, gens)
            if trust is not None:
                tok = trust(tok, nxt, cache.copy, bias)
            if constraint is not None:
                constraint.update(tok, removed)
            new[:, i] = tok
            if on_token:
                on_token(num_samples)
            if i + 1 == n_tokens:
                break
            if cache.length >= cache.capacity:  # context full: restart from the last half
                keep = ctx // 2
                seen = torch.cat([seq.expand(num_samples, -1), new[:, :i + 1]], 1)
                recent = seen[:, -keep:]
                logits, cache = model.prefill(recent, capacity=room(recent.shape[1],
                                                                     n_tokens - i - 1),
                                              copy_history=seen[:, :-keep],
                                              copy_capacity=copy_capacity)
                nxt = logits[:, -1]
            else:
                nxt = model.step(tok, cache)
    out = new.cpu().numpy()
    rate = num_samples * n_tokens / max(1e-9, time.perf_counter() - t0)
    return out, rate
