"""ReformerLM contracts: prefix consistency, exact causality, cached decoding, eval
determinism, parameters independent of attention kind / reversibility / chunking."""

import pytest
import torch

from seqformer.core import ReformerConfig, ReformerLM

KINDS = ["lsh", "local", "full", "match"]


def tiny(**kw):
    base = dict(vocab_size=11, d_model=32, n_layers=2, n_heads=2, d_ff=64, attn="lsh",
                bucket_size=8, n_hashes=2, max_seq_len=256, match_k=(2, 3))
    base.update(kw)
    return ReformerConfig(**base)


def model(seed=0, **kw):
    torch.manual_seed(seed)
    return ReformerLM(tiny(**kw)).eval()


def tokens(L, B=2, seed=0, vocab=11):
    return torch.randint(0, vocab, (B, L), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", KINDS + ["kmer"])
def test_prefix_consistency(kind):
    m = model(attn="lsh", kmer_embedding=4) if kind == "kmer" else model(attn=kind)
    x = tokens(83)
    with torch.no_grad():
        full = m(x)
        for t in (1, 16, 19, 83):  # one token, two chunks, not a multiple of the chunk, all
            torch.testing.assert_close(m(x[:, :t]), full[:, :t], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS + ["kmer"])
def test_model_exactly_causal(kind):
    m = model(attn="lsh" if kind == "kmer" else kind, n_buckets=16,
              kmer_embedding=6 if kind == "kmer" else 1)
    x = tokens(75)
    with torch.no_grad():
        base = m(x)
        for t in (3, 8, 15, 16, 40, 74):
            x2 = x.clone()
            x2[:, t] = (x2[:, t] + 1) % 11
            out = m(x2)
            torch.testing.assert_close(out[:, :t], base[:, :t], atol=1e-5, rtol=0)
            assert (out[:, t:] - base[:, t:]).abs().max() > 1e-4


def test_lsh_with_one_bucket_equals_full_model():
    full = model(attn="full", max_seq_len=64, bucket_size=64)
    lsh = ReformerLM(tiny(attn="lsh", n_buckets=1, bucket_size=64, max_seq_len=64,
                          n_hashes=4)).eval()
    lsh.load_state_dict(full.state_dict())
    x = tokens(64)
    with torch.no_grad():
        torch.testing.assert_close(lsh(x), full(x), atol=1e-5, rtol=1e-5)


DECODE_CASES = [
    dict(attn="lsh"),
    dict(attn="lsh", n_buckets=2, bucket_size=4, n_hashes=3),  # buckets overflow 2 chunks
    dict(attn="lsh", n_buckets=256),  # factorized hashing (16 x 16)
    dict(attn="local", bucket_size=4),
    dict(attn="full"),
    dict(attn=["local", "lsh"], reversible=False, ff_chunk_size=5),
    dict(attn=["local", "lsh"], kmer_embedding=20),  # history longer than the prompt
    dict(attn="match"),
    dict(attn=["local", "match"], match_k=(1, 16), bucket_size=2),  # crowded buckets
    dict(attn=["match", "lsh"], kmer_embedding=4, reversible=False),
]


def assert_decoding_is_the_full_forward(m: ReformerLM, x: torch.Tensor, prompt: int = 13,
                                        **history: torch.Tensor) -> None:
    """Prefill x[:, :prompt], then one step per token: each position's logits are the
    full forward's. history: copy_history=... (the copy mixture's)."""
    with torch.no_grad():
        full = m(x, **history)
    logits, cache = m.prefill(x[:, :prompt], capacity=x.shape[1], **history)
    torch.testing.assert_close(logits, full[:, :prompt], atol=1e-4, rtol=0)
    for t in range(prompt, x.shape[1]):
        torch.testing.assert_close(m.step(x[:, t], cache), full[:, t], atol=1e-4, rtol=0)


@pytest.mark.parametrize("case", DECODE_CASES, ids=lambda c: str(c))
def test_cached_decoding_matches_full_forward(case):
    assert_decoding_is_the_full_forward(model(**case), tokens(90))


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_generate_equals_repeated_argmax(kind):
    m = model(attn=kind, bucket_size=4, n_buckets=4)
    prompt = tokens(5)
    out = m.generate(prompt, 40, temperature=0)
    assert out.shape == (2, 45) and torch.equal(out[:, :5], prompt)
    seq = prompt
    with torch.no_grad():
        for _ in range(40):
            seq = torch.cat([seq, m(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


def test_generate_sampling_is_seeded_and_restores_mode():
    m = model()
    m.train()
    a = m.generate(tokens(4), 20, temperature=0.9, top_k=5, top_p=0.9,
                   generator=torch.Generator().manual_seed(7))
    b = m.generate(tokens(4), 20, temperature=0.9, top_k=5, top_p=0.9,
                   generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and m.training


def test_eval_determinism_across_instances():
    m = model(seed=0)
    x = tokens(100)
    with torch.no_grad():
        a, b = m(x), m(x)
    assert torch.equal(a, b)
    torch.manual_seed(12345)
    other = ReformerLM(tiny()).eval()
    other.load_state_dict(m.state_dict())
    with torch.no_grad():
        assert torch.equal(other(x), a)


def test_training_mode_draws_fresh_rotations():
    m = model().train()
    x = tokens(100)
    with torch.no_grad():
        torch.manual_seed(1)
        a = m(x)
        torch.manual_seed(2)
        b = m(x)
        torch.manual_seed(1)
        c = m(x)
    assert not torch.allclose(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("target", [dict(attn="full"), dict(attn="local"),
                                    dict(reversible=False), dict(ff_chunk_size=7),
                                    dict(attn=["full", "lsh"], reversible=False),
                                    dict(attn="match")])
def test_state_dict_loads_across_settings(target):
    src = model()
    dst = ReformerLM(tiny(**target))
    dst.load_state_dict(src.state_dict())  # strict: same names and shapes
    assert set(src.state_dict()) == set(dst.state_dict())


def test_chunked_feed_forward_equals_unchunked():
    m = model()
    chunked = ReformerLM(tiny(ff_chunk_size=7)).eval()
    chunked.load_state_dict(m.state_dict())
    x = tokens(50)
    with torch.no_grad():
        torch.testing.assert_close(chunked(x), m(x), atol=1e-6, rtol=1e-6)


def test_default_feed_forward_chunks_by_length_without_changing_results(monkeypatch):
    """ff_chunk_size=None: pieces of at most FF_ROWS (batch x position) rows; values and
    the reversible backward's gradients equal those of one piece."""
    from seqformer.core.layers import feedforward

    m = model()
    x = tokens(50)

    def run():
        m.zero_grad()
        torch.manual_seed(0)
        m.train()
        m.loss(x).backward()
        grads = [p.grad.clone() for p in m.parameters()]
        m.eval()
        with torch.no_grad():
            return m(x), grads

    whole, whole_grads = run()
    assert len(m.layers[0].ff.chunks(torch.zeros(2, 50, 32))) == 1
    monkeypatch.setattr(feedforward, "FF_ROWS", 20)  # 10 positions of a batch of 2
    assert [p.shape[1] for p in m.layers[0].ff.chunks(torch.zeros(2, 50, 32))] == [10] * 5
    chunked, chunked_grads = run()
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-6)
    for a, b in zip(chunked_grads, whole_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_hidden_states_and_tied_head():
    m = model()
    x = tokens(30)
    with torch.no_grad():
        h = m.hidden_states(x)
        assert h.shape == (2, 30, 32)
        torch.testing.assert_close(m(x), h @ m.embed.weight.T)
    assert m.head.weight is m.embed.weight
    untied = ReformerLM(tiny(tie_embeddings=False))
    assert untied.head.weight is not untied.embed.weight


def test_kmer_embedding_sees_exactly_the_last_k_tokens():
    """With kmer_embedding=k the input at t depends on tokens t-k+1..t; a zero-layer-like
    check: change token t-j and see which input embeddings move."""
    m = model(kmer_embedding=3)
    x = tokens(20, B=1)
    base = m._embed(x)
    x2 = x.clone()
    x2[0, 10] = (x2[0, 10] + 1) % 11
    moved = (m._embed(x2) - base).abs().amax(-1)[0] > 0
    assert moved.nonzero().flatten().tolist() == [10, 11, 12]


def test_too_long_input_is_rejected():
    m = model(max_seq_len=64)
    with pytest.raises(ValueError, match="max_seq_len"):
        m(tokens(65))
    with pytest.raises(ValueError, match="max_seq_len"):
        m.generate(tokens(60), 10)


def test_embeddings_in_blocks_equal_plain_lookups(monkeypatch):
    """Token + axial + k-mer rows summed block by block (values and table gradients) equal
    the plain sum of nn.functional.embedding lookups."""
    from seqformer.core.layers import embeddings

    monkeypatch.setattr(embeddings, "ROWS", 7)  # several blocks, the last one short
    torch.manual_seed(0)
    m = ReformerLM(ReformerConfig(vocab_size=11, d_model=16, n_layers=1, n_heads=2, d_ff=32,
                                  bucket_size=8, max_seq_len=64, kmer_embedding=3))
    tokens = torch.randint(0, 11, (2, 30))
    w = torch.randn(2, 30, 16)
    (m._embed(tokens) * w).sum().backward()
    ours = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    m.zero_grad()
    F = torch.nn.functional
    pos = torch.arange(30)
    ref = F.embedding(tokens, m.embed.weight) + m.pos(pos)
    ext = torch.cat([torch.full((2, 2), 11), tokens], dim=1)
    for j in (1, 2):
        ref = ref + F.embedding(ext[:, 2 - j:32 - j] + (j - 1) * 12, m.embed_prev.weight)
    torch.testing.assert_close(m._embed(tokens), ref)
    (ref * w).sum().backward()
    assert set(ours) == {"embed.weight", "embed_prev.weight", "pos.axes.0", "pos.axes.1"}
    for n, g in ours.items():
        torch.testing.assert_close(g, dict(m.named_parameters())[n].grad, msg=n)


@pytest.mark.parametrize("attn", ["lsh", "local", "full", "match"])
def test_head_groups_do_not_change_results(attn):
    """One head at a time, two, or all heads at once: same logits and gradients."""
    x = torch.randint(0, 16, (2, 45), generator=torch.Generator().manual_seed(0))
    results = []
    for group in (1, 2, None):
        torch.manual_seed(0)
        m = ReformerLM(ReformerConfig(vocab_size=16, d_model=32, n_layers=2, n_heads=4,
                                      d_ff=64, attn=attn, bucket_size=8, n_hashes=3,
                                      max_seq_len=64, head_group_size=group)).train()
        torch.manual_seed(1)
        loss = m.loss(x)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in m.named_parameters()}))
    for loss, grads in results[1:]:
        torch.testing.assert_close(loss, results[0][0], atol=1e-6, rtol=1e-6)
        for n, g in grads.items():
            torch.testing.assert_close(g, results[0][1][n], atol=1e-6, rtol=1e-5, msg=n)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_chunked_loss_equals_cross_entropy_over_full_logits(monkeypatch, reduction):
    """model.loss applies the head a block of rows at a time; values and every gradient
    equal F.cross_entropy over the full logits (a MIDI-sized vocabulary, tied weights)."""
    from seqformer.core.layers import chunked_loss

    monkeypatch.setattr(chunked_loss, "ROWS", 16)  # several blocks, the last one short
    torch.manual_seed(0)
    m = ReformerLM(ReformerConfig(vocab_size=519, d_model=32, n_layers=2, n_heads=2, d_ff=64,
                                  bucket_size=8, n_hashes=2, max_seq_len=64)).double()
    tokens = torch.randint(0, 519, (2, 41), generator=torch.Generator().manual_seed(1))
    weights = torch.rand(2, 40, dtype=torch.float64)

    def scalar(nll):
        return (nll * weights).sum() if reduction == "none" else nll

    torch.manual_seed(2)
    ours = m.loss(tokens, reduction=reduction)
    scalar(ours).backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    torch.manual_seed(2)
    logits = m(tokens[:, :-1])
    ref = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(),
                                            reduction=reduction)
    ref = ref.view(2, 40) if reduction == "none" else ref
    torch.testing.assert_close(ours, ref.to(ours.dtype), atol=1e-10, rtol=1e-10)
    scalar(ref).backward()
    for n, p in m.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, atol=1e-10, rtol=1e-8, msg=n)


class NoRepeatOddOnly:
    """A test constraint: never the previous token again, and at every other step only
    odd token ids. Records what it is told."""

    def __init__(self, prompt: torch.Tensor, vocab: int):
        self.last, self.vocab, self.step = prompt[:, -1].clone(), vocab, 0
        self.removed: list[torch.Tensor] = []

    def allowed(self) -> torch.Tensor:
        ok = torch.ones(len(self.last), self.vocab, dtype=torch.bool)
        ok[torch.arange(len(self.last)), self.last] = False
        if self.step % 2:
            ok[:, 0::2] = False
        return ok

    def update(self, tokens: torch.Tensor, removed: torch.Tensor) -> None:
        self.last, self.step = tokens.clone(), self.step + 1
        self.removed.append(removed)


@pytest.mark.parametrize("kind", ["lsh", "full", "match"])
def test_greedy_generate_under_a_constraint_equals_the_masked_argmax(kind):
    """The mask applies before the choice; the mass it took is the model's own
    probability of the disallowed tokens at that step, from a full forward."""
    m = model(attn=kind, bucket_size=4, n_buckets=4)
    prompt = tokens(5)
    rule = NoRepeatOddOnly(prompt, 11)
    out = m.generate(prompt, 30, temperature=0, constraint=rule)
    reference = NoRepeatOddOnly(prompt, 11)
    seq = prompt
    with torch.no_grad():
        for step in range(30):
            logits = m(seq)[:, -1]
            ok = reference.allowed()
            removed = logits.softmax(-1).masked_fill(ok, 0).sum(-1)
            torch.testing.assert_close(rule.removed[step], removed, atol=1e-5, rtol=1e-4)
            nxt = logits.masked_fill(~ok, float("-inf")).argmax(-1)
            reference.update(nxt, removed)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
    assert torch.equal(out, seq)
    new = out[:, 5:]
    assert (new[:, 1:] != new[:, :-1]).all() and (new[:, 1::2] % 2 == 1).all()
    # sampling too keeps to the mask
    sampled = m.generate(prompt, 30, temperature=1.5, constraint=NoRepeatOddOnly(prompt, 11),
                         generator=torch.Generator().manual_seed(0))[:, 5:]
    assert (sampled[:, 1:] != sampled[:, :-1]).all() and (sampled[:, 1::2] % 2 == 1).all()


@pytest.mark.parametrize("kw, message", [
    (dict(temperature=-1.0), "temperature must be >= 0"),
    (dict(temperature=float("nan")), "temperature must be >= 0"),
    (dict(top_k=0), "top_k must be >= 1"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=2.0), r"top_p must be in \(0, 1\]"),
])
def test_sampling_options_are_checked_before_decoding(kw, message):
    with pytest.raises(ValueError, match=message):
        model().generate(tokens(4), 5, **kw)
