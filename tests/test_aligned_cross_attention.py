"""The aligned cross-attention (`Alignment`): against full cross-attention when its window
covers the whole source, exactly the window reached, and the decoder's contracts
(causality, prefix consistency, reversible == plain, cached decoding == the full forward,
padding) with it."""

from __future__ import annotations

import pytest
import torch
from test_encdec import (
    EvenTokens,
    check_causal_and_prefix_consistent,
    check_reversible_equals_plain,
    configs,
    saved_bytes,
    tokens,
)

from seqformer.core import Alignment, ConfigError, ReformerEncDec
from seqformer.core.attention.cross import CrossAttention


def aligned(ratio: int = 3, window: int = 2, seed: int = 0, **kw) -> ReformerEncDec:
    torch.manual_seed(seed)
    m = ReformerEncDec(*configs("local", **kw), alignment=Alignment(ratio, window))
    with torch.no_grad():  # a bias that is not zero, so the tests see it
        for layer in m.decoder.layers:
            layer.cross.offset_bias.normal_()
    return m.eval()


def test_a_window_over_the_whole_source_with_zero_bias_is_full_cross_attention() -> None:
    torch.manual_seed(0)
    full = CrossAttention(32, 2, 0.0)
    wide = CrossAttention(32, 2, 0.0, Alignment(ratio=2, window=13))
    wide.load_state_dict(full.state_dict(), strict=False)
    x, memory = torch.randn(2, 9, 32), torch.randn(2, 13, 32)
    lengths = torch.tensor([13, 4])
    with torch.no_grad():
        torch.testing.assert_close(wide(x, memory, lengths), full(x, memory, lengths),
                                   rtol=1e-5, atol=1e-6)


def test_each_target_position_reads_exactly_its_window() -> None:
    torch.manual_seed(0)
    layer = CrossAttention(32, 2, 0.0, Alignment(ratio=3, window=2)).eval()
    T, S, length = 40, 11, 9
    x, memory = torch.randn(1, T, 32), torch.randn(1, S, 32)
    lengths = torch.tensor([length])
    with torch.no_grad():
        base = layer(x, memory, lengths)
        for i in range(S):
            changed = memory.clone()
            changed[0, i] += 1.0
            moved = (layer(x, changed, lengths) - base).abs().amax(-1)[0] > 1e-6
            # past the source's end, a target position reads the source's last window
            centre = torch.clamp(torch.arange(T) // 3, max=length - 1)
            want = ((centre - i).abs() <= 2) & (i < length)
            assert torch.equal(moved, want), i


def test_the_offset_bias_shifts_attention_within_the_window() -> None:
    torch.manual_seed(0)
    layer = CrossAttention(32, 2, 0.0, Alignment(ratio=1, window=1)).eval()
    with torch.no_grad():
        layer.offset_bias.copy_(torch.tensor([[-1e4, 1e4, -1e4]] * 2))  # the aligned one only
        memory = torch.randn(1, 6, 32)
        got = layer(torch.randn(1, 6, 32), memory)
        k, v = layer.keys_values(memory)
        want = layer.to_out(v.transpose(1, 2).reshape(1, 6, 32))  # each reads its own value
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", [dict(ratio=0, window=1), dict(ratio=2, window=-1),
                                 dict(ratio=1.5, window=1)])
def test_bad_alignments_name_the_field(bad: dict) -> None:
    with pytest.raises(ConfigError, match=f"align.{'ratio' if bad['ratio'] != 2 else 'window'}"):
        Alignment(**bad)


def test_decoder_exactly_causal_and_prefix_consistent() -> None:
    check_causal_and_prefix_consistent(aligned(), tokens((2, 14), 12, 1), tokens((2, 45), 10, 2),
                                       (0, 7, 23, 43))


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_reversible_equals_plain_outputs_and_every_gradient(dropout: float) -> None:
    rev = aligned(dropout=dropout).train()
    plain = aligned(reversible=False, dropout=dropout).train()
    check_reversible_equals_plain(rev, plain, tokens((2, 14), 12, 6), tokens((2, 40), 10, 7),
                                  torch.tensor([14, 9]))
    assert rev.decoder.layers[0].cross.offset_bias.grad.abs().sum() > 0


@pytest.mark.parametrize("constrained", [False, True])
def test_greedy_generate_equals_argmax_over_full_forwards(constrained: bool) -> None:
    m = aligned()
    src, lengths = tokens((3, 12), 12, 8), torch.tensor([12, 7, 2])
    rule = EvenTokens(3, 10) if constrained else None
    out = m.generate(src, 40, bos=1, temperature=0, constraint=rule, src_lengths=lengths)
    with torch.no_grad():
        logits = m(src, out[:, :-1], src_lengths=lengths)
    if constrained:
        logits = logits.masked_fill(~rule.mask.unsqueeze(1), float("-inf"))
    assert torch.equal(logits.argmax(-1), out[:, 1:])


def test_padded_batch_equals_each_pair_alone() -> None:
    m = aligned()
    src, tgt = tokens((3, 13), 12, 11), tokens((3, 39), 10, 12)
    src_len, tgt_len = torch.tensor([13, 8, 1]), torch.tensor([39, 25, 4])
    with torch.no_grad():
        logits = m(src, tgt, src_lengths=src_len)
        nll = m.loss(src, tgt, src_len, tgt_len, reduction="none")
        for b in range(3):
            s, t = int(src_len[b]), int(tgt_len[b])
            torch.testing.assert_close(logits[b:b + 1], m(src[b:b + 1, :s], tgt[b:b + 1]),
                                       rtol=1e-4, atol=1e-5)
            want = m.loss(src[b:b + 1, :s], tgt[b:b + 1, :t], reduction="none")
            torch.testing.assert_close(nll[b, :t - 1], want[0], rtol=1e-4, atol=1e-5)


def test_saved_for_backward_bytes_are_linear_in_the_target_and_flat_in_the_source() -> None:
    m = aligned(window=4).train()
    # the encoder's own bytes grow with the source; the cross-attention adds none per S x T
    by_target = [saved_bytes(m, 64, n) for n in (64, 128, 256)]
    step1, step2 = by_target[1] - by_target[0], by_target[2] - by_target[1]
    assert step1 > 0 and abs(step2 - 2 * step1) <= 0.02 * step2, by_target
    grid = {(s, t): saved_bytes(m, s, t) for s in (64, 256) for t in (64, 256)}
    # no S x T term: the growth in S does not depend on T
    growth_short = grid[256, 64] - grid[64, 64]
    growth_long = grid[256, 256] - grid[64, 256]
    assert growth_long == growth_short, grid
