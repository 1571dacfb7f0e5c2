"""Angular LSH (Reformer section 2): bucket = argmax([xR; -xR]) over random rotations R.

With many buckets the rotation is factorized (trax/HF style): n = n1 * n2 buckets come
from two independent argmaxes over n1/2 and n2/2 columns, so hashing 1M tokens into
16K buckets costs 128 columns per round, not 8K.
"""

from __future__ import annotations

import torch


def rotation_width(factors: tuple[int, ...]) -> int:
    return sum(f // 2 for f in factors)


def random_rotations(n_heads: int, d_head: int, n_hashes: int, factors: tuple[int, ...],
                     device: torch.device | None = None, dtype: torch.dtype = torch.float32
                     ) -> torch.Tensor:
    """Fresh rotations from the global RNG (training): (H, d_head, R, width)."""
    return torch.randn(n_heads, d_head, n_hashes, rotation_width(factors), device=device,
                       dtype=dtype)


def fixed_rotations(n_heads: int, d_head: int, n_hashes: int, factors: tuple[int, ...],
                    seed: int) -> torch.Tensor:
    """Seeded rotations for eval mode, on CPU in float32.

    Round r is drawn from its own seed, so evaluating with more or fewer hashes than the
    model was trained with keeps the rounds it shares with other settings.
    """
    width = rotation_width(factors)
    rounds = []
    for r in range(n_hashes):
        g = torch.Generator().manual_seed(seed * 1_000_003 + r)
        rounds.append(torch.randn(n_heads, d_head, width, generator=g))
    return torch.stack(rounds, dim=2)


def hash_buckets(qk: torch.Tensor, rotations: torch.Tensor, factors: tuple[int, ...]
                 ) -> torch.Tensor:
    """Bucket ids (B, H, R, L) in [0, prod(factors)) for vectors qk (B, H, L, d_head)."""
    if factors == (1,):
        b, h, l, _ = qk.shape
        return torch.zeros(b, h, rotations.shape[2], l, dtype=torch.long, device=qk.device)
    rotated = torch.einsum("bhld,hdrc->bhrlc", qk, rotations.to(qk.dtype))
    buckets = None
    offset = 0
    for f in factors:
        part = rotated[..., offset:offset + f // 2]
        offset += f // 2
        idx = torch.cat([part, -part], dim=-1).argmax(dim=-1)
        buckets = idx if buckets is None else buckets * f + idx
    return buckets
