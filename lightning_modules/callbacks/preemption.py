"""`PreemptionCheckpoint`: a run stopped by SIGTERM (SLURM, Kubernetes, `kill`) or Ctrl+C (SIGINT) writes a
resumable checkpoint where it stops and ends with `TrainingInterrupted` (the CLI: a message that says "interrupted"
and exit status 128 + the signal's number, 143 for SIGTERM), instead of Lightning's own handling, which stopped after
the batch with exit status 0, no checkpoint at the stop point and, with `fit && test`, a test of an unfinished model.

While training runs (from the sanity check on) the callback owns both signals: the first one only sets a flag, so the
step, validation or export in progress finishes whole; at the end of the current training batch (`on_train_batch_end`,
where `ModelCheckpoint` saves too, so the state is the one a periodic checkpoint holds) every rank agrees to stop and
`last.ckpt` is written through the trainer's checkpoint IO (atomic with the CLI's `AtomicCheckpointIO`); the run
raises at the next hook (the next batch's start, a validation's start, the epoch's or training's end), once that
step's metrics have gone to the loggers. Nothing else is written: the end-of-fit export (`hf_model_last`), the
learning curves and the final Hub push belong to a finished run. Resuming from that checkpoint gives the losses of the
uninterrupted run, bit for bit. A second Ctrl+C interrupts at once (KeyboardInterrupt, Lightning's own shutdown, no
checkpoint).
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from .checkpoints import LastCheckpoint

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(RuntimeError):
    """Training stopped by a signal after writing a resumable checkpoint; `exit_code` is 128 + the signal number."""

    def __init__(self, signal_name: str, exit_code: int, step: int, checkpoint: str) -> None:
        self.exit_code, self.step, self.checkpoint = exit_code, step, checkpoint
        super().__init__(
            f"Training interrupted by {signal_name} at step {step}: wrote the resumable checkpoint {checkpoint}; "
            f"nothing was exported. Resume with the same command and --ckpt_path {checkpoint}.")


def resume_folder(trainer: Trainer) -> str:
    """Where `last.ckpt` goes: the folder of the run's `LastCheckpoint`, else of a ModelCheckpoint that keeps a
    last.ckpt, else of any ModelCheckpoint, else `<run>/checkpoints`."""
    checkpoints = [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]
    for wanted in (lambda cb: isinstance(cb, LastCheckpoint), lambda cb: bool(cb.save_last), lambda cb: True):
        found = next((cb for cb in checkpoints if wanted(cb)), None)
        if found is not None:
            return str(found.dirpath)
    return os.path.join(trainer.default_root_dir, "checkpoints")


class PreemptionCheckpoint(Callback):
    """On SIGTERM or SIGINT: finish the current batch, write `last.ckpt` there, stop with `TrainingInterrupted`."""

    def __init__(self) -> None:
        super().__init__()
        self.received: int | None = None
        self.previous: dict[int, Any] = {}
        self.pending: TrainingInterrupted | None = None  # the checkpoint is written; raised at the next hook

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
        if signum == signal.SIGINT:  # a second Ctrl+C: stop at once
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def install(self) -> None:
        """Take over the signals (Lightning's SIGTERM handler, registered before the sanity check, included)."""
        if self.previous or threading.current_thread() is not threading.main_thread():
            return
        for signum in SIGNALS:
            self.previous[signum] = signal.signal(signum, self.handle)

    def restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self.previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self.previous = {}

    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.install()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.install()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.pending is not None:
            return
        stop = self.received is not None
        if trainer.world_size > 1:  # every rank stops at the same step, even if only one got the signal
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        signum = self.received if self.received is not None else signal.SIGTERM
        name = ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION
        path = os.path.join(resume_folder(trainer), name)
        trainer.save_checkpoint(path)  # on every rank, through the (atomic) checkpoint IO
        self.restore()
        self.pending = TrainingInterrupted(signal.Signals(signum).name, 128 + signum, trainer.global_step, path)

    def stop_if_pending(self) -> None:
        """Raise once the step's metrics have gone to the loggers: at the next hook after the saving batch ends."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            raise pending

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self.stop_if_pending()

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.stop_if_pending()  # no validation (nor export) after the stop point

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.stop_if_pending()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.restore()
        self.stop_if_pending()  # the last step: still no end-of-fit export

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.restore()


__all__ = ["PreemptionCheckpoint", "TrainingInterrupted"]
