"""ReformerConfig: every model hyper-parameter, validated at construction."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

ATTN_KINDS = ("lsh", "local", "full", "match")
ATTN_BACKENDS = ("auto", "torch", "triton", "flex")

# Above this many buckets, hashing uses two factors (n1 * n2 buckets from n1/2 + n2/2
# rotation columns) so the rotation matmul stays cheap at 1M tokens, as in trax/HF.
FACTORIZE_ABOVE = 128


class ConfigError(ValueError):
    """An invalid configuration; the message names the offending field."""


def _next_pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


@dataclass
class ReformerConfig:
    vocab_size: int = 16
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 4
    d_ff: int = 1024
    attn: str | list[str] = "lsh"
    bucket_size: int = 64
    n_buckets: int | None = None
    n_hashes: int = 4
    causal: bool = True
    reversible: bool = True
    # the feed-forward runs this many positions at a time (None: as many as keep a piece
    # within 16,384 batch x position rows, layers/feedforward.py); results do not depend on it
    ff_chunk_size: int | None = None
    axial_shape: tuple[int, ...] | None = None
    max_seq_len: int = 131072
    dropout: float = 0.0
    tie_embeddings: bool = True
    hash_seed: int = 0  # seeds the fixed eval-mode rotations
    # attn "match": a layer whose bucket for each position is a hash of the k tokens before
    # it (one hashing round per k), so a token's bucket holds the earlier occurrences of
    # its own context and it reads what followed them (attention/matching.py).
    match_k: tuple[int, ...] = (16,)
    # Copy mixture (layers/copy.py): for each k, the token that followed the last earlier
    # occurrence of a position's last k tokens is mixed into the head's distribution with a
    # learned weight, so a repeat is copied by token id even where the token's embedding is
    # barely trained. () = off (the paper's plain head). Causal models only.
    copy_k: tuple[int, ...] = ()
    # With copy_k, also copy across strands (DNA): token id -> id of its complement, for
    # every id (an involution); each k then has a reverse-complement candidate too, for
    # inverted repeats. () = off. Run configs take `true` for the domain's own map.
    copy_complement: tuple[int, ...] = ()
    # With copy_k, also a far copy pointer: a copy of what lies at least this many tokens
    # back, set where a copy_k context last occurred that far back and kept through
    # substitutions, trusted by its mismatches over the last 32 positions, so a sampled
    # repeat survives a changed token (layers/copy.py). 0 = off.
    copy_pointer: int = 0
    # The copy_k contexts that set the far pointer; () = all of them. Short ones re-point
    # it at chance matches.
    copy_pointer_k: tuple[int, ...] = ()
    # Input embedding at position t also sums per-offset embeddings of tokens t-1..t-k+1:
    # a causal k-mer feature, so short-range statistics need no learned relative offsets
    # (absolute axial positions make those slow to learn). 1 = the paper's plain embedding.
    kmer_embedding: int = 1
    # "torch": the band kernel (CPU and GPU); "triton": the fused kernel (CUDA; CPU only
    # under TRITON_INTERPRET=1, for tests); "flex": FlexAttention (CUDA; CPU forward only,
    # for tests); "auto": triton on a GPU where it passes a first-use check against torch,
    # else torch. Results are the same.
    attn_backend: str = "auto"
    # Attention runs this many heads at a time (and one hashing round at a time): the
    # working memory of a layer is one group's. More heads at once = fewer, larger kernel
    # launches; results do not depend on it. None: as many heads as keep a group within
    # 65,536 (batch x position) rows, so short sequences run all heads at once and from
    # 64K tokens on one head at a time.
    head_group_size: int | None = None
    # Under bf16/fp16 autocast, keep the two residual streams in float64: every 16-bit
    # sublayer output then adds exactly, so the reversible backward reconstructs each
    # layer's inputs bit for bit instead of drifting (~6e-4 per layer with float32
    # streams). Costs 2 x d_model x 4 bytes per token; no effect without autocast.
    exact_streams: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.attn, (list, tuple)):
            self.attn = list(self.attn)
        if self.axial_shape is not None:
            self.axial_shape = tuple(int(a) for a in self.axial_shape)
        if isinstance(self.match_k, int):
            self.match_k = (self.match_k,)
        self.match_k = tuple(self.match_k)
        if isinstance(self.copy_k, int):
            self.copy_k = (self.copy_k,)
        self.copy_k = tuple(self.copy_k)
        self.copy_pointer_k = tuple(self.copy_pointer_k)
        if not isinstance(self.copy_complement, bool):
            self.copy_complement = tuple(self.copy_complement)
        self.validate()
        if self.n_buckets is None:
            self.n_buckets = max(2, _next_pow2(math.ceil(self.max_seq_len / self.bucket_size)))
        if self.axial_shape is None:
            self.axial_shape = default_axial_shape(self.max_seq_len)

    # -- validation -----------------------------------------------------------------
    def validate(self) -> None:
        def need(cond: bool, field: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"{field}: {msg}")

        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "bucket_size",
                     "n_hashes", "max_seq_len", "kmer_embedding"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v > 0, name,
                 f"must be a positive integer, got {v!r}")
        need(self.d_model % self.n_heads == 0, "d_model",
             f"{self.d_model} is not divisible by n_heads={self.n_heads}")
        kinds = self.attn if isinstance(self.attn, list) else [self.attn]
        for k in kinds:
            need(k in ATTN_KINDS, "attn", f"unknown attention kind {k!r} (use one of {ATTN_KINDS})")
        need(self.attn_backend in ATTN_BACKENDS, "attn_backend",
             f"unknown backend {self.attn_backend!r} (use one of {ATTN_BACKENDS})")
        if isinstance(self.attn, list):
            need(len(self.attn) == self.n_layers, "attn",
                 f"has {len(self.attn)} entries but n_layers={self.n_layers}")
        if self.n_buckets is not None:
            need(isinstance(self.n_buckets, int)
                 and (self.n_buckets == 1 or (self.n_buckets >= 2 and self.n_buckets % 2 == 0)),
                 "n_buckets", f"must be 1 or an even integer (angular LSH takes the argmax over "
                 f"[xR, -xR]), got {self.n_buckets!r}")
        if self.head_group_size is not None:
            need(isinstance(self.head_group_size, int) and self.head_group_size > 0,
                 "head_group_size",
                 f"must be None or a positive integer, got {self.head_group_size!r}")
        if self.ff_chunk_size is not None:
            need(isinstance(self.ff_chunk_size, int) and self.ff_chunk_size > 0,
                 "ff_chunk_size", f"must be None or a positive integer, got {self.ff_chunk_size!r}")
        need(len(self.match_k) > 0 and all(isinstance(k, int) and not isinstance(k, bool)
                                            and k > 0 for k in self.match_k),
             "match_k", f"needs one or more positive integers, got {self.match_k!r}")
        need(all(isinstance(k, int) and not isinstance(k, bool) and k > 0
                 for k in self.copy_k), "copy_k",
             f"needs positive integers (or none: off), got {self.copy_k!r}")
        need(self.causal or not self.copy_k, "copy_k",
             "copies what followed earlier occurrences: needs a causal model (causal=True)")
        need(isinstance(self.copy_pointer, int) and not isinstance(self.copy_pointer, bool)
             and self.copy_pointer >= 0, "copy_pointer",
             f"needs a distance >= 0 (0: off), got {self.copy_pointer!r}")
        need(bool(self.copy_k) or not self.copy_pointer, "copy_pointer",
             "is set where a copy_k context occurred: needs copy_k")
        need(all(k in self.copy_k for k in self.copy_pointer_k), "copy_pointer_k",
             f"must be lengths of copy_k {list(self.copy_k)}, got {list(self.copy_pointer_k)}")
        comp = self.copy_complement
        need(not isinstance(comp, bool), "copy_complement",
             f"takes the map itself here (`true` is for run configs, which fill in the "
             f"domain's), got {comp!r}")
        if comp:
            need(bool(self.copy_k), "copy_complement",
                 "adds reverse-complement candidates to the copy mixture: needs copy_k")
            need(sorted(comp) == list(range(self.vocab_size))
                 and all(comp[c] == i for i, c in enumerate(comp)), "copy_complement",
                 f"must map each of the {self.vocab_size} token ids to its complement, "
                 f"each id's complement's complement being itself, got {list(comp)!r}")
        need(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        if self.axial_shape is not None:
            need(len(self.axial_shape) >= 2 and all(a > 0 for a in self.axial_shape),
                 "axial_shape", f"needs two or more positive axes, got {self.axial_shape}")
            need(math.prod(self.axial_shape) >= self.max_seq_len, "axial_shape",
                 f"{self.axial_shape} covers {math.prod(self.axial_shape)} positions, "
                 f"fewer than max_seq_len={self.max_seq_len}")

    # -- derived ----------------------------------------------------------------------
    def layer_attn(self, i: int) -> str:
        return self.attn[i] if isinstance(self.attn, list) else self.attn

    @property
    def has_match(self) -> bool:
        return any(self.layer_attn(i) == "match" for i in range(self.n_layers))

    @property
    def n_copy_candidates(self) -> int:
        return len(self.copy_k) * (2 if self.copy_complement else 1) + bool(self.copy_pointer)

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def bucket_factors(self) -> tuple[int, ...]:
        """How hashing splits n_buckets: (n,) or (n1, n2) with n1 * n2 == n, both even."""
        n = self.n_buckets
        if n <= FACTORIZE_ABOVE:
            return (n,)
        best = None
        for a in range(2, int(math.isqrt(n)) + 1, 2):
            if n % a == 0 and (n // a) % 2 == 0:
                best = a
        return (best, n // best) if best else (n,)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["axial_shape"] = list(self.axial_shape) if self.axial_shape else None
        d["match_k"] = list(self.match_k)
        d["copy_k"] = list(self.copy_k)
        d["copy_pointer_k"] = list(self.copy_pointer_k)
        d["copy_complement"] = list(self.copy_complement)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReformerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{unknown[0]}: unknown config field")
        return cls(**d)


def default_axial_shape(max_seq_len: int) -> tuple[int, int]:
    """Two axes near sqrt(max_seq_len), the first a power of two."""
    a = _next_pow2(math.ceil(math.sqrt(max_seq_len)))
    return (a, math.ceil(max_seq_len / a))
