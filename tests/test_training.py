"""The Lightning task: a non-finite loss stops training before it reaches the weights."""

import math

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from seqformer.core import ReformerConfig, ReformerLM
from seqformer.pipeline.lightning_module import LMTask, token_nll


def test_token_nll_ignores_padding_and_separators():
    model = ReformerLM(ReformerConfig(vocab_size=5, d_model=16, n_layers=1, n_heads=2,
                                      d_ff=32, bucket_size=8, max_seq_len=64))
    with torch.no_grad():
        model.head.weight.zero_()  # uniform predictions: log 5 nats per token
    batch = torch.tensor([[4, 0, 1, 2, 3]])
    nll, n = token_nll(model, batch, ignore=(0, 1))
    assert n == 2 and math.isclose(nll.item(), 2 * math.log(5), rel_tol=1e-6)


def test_nonfinite_loss_stops_training_and_keeps_good_weights(tmp_path):
    cfg = ReformerConfig(vocab_size=8, d_model=16, n_layers=1, n_heads=2, d_ff=32,
                         bucket_size=8, max_seq_len=64)
    train = {"lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 1, "max_steps": 10}
    task = LMTask(cfg.to_dict(), train, pad_id=0, sep_id=1)
    loss = task.model.loss
    calls = {"n": 0}

    def poisoned(tokens, reduction="mean"):  # the third step's loss is NaN
        calls["n"] += 1
        out = loss(tokens, reduction)
        return out * float("nan") if calls["n"] == 3 else out

    task.model.loss = poisoned
    snapshot = {}

    class Snapshot(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            snapshot.update({k: v.clone() for k, v in module.state_dict().items()})

    data = DataLoader(torch.randint(2, 8, (40, 33)), batch_size=4)
    trainer = pl.Trainer(max_steps=10, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[Snapshot()], default_root_dir=tmp_path)
    trainer.fit(task, data)
    # stops at the poisoned batch (Lightning still counts its skipped step)
    assert task.stopped_on_nonfinite and trainer.global_step <= 3
    for name, value in task.state_dict().items():
        assert torch.isfinite(value).all(), name
        assert torch.equal(value, snapshot[name]), name  # the NaN step changed nothing

