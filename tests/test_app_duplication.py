"""apps/duplication: the Reformer paper's duplication task (data, loss mask, the table)."""

import re
import sys
from pathlib import Path

import pytest
import torch

from cli_helpers import load_app_module

APP = Path(__file__).resolve().parents[1] / "apps" / "duplication" / "duplication.py"


@pytest.fixture(scope="module")
def dup():
    yield load_app_module(APP, "duplication")
    sys.modules.pop("duplication", None)


def test_batch_is_0w0w(dup):
    g = torch.Generator().manual_seed(0)
    x = dup.make_batch(5, 20, 6, g)
    n = 9
    assert x.shape == (5, 20) and x.dtype == torch.long
    assert (x[:, 0] == 0).all() and (x[:, n + 1] == 0).all()
    assert torch.equal(x[:, 1:n + 1], x[:, n + 2:])
    w = x[:, 1:n + 1]
    assert w.min() >= 1 and w.max() <= 5
    assert len(torch.unique(w)) > 1  # random, not constant
    # seeded: the same generator seed gives the same sequences
    assert torch.equal(x, dup.make_batch(5, 20, 6, torch.Generator().manual_seed(0)))


def test_loss_mask_covers_exactly_the_second_copy(dup):
    L, n = 20, 9
    mask = dup.loss_mask(L)
    assert mask.shape == (L - 1,)
    # prediction t targets token t + 1: exactly the targets n + 2 .. 2n + 1 (second w)
    targets = torch.nonzero(mask).squeeze(1) + 1
    assert targets.tolist() == list(range(n + 2, 2 * n + 2))


def test_accuracy_ignores_everything_but_the_second_copy(dup):
    x = dup.make_batch(3, 20, 6, torch.Generator().manual_seed(1))
    logits = torch.zeros(3, 20, 6)
    # a perfect prediction everywhere in the second copy, a wrong one everywhere else
    logits.scatter_(2, x.roll(-1, dims=1).unsqueeze(-1), 1.0)
    mask = torch.cat([dup.loss_mask(20), torch.tensor([False])])
    logits[:, ~mask] = 0.0
    logits[:, ~mask, 0] = -1.0
    logits[:, ~mask, 3] = 5.0
    _, acc = dup.masked_loss_and_accuracy(logits, x)
    assert acc.item() == 1.0
    logits[0, 12] = -logits[0, 12]  # one wrong answer inside the second copy
    _, acc = dup.masked_loss_and_accuracy(logits, x)
    assert acc.item() == pytest.approx(1 - 1 / 27)


def test_full_model_evaluates_with_lsh_on_the_same_weights(dup):
    s = dup.Setting(length=32, vocab=8, d_model=16, d_ff=16, n_heads=2, bucket_size=4,
                    axial_shape=(1, 32))
    torch.manual_seed(0)
    full = dup.ReformerLM(dup.make_config(s, "full", 1))
    lsh = dup.with_attention(full, s, "lsh", 4)
    assert full.layers[0].attn.kind == "full" and lsh.layers[0].attn.kind == "lsh"
    a, b = full.state_dict(), lsh.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = dup.make_batch(2, 32, 8, torch.Generator().manual_seed(0))
    with torch.no_grad():
        out4 = lsh(x)
        lsh.set_n_hashes(1)
        assert lsh.layers[0].attn.n_hashes == 1
        out1 = lsh(x)
        assert not torch.allclose(out4, out1)  # the rounds really changed
        back = dup.with_attention(lsh, s, "full", 1)
        torch.testing.assert_close(back(x), full.eval()(x))


def test_cli_trains_and_writes_the_table(dup, tmp_path, capsys):
    out = tmp_path / "results.md"
    argv = ["--length", "16", "--vocab", "8", "--d-model", "32", "--bucket-size", "4",
            "--steps", "300", "--batch-size", "16", "--lr", "3e-3", "--train", "full", "lsh1",
            "--eval-hashes", "2", "1", "--eval-size", "64", "--out", str(out)]
    assert dup.main(argv) == 0
    text = out.read_text()
    assert "| Train \\ Eval | Full | LSH-2 | LSH-1 |" in text
    rows = {m.group(1): [float(v) for v in m.group(2).split("|")]
            for m in re.finditer(r"^\| (Full|LSH-\d) \|(.*)\|$", text, re.M)}
    assert list(rows) == ["Full", "LSH-1"]
    assert all(len(r) == 3 and all(0 <= v <= 100 for v in r) for r in rows.values())
    # chance is 1/7 (14%): both models have learned to copy (seeded: about 100% and 98%)
    assert rows["Full"][0] > 60
    assert rows["LSH-1"][2] > 60
    assert "| Full |" in capsys.readouterr().out


def test_cli_bad_input_and_existing_output(dup, tmp_path, capsys):
    assert dup.main(["--length", "7"]) == 2
    assert "--length" in capsys.readouterr().err
    assert dup.main(["--train", "sparse"]) == 2
    assert "unknown model 'sparse'" in capsys.readouterr().err
    out = tmp_path / "r.md"
    out.write_text("keep")
    assert dup.main(["--steps", "1", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_text() == "keep"
