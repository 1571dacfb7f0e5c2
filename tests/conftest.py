"""Fixtures shared across test files."""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU the Triton kernels run on CPU tensors through Triton's interpreter; it is
# chosen when a kernel is defined, so before anything imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from cli_helpers import REPO, TINY_MODEL, run_cli  # noqa: E402


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
    """A MIDI model directory trained for 2 steps on the bundled Bach pieces (read-only)."""
    out = tmp_path_factory.mktemp("runs") / "tiny-midi"
    _train_tiny(out, "midi", "--midi", str(REPO / "data" / "midi" / "bach"))
    return out
