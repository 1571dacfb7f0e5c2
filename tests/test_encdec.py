"""ReformerEncDec against plain references: causality and prefix consistency of the
decoder, every source position reaching every target position, reversible == plain for
both stacks, cached greedy decoding == argmax over full forwards, padding, weight sharing
and saved-for-backward bytes linear in both lengths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqformer.core import ConfigError, ReformerConfig, ReformerEncDec
from seqformer.core.attention import cross as ca

KINDS = ["lsh", "local", "full"]


def configs(attn: str = "lsh", reversible: bool = True, dropout: float = 0.0,
            src_vocab: int = 12, tgt_vocab: int = 10, **kw) -> tuple:
    common = dict(d_model=32, n_layers=2, n_heads=2, d_ff=64, attn=attn, bucket_size=8,
                  n_hashes=2, reversible=reversible, max_seq_len=256, dropout=dropout, **kw)
    return (ReformerConfig(vocab_size=src_vocab, causal=False, **common),
            ReformerConfig(vocab_size=tgt_vocab, causal=True, **common))


def model(attn: str = "lsh", reversible: bool = True, seed: int = 0, **kw) -> ReformerEncDec:
    torch.manual_seed(seed)
    return ReformerEncDec(*configs(attn, reversible, **kw)).eval()


def tokens(shape: tuple, vocab: int, seed: int) -> torch.Tensor:
    return torch.randint(2, vocab, shape, generator=torch.Generator().manual_seed(seed))


def check_causal_and_prefix_consistent(m: ReformerEncDec, src: torch.Tensor,
                                       tgt: torch.Tensor, cuts: tuple[int, ...]) -> None:
    """Changing the target after position j, or cutting it there, leaves logits 0..j."""
    with torch.no_grad():
        full = m(src, tgt)
        for j in cuts:
            changed = tgt.clone()
            changed[:, j + 1:] = tokens(changed[:, j + 1:].shape, 10, 3 + j)
            torch.testing.assert_close(m(src, changed)[:, :j + 1], full[:, :j + 1],
                                       rtol=0, atol=1e-5)
            torch.testing.assert_close(m(src, tgt[:, :j + 1]), full[:, :j + 1],
                                       rtol=0, atol=1e-5)


@pytest.mark.parametrize("attn", KINDS)
def test_decoder_exactly_causal_and_prefix_consistent(attn: str) -> None:
    check_causal_and_prefix_consistent(model(attn), tokens((2, 40), 12, 1),
                                       tokens((2, 50), 10, 2), (0, 7, 23, 48))


@pytest.mark.parametrize("attn", KINDS)
def test_every_source_position_reaches_every_target_position(attn: str) -> None:
    m = model(attn)
    S = 24
    src, tgt = tokens((1, S), 12, 4), tokens((1, 16), 10, 5)
    with torch.no_grad():
        base = m(src, tgt)
        for i in range(S):
            changed = src.clone()
            changed[0, i] = 2 + (int(src[0, i]) - 1) % 10  # another real token
            moved = (m(changed, tgt) - base).abs().amax(dim=-1)[0]  # per target position
            assert (moved > 1e-6).all(), f"source position {i} does not reach all targets"


@pytest.mark.parametrize("attn", KINDS)
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_reversible_equals_plain_outputs_and_every_gradient(attn: str, dropout: float) -> None:
    rev = model(attn, reversible=True, dropout=dropout).train()
    plain = model(attn, reversible=False, dropout=dropout).train()
    check_reversible_equals_plain(rev, plain, tokens((2, 40), 12, 6), tokens((2, 33), 10, 7),
                                  torch.tensor([40, 29]))
    # the encoder learns only through cross-attention: its gradient is not zero
    assert rev.encoder.layers[0].attn.to_qk.weight.grad.abs().sum() > 0


def check_reversible_equals_plain(rev: ReformerEncDec, plain: ReformerEncDec,
                                  src: torch.Tensor, tgt: torch.Tensor,
                                  lengths: torch.Tensor) -> None:
    """Same weights, rotations and dropout masks: equal losses and every gradient."""
    plain.load_state_dict(rev.state_dict())
    losses = []
    for m in (rev, plain):
        torch.manual_seed(11)  # same rotations and dropout masks
        loss = m.loss(src, tgt, src_lengths=lengths)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=1e-5)
    for (name, p_rev), p_plain in zip(rev.named_parameters(), plain.parameters()):
        assert p_rev.grad is not None, name
        torch.testing.assert_close(p_rev.grad, p_plain.grad, rtol=1e-4, atol=1e-6, msg=name)


class EvenTokens:
    """Allows only even token ids from 2 on: a constraint with a checkable reference."""

    def __init__(self, batch: int, vocab: int):
        self.mask = torch.zeros(batch, vocab, dtype=torch.bool)
        self.mask[:, 2::2] = True
        self.seen: list[torch.Tensor] = []

    def allowed(self) -> torch.Tensor:
        return self.mask

    def update(self, tokens: torch.Tensor, removed: torch.Tensor) -> None:
        self.seen.append(tokens)


@pytest.mark.parametrize("attn", KINDS)
@pytest.mark.parametrize("constrained", [False, True])
def test_greedy_generate_equals_argmax_over_full_forwards(attn: str, constrained: bool
                                                          ) -> None:
    m = model(attn)
    src = tokens((3, 30), 12, 8)
    lengths = torch.tensor([30, 17, 5])
    rule = EvenTokens(3, 10) if constrained else None
    out = m.generate(src, 20, bos=1, temperature=0, constraint=rule, src_lengths=lengths)
    assert out.shape == (3, 21) and (out[:, 0] == 1).all()
    with torch.no_grad():
        logits = m(src, out[:, :-1], src_lengths=lengths)
    if constrained:
        logits = logits.masked_fill(~rule.mask.unsqueeze(1), float("-inf"))
        assert len(rule.seen) == 20 and (out[:, 1:] % 2 == 0).all()
    assert torch.equal(logits.argmax(-1), out[:, 1:])


def test_cached_step_logits_equal_the_full_forward() -> None:
    from seqformer.core.layers.reversible import Source

    m = model("lsh")
    src, tgt = tokens((2, 30), 12, 9), tokens((2, 25), 10, 10)
    lengths = torch.tensor([30, 12])
    with torch.no_grad():
        full = m(src, tgt, src_lengths=lengths)
        source = Source(memory=m.encode(src, lengths), memory_lengths=lengths)
        logits, cache = m.decoder.prefill(tgt[:, :5], 25, source)
        steps = [logits] + [m.decoder.step(tgt[:, t], cache).unsqueeze(1)
                            for t in range(5, 25)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attn", KINDS)
def test_padded_batch_equals_each_pair_alone(attn: str) -> None:
    m = model(attn)
    src, tgt = tokens((3, 37), 12, 11), tokens((3, 20), 10, 12)
    src_len, tgt_len = torch.tensor([37, 20, 3]), torch.tensor([20, 11, 6])
    with torch.no_grad():
        memory = m.encode(src, src_len)
        logits = m(src, tgt, src_lengths=src_len)
        nll = m.loss(src, tgt, src_len, tgt_len, reduction="none")
        for b in range(3):
            s, t = int(src_len[b]), int(tgt_len[b])
            alone = m.encode(src[b:b + 1, :s])
            torch.testing.assert_close(memory[b:b + 1, :s], alone, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(logits[b:b + 1], m(src[b:b + 1, :s], tgt[b:b + 1]),
                                       rtol=1e-4, atol=1e-5)
            want = m.loss(src[b:b + 1, :s], tgt[b:b + 1, :t], reduction="none")
            torch.testing.assert_close(nll[b, :t - 1], want[0], rtol=1e-4, atol=1e-5)
            assert (nll[b, t - 1:] == 0).all()  # padding is never a target
        mean = m.loss(src, tgt, src_len, tgt_len)
    torch.testing.assert_close(mean, nll.sum() / (tgt_len - 1).sum(), rtol=1e-6, atol=0)


def test_full_attention_logits_match_a_plain_reference() -> None:
    """The decoder's cross-attention, recomputed by hand with dense softmax attention."""
    m = model("full")
    layer = m.decoder.layers[0].cross
    x, memory = torch.randn(2, 9, 32), torch.randn(2, 13, 32)
    lengths = torch.tensor([13, 4])
    with torch.no_grad():
        got = layer(x, memory, lengths)
        h = layer.norm(x)
        q = layer._heads(layer.to_q(h))
        k, v = layer.keys_values(memory)
        mask = torch.arange(13) < lengths.unsqueeze(-1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None])
        want = layer.to_out(o.transpose(1, 2).reshape(2, 9, 32))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_blockwise_cross_attention_equals_dense_values_and_gradients(monkeypatch) -> None:
    monkeypatch.setattr(ca, "BLOCK_SCORES", 2 * 2 * 3 * 17)  # three queries a block
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, n, 8, generator=g, dtype=torch.float64, requires_grad=True)
               for n in (10, 17, 17))
    valid = ca.key_mask(torch.tensor([17, 6]), 17, q.device)
    got = ca.cross_attention(q, k, v, valid)
    d_out = torch.randn(got.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad(got, (q, k, v), d_out)
    scores = (q @ k.transpose(-1, -2)).masked_fill(~valid, float("-inf"))
    want = scores.softmax(-1) @ v
    want_grads = torch.autograd.grad(want, (q, k, v), d_out)
    torch.testing.assert_close(got, want)
    for a, b in zip(grads, want_grads):
        torch.testing.assert_close(a, b)


def test_share_weights_shares_exactly_self_attention_and_feed_forward() -> None:
    torch.manual_seed(0)
    shared = ReformerEncDec(*configs(), share_weights=True)
    torch.manual_seed(0)
    separate = ReformerEncDec(*configs())
    for enc, dec in zip(shared.encoder.layers, shared.decoder.layers):
        for a, b in [(enc.attn.norm, dec.attn.norm), (enc.attn.to_qk, dec.attn.to_qk),
                     (enc.attn.to_v, dec.attn.to_v), (enc.attn.to_out, dec.attn.to_out),
                     (enc.ff.norm, dec.ff.norm), (enc.ff.w1, dec.ff.w1), (enc.ff.w2, dec.ff.w2)]:
            assert a is b
        assert dec.attn.causal and not enc.attn.causal  # the sublayers keep their own kind
    n_shared = sum(p.numel() for p in shared.parameters())
    n_separate = sum(p.numel() for p in separate.parameters())
    layer = separate.encoder.layers[0]
    per_layer = sum(p.numel() for p in [*layer.attn.parameters(), *layer.ff.parameters()])
    assert n_separate - n_shared == 2 * per_layer  # and nothing else (cross-attention, ...)
    ids = {id(p) for p in shared.parameters()}
    assert all(id(p) in ids for layer in shared.decoder.layers
               for p in layer.cross.parameters())
    assert shared.decoder.embed is not shared.encoder.embed
    # a shared tensor takes both stacks' gradients
    src, tgt = tokens((1, 20), 12, 13), tokens((1, 12), 10, 14)
    shared.train()
    shared.loss(src, tgt).backward()
    assert shared.encoder.layers[1].ff.w1.weight.grad.abs().sum() > 0


def test_shared_vocabulary_ties_source_target_and_head() -> None:
    m = ReformerEncDec(*configs(tgt_vocab=12), shared_vocab=True)
    assert m.decoder.embed is m.encoder.embed
    assert m.decoder.head.weight is m.encoder.embed.weight
    with pytest.raises(ConfigError, match="vocab_size"):
        ReformerEncDec(*configs(), shared_vocab=True)


def test_bad_configurations_name_the_field() -> None:
    enc, dec = configs()
    with pytest.raises(ConfigError, match="d_model"):
        ReformerEncDec(enc, ReformerConfig.from_dict({**dec.to_dict(), "d_model": 64}))
    with pytest.raises(ConfigError, match="causal"):
        ReformerEncDec(enc, ReformerConfig.from_dict({**dec.to_dict(), "causal": False}))
    with pytest.raises(ConfigError, match="n_layers"):
        ReformerEncDec(enc, ReformerConfig.from_dict({**dec.to_dict(), "n_layers": 3,
                                                      "attn": "lsh"}), share_weights=True)


def saved_bytes(m: ReformerEncDec, S: int, T: int) -> int:
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    src, tgt = tokens((1, S), 12, S), tokens((1, T), 10, T)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m.loss(src, tgt)
    return total


def test_saved_for_backward_bytes_are_linear_in_source_and_target_length() -> None:
    m = model("lsh").train()
    shapes = {"source": lambda n: (n, 64), "target": lambda n: (64, n),
              "both": lambda n: (n, n)}  # both: an S x T term would grow fourfold
    for vary, shape in shapes.items():
        sizes = [saved_bytes(m, *shape(n)) for n in (64, 128, 256)]
        step1, step2 = sizes[1] - sizes[0], sizes[2] - sizes[1]
        assert step1 > 0
        # affine in the length: doubling the step doubles the growth
        assert abs(step2 - 2 * step1) <= 0.02 * step2, (vary, sizes)


def prefix_model(seed: int = 0):
    from seqformer.core import PrefixLM

    torch.manual_seed(seed)
    cfg = ReformerConfig(vocab_size=12, d_model=32, n_layers=2, n_heads=2, d_ff=64,
                         attn="lsh", bucket_size=8, n_hashes=2, max_seq_len=256)
    return PrefixLM(cfg, max_source_len=64).eval()


def test_prefix_lm_scores_the_target_of_the_joined_sequence() -> None:
    m = prefix_model()
    src, tgt = tokens((3, 20), 12, 15), tokens((3, 14), 12, 16)
    src_len, tgt_len = torch.tensor([20, 9, 4]), torch.tensor([14, 5, 10])
    with torch.no_grad():
        nll = m.loss(src, tgt, src_len, tgt_len, reduction="none")
        logits = m(src, tgt, src_len)
        for b in range(3):
            s, t = int(src_len[b]), int(tgt_len[b])
            joined = torch.cat([src[b, :s], tgt[b, :t]])[None]
            want = m.lm.loss(joined, reduction="none")[0, s:]  # the target's tokens only
            torch.testing.assert_close(nll[b, :t - 1], want, rtol=1e-4, atol=1e-5)
            assert (nll[b, t - 1:] == 0).all()
            torch.testing.assert_close(logits[b, :t], m.lm(joined)[0, s:], rtol=1e-4,
                                       atol=1e-5)
    torch.testing.assert_close(m.loss(src, tgt, src_len, tgt_len),
                               nll.sum() / (tgt_len - 1).sum())


def test_prefix_lm_greedy_generate_equals_argmax_over_full_forwards() -> None:
    m = prefix_model()
    src, lengths = tokens((2, 12), 12, 17), torch.tensor([12, 7])
    out = m.generate(src, 10, bos=1, temperature=0, src_lengths=lengths)
    assert out.shape == (2, 11) and (out[:, 0] == 1).all()
    with torch.no_grad():
        assert torch.equal(m(src, out[:, :-1], lengths).argmax(-1), out[:, 1:])


def test_tie_positions_shares_the_first_axis_and_checks_its_length() -> None:
    enc, dec = configs()
    enc = ReformerConfig.from_dict({**enc.to_dict(), "max_seq_len": 40, "axial_shape": (40, 1),
                                    "n_buckets": None})
    dec = ReformerConfig.from_dict({**dec.to_dict(), "max_seq_len": 120,
                                    "axial_shape": (40, 3), "n_buckets": None})
    m = ReformerEncDec(enc, dec, tie_positions=True)
    assert m.decoder.pos.axes[0] is m.encoder.pos.axes[0]
    assert m.decoder.pos.axes[1] is not m.encoder.pos.axes[1]
    untied = ReformerEncDec(enc, dec)
    assert (sum(p.numel() for p in untied.parameters())
            - sum(p.numel() for p in m.parameters())) == 40 * 32
    # target position t and source position t // 3 share the tied vector
    t = torch.arange(120)
    assert torch.equal(m.decoder.pos.indices(t)[0], t // 3)
    assert torch.equal(m.encoder.pos.indices(torch.arange(40))[0], torch.arange(40))
    with pytest.raises(ConfigError, match="axial_shape"):
        ReformerEncDec(enc, ReformerConfig.from_dict({**dec.to_dict(), "axial_shape": (60, 2)}),
                       tie_positions=True)


@pytest.mark.parametrize("read_target", [True, False])
def test_the_encoder_decoder_learns_to_copy_its_source(read_target: bool) -> None:
    """Copying needs cross-attention to align target position t with source position t: a
    learning check of the whole path (random 12-token sources, 250 AdamW steps), with and
    without the decoder reading its own target."""
    torch.manual_seed(0)
    common = dict(d_model=64, n_layers=2, n_heads=4, d_ff=128, bucket_size=16, n_hashes=1,
                  max_seq_len=64)
    m = ReformerEncDec(ReformerConfig(vocab_size=22, causal=False, attn="full", **common),
                       ReformerConfig(vocab_size=22, attn="local", **common),
                       read_target=read_target)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(250):
        src = torch.randint(2, 22, (16, 12), generator=g)
        loss = m.loss(src, F.pad(src, (1, 0), value=1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    src = torch.randint(2, 22, (32, 12), generator=g)
    out = m.generate(src, 12, bos=1, temperature=0)
    # chance is 1/20 per token; a model that copies gets nearly all
    assert (out[:, 1:] == src).float().mean() > 0.9


@pytest.mark.parametrize("attn", KINDS)
def test_a_decoder_that_does_not_read_its_target_depends_on_source_and_position_only(
        attn: str) -> None:
    """read_target=False: any change of the target leaves every position's logits (not only
    the later ones' causality), while the plain decoder's change; cached steps still equal
    the full forward and greedy decoding is each position's argmax."""
    from seqformer.core.layers.reversible import Source

    src, tgt = tokens((2, 30), 12, 11), tokens((2, 24), 10, 12)
    lengths = torch.tensor([30, 14])
    other = tokens((2, 24), 10, 13)
    other[:, 0] = tgt[:, 0]
    for read_target in (True, False):
        torch.manual_seed(0)
        m = ReformerEncDec(*configs(attn), read_target=read_target).eval()
        with torch.no_grad():
            full = m(src, tgt, src_lengths=lengths)
            moved = (m(src, other, src_lengths=lengths) - full).abs().amax()
        if read_target:
            assert moved > 1e-3
            continue
        assert moved == 0
        with torch.no_grad():
            source = Source(memory=m.encode(src, lengths), memory_lengths=lengths)
            logits, cache = m.decoder.prefill(tgt[:, :3], 24, source)
            steps = [logits] + [m.decoder.step(tgt[:, t], cache).unsqueeze(1)
                                for t in range(3, 24)]
        torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-5)
        out = m.generate(src, 24, bos=int(tgt[0, 0]), temperature=0, src_lengths=lengths)
        assert torch.equal(out[:, 1:], full.argmax(-1))


def test_only_a_plain_decoder_may_leave_its_target_unread() -> None:
    from seqformer.core.model.lm import ReformerLM

    enc, dec = configs()
    with pytest.raises(ConfigError, match="read_tokens"):  # it reads the tokens before
        ReformerEncDec(enc, ReformerConfig.from_dict({**dec.to_dict(), "kmer_embedding": 2}),
                       read_target=False)
    with pytest.raises(ConfigError, match="read_tokens"):
        ReformerLM(dec, read_tokens=False)  # a language model that reads nothing
