"""`NonFiniteLossGuard`: what an optimiser step whose loss or gradients are inf/NaN does.

Checked before every update (after the backward of the accumulation window's last micro-batch), the same decision on
every rank. Policy "skip" drops the update (gradients discarded, weights and optimiser state unchanged; the step and
the LR schedule still advance), logs a warning with the step and the batch's example ids and counts it in
`train/nonfinite_skips`; `max_consecutive_nonfinite` skipped steps in a row raise `NonFiniteLossError` (a diverged
run, e.g. a learning rate far too high, is not a bad batch). Policy "stop" raises `NonFiniteLossError` at once (the
last checkpoint on disk predates the bad step). Every task module trains with a "skip" guard unless the trainer has
its own.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

log = logging.getLogger(__name__)

NONFINITE_POLICIES = ("skip", "stop")


class NonFiniteLossError(FloatingPointError):
    """Training met a non-finite loss or gradient and the guard's policy says stop."""


class NonFiniteLossGuard(Callback):
    """Skips (or stops at) optimiser steps with a non-finite loss or gradients; see the module docstring.

    Args:
        nonfinite_policy: "skip" or "stop".
        max_consecutive_nonfinite: with "skip", this many skipped steps in a row raise `NonFiniteLossError`.
    """

    def __init__(self, nonfinite_policy: str = "skip", max_consecutive_nonfinite: int = 5) -> None:
        if nonfinite_policy not in NONFINITE_POLICIES:
            raise ValueError(f"`nonfinite_policy` must be one of {NONFINITE_POLICIES}, got {nonfinite_policy!r}.")
        if max_consecutive_nonfinite < 1:
            raise ValueError(f"`max_consecutive_nonfinite` must be >= 1, got {max_consecutive_nonfinite!r}.")
        self.policy = nonfinite_policy
        self.max_consecutive = max_consecutive_nonfinite
        self.skips = 0
        self.consecutive = 0
        self.batch_ids: torch.Tensor | None = None
        self.window: list[tuple[torch.Tensor | None, torch.Tensor]] = []  # (example ids, loss finite) per micro-batch

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self.batch_ids = batch.get("ids") if isinstance(batch, dict) else None

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        self.window.append((self.batch_ids, torch.isfinite(loss.detach()).all()))  # a tensor: no host sync here

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        checks, self.window = self.window, []
        finite_loss = torch.stack([ok for _, ok in checks]).all() if checks else torch.tensor(True)
        finite = finite_loss
        if getattr(trainer.precision_plugin, "scaler", None) is None:  # a GradScaler handles inf grads itself
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
            if grads:
                norm = torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False)
                norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: shards -> global
                finite = finite & torch.isfinite(norm).to(finite.device)
        if trainer.world_size > 1:  # every rank must take the same decision (FSDP2 grads are rank-local)
            finite = trainer.strategy.reduce((~finite).float().to(pl_module.device), reduce_op="sum") == 0
        if bool(finite):  # the one host sync of the step
            self.consecutive = 0
            return
        self.skips += 1
        self.consecutive += 1
        bad = [ids for ids, ok in checks if not bool(ok)] or [ids for ids, _ in checks]  # grads only: the window
        example_ids = sorted({int(i) for ids in bad if ids is not None for i in ids.tolist()})
        what = "loss" if not bool(finite_loss) else "gradients"
        where = (f"non-finite {what} at step {trainer.global_step} (epoch {trainer.current_epoch}), batch example ids "
                 f"{example_ids[:32]}{' ...' if len(example_ids) > 32 else ''}")
        if self.policy == "stop":
            raise NonFiniteLossError(
                f"{where}; nonfinite_policy='stop'. No update was applied and the last checkpoint on disk predates "
                "this step: resume from it with a lower learning rate (or gradient clipping), or remove those "
                "examples; nonfinite_policy='skip' drops such steps instead."
            )
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteLossError(
                f"{where}: {self.consecutive} consecutive non-finite steps (max_consecutive_nonfinite="
                f"{self.max_consecutive}): training diverged (learning rate too high?). The weights are those of the "
                "last good step; resume from the last checkpoint with a lower learning rate."
            )
        optimizer.zero_grad(set_to_none=True)  # the optimiser skips parameters without gradients: no update at all
        log.warning("Skipped the update of step %d: %s (%d skipped so far; nonfinite_policy='skip').",
                    trainer.global_step, where, self.skips)
        pl_module.log("train/nonfinite_skips", float(self.skips), on_step=True, on_epoch=False)


__all__ = ["NonFiniteLossError", "NonFiniteLossGuard"]
