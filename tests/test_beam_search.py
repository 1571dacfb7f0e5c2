"""Beam search against exhaustive search over every target (beams wide enough to be exact),
with and without a constraint and an end token; one beam against greedy decoding; the
partial cache reorder against a whole-cache copy."""

from __future__ import annotations

import itertools

import pytest
import torch
from test_encdec import EvenTokens, configs, tokens

from seqformer.core import ReformerEncDec
from seqformer.core.decoding import beam as bs

V = 10


class ReorderableEvenTokens(EvenTokens):
    """Refuses a token it does not allow, as the codon app's constraint does."""

    def reorder(self, index: torch.Tensor) -> None:
        self.mask = self.mask[index]

    def update(self, tokens: torch.Tensor, removed: torch.Tensor) -> None:
        if not self.mask.gather(1, tokens.view(-1, 1).cpu()).all():
            raise ValueError(f"a token the constraint forbids: {tokens.tolist()}")
        super().update(tokens, removed)


def model(attn: str, seed: int = 0) -> ReformerEncDec:
    torch.manual_seed(seed)
    return ReformerEncDec(*configs(attn, tgt_vocab=V, kmer_embedding=2)).eval()


def best_by_enumeration(m: ReformerEncDec, src: torch.Tensor, n: int, bos: int,
                        alphabet: list[int], eos: int | None = None
                        ) -> tuple[list[list[int]], torch.Tensor]:
    """Each row's likeliest n-token target (after eos, the rest is free) and its score."""
    cands = torch.tensor(list(itertools.product(alphabet, repeat=n)))
    best, scores = [], []
    for b in range(src.shape[0]):
        tgt = torch.cat([torch.full((len(cands), 1), bos), cands], dim=1)
        with torch.no_grad():
            logp = m(src[b:b + 1].expand(len(cands), -1), tgt[:, :-1]).double().log_softmax(-1)
        per_token = logp.gather(-1, cands.unsqueeze(-1)).squeeze(-1)
        if len(alphabet) < V:  # renormalized over the allowed tokens, as beam search does
            allowed = torch.zeros(V, dtype=torch.bool)
            allowed[alphabet] = True
            per_token = per_token - logp.masked_fill(~allowed, float("-inf")).logsumexp(-1)
        if eos is not None:  # tokens after the first eos cost nothing
            after = (cands == eos).int().cumsum(1) - (cands == eos).int() > 0
            per_token = per_token.masked_fill(after, 0.0)
        total = per_token.sum(1)
        i = int(total.argmax())
        best.append(cands[i].tolist())
        scores.append(total[i])
    return best, torch.stack(scores)


@pytest.mark.parametrize("attn", ["lsh", "local", "full", "match"])
def test_wide_beams_find_the_likeliest_target(attn: str) -> None:
    m = model(attn)
    src = tokens((2, 9), 12, 1)
    out = m.generate(src, 3, bos=1, num_beams=V * V)
    want, _ = best_by_enumeration(m, src, 3, 1, list(range(V)))
    assert out[:, 1:].tolist() == want


def test_wide_beams_under_a_constraint_find_the_likeliest_allowed_target() -> None:
    m = model("local")
    src = tokens((2, 9), 12, 2)
    rule = ReorderableEvenTokens(2, V)
    out = m.generate(src, 3, bos=1, num_beams=V * V, constraint=rule)
    want, _ = best_by_enumeration(m, src, 3, 1, list(range(2, V, 2)))
    assert out[:, 1:].tolist() == want
    assert len(rule.seen) == 3 and rule.mask.shape == (2 * V * V, V)


def test_a_finished_hypothesis_keeps_its_score() -> None:
    m = model("local", seed=3)
    src = tokens((3, 9), 12, 3)
    with torch.no_grad():  # make the end token likely enough to win in some rows
        m.decoder.head.weight[4] *= 3
    out = m.generate(src, 3, bos=1, num_beams=V * V, eos=4)
    want, _ = best_by_enumeration(m, src, 3, 1, list(range(V)), eos=4)
    for row, best in zip(out[:, 1:].tolist(), want):
        cut = best.index(4) + 1 if 4 in best else len(best)
        assert row[:cut] == best[:cut]
    assert any(4 in best[:2] for best in want), "no row ends early: the test checks nothing"


def test_one_beam_is_greedy_decoding() -> None:
    m = model("lsh")
    src, lengths = tokens((3, 20), 12, 4), torch.tensor([20, 11, 5])
    greedy = m.generate(src, 25, bos=1, temperature=0, src_lengths=lengths)
    one = bs.beam_search(m.decoder, torch.ones(3, 1, dtype=torch.long), 25, 1,
                         src=m._source(src, lengths))
    assert torch.equal(one, greedy)


def test_the_partial_cache_reorder_equals_copying_the_whole_cache(monkeypatch) -> None:
    m = model("lsh")
    src = tokens((2, 20), 12, 5)
    partial = m.generate(src, 30, bos=1, num_beams=4)
    starts = []
    real = bs._first_difference
    monkeypatch.setattr(bs, "_first_difference",
                        lambda a, b: starts.append(real(a, b)) or 0)
    whole = m.generate(src, 30, bos=1, num_beams=4)
    assert torch.equal(partial, whole)
    assert max(starts) > 5  # the partial reorder did skip a shared prefix


def test_a_constraint_without_reorder_is_refused() -> None:
    m = model("local")
    with pytest.raises(ValueError, match="reorder"):
        m.generate(tokens((1, 5), 12, 6), 3, bos=1, num_beams=2, constraint=EvenTokens(1, V))
