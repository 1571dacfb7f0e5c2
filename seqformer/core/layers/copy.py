"""Copy mixture: the token that followed the last occurrence of a context, named by its id.

A match layer (attention/matching.py) finds what followed the earlier occurrences of a
position's context and reads it as a vector; the head must then turn that vector back into
a token through the (tied) embedding. For a token the training data rarely or never holds
(a General MIDI program no training piece plays) that embedding is untrained, and the head
keeps the right answer improbable however clear the repeat.

The copy mixture skips the round trip, as a cache language model or a pointer-generator
does. For each k in `copy_k`, position p's *candidate* is the token that followed the most
recent earlier occurrence of x[p-k+1 .. p] (its last k tokens), found exactly (hash, then
the k tokens compared). The head's distribution and the candidates are mixed:

    p(v) = w_0 softmax(head(h_p))_v + sum_k w_k [v == candidate_k(p)],
    w = softmax(0, s_1, ..., s_K),
    s_k = SCALE (t_k log(1 + streak_k(p)) + b_k)      (-inf without a candidate)

so a trusted candidate is likely whatever the head thinks of its token. streak_k(p) is how
many positions in a row, up to p, candidate k was right. The gate reads only that, not
h_p: evidence of a repeat that does not depend on which tokens repeat. (A gate of h_p
learns in a few steps to trust candidates, then drifts once the head copies the training
data's tokens as well, and on tokens training never showed it is no guide: tested.)
A candidate and a streak depend only on tokens up to p: the model stays exactly causal and
prefix consistent. The model's "logits" are then log p. Cost: a sort of L + 1 hashes per
k, and O(L) memory.

Reverse-complement candidates (DNA, `copy_complement`): a genome repeats on both strands,
and an inverted repeat reads, going forward, the earlier copy backwards and complemented.
For each k there is then a second candidate: where the reverse complement of x[p-k+1 .. p]
occurred latest as x[j .. j+k-1] (j + k - 1 <= p: it may overlap the context, as in a
hairpin), the complement of x[j-1], the base the other strand reads next. In yeast S288c's
chromosomes 1.26% of bases have a forward 20-base match at least 1,024 bases back in their
chromosome and 1.20% a reverse one; only 0.44% have both (docs/long-context.md).

The far pointer (`copy_pointer` = D > 0): a sample that is repeating a section leaves it at
the first token it changes, since every candidate's context then holds that token for the
next k positions. The pointer is a copy that survives substitutions. Its distance d is set
at each position where one of its contexts (`copy_pointer_k`, default all of copy_k) last
occurred at least D tokens back (the longest such k; d is then the distance to that
occurrence) and kept where none did;
its candidate is x[p + 1 - d] and its evidence, in place of a streak, is how many of the
last POINTER_WINDOW tokens differ from those d back (the gate learns a score for each
count). Exactly causal, like the others. In planetblupi's training pieces (D = 1,024,
set by 8- and 16-token contexts), the candidate is right at 99.8% of the positions with
no mismatch, 81% with one and 59% with eight.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
import torch.nn as nn

from ..attention.matching import context_buckets, next_bucket
from ..decoding.cache import CopyCache

POINTER_WINDOW = 32  # the far pointer's evidence: its mismatches over this many positions
NO_CANDIDATE = -1e4  # a gate score whose weight is exactly 0 in float32
# Adam moves a parameter about lr per step, and a gate that trusts a long streak needs a
# score of several units: the gate's parameters are scaled so that takes tens of steps.
GATE_SCALE = 8.0


def _contexts(ext: torch.Tensor, k: int, k_max: int, n_items: int) -> torch.Tensor:
    """The k tokens before each item 0..n_items-1: (B, n_items, k), from ext = k_max pad
    tokens then the sequence."""
    return ext.unfold(1, k, 1)[:, k_max - k:k_max - k + n_items]


def context_hashes(tokens: torch.Tensor, copy_k: tuple[int, ...], pad: int) -> torch.Tensor:
    """(B, K, L + 1) long: each item's hash of the k tokens before it, per k of copy_k."""
    return context_buckets(tokens, copy_k, pad)[:, 0].long()


