"""`KillSwitch`: a callback that SIGKILLs its own training process at one chosen point, for the fault campaign
(tests/lightning_modules/test_faults.py). It lands exactly where it is told to, through wrappers it installs at `setup`:

- "train_step": after the backward of the `at`-th training batch of this process, before the optimiser update;
- "checkpoint_write": during the `at`-th `torch.save` of this process (the checkpoint plugin's temporary file):
  `fraction` of the serialised bytes are written and fsynced, then the process dies (1.0: a complete temporary
  file that was never renamed onto the checkpoint);
- "export_write": during the `at`-th HF export, after `save_pretrained` wrote config and weights into the hidden
  temporary folder, before the tokenizer and the model card;
- "export_swap": right after the `at`-th atomic swap of the new export folder into place, before the old one
  (now in the temporary folder) is deleted;
- "hub_push": while the `at`-th Hub commit request is in flight (a watcher thread kills `delay_s` after the
  background push thread starts `create_commit`; the test's hub server delays commits for longer);
- "timer": `delay_s` seconds after training starts, wherever the process happens to be (a watcher thread);
- "sigterm_step" / "sigterm_timer": a SIGTERM instead of a SIGKILL (what SLURM and Kubernetes send first), after the
  backward of the `at`-th batch or `delay_s` seconds after training starts: the process is not killed but stops
  itself (`PreemptionCheckpoint`: last.ckpt at the end of that step, exit status 143).

Before dying (or signalling) it appends one JSON line describing the kill to `log_path`, so the test knows the kill
landed where it was meant to and not somewhere else.
"""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

POINTS = ("train_step", "checkpoint_write", "export_write", "export_swap", "hub_push", "timer", "sigterm_step",
          "sigterm_timer")
SIGTERM_POINTS = ("sigterm_step", "sigterm_timer")


class KillSwitch(Callback):
    def __init__(self, point: str, log_path: str, at: int = 1, fraction: float = 0.5, delay_s: float = 0.7) -> None:
        if point not in POINTS:
            raise ValueError(f"point must be one of {POINTS}, got {point!r}")
        self.point, self.log_path, self.at, self.fraction, self.delay_s = point, log_path, at, fraction, delay_s
        self.count = 0
        self.trainer: Trainer | None = None

    def die(self, **detail) -> None:
        step = self.trainer.global_step if self.trainer is not None else None
        with open(self.log_path, "a") as handle:
            handle.write(json.dumps({"point": self.point, "at": self.at, "global_step": step, **detail}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.kill(os.getpid(), signal.SIGTERM if self.point in SIGTERM_POINTS else signal.SIGKILL)

    def hit(self) -> bool:
        self.count += 1
        return self.count == self.at

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.trainer = trainer
        if self.point == "checkpoint_write":
            self.wrap_torch_save()
        elif self.point == "export_write":
            self.wrap_save_pretrained(pl_module)
        elif self.point == "export_swap":
            self.wrap_exchange()
        elif self.point == "hub_push":
            self.wrap_create_commit()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.point in ("timer", "sigterm_timer"):
            def watch() -> None:
                time.sleep(self.delay_s)
                self.die(thread="timer", delay_s=self.delay_s)

            threading.Thread(target=watch, name="kill-switch", daemon=True).start()

    def on_after_backward(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.point in ("train_step", "sigterm_step") and self.hit():
            self.die()

    def wrap_torch_save(self) -> None:
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            if not self.hit():
                return real_save(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            written = int(len(data) * self.fraction)
            f.write(data[:written])
            f.flush()
            os.fsync(f.fileno())
            self.die(file=os.path.basename(os.readlink(f"/proc/self/fd/{f.fileno()}")), bytes=written,
                     of=len(data))

        torch.save = save

    def wrap_save_pretrained(self, pl_module: LightningModule) -> None:
        model = pl_module.model
        real = model.save_pretrained

        def save_pretrained(directory, *args, **kwargs):
            result = real(directory, *args, **kwargs)
            if self.hit():
                self.die(folder=Path(directory).name, files=sorted(p.name for p in Path(directory).iterdir()))
            return result

        model.save_pretrained = save_pretrained

    def wrap_exchange(self) -> None:
        from lightning_modules import checkpointing

        real = checkpointing.exchange_paths

        def exchange_paths(first, second) -> bool:
            swapped = real(first, second)
            if swapped and self.hit():
                self.die(swapped_in=Path(second).name, old_left_in=Path(first).name)
            return swapped

        checkpointing.exchange_paths = exchange_paths

    def wrap_create_commit(self) -> None:
        from huggingface_hub import HfApi

        real = HfApi.create_commit
        started = threading.Event()

        def create_commit(api, *args, **kwargs):
            if self.hit():
                started.set()
            return real(api, *args, **kwargs)

        def watch() -> None:
            started.wait()
            time.sleep(self.delay_s)  # the commit request is on the wire; the server holds it longer than this
            self.die(thread="hub-push")

        HfApi.create_commit = create_commit
        threading.Thread(target=watch, name="kill-switch", daemon=True).start()
