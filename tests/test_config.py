import pytest
import torch

from seqformer.core import ConfigError, ReformerConfig, sample_next
from seqformer.core.layers.axial_positions import AxialPositionalEmbedding


@pytest.mark.parametrize("kw, field", [
    (dict(d_model=30, n_heads=4), "d_model"),
    (dict(attn="sparse"), "attn"),
    (dict(attn=["lsh"], n_layers=2), "attn"),
    (dict(axial_shape=(8, 8), max_seq_len=100), "axial_shape"),
    (dict(axial_shape=(128,), max_seq_len=100), "axial_shape"),
    (dict(n_buckets=7), "n_buckets"),
    (dict(bucket_size=0), "bucket_size"),
    (dict(dropout=1.0), "dropout"),
    (dict(ff_chunk_size=0), "ff_chunk_size"),
    (dict(attn="match", match_k=()), "match_k"),
    (dict(attn="match", match_k=(16, 0)), "match_k"),
])
def test_invalid_config_names_the_field(kw, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        ReformerConfig(**kw)


def test_unknown_field_in_dict():
    with pytest.raises(ConfigError, match="^n_layer: unknown"):
        ReformerConfig.from_dict({"n_layer": 3})


def test_derived_values_depend_only_on_config():
    c = ReformerConfig(max_seq_len=131072, bucket_size=64)
    assert c.n_buckets == 2048 and c.bucket_factors == (32, 64)
    assert c.axial_shape == (512, 256)
    assert ReformerConfig(max_seq_len=1_048_576).bucket_factors == (128, 128)
    small = ReformerConfig(max_seq_len=1000, bucket_size=64)
    assert small.n_buckets == 16 and small.bucket_factors == (16,)
    assert ReformerConfig.from_dict(c.to_dict()) == c


def test_axial_positions_are_distinct_and_cover_the_table():
    emb = AxialPositionalEmbedding((4, 8, 3), 16)
    pos = emb(torch.arange(96))
    assert pos.shape == (96, 16)
    assert torch.unique(pos, dim=0).shape[0] == 96
    # position p uses row p % 3 of the last axis, (p // 3) % 8 of the middle one
    torch.testing.assert_close(pos[5], emb.axes[0][0] + emb.axes[1][1] + emb.axes[2][2])


def test_sampling_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]]).repeat(500, 1)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(sample_next(logits, temperature=0), torch.full((500,), 3))
    assert set(sample_next(logits, top_k=2, generator=g).tolist()) == {2, 3}
    # probabilities .032 .087 .237 .644: top_p=0.7 keeps the two largest
    assert set(sample_next(logits, top_p=0.7, generator=g).tolist()) == {2, 3}
    assert set(sample_next(logits, top_p=0.5, generator=g).tolist()) == {3}
    assert len(set(sample_next(logits, generator=g).tolist())) == 4


# ---- run configs: rejected at load time, before any tokenizing or training ---------------

@pytest.mark.parametrize("yaml_text, field", [
    ("model: {d_model: 30, n_heads: 4}", "model.d_model"),
    ("model: {attn: sparse}", "model.attn"),
    ("model: {axial_shape: [8, 8], max_seq_len: 100}", "model.axial_shape"),
    ("model: {kmer_embedding: 0}", "model.kmer_embedding"),
    ("model: {max_seq_len: 1024}\ndata: {seq_len: 4096}", "data.seq_len"),
    ("data: {seq_len: lots}", "data.seq_len"),
    ("data: {holdout: 1.5}", "data.holdout"),
    ("data: {rc_augment: maybe}", "data.rc_augment"),
    ("data: {program_shuffle: 1}", "data.program_shuffle"),
    ("data: {program_shuffle: true}", "data.program_shuffle"),  # a DNA run has no programs
    ("train: {lr: -1}", "train.lr"),
    ("train: {batch_size: 0}", "train.batch_size"),
    ("train: {precision: fp8}", "train.precision"),
    ("train: {checkpoint_every: 0}", "train.checkpoint_every"),
    ("train: {calibrate_sampling: 1}", "train.calibrate_sampling"),
    ("trian: {lr: 1}", "trian"),
    ("train: {learning_rate: 1}", "train.learning_rate"),
])
def test_bad_run_config_is_rejected_at_load_naming_the_field(tmp_path, yaml_text, field):
    from cli_helpers import run_cli

    preset = tmp_path / "bad.yaml"
    preset.write_text(yaml_text + "\n")
    code, out = run_cli("train", "dna", "--config", preset, "--out", tmp_path / "run")
    assert code == 2 and out.startswith(f"error: {field}:"), out
    assert "Traceback" not in out and not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, value", [("train.lr=3e-3", 3e-3), ("train.lr=3.0e-3", 3e-3),
                                         ("train.max_minutes=null", None),
                                         ("model.attn=local", "local"),
                                         ("model.attn=[local, lsh]", ["local", "lsh"])])
def test_overrides_read_numbers_as_a_user_types_them(text, value):
    """YAML 1.1 reads 3e-3 (no dot) as a string; an override means the number."""
    from seqformer.pipeline.run_config import parse_override

    section, key = text.split("=")[0].split(".")
    assert parse_override(text) == {section: {key: value}}


LM_PRESETS = ["dna-quick", "dna-tiny", "dna-ecoli-cpu", "dna-ecoli-gpu", "dna-100k",
              "dna-long", "midi-quick", "midi-tiny", "midi-100k", "midi-long"]


@pytest.mark.parametrize("preset", LM_PRESETS)
def test_every_shipped_language_model_preset_resolves_to_a_valid_model(preset):
    from seqformer.domains import get_domain
    from seqformer.pipeline.run_config import model_config, resolve

    from cli_helpers import REPO

    path = REPO / "configs" / f"{preset}.yaml"
    domain = "midi" if preset.startswith("midi") else "dna"
    vocab = get_domain(domain).vocab_size
    cfg = model_config(resolve(domain, vocab, path))
    assert cfg.max_seq_len >= resolve(domain, vocab, path)["data"]["seq_len"]
    if preset.endswith("-long"):  # the long-context presets read 16K tokens with match layers
        assert cfg.has_match and cfg.max_seq_len >= 16384


def test_copy_complement_true_takes_the_domains_map():
    from seqformer.errors import InputError
    from seqformer.pipeline.run_config import resolve

    copy = ["model.copy_k=[8]"]
    cfg = resolve("dna", 12, None, overrides=copy + ["model.copy_complement=true"])
    #                   pad sep A  C  G  T  N  a  c  g  t  n
    assert cfg["model"]["copy_complement"] == [0, 1, 5, 4, 3, 2, 6, 10, 9, 8, 7, 11]
    assert resolve("dna", 12, None, overrides=copy + ["model.copy_complement=false"]
                   )["model"]["copy_complement"] == []
    with pytest.raises(InputError, match="model.copy_complement: .*the midi domain has one"):
        resolve("midi", 400, None, overrides=copy + ["model.copy_complement=true"])
    with pytest.raises(InputError, match="model.copy_complement: .*needs copy_k"):
        resolve("dna", 12, None, overrides=["model.copy_complement=true"])


def test_match_k_round_trips_through_a_saved_config():
    cfg = ReformerConfig(attn=["local", "match"], n_layers=2, match_k=[8, 16])
    assert cfg.match_k == (8, 16) and cfg.to_dict()["match_k"] == [8, 16]
    assert ReformerConfig.from_dict(cfg.to_dict()).match_k == (8, 16)