def copy_candidates(tokens: torch.Tensor, copy_k: tuple[int, ...], pad: int,
                    complement: torch.Tensor | None = None,
                    hashes: torch.Tensor | None = None) -> torch.Tensor:
    """tokens (B, L) -> (B, L, K) long: for each position p and each k of copy_k, the token
    that followed the most recent earlier occurrence of tokens[p-k+1 .. p], or -1 where the
    context has not occurred before (or reaches before the sequence, where `pad` stands).
    With `complement` (token id -> its partner's id, pad -> pad; pad + 1 entries), K is
    2 len(copy_k): then each k's reverse-complement candidate, in the same order."""
    B, L = tokens.shape
    k_max = max(copy_k)
    if hashes is None:
        hashes = context_hashes(tokens, copy_k, pad)
    ext = torch.cat([tokens.new_full((B, k_max), pad), tokens], dim=1).long()
    items = torch.arange(L + 1, device=tokens.device)
    out = []
    for r, k in enumerate(copy_k):
        h = hashes[:, r]
        # items sorted by (hash, position): the one before an item in that order, if it
        # has the same hash, is the most recent earlier item with its context
        order = torch.argsort(h * (L + 1) + items, dim=-1)
        sorted_h = h.gather(-1, order)
        prev = torch.where(sorted_h[:, 1:] == sorted_h[:, :-1], order[:, :-1], -1)
        earlier = torch.full_like(h, -1).scatter_(-1, order[:, 1:], prev)[:, 1:]  # items 1..L
        ctx = _contexts(ext, k, k_max, L + 1)
        j = earlier.clamp_min(0)
        same = (ctx.gather(1, j.unsqueeze(-1).expand(B, L, k)) == ctx[:, 1:]).all(-1)
        # a context holding the pad token starts the sequence: it never occurred before
        real = (ctx[:, 1:] != pad).all(-1)
        found = (earlier >= 0) & same & real
        out.append(torch.where(found, tokens.long().gather(-1, j), -1))  # j < item <= L
    if complement is not None:
        # item i's reverse-complemented context, hashed as a forward one: it is the context
        # of item L + k - i of the reversed, complemented sequence
        mirrored = context_buckets(complement[tokens.long()].flip(1), copy_k, pad)[:, 0].long()
        out += [_reverse_candidates(tokens, hashes[:, r], mirrored[:, r], ext, k, k_max, pad,
                                    complement)
                for r, k in enumerate(copy_k)]
    return torch.stack(out, dim=-1)


