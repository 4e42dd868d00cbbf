"""`StepProgressBar`: Lightning's rich progress bar for runs counted in steps (`max_steps`, the paper's way).

Lightning's own bar reads "Epoch 0/-2" when `max_epochs` is -1 (training by steps) and shows the logger's version
number; this one says "Epoch 0" and starts its metrics with the step ("step 120/1500"), then the training loss,
the learning rate and the throughput that the task module puts on the bar.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    """`RichProgressBar` (same arguments) with the step count and without the "/-2" of step-bounded runs."""

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if self.progress is not None and self.train_progress_bar_id is not None and trainer.max_epochs in (None, -1):
            self.progress.update(self.train_progress_bar_id, description=f"Epoch {trainer.current_epoch}")

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        if trainer.max_steps and trainer.max_steps > 0 and trainer.training:
            return {"step": f"{trainer.global_step}/{trainer.max_steps}", **metrics}
        return metrics


__all__ = ["StepProgressBar"]
