"""The dropout mask drawn four elements per random word (layers/dropout.py)."""

from __future__ import annotations

import pytest
import torch

from seqformer.core.layers.dropout import dropout, dropout_mask


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_mask_drops_p_and_keeps_the_expectation(p: float) -> None:
    torch.manual_seed(0)
    mask = dropout_mask((1000, 1001), p, torch.device("cpu"))  # not a multiple of 4
    assert mask.shape == (1000, 1001) and mask.dtype == torch.float32
    dropped = (mask == 0).double().mean().item()
    # binomial standard deviation over 1M draws is under 5e-4
    assert dropped == pytest.approx(p, abs=3e-3)
    assert mask.double().mean().item() == pytest.approx(1.0, abs=6e-3)
    kept = mask[mask != 0]
    assert torch.all(kept == kept[0]) and kept[0].item() == pytest.approx(1 / (1 - p), rel=1e-4)


def test_every_quarter_of_the_random_word_is_used() -> None:
    """The four 16-bit draws of one word land on four consecutive elements; each position
    modulo 4 must drop at rate p (a constant sign bit would make one of them never drop)."""
    torch.manual_seed(1)
    mask = dropout_mask((400_000,), 0.3, torch.device("cpu")).view(-1, 4)
    rates = (mask == 0).double().mean(0)
    assert torch.all((rates - 0.3).abs() < 5e-3), rates


def test_same_seed_same_mask_and_eval_is_identity() -> None:
    x = torch.randn(3, 17, 8)
    torch.manual_seed(5)
    a = dropout(x, 0.2, training=True)
    torch.manual_seed(5)
    b = dropout(x, 0.2, training=True)
    assert torch.equal(a, b) and not torch.equal(a, x)
    assert dropout(x, 0.2, training=False) is x
    assert dropout(x, 0.0, training=True) is x
    assert torch.count_nonzero(dropout_mask(x.shape, 1.0, x.device)) == 0


def test_gradient_is_the_mask() -> None:
    x = torch.randn(5, 9, requires_grad=True)
    torch.manual_seed(7)
    y = dropout(x, 0.25, training=True)
    y.sum().backward()
    torch.manual_seed(7)
    assert torch.equal(x.grad, dropout_mask(x.shape, 0.25, x.device))
