"""Callbacks for the resume tests: `KillAtStep` SIGKILLs its own training process at a given step (a real crash);
`PauseAtStep` holds it at a given step so that the test can send it a real signal there."""

import os
import signal

from lightning.pytorch import Callback, LightningModule, Trainer


class KillAtStep(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class PauseAtStep(Callback):
    """Writes `marker` at the end of the batch that completes `step`, then waits `seconds` (for the test to signal
    the process there: the signal lands at a known step)."""

    def __init__(self, step: int, marker: str, seconds: float = 3.0):
        self.step, self.marker, self.seconds = step, marker, seconds

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            import time

            with open(self.marker, "w") as handle:
                handle.write(str(os.getpid()))
            deadline = time.monotonic() + self.seconds
            while time.monotonic() < deadline:
                time.sleep(0.02)