def _reverse_candidates(tokens: torch.Tensor, forward: torch.Tensor, mirrored: torch.Tensor,
                        ext: torch.Tensor, k: int, k_max: int, pad: int,
                        complement: torch.Tensor) -> torch.Tensor:
    """(B, L): each position's reverse-complement candidate for k, or -1. forward (B, L + 1)
    holds each item's hash of its k tokens before it, mirrored the same hashes of the
    reversed, complemented sequence, ext the sequence after k_max pads."""
    B, L = tokens.shape
    items = torch.arange(L + 1, device=tokens.device)
    valid = items >= k
    wanted = torch.where(valid, mirrored.gather(-1, (L + k - items).clamp(max=L).expand(B, -1)),
                         -1)
    # items (sources, by their forward hash) and queries (by the wanted hash) in one order
    # of (hash, item, source first): the last source at or before a query is the latest
    # item j <= i holding that hash, if the hashes agree
    span = 2 * (L + 1)
    keys = torch.cat([forward * span + 2 * items, wanted * span + 2 * items + 1], dim=-1)
    order = torch.argsort(keys, dim=-1)
    sorted_keys = keys.gather(-1, order)
    last_source = torch.where(order <= L, sorted_keys, -1).cummax(dim=-1).values
    last = torch.empty_like(last_source).scatter_(-1, order, last_source)[:, L + 1:]
    j = (last % span) // 2
    found = valid & (last >= 0) & (last // span == wanted)
    ctx = _contexts(ext, k, k_max, L + 1)
    mine = ctx[:, 1:]  # items 1..L: positions 0..L-1
    j, found = j[:, 1:], found[:, 1:]
    theirs = ctx.gather(1, j.unsqueeze(-1).expand(B, L, k))
    found &= (theirs == complement[mine].flip(-1)).all(-1) & (mine != pad).all(-1) & (j > k)
    before = tokens.long().gather(-1, (j - k - 1).clamp_min(0))  # the base before x[j-k..]
    return torch.where(found, complement[before], -1)


def copy_streaks(tokens: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """(B, L, K): for each position p, how many positions q <= p in a row had their token
    named by the candidate of q - 1."""
    B, L, K = candidates.shape
    hit = torch.zeros_like(candidates, dtype=torch.bool)
    hit[:, 1:] = candidates[:, :-1] == tokens[:, 1:].unsqueeze(-1)
    idx = torch.arange(L, device=tokens.device).view(1, L, 1)
    last_miss = torch.where(hit, -1, idx).cummax(dim=1).values
    return idx - last_miss


def _setting(copy_k: tuple[int, ...], pointer_k: tuple[int, ...]) -> list[tuple[int, int]]:
    """(row of copy_k, k) of the contexts that set the far pointer (all of copy_k if
    pointer_k is empty), the longest last."""
    return sorted(((r, k) for r, k in enumerate(copy_k) if not pointer_k or k in pointer_k),
                  key=lambda rk: rk[1])


def far_pointer(tokens: torch.Tensor, hashes: torch.Tensor, copy_k: tuple[int, ...],
                pad: int, min_distance: int, pointer_k: tuple[int, ...] = ()
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The far pointer of each position (module docstring), set by the contexts of
    pointer_k (default: all of copy_k): its candidate (B, L), -1 for none, its mismatches
    over the last POINTER_WINDOW tokens (B, L) and its distance (B, L), -1 for none.
    hashes: context_hashes(tokens, copy_k, pad)."""
    B, L = tokens.shape
    k_max = max(copy_k)
    ext = torch.cat([tokens.new_full((B, k_max), pad), tokens], dim=1).long()
    items = torch.arange(L + 1, device=tokens.device)
    distance = torch.full((B, L + 1), -1, dtype=torch.long, device=tokens.device)
    for r, k in _setting(copy_k, pointer_k):
        h = hashes[:, r]
        keys, order = torch.sort(h * (L + 1) + items, dim=-1)
        # the latest item j <= i - min_distance with item i's hash: the last key at or
        # below (hash, i - min_distance) in (hash, item) order, if its hash is the same
        at = torch.searchsorted(keys, h * (L + 1) + items - min_distance, right=True) - 1
        j = order.gather(-1, at.clamp_min(0))
        ctx = _contexts(ext, k, k_max, L + 1)
        same = (ctx.gather(1, j.unsqueeze(-1).expand(B, L + 1, k)) == ctx).all(-1)
        found = ((at >= 0) & (items >= min_distance) & (h.gather(-1, j) == h) & same
                 & (ctx != pad).all(-1))
        distance = torch.where(found, items - j, distance)
    # kept where no context was found: from the latest item that found one
    last = torch.where(distance >= 0, items, -1).cummax(dim=-1).values
    distance = torch.where(last >= 0, distance.gather(-1, last.clamp_min(0)), -1)[:, 1:]
    pos = torch.arange(L, device=tokens.device)
    src = (pos + 1 - distance).clamp(0, L - 1)  # item p + 1 - d: p + 1 - d <= p
    candidate = torch.where(distance > 0, tokens.long().gather(-1, src), -1)
    return candidate, _mismatches(tokens, pos, distance), distance


def _mismatches(tokens: torch.Tensor, pos: torch.Tensor, distance: torch.Tensor
                ) -> torch.Tensor:
    """How many of tokens[p - POINTER_WINDOW + 1 .. p] differ from the tokens distance[p]
    before them (or have none), for each position p (B, n) of tokens (B, L)."""
    return mismatch_flags(tokens, pos, distance).sum(-1)


def mismatch_flags(tokens: torch.Tensor, pos: torch.Tensor, distance: torch.Tensor
                   ) -> torch.Tensor:
    """(B, n, POINTER_WINDOW): whether tokens[p - i] differs from the token distance[p]
    before it (or has none), i = 0 .. POINTER_WINDOW - 1, for each position p (B, n)."""
    m = pos.unsqueeze(-1) - torch.arange(POINTER_WINDOW, device=pos.device)  # (n, W)
    back = m - distance.unsqueeze(-1)  # (B, n, W)
    B = tokens.shape[0]
    x = tokens.long()
    same = ((m >= 0) & (back >= 0) & (distance.unsqueeze(-1) > 0)
            & (x.gather(-1, m.clamp_min(0).reshape(1, -1).expand(B, -1)).view_as(back)
               == x.gather(-1, back.clamp(0, x.shape[1] - 1).reshape(B, -1)).view_as(back)))
    return ~same


class Copies(NamedTuple):
    """A sequence's candidates (B, L, K), -1 for none, and the evidence the gate reads for
    each (B, L, K): a streak, or the far pointer's mismatches (its last column); with the
    far pointer, its distance (B, L), -1 for none."""

    candidates: torch.Tensor
    streaks: torch.Tensor
    distance: torch.Tensor | None = None

    def after(self, n: int) -> Copies:
        """The copies of positions n.. (a copy history's are dropped)."""
        return Copies(self.candidates[:, n:], self.streaks[:, n:],
                      None if self.distance is None else self.distance[:, n:])


def find_copies(tokens: torch.Tensor, copy_k: tuple[int, ...], pad: int,
                complement: torch.Tensor | None = None, pointer: int = 0,
                pointer_k: tuple[int, ...] = ()) -> Copies:
    """Every position's candidates and streaks; with `pointer` > 0, the far pointer of that
    minimum distance (set by the contexts of pointer_k) as the last candidate."""
    hashes = context_hashes(tokens, copy_k, pad)
    candidates = copy_candidates(tokens, copy_k, pad, complement, hashes)
    streaks = copy_streaks(tokens, candidates)
    if not pointer:
        return Copies(candidates, streaks)
    candidate, mismatches, distance = far_pointer(tokens, hashes, copy_k, pad, pointer,
                                                  pointer_k)
    return Copies(torch.cat([candidates, candidate.unsqueeze(-1)], -1),
                  torch.cat([streaks, mismatches.unsqueeze(-1)], -1), distance)


def pointer_hit_counts(records: Iterable[torch.Tensor], copy_k: tuple[int, ...], pad: int,
                       pointer: int, pointer_k: tuple[int, ...] = ()
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(hits, seen), float64 (POINTER_WINDOW + 1,): per count of mismatches, how many
    positions of `records` (1-D token tensors) had a far-pointer candidate, and at how many
    of them it was the next token."""
    hits = torch.zeros(POINTER_WINDOW + 1, dtype=torch.float64)
    seen = torch.zeros(POINTER_WINDOW + 1, dtype=torch.float64)
    for tokens in records:
        x = torch.as_tensor(tokens, dtype=torch.long).view(1, -1)
        if x.shape[1] < 2:
            continue
        candidate, mismatches, _ = far_pointer(x, context_hashes(x, copy_k, pad), copy_k, pad,
                                               pointer, pointer_k)
        has = candidate[0, :-1] >= 0
        count = mismatches[0, :-1][has]
        seen += torch.bincount(count, minlength=POINTER_WINDOW + 1)
        right = (candidate[0, :-1] == x[0, 1:])[has]
        hits += torch.bincount(count[right], minlength=POINTER_WINDOW + 1)
    return hits, seen


def pointer_hit_rates(records: Iterable[torch.Tensor], copy_k: tuple[int, ...], pad: int,
                      pointer: int, pointer_k: tuple[int, ...] = ()) -> list[float]:
    """For each count of mismatches 0..POINTER_WINDOW: how often the far pointer's
    candidate is the next token in `records`, 0.0 for a count never seen. A sampler that
    trusts the pointer as often as it is right (`sample_batch`'s pointer_trust) uses them."""
    hits, seen = pointer_hit_counts(records, copy_k, pad, pointer, pointer_k)
    return (hits / seen.clamp_min(1)).tolist()


class CopyGate(nn.Module):
    """The log weights (..., K + 1) of the head's distribution and of each candidate. The
    far pointer (the last candidate, with `pointer`) has a score per count of mismatches:
    with trust x log(1 + mismatches) + bias, a 30-minute model gave it weight 0.22 beside
    the head at one mismatch, where it is right 82% of the time (docs/long-context.md)."""

    def __init__(self, n_k: int, pointer: bool = False):
        super().__init__()
        n_streaks = n_k - pointer
        self.trust = nn.Parameter(torch.zeros(n_streaks))  # per unit of log(1 + streak)
        self.bias = nn.Parameter(torch.zeros(n_streaks))
        self.by_mismatches = (nn.Parameter(torch.zeros(POINTER_WINDOW + 1)) if pointer
                              else None)

    def forward(self, copies: Copies) -> torch.Tensor:
        """log weights (..., K + 1), float32; a missing candidate's weight is 0."""
        n = self.trust.shape[0]
        s = GATE_SCALE * (self.trust * torch.log1p(copies.streaks[..., :n].float())
                          + self.bias)
        if self.by_mismatches is not None:
            s = torch.cat([s, GATE_SCALE * self.by_mismatches[copies.streaks[..., n:]]], -1)
        s = torch.where(copies.candidates >= 0, s, torch.full_like(s, NO_CANDIDATE))
        return torch.log_softmax(torch.cat([torch.zeros_like(s[..., :1]), s], dim=-1), -1)


def mix(logits: torch.Tensor, candidates: torch.Tensor, log_weights: torch.Tensor
        ) -> torch.Tensor:
    """The head's logits (..., V) -> log p (..., V) of the copy mixture."""
    log_p = torch.log_softmax(logits.to(log_weights.dtype), -1) + log_weights[..., :1]
    for k in range(candidates.shape[-1]):
        at = candidates[..., k:k + 1].clamp_min(0)
        log_p = log_p.scatter(-1, at, torch.logaddexp(log_p.gather(-1, at),
                                                      log_weights[..., k + 1:k + 2]))
    return log_p


def mixed_nll(nll: torch.Tensor, targets: torch.Tensor, candidates: torch.Tensor,
              log_weights: torch.Tensor) -> torch.Tensor:
    """-log p(target) of the copy mixture (...), from the head's own nll (...)."""
    hits = torch.where(candidates == targets.unsqueeze(-1), log_weights[..., 1:],
                       torch.full_like(log_weights[..., 1:], NO_CANDIDATE))
    terms = torch.cat([(log_weights[..., 0] - nll).unsqueeze(-1), hits], dim=-1)
    return -torch.logsumexp(terms, dim=-1)


def new_copy_cache(tokens: torch.Tensor, copies: Copies, capacity: int,
                   copy_k: tuple[int, ...], pad: int) -> CopyCache:
    """The state after `tokens` (B, T): a prompt, or the copy history then the prompt, whose
    last position's copies are `copies`; room for `capacity` >= T tokens in all."""
    B, T = tokens.shape
    buf = tokens.new_full((B, capacity), pad, dtype=torch.long)
    buf[:, :T] = tokens
    hashes = torch.full((B, len(copy_k), capacity + 1), -1, dtype=torch.long,
                        device=tokens.device)
    hashes[:, :, :T + 1] = context_buckets(tokens, copy_k, pad)[:, 0]
    distance = (copies.distance[:, -1].clone() if copies.distance is not None
                else tokens.new_full((B,), -1, dtype=torch.long))
    return CopyCache(buf, hashes, copies.candidates[:, -1].clone(),
                     copies.streaks[:, -1].clone(), tokens.new_full((B,), T, dtype=torch.long),
                     distance)


def copy_step(cache: CopyCache, token: torch.Tensor, copy_k: tuple[int, ...], pad: int,
              complement: torch.Tensor | None = None, pointer: int = 0,
              pointer_k: tuple[int, ...] = ()) -> Copies:
    """Append `token` (B,) and return its copies (each (B, K); the distance (B,)), as
    find_copies gives them for the whole sequence. Fixed shapes: the earlier occurrence
    is found by a pass over the cache's hashes."""
    B, _, T = cache.hashes.shape
    t = cache.length[:1]  # every row has the same length
    cache.tokens.index_copy_(1, t, token.long().view(B, 1))
    item = t + 1
    k_max = max(copy_k)
    back = torch.arange(k_max - 1, -1, -1, device=token.device)
    at = t - back  # the last k_max positions, token last; pad before the sequence
    recent = torch.where(at >= 0, cache.tokens[:, at.clamp_min(0)], pad)  # (B, k_max)
    own = next_bucket(recent, copy_k, pad).long()  # (B, K)
    cache.hashes.index_copy_(2, item, own.unsqueeze(-1))
    idx = torch.arange(T, device=token.device)

    def latest(r: int, k: int, h: torch.Tensor, upto: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The latest item j < upto whose hash for k is h (B, 1), -1 for none (B,), and
        its context, tokens j-k..j-1 (B, k), pad before the sequence."""
        j = torch.where((cache.hashes[:, r] == h) & (idx < upto), idx, -1).amax(-1)
        before = j.unsqueeze(-1) - back[k_max - k:] - 1
        return j, torch.where(before >= 0, cache.tokens.gather(1, before.clamp_min(0)), pad)

    # the latest earlier item whose context is the same k tokens (hash, then compared)
    out = []
    for r, k in enumerate(copy_k):
        j, ctx = latest(r, k, own[:, r:r + 1], item)
        mine = recent[:, k_max - k:]
        found = (j >= 0) & (ctx == mine).all(-1) & (mine != pad).all(-1)
        nxt = cache.tokens.gather(1, j.clamp_min(0).unsqueeze(-1))[:, 0]  # j <= t
        out.append(torch.where(found, nxt, -1))
    for r, k in enumerate(copy_k if complement is not None else ()):
        # the latest item j <= item whose context is the reverse complement of ours
        wanted = complement[recent[:, k_max - k:]].flip(-1)  # (B, k)
        j, ctx = latest(r, k, next_bucket(wanted, (k,), pad), item + 1)
        found = (j > k) & (ctx == wanted).all(-1) & (wanted != pad).all(-1)
        prev = cache.tokens.gather(1, (j - k - 1).clamp_min(0).unsqueeze(-1))[:, 0]
        out.append(torch.where(found, complement[prev], -1))
    if pointer:
        distance = cache.distance
        for r, k in _setting(copy_k, pointer_k):
            j, ctx = latest(r, k, own[:, r:r + 1], item - pointer + 1)
            mine = recent[:, k_max - k:]
            found = (j >= 0) & (ctx == mine).all(-1) & (mine != pad).all(-1)
            distance = torch.where(found, item - j, distance)
        cache.distance.copy_(distance)
        src = (item - distance).clamp(0, T - 2).unsqueeze(-1)  # item - d <= t
        out.append(torch.where(distance > 0, cache.tokens.gather(1, src)[:, 0], -1))
    candidates = torch.stack(out, dim=-1)
    hit = cache.last == token.long().unsqueeze(-1)
    cache.streak.copy_(torch.where(hit, cache.streak + 1, 0))
    if pointer:
        cache.streak[:, -1] = _mismatches(cache.tokens, t, cache.distance.unsqueeze(-1))[:, 0]
    cache.last.copy_(candidates)
    cache.length.add_(1)
    return Copies(candidates, cache.streak.clone(), cache.distance.clone())
