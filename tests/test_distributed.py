"""Lightning DDP (2 CPU processes, gloo) with the reversible stack and LSH: one step on a
global batch split across the processes gives the same gradients and weights as one
process on the whole batch."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from seqformer.core import ReformerConfig
from seqformer.pipeline.lightning_module import LMTask
from seqformer.pipeline.run_config import DEFAULTS
from seqformer.pipeline.training import _strategy

MODEL = ReformerConfig(vocab_size=12, d_model=32, n_layers=2, n_heads=2, d_ff=64,
                       attn=["lsh", "local"], bucket_size=8, n_hashes=2, max_seq_len=128,
                       reversible=True, ff_chunk_size=16).to_dict()
TRAIN = {**DEFAULTS["train"], "lr": 1e-2, "warmup_steps": 1, "max_steps": 1}


class Record(pl.Callback):
    """Rank 0 saves the (already all-reduced) gradients and the weights after the step."""

    def __init__(self, out: Path):
        self.out = out

    def on_train_start(self, trainer, pl_module) -> None:
        # the same hashing rotations in every process, whatever each consumed before
        torch.manual_seed(1234)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_rank == 0:
            torch.save({n: p.grad.clone() for n, p in pl_module.named_parameters()},
                       self.out / "grads.pt")

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_rank == 0:
            torch.save(pl_module.state_dict(), self.out / "weights.pt")


def _one_step(out: Path, devices: int, windows: torch.Tensor) -> tuple[dict, dict]:
    out.mkdir()
    pl.seed_everything(0, verbose=False)
    task = LMTask(MODEL, TRAIN, pad_id=0, sep_id=1)
    # DDP gives rank r the windows r, r + 2, ...: together the same global batch
    loader = DataLoader(windows, batch_size=len(windows) // devices)
    trainer = pl.Trainer(accelerator="cpu", devices=devices, max_steps=1,
                         strategy=_strategy("ddp_spawn") if devices > 1 else "auto",
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[Record(out)])
    trainer.fit(task, loader)
    return torch.load(out / "grads.pt"), torch.load(out / "weights.pt")


def test_ddp_step_equals_single_process_step(tmp_path):
    g = torch.Generator().manual_seed(0)
    windows = torch.randint(2, 12, (4, 97), generator=g)  # no padding: equal token counts
    grads1, weights1 = _one_step(tmp_path / "single", 1, windows)
    grads2, weights2 = _one_step(tmp_path / "ddp", 2, windows)
    assert grads1.keys() == grads2.keys()
    for name in grads1:
        scale = grads1[name].abs().max().item()
        torch.testing.assert_close(grads2[name], grads1[name], rtol=1e-4, atol=1e-5 * scale,
                                   msg=lambda m, n=name: f"{n}: {m}")
    # Adam's first step divides each gradient element by its own magnitude, so an element
    # whose gradient is at float-noise level moves by a noise-set amount: allow 1% of lr
    for name in weights1:
        torch.testing.assert_close(weights2[name], weights1[name], rtol=1e-4,
                                   atol=0.01 * TRAIN["lr"])
    init = LMTask(MODEL, TRAIN, pad_id=0, sep_id=1).state_dict()  # the step did change them
    assert any(not torch.equal(init[k], weights1[k]) for k in init)


def test_fsdp_without_a_gpu_is_a_clean_error(tmp_path):
    from cli_helpers import TINY_MODEL, run_cli

    code, out = run_cli("train", "dna", "--out", tmp_path / "run", "--max-steps", 1,
                        "--devices", 2, "--strategy", "fsdp", "train.accelerator=cpu",
                        *TINY_MODEL)
    assert code == 2 and "requires a GPU" in out and "Traceback" not in out
