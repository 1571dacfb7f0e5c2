"""The copy mixture (model.copy_k): candidates against a plain search, the model against its
plain counterpart and a hand-made mixture, the chunked loss against full logits, cached
decoding, and copying tokens that training never showed."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seqformer.core import ReformerConfig, ReformerLM
from seqformer.core.config import ConfigError
from seqformer.core.layers.copy import (
    POINTER_WINDOW,
    Copies,
    context_hashes,
    copy_candidates,
    far_pointer,
    find_copies,
    pointer_hit_rates,
)
from seqformer.pipeline.inference import (
    FittedTrust,
    fit_trust_to_prompt,
    sample_batch,
    token_log_likelihoods,
)

from test_model import assert_decoding_is_the_full_forward


def candidates_reference(x: list[int], k: int) -> list[int]:
    """For each position p: the token after the latest q < p whose k tokens ending at q
    equal the k ending at p, or -1."""
    out = []
    for p in range(len(x)):
        found = -1
        if p - k + 1 >= 0:
            for q in range(p - 1, k - 2, -1):
                if x[q - k + 1:q + 1] == x[p - k + 1:p + 1]:
                    found = x[q + 1]
                    break
        out.append(found)
    return out


def repetitive(L: int, B: int = 2, seed: int = 0, vocab: int = 11) -> torch.Tensor:
    """A random phrase repeated with random changes, so contexts recur."""
    g = torch.Generator().manual_seed(seed)
    phrase = torch.randint(0, vocab, (B, 17), generator=g)
    x = phrase.repeat(1, L // 17 + 1)[:, :L].clone()
    change = torch.rand(B, L, generator=g) < 0.15
    return torch.where(change, torch.randint(0, vocab, (B, L), generator=g), x)


@pytest.mark.parametrize("vocab", [2, 3, 7])
def test_candidates_are_the_token_after_the_latest_earlier_occurrence(vocab):
    x = repetitive(120, B=3, seed=vocab, vocab=vocab)
    copy_k = (1, 3, 8)
    got = copy_candidates(x, copy_k, pad=vocab)
    assert got.shape == (3, 120, 3)
    for b in range(3):
        for r, k in enumerate(copy_k):
            assert got[b, :, r].tolist() == candidates_reference(x[b].tolist(), k)
    assert (got[..., 0] >= 0).sum() > 0 and (got[..., 2] >= 0).sum() > 0  # some found


COMPLEMENT = [0, 1, 5, 4, 3, 2, 6, 7, 10, 9, 8]  # 2<->5, 3<->4, 8<->10; 0, 1, 6, 7, 9 fixed


def reverse_candidates_reference(x: list[int], k: int) -> list[int]:
    """For each position p: where the reverse complement of x[p-k+1 .. p] occurs with the
    latest start s (s + k - 1 <= p), the complement of x[s - 1]; -1 if nowhere or s = 0."""
    out = []
    for p in range(len(x)):
        found = -1
        if p - k + 1 >= 0:
            wanted = [COMPLEMENT[t] for t in reversed(x[p - k + 1:p + 1])]
            for s in range(p - k + 1, -1, -1):
                if x[s:s + k] == wanted:
                    found = COMPLEMENT[x[s - 1]] if s > 0 else -1
                    break
        out.append(found)
    return out


def inverted_repeats(L: int, B: int = 2, seed: int = 0, vocab: int = 11) -> torch.Tensor:
    """Random tokens with copies of earlier stretches, most reverse-complemented, every
    12 tokens."""
    g = torch.Generator().manual_seed(seed)
    comp = torch.tensor(COMPLEMENT)
    x = torch.randint(2, 6, (B, L), generator=g)  # the four "bases" mostly
    x[torch.rand(B, L, generator=g) < 0.05] = 8
    for b in range(B):
        at = 0
        while at < L - 12:
            n = int(torch.randint(8, 25, (1,), generator=g))
            src = int(torch.randint(0, max(1, at - n), (1,), generator=g)) if at > n else 0
            piece = x[b, src:src + n].clone()
            if torch.rand(1, generator=g) < 0.7:
                piece = comp[piece.flip(0)]
            x[b, at + 12:at + 12 + n] = piece[:L - at - 12]
            at += 12 + n
    return x


@pytest.mark.parametrize("seed", [0, 1])
def test_reverse_candidates_are_the_base_the_other_strand_reads_next(seed):
    x = inverted_repeats(200, B=2, seed=seed)
    copy_k = (1, 3, 8)
    got = copy_candidates(x, copy_k, pad=11, complement=torch.tensor(COMPLEMENT + [11]))
    assert got.shape == (2, 200, 6)
    for b in range(2):
        for r, k in enumerate(copy_k):
            assert got[b, :, r].tolist() == candidates_reference(x[b].tolist(), k)
            assert got[b, :, 3 + r].tolist() == reverse_candidates_reference(x[b].tolist(), k)
    assert (got[..., 5] >= 0).float().mean() > 0.1  # the 8-token ones are often found
    # a palindrome finds itself: the reverse complement of its last k tokens is itself
    pal = torch.tensor([[7, 6, 2, 3, 4, 5, 9]])  # 2 3 4 5 reads 2 3 4 5 on the other strand
    got = copy_candidates(pal, (4,), pad=11, complement=torch.tensor(COMPLEMENT + [11]))
    assert got[0, :, 1].tolist() == [-1, -1, -1, -1, -1, 6, -1]  # 6 = complement of 6


def test_a_streak_counts_the_candidates_right_in_a_row():
    x = torch.tensor([[1, 2, 3, 1, 2, 3, 1, 2, 0, 1, 2, 3]])
    copies = find_copies(x, (1,), pad=4)
    assert copies.candidates[0, :, 0].tolist() == [-1, -1, -1, 2, 3, 1, 2, 3, -1, 2, 0, 1]
    # right at positions 4, 5, 6, 7 (2, 3, 1, 2 named by the candidates before), then 10
    assert copies.streaks[0, :, 0].tolist() == [0, 0, 0, 0, 1, 2, 3, 4, 0, 0, 1, 0]


def pointer_reference(x: list[int], copy_k: tuple[int, ...], min_distance: int
                      ) -> list[tuple[int, int, int]]:
    """For each position p, one at a time: the far pointer's (distance, candidate,
    mismatches). The distance is set to p + 1 - j for the latest j <= p + 1 - min_distance
    where the longest k of copy_k whose last k tokens occurred there did (x[j-k:j] ==
    x[p-k+1:p+1]), else kept from p - 1."""
    out, d = [], -1
    for p in range(len(x)):
        item = p + 1
        for k in sorted(copy_k):
            js = [j for j in range(k, item - min_distance + 1)
                  if item >= k and x[j - k:j] == x[item - k:item]]
            if js:
                d = item - max(js)
        candidate = x[item - d] if d > 0 else -1
        agree = sum(d > 0 and m - d >= 0 and x[m] == x[m - d]
                    for m in range(max(0, p - POINTER_WINDOW + 1), p + 1))
        out.append((d, candidate, POINTER_WINDOW - agree))
    return out


@pytest.mark.parametrize("min_distance,pointer_k", [(1, ()), (20, ()), (40, ()), (20, (6,))])
def test_the_far_pointer_keeps_its_copy_through_changed_tokens(min_distance, pointer_k):
    x = repetitive(150, B=2, seed=min_distance)
    copy_k = (3, 6)
    candidate, mismatches, distance = far_pointer(x, context_hashes(x, copy_k, 11), copy_k,
                                                  11, min_distance, pointer_k)
    for b in range(2):
        want = pointer_reference(x[b].tolist(), pointer_k or copy_k, min_distance)
        assert distance[b].tolist() == [w[0] for w in want]
        assert candidate[b].tolist() == [w[1] for w in want]
        assert mismatches[b].tolist() == [w[2] for w in want]
    # the phrase repeats every 17 tokens with changes: the pointer copies from a multiple
    # of 17 back nearly everywhere, at least min_distance back, and stays through changes
    d = distance[:, 90:]
    assert ((d % 17 == 0) & (d >= min_distance)).float().mean() > 0.9
    assert (candidate[:, 90:] >= 0).float().mean() > 0.9


def test_without_a_far_occurrence_there_is_no_pointer():
    x = torch.tensor([[1, 2, 3, 1, 2, 3, 4, 5, 6, 7]])
    copies = find_copies(x, (2,), pad=11, pointer=4)
    # 1 2 recurs 3 back, closer than 4: no pointer anywhere
    assert copies.candidates[0, :, -1].tolist() == [-1] * 10
    assert copies.distance[0].tolist() == [-1] * 10
    assert copies.streaks[0, :, -1].tolist() == [POINTER_WINDOW] * 10
    copies = find_copies(x, (2,), pad=11, pointer=3)
    # from position 4 (the second "1 2") it copies 3 back, and keeps that past the repeat
    assert copies.distance[0].tolist() == [-1] * 4 + [3] * 6
    assert copies.candidates[0, :, -1].tolist() == [-1] * 4 + [3, 1, 2, 3, 4, 5]
    # tokens 3, 4, 5 equal those 3 before them; 6 on differ
    assert copies.streaks[0, :, -1].tolist() == [POINTER_WINDOW - n for n in
                                                 (0, 0, 0, 0, 2, 3, 3, 3, 3, 3)]


def tiny(**kw) -> ReformerConfig:
    base = dict(vocab_size=11, d_model=32, n_layers=2, n_heads=2, d_ff=64,
                attn=["local", "match"], bucket_size=8, n_hashes=2, max_seq_len=256,
                match_k=(2, 3), copy_k=(2, 5))
    base.update(kw)
    return ReformerConfig(**base)


def with_gate(cfg: ReformerConfig, seed: int = 0) -> ReformerLM:
    """A model whose copy gate is not where it starts in training."""
    torch.manual_seed(seed)
    m = ReformerLM(cfg).eval()
    with torch.no_grad():
        m.copy_gate.bias.normal_(0, 0.3)
        m.copy_gate.trust.normal_(0, 0.3)
        if m.copy_gate.by_mismatches is not None:
            m.copy_gate.by_mismatches.normal_(0, 0.3)
    return m


def plain_twin(m: ReformerLM) -> ReformerLM:
    plain = ReformerLM(tiny(copy_k=())).eval()
    missing, unexpected = plain.load_state_dict(m.state_dict(), strict=False)
    assert not missing and {"copy_gate.bias", "copy_gate.trust"} <= set(unexpected)
    assert all(k.startswith("copy_gate.") for k in unexpected)
    return plain


def test_without_candidates_or_trust_it_is_the_plain_model():
    m = with_gate(tiny())
    plain = plain_twin(m)
    fresh = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    no_repeats = fresh.view(1, 11)  # no context occurs twice: no candidates
    x = repetitive(90)
    with torch.no_grad():
        torch.testing.assert_close(m(no_repeats), torch.log_softmax(plain(no_repeats), -1),
                                   atol=1e-6, rtol=0)
        m.copy_gate.bias.fill_(-1e4)  # a gate that never trusts a candidate
        torch.testing.assert_close(m(x), torch.log_softmax(plain(x), -1), atol=1e-6, rtol=0)


def hand_made_mixture(m: ReformerLM, probs: torch.Tensor, copies: Copies) -> torch.Tensor:
    """log p of the copy mixture, one position at a time in float64, from the plain model's
    probabilities (B, L, V) and the candidates and streaks (B, L, K)."""
    cands = copies.candidates
    gate = m.copy_gate
    n = gate.trust.shape[0]
    gates = 8 * (gate.trust.double() * torch.log1p(copies.streaks[..., :n].double())
                 + gate.bias.double())
    if gate.by_mismatches is not None:  # the far pointer: a score per count of mismatches
        gates = torch.cat([gates, 8 * gate.by_mismatches.double()[copies.streaks[..., n:]]], -1)
    expect = torch.empty_like(probs)
    B, L, K = cands.shape
    for b in range(B):
        for p in range(L):
            present = [r for r in range(K) if cands[b, p, r] >= 0]
            scores = [0.0] + [gates[b, p, r].item() for r in present]
            w = torch.softmax(torch.tensor(scores, dtype=torch.float64), 0)
            expect[b, p] = w[0] * probs[b, p]
            for weight, r in zip(w[1:], present):
                expect[b, p, cands[b, p, r]] += weight
    return expect.log()


POINTER = 20  # the tests' far pointer: the phrases repeat every 17 tokens


@pytest.mark.parametrize("pointer", [0, POINTER])
def test_log_probs_are_the_hand_made_mixture(pointer):
    m = with_gate(tiny(copy_pointer=pointer))
    plain = plain_twin(m)
    x = repetitive(90)
    with torch.no_grad():
        copies = find_copies(x, (2, 5), 11, pointer=pointer)
        expect = hand_made_mixture(m, torch.softmax(plain(x).double(), -1), copies)
        torch.testing.assert_close(m(x).double(), expect, atol=1e-5, rtol=1e-5)
    assert (copies.candidates >= 0).float().mean() > 0.3 and copies.streaks.max() > 3
    assert copies.candidates.shape[-1] == 2 + bool(pointer)


def test_chunked_loss_and_its_gradients_equal_full_logits(monkeypatch):
    import seqformer.core.layers.chunked_loss as chunked
    monkeypatch.setattr(chunked, "ROWS", 37)  # several blocks, the last one partial
    cfg = tiny(reversible=False, dropout=0.0)
    a, b = with_gate(cfg), with_gate(cfg)
    x = repetitive(120, seed=3)
    loss_a = a.loss(x)
    logits = b(x[:, :-1])
    loss_b = F.cross_entropy(logits.reshape(-1, 11), x[:, 1:].reshape(-1))
    torch.testing.assert_close(loss_a, loss_b, atol=1e-5, rtol=1e-5)
    loss_a.backward()
    loss_b.backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-5, rtol=1e-4, msg=name)
    assert a.copy_gate.bias.grad.abs().sum() > 0 and a.copy_gate.trust.grad.abs().sum() > 0


@pytest.mark.parametrize("pointer", [0, POINTER])
def test_exactly_causal_and_prefix_consistent(pointer):
    m = with_gate(tiny(copy_pointer=pointer))
    x = repetitive(80)
    with torch.no_grad():
        full = m(x)
        for t in (1, 9, 40, 80):
            torch.testing.assert_close(m(x[:, :t]), full[:, :t], atol=1e-5, rtol=1e-5)
        for t in (4, 30, 61):
            x2 = x.clone()
            x2[:, t] = (x2[:, t] + 1) % 11
            out = m(x2)
            torch.testing.assert_close(out[:, :t], full[:, :t], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kw", [dict(), dict(attn="lsh", copy_k=(1,)),
                                dict(attn="local", copy_k=(3, 12), kmer_embedding=4),
                                dict(copy_pointer=POINTER),
                                dict(attn="local", copy_k=(1, 4), copy_pointer=3,
                                     copy_pointer_k=(4,))],
                         ids=str)
def test_cached_decoding_equals_the_full_forward(kw):
    assert_decoding_is_the_full_forward(with_gate(tiny(**kw)), repetitive(90))


@pytest.mark.parametrize("pointer", [0, POINTER])
def test_copy_history_reaches_back_beyond_the_window(pointer):
    """forward(window, copy_history=h): the window's own attention and head, mixed with the
    candidates of the whole sequence h + window (against the plain search); without h it
    is the window alone."""
    m = with_gate(tiny(copy_pointer=pointer))
    plain = plain_twin(m)
    x = repetitive(150, seed=5)
    h, w = x[:, :70], x[:, 70:]
    with torch.no_grad():
        got = m(w, copy_history=h)
        probs = torch.softmax(plain(w).double(), -1)
        copies = find_copies(x, (2, 5), 11, pointer=pointer).after(70)
        cands = copies.candidates
        for b in range(2):
            for r, k in enumerate((2, 5)):
                assert cands[b, :, r].tolist() == candidates_reference(x[b].tolist(), k)[70:]
        expect = hand_made_mixture(m, probs, copies)
        torch.testing.assert_close(got.double(), expect, atol=1e-5, rtol=1e-5)
        # the history finds candidates the window alone does not have
        alone = find_copies(w, (2, 5), 11, pointer=pointer).candidates
        assert ((cands >= 0) & (alone < 0)).sum() > 10
        torch.testing.assert_close(m(w, copy_history=h[:, :0]), m(w), atol=0, rtol=0)
        nll = m.loss(x[:, 70:], reduction="none", copy_history=h)
        want = -got[:, :-1].gather(-1, x[:, 71:, None])[..., 0]
        torch.testing.assert_close(nll, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pointer", [0, POINTER])
def test_decoding_with_copy_history_equals_the_full_forward(pointer):
    x = repetitive(160, seed=6)
    m = with_gate(tiny(copy_pointer=pointer))
    assert_decoding_is_the_full_forward(m, x[:, 60:], copy_history=x[:, :60])
    # a prompt shorter than the longest context: the step reads its context from history
    assert_decoding_is_the_full_forward(m, x[:, 60:], prompt=2, copy_history=x[:, :60])


@pytest.mark.parametrize("start", [0, 10, 101])
def test_scores_with_a_context_beyond_the_window_are_manual_truncation(start):
    """token_log_likelihoods(window=W, context=N > W, start=S): token i >= S is scored by
    its window of the documented layout (laid from S - W/2 on), whose copy mixture also
    reads the N - W positions before it."""

    m = with_gate(tiny())
    tokens = repetitive(200, B=1, seed=7)[0].numpy()
    sep, W, N = 10, 48, 100
    got = token_log_likelihoods(m, tokens, sep, W, context=N, start=start)
    assert got.shape == (200 - start,)
    seq = torch.tensor([sep, *tokens])
    first = max(0, start - W // 2)
    for i in (0, 30, 47, 48, 60, 71, 72, 100, 101, 124, 150, 199):
        if i < start:
            continue
        s = first + (0 if i - first < W else W // 2 * (1 + (i - first - W) // (W // 2)))
        before = seq[max(0, s - (N - W)):s]
        with torch.no_grad():
            nll = m.loss(seq[s:i + 2][None], reduction="none",
                         copy_history=before[None] if len(before) else None)
        assert abs(got[i - start] + nll[0, -1].item()) < 1e-5, i
    if start:
        return
    window_only = token_log_likelihoods(m, tokens, sep, W)
    assert np.allclose(got[:W], window_only[:W], atol=1e-6)  # the first window has no past
    assert np.abs(got[W:] - window_only[W:]).max() > 1e-3
    with pytest.raises(ValueError, match="needs a model with the copy mixture"):
        token_log_likelihoods(plain_twin(m), tokens, sep, W, context=N)


@pytest.mark.parametrize("pointer", [0, POINTER])
def test_reverse_complement_copies_are_causal_and_decode_as_the_full_forward(pointer):
    m = with_gate(tiny(copy_complement=COMPLEMENT, copy_pointer=pointer))
    assert m.copy_gate.trust.shape == (4,)  # the far pointer, if any, has its own scores
    x = inverted_repeats(160, seed=2)
    with torch.no_grad():
        full = m(x)
        copies = find_copies(x, (2, 5), 11, m.copy_complement, pointer)
        probs = torch.softmax(plain_twin(m)(x).double(), -1)
        torch.testing.assert_close(full.double(), hand_made_mixture(m, probs, copies),
                                   atol=1e-5, rtol=1e-5)
        for t in (3, 50, 131):
            torch.testing.assert_close(m(x[:, :t]), full[:, :t], atol=1e-5, rtol=1e-5)
            x2 = x.clone()
            x2[:, t] = (x2[:, t] + 1) % 11
            torch.testing.assert_close(m(x2)[:, :t], full[:, :t], atol=1e-5, rtol=0)
    assert (copies.candidates[..., 3] >= 0).float().mean() > 0.2
    assert_decoding_is_the_full_forward(m, x)
    assert_decoding_is_the_full_forward(m, x[:, 60:], prompt=2, copy_history=x[:, :60])


@pytest.mark.parametrize("pointer", [0, POINTER])
def test_beam_rows_keep_their_own_history(pointer):
    """select (one row per beam) and reorder_beams move the copy state with the row."""
    m = with_gate(tiny(copy_pointer=pointer))
    x = repetitive(60, B=2)
    rows = torch.tensor([1, 0, 1])
    with torch.no_grad():
        full = m(x)[rows]
        _, cache = m.prefill(x[:, :20], capacity=60)
        cache.select(rows)
        other = repetitive(60, B=1, seed=5)[0]
        for t in range(20, 30):  # the third row goes its own way...
            m.step(torch.stack([x[1, t], x[0, t], other[t]]), cache)
        cache.reorder_beams(torch.tensor([0, 1, 0]), start=20)  # ...and takes the first's
        for t in range(30, 60):
            torch.testing.assert_close(m.step(x[rows, t], cache), full[:, t], atol=1e-4,
                                       rtol=0)


def test_config_checks():
    with pytest.raises(ConfigError, match="copy_k: .*needs a causal model"):
        tiny(causal=False, attn="lsh")
    with pytest.raises(ConfigError, match="copy_k: needs positive integers"):
        tiny(copy_k=(0,))
    assert ReformerConfig.from_dict(tiny(copy_k=4).to_dict()).copy_k == (4,)
    with pytest.raises(ConfigError, match="copy_complement: .*needs copy_k"):
        tiny(copy_k=(), copy_complement=COMPLEMENT)
    with pytest.raises(ConfigError, match="copy_complement: must map each of the 11"):
        tiny(copy_complement=COMPLEMENT[:10])
    with pytest.raises(ConfigError, match="copy_complement: must map"):
        tiny(copy_complement=[1, 0, 3, 2, 4, 5, 6, 7, 8, 9, 2])  # not an involution
    with pytest.raises(ConfigError, match="`true` is for run configs"):
        tiny(copy_complement=True)
    cfg = ReformerConfig.from_dict(tiny(copy_complement=COMPLEMENT).to_dict())
    assert cfg.copy_complement == tuple(COMPLEMENT) and cfg.n_copy_candidates == 4
    for bad in (-1, True, 2.5):
        with pytest.raises(ConfigError, match="copy_pointer: needs a distance >= 0"):
            tiny(copy_pointer=bad)
    with pytest.raises(ConfigError, match="copy_pointer: .*needs copy_k"):
        tiny(copy_k=(), copy_pointer=8)
    with pytest.raises(ConfigError, match=r"copy_pointer_k: must be lengths of copy_k \[2, 5\]"):
        tiny(copy_pointer=8, copy_pointer_k=[3])
    cfg = ReformerConfig.from_dict(tiny(copy_pointer=8, copy_pointer_k=[5]).to_dict())
    assert cfg.copy_pointer == 8 and cfg.copy_pointer_k == (5,) and cfg.n_copy_candidates == 3


def _repeat_batch(g: torch.Generator, low: int, high: int, B: int = 16, half: int = 64):
    first = torch.randint(low, high, (B, half), generator=g)
    return torch.cat([first, first], dim=1)


@pytest.mark.parametrize("copy_k,copies", [((4,), True), ((), False)])
def test_copies_tokens_it_never_saw_in_training(copy_k, copies):
    """Trained on repeated random sequences of tokens 0-15 only, the model meets repeats
    of tokens 16-31, whose embeddings training never moved: with the copy bonus it copies
    them (loss near 0 on the repeat), without it (the same match-layer model) it cannot."""
    torch.manual_seed(0)
    cfg = ReformerConfig(vocab_size=32, d_model=64, n_layers=2, n_heads=2, d_ff=128,
                         attn=["local", "match"], bucket_size=32, n_hashes=2, match_k=(4,),
                         copy_k=copy_k, max_seq_len=256)
    model = ReformerLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        loss = model.loss(_repeat_batch(g, 0, 16))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        nll = model.loss(_repeat_batch(torch.Generator().manual_seed(99), 16, 32),
                         reduction="none")
    repeat = nll[:, 64 + 4:].mean().item()  # once the 4-token context has repeated
    if copies:
        assert repeat < 0.3
    else:
        assert repeat > 2.0


def test_samples_copy_from_before_a_context_restart():
    """Past max_seq_len the sampler restarts its attention from the last half window; the
    copy mixture keeps the whole prompt and sample. A 40-token phrase that no half window
    holds whole is still continued, greedily, by a gate that trusts every candidate."""

    m = with_gate(tiny(max_seq_len=64, copy_k=(4,)))
    with torch.no_grad():
        m.copy_gate.bias.fill_(10.0)  # weight ~1 for any candidate
    phrase = torch.randint(0, 10, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    cyclic = phrase + phrase[:3]
    assert len({tuple(cyclic[i:i + 4]) for i in range(40)}) == 40  # no 4 tokens recur
    prompt = np.array([10] + phrase * 3)  # the separator, then the phrase 3 times
    new, _ = sample_batch(m, prompt, 150, 1, temperature=0.0, compile=False)
    assert new[0].tolist() == (phrase * 8)[:150]
    # the attention's window alone (the last 32 tokens) never holds 4 tokens twice
    with torch.no_grad():
        assert (find_copies(torch.tensor([phrase[-32:]]), (4,), 11).candidates < 0).all()


@pytest.mark.parametrize("pointer", [True, False])
def test_a_sampled_repeat_survives_a_changed_token(pointer):
    """The prompt repeats a 40-token phrase, then changes one token of the repeat. A gate
    that trusts the far pointer continues the phrase through the change, greedily; its
    plain counterpart (the same model, the pointer never trusted) has no candidate right
    after the change and leaves the phrase."""

    m = with_gate(tiny(copy_k=(4,), copy_pointer=POINTER))
    with torch.no_grad():
        m.copy_gate.bias.fill_(-1e3)
        m.copy_gate.by_mismatches.fill_(10.0 if pointer else -1e3)
    prompt, held = phrase_with_a_change()
    new, _ = sample_batch(m, np.array(prompt), 60, 1, temperature=0.0, compile=False)
    assert (new[0].tolist() == held) == pointer


def a_phrase() -> list[int]:
    """40 random tokens of 0..9."""
    return torch.randint(0, 10, (40,), generator=torch.Generator().manual_seed(2)).tolist()


def phrase_with_a_change() -> tuple[list[int], list[int]]:
    """A prompt (the separator, a 40-token phrase, then its first 21 tokens with the last
    changed) and its next 60 tokens if the repeat is held: 40 tokens back from the end of
    the phrase is the repeat with its change."""
    phrase = a_phrase()
    changed = (phrase[20] + 1) % 10
    varied = phrase[:20] + [changed] + phrase[21:]
    return [10] + phrase + varied[:21], (phrase[21:] + varied * 2)[:60]


def reference_hit_counts(records: list[torch.Tensor], copy_k: tuple[int, ...],
                         min_distance: int) -> tuple[list[int], list[int]]:
    """(hits, seen) per count of mismatches, from `pointer_reference`."""
    hits, seen = [0] * (POINTER_WINDOW + 1), [0] * (POINTER_WINDOW + 1)
    for x in records:
        want = pointer_reference(x.tolist(), copy_k, min_distance)
        for p, (_, candidate, mismatches) in enumerate(want[:-1]):
            if candidate >= 0:
                seen[mismatches] += 1
                hits[mismatches] += candidate == x[p + 1].item()
    return hits, seen


def test_pointer_hit_rates_count_how_often_each_mismatch_count_was_right():
    records = [repetitive(150, B=1, seed=s)[0] for s in (1, 2)] + [torch.tensor([3])]
    rates = pointer_hit_rates(records, (3, 6), 11, 20)
    hits, seen = reference_hit_counts(records[:2], (3, 6), 20)
    assert rates == pytest.approx([h / max(n, 1) for h, n in zip(hits, seen)])
    # about one token in seven changed on each side: the pointer is right most of the time
    assert sum(seen) > 150 and sum(hits) / sum(seen) > 0.6


def test_the_trust_fitted_to_a_prompt_is_the_prompt_s_own_where_it_has_evidence():
    """fit_trust_to_prompt: per count of mismatches, the prompt's hits and positions with n
    more positions at the training rate. A prompt with no far candidate keeps the training
    rates; a phrase repeated verbatim far back makes the pointer right at every position it
    points, so its count goes toward 1; repeated with changes, some counts go below the
    training rates; the more training positions, the closer to them."""
    m = tiny(copy_k=(3, 6), copy_pointer=20)
    prior = [0.5] * (POINTER_WINDOW + 1)
    short = np.arange(15) % 11
    assert fit_trust_to_prompt(prior, short, m) == FittedTrust(pytest.approx(prior), 0, 0.0)

    phrase = torch.randint(0, 11, (25,), generator=torch.Generator().manual_seed(1))
    verbatim = phrase.repeat(6).numpy()
    fitted = fit_trust_to_prompt(prior, verbatim, m, prior_positions=20)
    # from the phrase's second occurrence on (25 back, past the pointer's 20), always right
    assert fitted.right == 1.0 and fitted.positions == len(verbatim) - 1 - 27
    fitted = fitted.trust
    assert fitted[0] > 0.5 + 0.3 and all(f >= 0.5 for f in fitted)

    changed = repetitive(300, B=1, seed=3)[0]
    hits, seen = reference_hit_counts([changed], (3, 6), 20)
    for n in (1, 20, 1e6):
        fitted = fit_trust_to_prompt(prior, changed.numpy(), m, prior_positions=n).trust
        assert fitted == pytest.approx([(h + n * 0.5) / (c + n) for h, c in zip(hits, seen)])
    assert min(fit_trust_to_prompt(prior, changed.numpy(), m, prior_positions=1).trust) < 0.3
    assert fit_trust_to_prompt(prior, changed.numpy(), m, 1e6).trust == pytest.approx(prior,
                                                                              abs=1e-3)


@pytest.mark.parametrize("trusted", [True, False])
def test_a_sampler_that_trusts_the_pointer_holds_the_repeat(trusted):
    """sample_batch(pointer_trust=...): a sampling rule, not the model's likelihood. With
    full trust, even a random model at temperature 1 continues a repeated phrase through a
    changed token; as trained (here: a random gate), it leaves the phrase."""

    m = with_gate(tiny(copy_k=(4,), copy_pointer=POINTER))
    prompt, held = phrase_with_a_change()
    prompt = np.array(prompt)
    trust = [1.0] * (POINTER_WINDOW + 1) if trusted else None
    new, _ = sample_batch(m, prompt, 60, 1, temperature=1.0, seed=0, compile=False,
                          pointer_trust=trust)
    assert (new[0].tolist() == held) == trusted
    with pytest.raises(ValueError, match="far pointer"):
        sample_batch(with_gate(tiny()), prompt, 5, 1, pointer_trust=trust or [1.0])


@pytest.mark.parametrize("w", [0.3, 0.8])
def test_the_sampler_gives_the_candidate_with_the_trust_plus_the_model_s_own_share(w):
    """With trust w the pointer's candidate comes with probability w + (1 - w) p, p the
    model's own: copied with w, and drawn by the model otherwise, which may give it too.
    (Rules that give it exactly w, or max(w, p), never started a repeat in samples of the
    planetblupi pieces: docs/long-context.md.) Here the gate weighs the pointer as it
    weighs the head, so p is about one half."""

    m = with_gate(tiny(copy_k=(4,), copy_pointer=POINTER))
    with torch.no_grad():
        m.copy_gate.bias.fill_(-1e3)
        m.copy_gate.by_mismatches.fill_(0.0)
    prompt, held = phrase_with_a_change()  # the pointer's candidate is held[0]
    with torch.no_grad():
        p = m(torch.tensor([prompt]))[0, -1].float().softmax(-1)[held[0]].item()
    assert 0.4 < p < 0.7
    n, want = 400, w + (1 - w) * p
    drawn, _ = sample_batch(m, np.array(prompt), 1, n, temperature=1.0, seed=0, compile=False,
                            pointer_trust=[w] * (POINTER_WINDOW + 1))
    share = (drawn[:, 0] == held[0]).mean()
    assert abs(share - want) < 4 * (want * (1 - want) / n) ** 0.5
    assert abs(share - max(w, p)) > 0.08  # not a floor under the model's belief
    # never trusted, the model alone decides: the same draws as without the rule
    alone, _ = sample_batch(m, np.array(prompt), 1, n, temperature=1.0, seed=0, compile=False)
    never, _ = sample_batch(m, np.array(prompt), 1, n, temperature=1.0, seed=0, compile=False,
                            pointer_trust=[0.0] * (POINTER_WINDOW + 1))
    assert never.tolist() == alone.tolist()


class _Refusing:
    """A constraint that refuses `refused` always and, at step `at`, allows only `forced`
    (as the note grammar does when a note is held too long)."""

    def __init__(self, refused: int, forced: int, at: int):
        self.refused, self.forced, self.at, self.step = refused, forced, at, 0

    def allowed(self) -> torch.Tensor:
        ok = torch.ones(1, 11, dtype=torch.bool)
        ok[0, self.refused] = False
        if self.step == self.at:
            ok[0] = False
            ok[0, self.forced] = True
        return ok

    def update(self, tokens: torch.Tensor, removed: torch.Tensor) -> None:
        self.step += 1


def test_a_trusted_copy_passes_the_constraint_but_not_its_forced_moves():
    """A copied token is the piece's own material: a constraint's refusal (a grammar that
    reads the sample's state, not the source's) does not break the repeat, but a forced
    move (the only token allowed) is inserted before the copied token, and the copy goes on
    after it, the move not counted as a mismatch. The model's own draws keep to the
    constraint."""

    m = with_gate(tiny(copy_k=(4,), copy_pointer=POINTER))
    phrase = a_phrase()
    prompt = np.array([10] + phrase * 2 + phrase[:21])  # the pointer ends with no mismatch
    held = (phrase[21:] + phrase * 2)[:60]
    refused, forced = held[2], (held[8] + 1) % 10
    # trusted only without a mismatch: had the forced move counted, or the pointer's count
    # against the tokens one step off after it, the copy would stop
    trust = [1.0] + [0.0] * POINTER_WINDOW
    new, _ = sample_batch(m, prompt, 60, 1, temperature=1.0, seed=0, compile=False,
                          constraint=_Refusing(refused, forced, at=8), pointer_trust=trust)
    want = prompt.tolist()  # the move inserted: the phrase goes on after it, 41 tokens long
    for i in range(60):
        want.append(forced if i == 8 else want[-40 if i < 8 else -41])
    assert new[0].tolist() == want[len(prompt):]
    assert refused in new[0].tolist()
    drawn, _ = sample_batch(m, prompt, 60, 1, temperature=1.0, seed=0, compile=False,
                            constraint=_Refusing(refused, forced, at=8))
    assert refused not in drawn[0].tolist() and drawn[0, 8] == forced
