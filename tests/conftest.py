"""Fixtures shared across test files."""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU the Triton kernels run on CPU tensors through Triton's interpreter; it is
# chosen when a kernel is defined, so before anything imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch._dynamo.config as dynamo_config  # noqa: E402
from torch._inductor import config as inductor_config  # noqa: E402

from cli_helpers import REPO, TINY_MODEL, run_cli  # noqa: E402


def _global_state() -> dict[str, object]:
    """Process-wide settings a test could leave changed for every later test."""
    return {
        "inductor config": inductor_config.get_config_copy(),
        "dynamo config": dynamo_config.get_config_copy(),
        "default dtype": torch.get_default_dtype(),
        "grad mode": torch.is_grad_enabled(),
        "threads": torch.get_num_threads(),
        "float32 matmul precision": torch.get_float32_matmul_precision(),
        "deterministic algorithms": torch.are_deterministic_algorithms_enabled(),
        "anomaly detection": torch.is_anomaly_enabled(),
    }


@pytest.fixture(autouse=True)
def no_leaked_global_state():
    """Every test leaves torch, Inductor and Dynamo as it found them (it fails if not), and
    the environment is put back as it was (Lightning's seed_everything sets PL_GLOBAL_SEED
    in-process), so the suite passes in any order."""
    environ = dict(os.environ)
    before = _global_state()
    yield
    os.environ.clear()
    os.environ.update(environ)
    after = _global_state()
    changed = sorted(key for key in before if after[key] != before[key])
    if changed:
        pytest.fail(f"the test left process-wide state changed: {', '.join(changed)}",
                    pytrace=False)


def _train_tiny(out, domain: str, *inputs: str) -> None:
    code, text = run_cli("train", domain, *inputs, "--out", out, "--max-steps", 2,
                         "--batch-size", 2, *TINY_MODEL)
    assert code == 0, text


@pytest.fixture(scope="session")
def tiny_dna_run(tmp_path_factory):
    """A DNA model directory trained for 2 steps on the bundled lambda genome (read-only:
    tests that change a run copy it)."""
    out = tmp_path_factory.mktemp("runs") / "tiny-dna"
    _train_tiny(out, "dna")
    return out


@pytest.fixture(scope="session")
def tiny_midi_run(tmp_path_factory):
    """A MIDI model directory trained for 2 steps on the bundled Bach pieces (read-only),
    in the event vocabulary (the continuation app reads only that one)."""
    out = tmp_path_factory.mktemp("runs") / "tiny-midi"
    _train_tiny(out, "midi", "--midi", str(REPO / "data" / "midi" / "bach"),
                "--vocabulary", "events")
    return out
