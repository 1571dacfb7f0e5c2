"""Shared helpers for the end-to-end CLI tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from typer.testing import CliRunner

from seqformer.cli import app

REPO = Path(__file__).resolve().parents[1]
# the long multi-track game-music piece with drums, bundled outside the main job's pieces
LONG_MIDI = REPO / "data" / "planetblupi" / "music003.mid"
# the bundled pieces the tests read one by one: data/midi less more/ (further pieces of the
# same four composers, there for the main job to learn from), and the long piece
MIDI_SAMPLE = sorted(p for p in (REPO / "data" / "midi").rglob("*.mid")
                     if p.relative_to(REPO / "data" / "midi").parts[0] != "more") + [LONG_MIDI]

# a model small enough to train a few steps in seconds, with both local and LSH layers
TINY_MODEL = ["model.d_model=32", "model.n_layers=2", "model.attn=[local, lsh]",
              "model.n_heads=2", "model.d_ff=64", "model.max_seq_len=512",
              "model.bucket_size=16", "data.seq_len=256", "train.val_every=3",
              "train.log_every=1", "data.val_windows=2",
              # the default presets also stop after 3.5 minutes: a test run ends by steps only
              "train.max_minutes=null",
              # fitting the sampling steers samples 32 pieces of 3,000 tokens up to 4 times;
              # its own tests switch it on with fewer
              "train.calibrate_sampling=false"]

_runner = CliRunner()


def run_cli(*args) -> tuple[int, str]:
    """Run `seqformer ARGS...` in-process: (exit code, everything it printed)."""
    result = _runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def load_app_module(path: Path, name: str) -> ModuleType:
    """Import an app's script (apps/ is not a package) under `name`, registered in
    sys.modules (dataclasses look their module up there; several apps have a prepare.py,
    so the name must be unique)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
