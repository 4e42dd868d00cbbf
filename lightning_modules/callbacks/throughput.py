"""`TokenThroughput`: target tokens per second of training, logged as `train/tokens_per_s` (`tok/s` on the progress
bar)."""

from __future__ import annotations

import time
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer


class TokenThroughput(Callback):
    """Target tokens of the step (the `tokens` a task's `training_step` returns, summed over the ranks) per second of
    wall time from one batch's end to the next: data loading, forward, backward and the optimiser step of every rank.
    The first batch of a fit or after a validation has no predecessor: validation time is not training throughput."""

    def __init__(self) -> None:
        self.last_batch_end: float | None = None

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.perf_counter()
        tokens = outputs.get("tokens") if isinstance(outputs, dict) else None
        if self.last_batch_end is not None and tokens is not None:
            rate = float(tokens) / max(now - self.last_batch_end, 1e-9)
            pl_module.log("train/tokens_per_s", rate, on_step=True, on_epoch=False)
            pl_module.log("tok/s", rate, prog_bar=True, logger=False, on_step=True, on_epoch=False)  # short on the bar
        self.last_batch_end = now

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.last_batch_end = None


__all__ = ["TokenThroughput"]
