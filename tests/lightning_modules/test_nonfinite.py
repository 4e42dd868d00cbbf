"""Non-finite losses and gradients in a `TranslationModule` run (`NonFiniteLossGuard`, which every task module trains
with): a poisoned batch (NaN logits injected by a forward hook when the batch holds given example ids) and an absurd
learning rate, in real `Trainer.fit` runs of a tiny model on CPU. The DDP case (all ranks skip together) runs 2
processes and is slow."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
from functools import partial

import lightning.pytorch as L
import pytest
import torch
from helpers import LIGHTNING_TESTS_DIR, REPO_ROOT, TESTS_DIR
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from lightning_modules.checkpointing import AtomicCheckpointIO, load_checkpoint_file
from lightning_modules.callbacks import NonFiniteLossError, NonFiniteLossGuard
from lightning_modules.tasks import TranslationModule

VOCAB = 40
BATCH = 4


def make_batches(count: int, seed: int = 0) -> list[dict]:
    """Copy-task batches with the data module's keys; example ids are 100 * batch + row."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for index in range(count):
        ids = torch.randint(4, VOCAB, (BATCH, 6), generator=generator)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone(),
                        "ids": torch.arange(BATCH) + 100 * index})
    return batches


class Batches(L.LightningDataModule):
    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count

    def train_dataloader(self) -> DataLoader:
        return DataLoader(make_batches(self.count), batch_size=None)


class Poison(L.Callback):
    """NaN logits for every batch holding one of `example_ids` (a forward hook on the output layer)."""

    def __init__(self, example_ids: set[int], rank: int | None = None) -> None:
        self.example_ids, self.rank, self.handle = example_ids, rank, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        hit = self.example_ids & set(batch["ids"].tolist())
        if hit and (self.rank is None or trainer.global_rank == self.rank):
            self.handle = pl_module.model.lm_head.register_forward_hook(lambda m, i, out: out * float("nan"))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


class WeightLog(L.Callback):
    """The weights after every optimiser step (cloned), keyed by global step."""

    def __init__(self) -> None:
        self.after: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after[trainer.global_step] = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}


def constant_lr(optimizer: torch.optim.Optimizer, d_model: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def tiny_module(lr: float = 1e-3, optimizer: str = "adam") -> TranslationModule:
    torch.manual_seed(0)
    factory = partial(torch.optim.Adam, lr=lr) if optimizer == "adam" else partial(torch.optim.SGD, lr=lr)
    return TranslationModule(
        model_config=dict(vocab_size=VOCAB, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                          decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, dropout=0.0,
                          max_position_embeddings=16),
        optimizer=factory, lr_scheduler=constant_lr)


def fit(tmp_path, module, batches: int, callbacks: list, accumulate: int = 1, checkpoint_every: int | None = None):
    if checkpoint_every:
        callbacks = [*callbacks, ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=checkpoint_every,
                                                 save_top_k=-1, filename="{step}")]
    trainer = L.Trainer(default_root_dir=str(tmp_path), max_steps=batches // accumulate, accelerator="cpu",
                        devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=bool(checkpoint_every), num_sanity_val_steps=0, limit_val_batches=0,
                        accumulate_grad_batches=accumulate, callbacks=callbacks, plugins=[AtomicCheckpointIO()])
    trainer.fit(module, Batches(batches))
    return trainer


