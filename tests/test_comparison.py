"""The comparison benchmarks' own parts (issue 18): the Sparse Transformer reference
pattern against its definition as a dense mask, and attention_quality.py's variants
(valid configs, the layers and hashes they name, one real run end to end)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from seqformer.core import ReformerConfig
from seqformer.pipeline.run_config import resolve

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import attention_quality  # noqa: E402
from baselines import SparseTransformerLM, sparse_strided  # noqa: E402


def dense_strided_reference(q, k, v, stride):  # noqa: ANN001, ANN201
    """Child et al.'s two patterns written as dense masks: position i attends to
    j in (i - stride, i] (first half of the heads) and to j <= i with stride | i - j
    (second half)."""
    n = q.shape[2]
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    local = (j <= i) & (i - j < stride)
    strided = (j <= i) & ((i - j) % stride == 0)
    h = q.shape[1] // 2
    return torch.cat([
        F.scaled_dot_product_attention(q[:, :h], k[:, :h], v[:, :h], attn_mask=local),
        F.scaled_dot_product_attention(q[:, h:], k[:, h:], v[:, h:], attn_mask=strided),
    ], dim=1)


@pytest.mark.parametrize("n", [64, 256])
def test_sparse_transformer_pattern_equals_its_dense_mask(n):
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(2, 4, n, 16, generator=g, dtype=torch.float64) for _ in range(3))
    stride = int(n ** 0.5)
    assert torch.allclose(sparse_strided(q, k, v), dense_strided_reference(q, k, v, stride),
                          atol=1e-12)


def test_sparse_transformer_lm_is_causal():
    torch.manual_seed(0)
    model = SparseTransformerLM(16, 32, 2, 4, 64).eval()
    tokens = torch.randint(0, 16, (1, 256))
    changed = tokens.clone()
    changed[0, 200] = (tokens[0, 200] + 1) % 16
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert torch.allclose(a[:, :200], b[:, :200], atol=1e-6)
    assert not torch.allclose(a[:, 200:], b[:, 200:], atol=1e-3)


@pytest.mark.parametrize("domain", ["dna", "midi"])
@pytest.mark.parametrize("variant", attention_quality.VARIANTS)
def test_each_variant_is_a_valid_config_changing_only_attention(domain, variant):
    preset = ROOT / "benchmarks" / "configs" / f"compare-{domain}.yaml"
    n_layers = yaml.safe_load(preset.read_text())["model"]["n_layers"]
    base = resolve(domain, 12, preset)
    cfg = resolve(domain, 12, preset,
                  overrides=attention_quality.variant_overrides(variant, n_layers))
    model = ReformerConfig(**cfg["model"])
    kinds = [model.layer_attn(i) for i in range(n_layers)]
    expected = {"local": ["local"] * n_layers, "full": ["full"] * n_layers,
                "alt": ["local", "lsh"] * (n_layers // 2)}.get(variant, ["lsh"] * n_layers)
    assert kinds == expected
    if variant.startswith("lsh-"):
        assert model.n_hashes == int(variant[4:])
    for key in set(cfg["model"]) - {"attn", "n_hashes"}:
        assert cfg["model"][key] == base["model"][key], key
    assert cfg["data"] == base["data"] and cfg["train"] == base["train"]


def test_attention_quality_runs_each_variant_and_reads_its_curve(tmp_path):
    config = tmp_path / "tiny.yaml"
    preset = yaml.safe_load((ROOT / "configs" / "dna-quick.yaml").read_text())
    preset["model"].update(d_model=32, n_heads=2, d_ff=64, attn="lsh", n_hashes=2,
                           max_seq_len=256)
    preset["data"].update(seq_len=256, val_windows=2)
    preset["train"].update(val_every=2, log_every=1, batch_size=2, max_minutes=None)
    config.write_text(yaml.safe_dump(preset))
    attention_quality.main(["dna", "--data", str(ROOT / "data/dna/lambda_phage.fa.gz"),
                            "--config", str(config), "--steps", "4", "--variants", "local,lsh-1",
                            "--out", str(tmp_path / "out")])
    summary = json.loads((tmp_path / "out" / "dna-4steps.json").read_text())
    assert [r["variant"] for r in summary["results"]] == ["local", "lsh-1"]
    for r in summary["results"]:
        assert r["status"] == "ok" and r["steps"] == 4
        # validations at steps 2 and 4, then the closing one of the final weights
        assert [step for step, _, _ in r["curve"]] == [2, 4, 4]
        assert 1.0 < r["final_bits"] < 4.0
        run = tmp_path / "out" / "dna-4steps" / r["variant"]
        saved = yaml.safe_load((run / "config.yaml").read_text())["model"]
        assert saved["attn"] == ("local" if r["variant"] == "local" else "lsh")
        assert saved["n_hashes"] == (1 if r["variant"] == "lsh-1" else 2)
    figure = tmp_path / "quality.png"
    attention_quality.main(["--plot", str(tmp_path / "out" / "dna-4steps.json"),
                            "--figure", str(figure)])
    assert figure.stat().st_size > 10_000


def test_summarize_reads_validations_and_training_times_from_a_run(tmp_path):
    """The parser alone, on a fixed log and metrics file: periodic validations are filed
    by metrics.csv under the step before them, the closing one under the final step, and
    each gets the training time of its step's progress line (the final step's time
    extrapolated from the last line's rate)."""
    logs = tmp_path / "logs" / "version_0"
    logs.mkdir(parents=True)
    (logs / "metrics.csv").write_text(
        "bits,epoch,loss,step,val_bits,val_loss\n"
        "2.1,0,1.4,49,,\n,0,,49,2.00,1.39\n"
        ",0,,99,1.98,1.37\n1.9,0,1.3,104,,\n,1,,105,1.97,1.36\n")
    log = ("training from step 0 to 100000 or 3 minutes\n"
           "step 50/100000  train 2.1 bits  10,000 tokens/s  elapsed 0:40  ETA 2:20\n"
           "validation at step 50: 2.0000 bits/token\n"
           "step 100/100000  train 1.9 bits  val 2.0 bits  9,500 tokens/s  elapsed 1:20  ETA 1:40\n"
           "validation: model 1.9700 bits/token, order-1 Markov baseline 2.5000 bits/token\n")
    r = attention_quality.summarize("local", tmp_path, log)
    assert r["steps"] == 105 and r["final_bits"] == 1.97 and r["tokens_per_s"] == 9500
    assert r["curve"] == [(50, 2.00, 40), (100, 1.98, 80), (105, 1.97, 84)]
    assert r["train_seconds"] == 84
    assert "Markov baseline 2.5000" in r["baseline"]
    # no progress line at all (a run of a few slow steps): the time limit stands in
    assert attention_quality.summarize("local", tmp_path, "", minutes=3)["train_seconds"] == 180
