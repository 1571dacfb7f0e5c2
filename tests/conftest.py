"""Fixtures shared across test files."""

from __future__ import annotations

import pytest

from cli_helpers import TINY_MODEL, run_cli


@pytest.fixture(scope="session")
def tiny_dna_run(tmp_path_factory):
    """A DNA model directory trained for 2 steps on the bundled lambda genome (read-only:
    tests that change a run copy it)."""
    out = tmp_path_factory.mktemp("runs") / "tiny-dna"
    code, text = run_cli("train", "dna", "--out", out, "--max-steps", 2, "--batch-size", 2,
                         *TINY_MODEL)
    assert code == 0, text
    return out