def all_finite(state: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_a_poisoned_batch_is_skipped_reported_and_training_goes_on(tmp_path, caplog):
    weights, module = WeightLog(), tiny_module()
    with caplog.at_level(logging.WARNING, logger="lightning_modules.callbacks.nonfinite"):
        trainer = fit(tmp_path, module, batches=6, callbacks=[Poison({301}), weights])  # batch 3 = step 4
    guard = next(callback for callback in trainer.callbacks if isinstance(callback, NonFiniteLossGuard))  # the default
    assert trainer.global_step == 6
    assert guard.skips == 1 and guard.consecutive == 0
    assert trainer.callback_metrics["train/nonfinite_skips"] == 1.0
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "Skipped the update of step 3: non-finite loss at step 3" in message
    assert "batch example ids [300, 301, 302, 303]" in message
    # the skipped step changed nothing; the steps around it did; everything stays finite
    for key, value in weights.after[4].items():
        assert torch.equal(value, weights.after[3][key]), key
    assert not torch.equal(weights.after[5]["model.shared.weight"], weights.after[4]["model.shared.weight"])
    assert all(all_finite(state) for state in weights.after.values())
    # Adam saw 5 updates, not 6: its state was not touched by the skipped step
    adam_state = trainer.optimizers[0].state[next(module.parameters())]
    assert int(adam_state["step"]) == 5


def test_stop_policy_raises_with_the_step_and_ids_and_keeps_the_last_checkpoint(tmp_path):
    module = tiny_module()
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 4 .*ids \[400, 401, 402, 403\].*'stop'"):
        fit(tmp_path, module, batches=8, callbacks=[Poison({402}), NonFiniteLossGuard(nonfinite_policy="stop")],
            checkpoint_every=2)
    checkpoints = sorted((tmp_path / "ckpt").glob("*.ckpt"))
    assert [p.name for p in checkpoints] == ["step=2.ckpt", "step=4.ckpt"]  # saved after steps 2 and 4 completed
    last = load_checkpoint_file(checkpoints[-1])
    assert last["global_step"] == 4 and all_finite(last["state_dict"])
    assert all(torch.isfinite(p).all() for p in module.parameters())  # no NaN update was applied before raising


def test_an_absurd_learning_rate_stops_after_consecutive_skips_with_finite_weights(tmp_path, caplog):
    module, guard = tiny_module(lr=1e30, optimizer="sgd"), NonFiniteLossGuard(max_consecutive_nonfinite=3)
    with caplog.at_level(logging.WARNING, logger="lightning_modules.callbacks.nonfinite"), \
            pytest.raises(NonFiniteLossError, match=r"3 consecutive non-finite steps.*learning rate"):
        fit(tmp_path, module, batches=10, callbacks=[guard])
    assert guard.skips == 3
    assert sum("Skipped the update" in r.getMessage() for r in caplog.records) == 2  # the third one raised
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_with_gradient_accumulation_the_whole_window_is_skipped(tmp_path):
    weights, module, guard = WeightLog(), tiny_module(), NonFiniteLossGuard()
    # 8 micro-batches, 2 per step; micro-batch 5 (the second of the third step's window) is poisoned
    trainer = fit(tmp_path, module, batches=8, callbacks=[Poison({500}), weights, guard], accumulate=2)
    assert trainer.global_step == 4 and guard.skips == 1
    for key, value in weights.after[3].items():  # on_train_batch_end of micro-batch 5: step 3 was not applied
        assert torch.equal(value, weights.after[2][key]), key
    assert not torch.equal(weights.after[4]["model.shared.weight"], weights.after[3]["model.shared.weight"])
    assert all(all_finite(state) for state in weights.after.values())


def test_non_finite_gradients_with_a_finite_loss_are_skipped(tmp_path, caplog):
    class InfGradient(L.Callback):  # the backward of step 2 writes inf into one gradient
        def on_after_backward(self, trainer, pl_module) -> None:
            if trainer.global_step == 2:
                pl_module.model.model.shared.weight.grad[5, 0] = float("inf")

    weights, module, guard = WeightLog(), tiny_module(), NonFiniteLossGuard()
    with caplog.at_level(logging.WARNING, logger="lightning_modules.callbacks.nonfinite"):
        fit(tmp_path, module, batches=4, callbacks=[InfGradient(), weights, guard])
    assert guard.skips == 1
    assert "non-finite gradients at step 2" in caplog.text and "ids [200, 201, 202, 203]" in caplog.text
    assert all(torch.equal(v, weights.after[2][k]) for k, v in weights.after[3].items())


def test_bad_policy_values_are_refused():
    with pytest.raises(ValueError, match=r"`nonfinite_policy` must be one of \('skip', 'stop'\), got 'ignore'"):
        NonFiniteLossGuard(nonfinite_policy="ignore")
    with pytest.raises(ValueError, match="max_consecutive_nonfinite"):
        NonFiniteLossGuard(max_consecutive_nonfinite=0)


DDP_RUN = """
import json, sys, torch, lightning.pytorch as L
from lightning_modules.callbacks import NonFiniteLossGuard
from test_nonfinite import Batches, Poison, WeightLog, tiny_module, all_finite
weights, guard = WeightLog(), NonFiniteLossGuard()
module = tiny_module()
trainer = L.Trainer(max_steps=4, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                    enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                    limit_val_batches=0, use_distributed_sampler=False,
                    callbacks=[Poison({201}, rank=0), weights, guard])
trainer.fit(module, Batches(4))
unchanged = all(torch.equal(v, weights.after[2][k]) for k, v in weights.after[3].items())
digest = float(sum(p.double().sum() for p in module.parameters()))
print("RANK-RESULT " + json.dumps({"rank": trainer.global_rank, "skips": guard.skips,
      "unchanged": unchanged, "finite": all_finite(weights.after[4]), "digest": digest}), flush=True)
"""


@pytest.mark.slow
def test_under_ddp_every_rank_skips_when_one_rank_is_poisoned(tmp_path):
    import json

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(LIGHTNING_TESTS_DIR), str(TESTS_DIR), str(REPO_ROOT)])}
    script = tmp_path / "ddp_run.py"  # a file: Lightning's DDP launcher re-runs sys.argv for rank 1
    script.write_text(textwrap.dedent(DDP_RUN))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # the two ranks print concurrently: their lines may run together, so find each record wherever it is
    results = [json.loads(match) for match in re.findall(r"RANK-RESULT (\{[^}]*\})", proc.stdout + proc.stderr)]
    assert sorted(r["rank"] for r in results) == [0, 1], proc.stdout + proc.stderr[-3000:]
    assert all(r["skips"] == 1 and r["unchanged"] and r["finite"] for r in results), results
    assert results[0]["digest"] == results[1]["digest"]  # the ranks still hold the same weights
