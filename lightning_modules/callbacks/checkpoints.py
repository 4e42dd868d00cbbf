"""The checkpoints of a run besides the best one, in `<run>/checkpoints` (run: `trainer.default_root_dir`):

- `LastCheckpoint`: `last.ckpt`, the state to resume from, rewritten every N steps and once more when training ends.
  (Lightning's `save_last` of a ModelCheckpoint that monitors a score rewrites `last.ckpt` only when it saves a new
  best one, so after a plateau `last.ckpt` held old weights.)
- `PeriodicCheckpoint`: `periodic/step000500.ckpt` every N steps, what `CheckpointAveragingCallback` averages (§6.1
  averages the last 5 or 20 checkpoints).
"""

from __future__ import annotations

import os

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint


class LastCheckpoint(ModelCheckpoint):
    """`last.ckpt` every `every_n_train_steps` steps and at the end of training (the latest state, always).

    Args:
        every_n_train_steps: Steps between two saves.
        dirpath: The folder; default `<run>/checkpoints`.
    """

    def __init__(self, every_n_train_steps: int = 500, dirpath: str | None = None) -> None:
        # the newest step is the best "step": one file, rewritten in place
        super().__init__(dirpath=dirpath, filename=self.CHECKPOINT_NAME_LAST, monitor="step", mode="max", save_top_k=1,
                         every_n_train_steps=every_n_train_steps, enable_version_counter=False)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.realpath(os.path.join(trainer.default_root_dir, "checkpoints"))
        super().setup(trainer, pl_module, stage)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.best_model_score is None or int(self.best_model_score) != trainer.global_step:
            path = os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)
            trainer.save_checkpoint(path)  # through the trainer's (atomic) checkpoint IO, on every rank


class PeriodicCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint(every_n_train_steps=N, save_top_k=-1)` named `step000500.ckpt`, in `<run>/checkpoints/periodic`
    unless `dirpath` says otherwise.

    Args:
        every_n_train_steps: Steps between two checkpoints.
        keep: How many to keep, the newest (-1: all); keep at least as many as the averaging reads.
        dirpath: The folder; default `<run>/checkpoints/periodic`.
    """

    #: The folder under `<run>/checkpoints` (the CLI gives a ModelCheckpoint without dirpath `<run>/checkpoints`).
    subfolder = "periodic"

    def __init__(self, every_n_train_steps: int = 2000, keep: int = -1, dirpath: str | None = None) -> None:
        if keep == 0 or keep < -1:
            raise ValueError(f"`keep` must be -1 (all) or a positive number of checkpoints, got {keep!r}.")
        super().__init__(dirpath=dirpath, filename="step{step:06d}", auto_insert_metric_name=False,
                         every_n_train_steps=every_n_train_steps, save_top_k=keep,
                         monitor=None if keep == -1 else "step", mode="max")

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.realpath(os.path.join(trainer.default_root_dir, "checkpoints", self.subfolder))
        super().setup(trainer, pl_module, stage)


__all__ = ["LastCheckpoint", "PeriodicCheckpoint"]
