"""The compiled decoding step (`ReformerLM.compile_decoding`, `sample --compile`): the same
logits as the eager step, one graph for every position and every context restart."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqformer.core import ReformerConfig, ReformerLM
from seqformer.pipeline.inference import sample_batch

pytestmark = pytest.mark.skipif(not hasattr(torch, "compile"), reason="needs torch.compile")


def tiny_model(copy_k: tuple[int, ...] = (), copy_pointer: int = 0) -> ReformerLM:
    torch.manual_seed(0)
    cfg = ReformerConfig(vocab_size=40, d_model=32, n_layers=4, n_heads=2, d_ff=64,
                         attn=["lsh", "local", "full", "match"], bucket_size=8, n_hashes=2,
                         max_seq_len=128, kmer_embedding=3, match_k=(1, 4), copy_k=copy_k,
                         copy_pointer=copy_pointer)
    model = ReformerLM(cfg).eval()
    if copy_k:
        with torch.no_grad():
            model.copy_gate.trust.fill_(0.2)
    return model


@pytest.mark.parametrize("copy_k,copy_pointer", [((), 0), ((1, 3), 0), ((1, 3), 5)])
def test_compiled_step_matches_eager_and_compiles_once(copy_k, copy_pointer):
    from torch._dynamo.utils import counters

    model = tiny_model(copy_k, copy_pointer)
    x = torch.randint(2, 40, (2, 90))
    _, eager_cache = model.prefill(x[:, :10], capacity=128)
    eager = [model.step(x[:, t], eager_cache) for t in range(10, 90)]
    torch._dynamo.reset()
    counters.clear()
    model.compile_decoding()
    _, cache = model.prefill(x[:, :10], capacity=128)
    for t in range(10, 90):  # across chunk and bucket boundaries of every layer kind
        torch.testing.assert_close(model.step(x[:, t], cache), eager[t - 10],
                                   atol=2e-5, rtol=1e-4)
    assert cache.length == 90 and int(cache.position) == 90
    # a new cache of the same capacity (a context restart) reuses the graph
    _, cache = model.prefill(x[:, :50], capacity=128)
    model.step(x[:, 50], cache)
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("copy_k", [(), (1, 3)])
def test_sample_batch_compiled_equals_eager_across_restarts(copy_k):
    from torch._dynamo.utils import counters

    model = tiny_model(copy_k)
    prompt = np.array([1, 5, 6, 7])
    # 300 tokens through a 128-token context: two restarts from the last half window (the
    # copy mixture's cache keeps every token across them)
    eager, _ = sample_batch(model, prompt, 300, 2, temperature=0)
    torch._dynamo.reset()
    counters.clear()
    compiled, _ = sample_batch(model, prompt, 300, 2, temperature=0, compile=True)
    assert np.array_equal(eager, compiled)
    assert counters["stats"]["unique_graphs"] == 1


def test_compiled_step_writes_the_caches_in_place():
    """A compiled step must not copy a cache per token (Inductor does so when a cache is
    read before it is written): no buffer the step allocates grows with the capacity."""
    import re

    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    capacity = 4000  # keys, values and LSH rings hold 16,000 to 64,000 numbers each
    cfg = ReformerConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=2, d_ff=64,
                         attn=["lsh", "local"], bucket_size=8, n_hashes=2,
                         max_seq_len=capacity, kmer_embedding=3)
    model = ReformerLM(cfg).eval()
    x = torch.randint(2, 40, (2, 12))
    torch._dynamo.reset()
    model.compile_decoding()
    _, cache = model.prefill(x[:, :10], capacity=capacity)
    _, codes = run_and_get_code(model.step, x[:, 10], cache)
    shapes = [[int(d) for d in dims.split(",") if d.strip()] for code in codes
              for dims in re.findall(r"empty_strided\w*\(\(([^)]*)\)", code)]
    assert len(shapes) > 10  # the step's buffers were found
    assert max(np.prod(s) for s in shapes) < capacity, shapes


def test_compile_by_default_only_for_long_samples_on_a_cpu_with_a_compiler(monkeypatch):
    from seqformer.pipeline import inference

    assert inference.decide_compile(True, 10, "cpu") is True
    assert inference.decide_compile(False, 10**6, "cpu") is False
    assert inference.decide_compile(None, inference.COMPILE_FROM_TOKENS - 1, "cpu") is False
    monkeypatch.setattr(inference.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert inference.decide_compile(None, inference.COMPILE_FROM_TOKENS, "cpu") is True
    assert inference.decide_compile(None, 10**6, "cuda") is False  # not measured on a GPU
    monkeypatch.setattr(inference.shutil, "which", lambda name: None)
    assert inference.decide_compile(None, 10**6, "cpu") is False  # Inductor needs a compiler
    # the compiler asked about is the one Inductor will call
    from torch._inductor import config as inductor_config

    asked = []
    monkeypatch.setattr(inference.shutil, "which", lambda name: asked.append(name))
    # config.patch restores the setting exactly; monkeypatch.setattr on Inductor's config
    # deletes it on undo, which broke every later compile in the process
    with inductor_config.patch({"cpp.cxx": (None, "my-c++")}):
        inference.decide_compile(None, 10**6, "cpu")
    assert asked == ["my-c++"]
    assert inductor_config.cpp.cxx != (None, "my-c++")
