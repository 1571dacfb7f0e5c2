"""The baseline beside every result: the best fixed-order Markov model of the training data.

An order-k model predicts a token from the k before it (add-alpha smoothing, shorter
contexts at the start of a record). The order is chosen on the training split alone (fit
on the first 90% of each training record, judged on the last 10%), then refit on all of
it and scored on the tokens validation scores. A model that does not beat this has not
learned more than k-mer statistics.

Tokens are recoded to the alphabet seen in training (plus one "other" symbol), so tables
stay small: DNA has 5 symbols (ACGT, N), a MIDI event vocabulary a few hundred.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files import atomic_file

ALPHA = 0.5
MAX_TABLE = 1 << 22  # entries of the largest order's count table (32 MB as float64)
ORDERS = range(0, 9)
# A genome of several Gbp need not be counted whole to show what k-mers alone give.
MAX_TRAIN_TOKENS = 1 << 25


def _contexts(seq: np.ndarray, k: int, base: int) -> np.ndarray:
    """Integer code of the k tokens before each position >= k."""
    code = np.zeros(len(seq) - k, dtype=np.int64)
    for j in range(k):
        code = code * base + seq[j:len(seq) - k + j]
    return code


@dataclass
class MarkovModel:
    """log2 probability tables for orders 0..order over `alphabet` (+ "other")."""

    order: int
    alphabet: np.ndarray  # sorted token ids; anything else is the last symbol
    log2p: list[np.ndarray]  # order j: (V**j, V)

    @property
    def size(self) -> int:
        return len(self.alphabet) + 1

    def recode(self, tokens: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(self.alphabet, tokens)
        idx = np.minimum(idx, len(self.alphabet) - 1)
        return np.where(self.alphabet[idx] == tokens, idx, len(self.alphabet))

    @classmethod
    def fit(cls, records: list[np.ndarray], order: int, alphabet: np.ndarray,
            alpha: float = ALPHA) -> MarkovModel:
        model = cls(order, alphabet, [])
        V = model.size
        coded = [model.recode(r) for r in records]
        for j in range(order + 1):
            counts = np.zeros(V ** j * V, dtype=np.float64)
            for s in coded:
                if len(s) > j:
                    counts += np.bincount(_contexts(s, j, V) * V + s[j:], minlength=len(counts))
            counts = counts.reshape(V ** j, V)
            probs = (counts + alpha) / (counts.sum(1, keepdims=True) + alpha * V)
            model.log2p.append(np.log2(probs))
        return model

    def bits(self, records: list[np.ndarray]) -> tuple[float, int]:
        """Total bits and number of tokens scored: every token of every record, the first
        k with the shorter contexts they have."""
        V, k = self.size, self.order
        total, n = 0.0, 0
        for r in records:
            s = self.recode(r)
            for i in range(min(k, len(s))):
                ctx = _contexts(s[:i + 1], i, V)[-1] if i else 0
                total -= self.log2p[i][ctx, s[i]]
            if len(s) > k:
                total -= self.log2p[k][_contexts(s, k, V), s[k:]].sum()
            n += len(s)
        return float(total), n

    def save(self, path: Path, extra: dict) -> None:
        with atomic_file(path) as f:
            np.savez_compressed(f, order=self.order, alphabet=self.alphabet,
                                meta=json.dumps(extra),
                                **{f"log2p_{j}": t.astype(np.float32)
                                   for j, t in enumerate(self.log2p)})

    @classmethod
    def load(cls, path: Path) -> tuple[MarkovModel, dict]:
        with np.load(path) as z:
            order = int(z["order"])
            model = cls(order, z["alphabet"], [z[f"log2p_{j}"].astype(np.float64)
                                               for j in range(order + 1)])
            return model, json.loads(str(z["meta"]))


def fit_baseline(train: list[np.ndarray], orders: range = ORDERS, alpha: float = ALPHA
                 ) -> tuple[MarkovModel, dict[int, float]]:
    """The order with the fewest bits per token on the last 10% of each training record
    (fitted on the rest), refit on all of `train` (its first MAX_TRAIN_TOKENS tokens).
    Returns it and each order's bits."""
    train = _first_tokens(train, MAX_TRAIN_TOKENS)
    alphabet = np.unique(np.concatenate(train)) if train else np.zeros(1, dtype=np.int64)
    V = len(alphabet) + 1
    fit_part, judge_part = [], []
    for r in train:
        cut = len(r) - max(1, len(r) // 10) if len(r) > 1 else len(r)
        fit_part.append(r[:cut])
        judge_part.append(r[cut:])
    feasible = [k for k in orders if V ** (k + 1) <= MAX_TABLE]
    # an order-k model is the tables of orders 0..k: count once, at the largest order
    largest = MarkovModel.fit(fit_part, max(feasible), alphabet, alpha)
    scores = {}
    for k in feasible:
        total, n = MarkovModel(k, alphabet, largest.log2p[:k + 1]).bits(judge_part)
        scores[k] = total / max(1, n)
    best = min(scores, key=scores.get)
    return MarkovModel.fit(train, best, alphabet, alpha), scores


def _first_tokens(records: list[np.ndarray], n: int) -> list[np.ndarray]:
    out = []
    for r in records:
        if n <= 0:
            break
        out.append(np.asarray(r[:n]).astype(np.int64))
        n -= len(out[-1])
    return out


def split_at(tokens: np.ndarray, separators: tuple[int, ...]) -> list[np.ndarray]:
    """The non-empty runs of `tokens` between separator (or padding) tokens."""
    edges = [-1, *np.flatnonzero(np.isin(tokens, separators)).tolist(), len(tokens)]
    return [tokens[a + 1:b] for a, b in zip(edges, edges[1:]) if b > a + 1]
