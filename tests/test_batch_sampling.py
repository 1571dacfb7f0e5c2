"""Several samples decoded as one batch: sample k of a batch is the sample a run of its
own with seed + k gives (with and without the MIDI grammar, across a context restart),
and `--num-samples` writes one output per sample."""

from __future__ import annotations

import numpy as np
import pretty_midi
import torch

from seqformer.core import sample_next
from seqformer.pipeline.inference import sample_batch, sample_tokens
from seqformer.pipeline.run_dir import load_run, read_sampling_limits

from cli_helpers import run_cli


def test_one_generator_per_row_draws_as_each_row_alone():
    logits = torch.randn(4, 12, generator=torch.Generator().manual_seed(0))
    batch = sample_next(logits, 1.0, None, 0.9,
                        [torch.Generator().manual_seed(10 + b) for b in range(4)])
    alone = [sample_next(logits[b:b + 1], 1.0, None, 0.9,
                         torch.Generator().manual_seed(10 + b)) for b in range(4)]
    assert batch.tolist() == torch.cat(alone).tolist()


def test_a_batch_equals_one_sample_at_a_time_across_a_context_restart(tiny_dna_run):
    model, domain, _ = load_run(tiny_dna_run, "dna")
    prompt = np.array([domain.sep_id, *domain.encode("ACGTTGCA")])
    n = model.cfg.max_seq_len + 40  # past the context: the cache restarts once
    batch, _ = sample_batch(model, prompt, n, 2, temperature=1.0, seed=7,
                            allowed=domain.generatable())
    assert batch.shape == (2, n)
    for k in range(2):
        alone, _ = sample_tokens(model, prompt, n, temperature=1.0, seed=7 + k,
                                 allowed=domain.generatable())
        assert (batch[k] == alone).all(), k
    assert not (batch[0] == batch[1]).all()


def test_a_batch_under_the_midi_grammar(tiny_midi_run):
    model, domain, _ = load_run(tiny_midi_run, "midi")
    limits = read_sampling_limits(tiny_midi_run)
    prompt = np.array([domain.sep_id])
    grammar = domain.constraint(limits, [prompt] * 2)
    batch, _ = sample_batch(model, prompt, 300, 2, seed=3, allowed=domain.generatable(),
                            constraint=grammar)
    for k in range(2):
        alone = domain.constraint(limits, [prompt])
        tokens, _ = sample_tokens(model, prompt, 300, seed=3 + k,
                                  allowed=domain.generatable(), constraint=alone)
        assert (batch[k] == tokens).all(), k
        assert grammar.closing(k) == alone.closing()
        assert np.allclose(grammar.removed[k], alone.removed[0], atol=1e-5)


def test_num_samples_writes_one_output_per_sample(tiny_midi_run, tiny_dna_run, tmp_path):
    out = tmp_path / "piece.mid"
    code, text = run_cli("sample", "midi", "--model", tiny_midi_run, "--length", 200,
                         "--num-samples", 3, "--seed", 1, "--out", out)
    assert code == 0, text
    # the count of tokens and the batch note; the rate on that line is not read here
    # (speed is measured in benchmarks/)
    assert "600 tokens at " in text and "(3 samples as one batch)" in text
    for k in (1, 2, 3):
        piece = tmp_path / f"piece_{k}.mid"
        assert piece.is_file() and piece.with_suffix(".png").is_file()
        pretty_midi.PrettyMIDI(str(piece))
    assert not out.exists()
    fasta = tmp_path / "s.fa"
    code, text = run_cli("sample", "dna", "--model", tiny_dna_run, "--length", 50,
                         "--num-samples", 2, "--seed", 1, "--out", fasta)
    assert code == 0, text
    lines = fasta.read_text().split("\n")
    assert [line for line in lines if line.startswith(">")] == [
        f">sample_{tiny_dna_run.name}_50bp_1", f">sample_{tiny_dna_run.name}_50bp_2"]
    code, text = run_cli("sample", "dna", "--model", tiny_dna_run, "--length", 5,
                         "--num-samples", 0, "--out", tmp_path / "x.fa")
    assert code == 2 and "--num-samples 0: must be at least 1" in text
