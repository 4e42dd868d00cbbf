"""Callbacks: what training produces is published without ever putting the run at risk, and the cross-cutting
concerns of every task's training loop.

- `HFExportCallback` (`export.py`): an atomic Hugging Face folder with a model card (`model_card.py`).
- `HubPushCallback` (`hub.py`): uploads that folder in a background thread, with retries.
- `CheckpointAveragingCallback` (`averaging.py`): averages the last N checkpoints (§6.1) into another HF folder.
- `TokenThroughput` (`throughput.py`), `NonFiniteLossGuard` (`nonfinite.py`), `LearningCurves` (`curves.py`: the
  PNG at the end of fit), `EvaluationOutputs` (`results.py`: test hypotheses and the card's test score) and
  `PreemptionCheckpoint` (`preemption.py`: SIGTERM / SIGINT write last.ckpt where the run stops): every task module
  runs with them unless the trainer has its own.
- `StepProgressBar` (`progress.py`): the progress bar of step-bounded runs; `LastCheckpoint` and `PeriodicCheckpoint`
  (`checkpoints.py`): `last.ckpt` always the latest state, and the checkpoints that averaging reads.
"""

from .averaging import CheckpointAveragingCallback
from .curves import LearningCurves
from .export import HFExportCallback
from .hub import HubPushCallback
from .model_card import build_model_card
from .nonfinite import NonFiniteLossError, NonFiniteLossGuard
from .checkpoints import LastCheckpoint, PeriodicCheckpoint
from .preemption import PreemptionCheckpoint, TrainingInterrupted
from .progress import StepProgressBar
from .results import EvaluationOutputs
from .throughput import TokenThroughput

__all__ = ["CheckpointAveragingCallback", "EvaluationOutputs", "HFExportCallback", "HubPushCallback", "LastCheckpoint",
           "LearningCurves", "NonFiniteLossError", "NonFiniteLossGuard", "PeriodicCheckpoint", "PreemptionCheckpoint",
           "StepProgressBar", "TokenThroughput", "TrainingInterrupted", "build_model_card"]
