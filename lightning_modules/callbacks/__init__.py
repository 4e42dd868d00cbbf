"""Callbacks: what training produces is published without ever putting the run at risk, and the cross-cutting
concerns of every task's training loop.

- `HFExportCallback` (`export.py`): an atomic Hugging Face folder with a model card (`model_card.py`).
- `HubPushCallback` (`hub.py`): uploads that folder in a background thread, with retries.
- `CheckpointAveragingCallback` (`averaging.py`): averages the last N checkpoints (§6.1) into another HF folder.
- `TokenThroughput` (`throughput.py`) and `NonFiniteLossGuard` (`nonfinite.py`): every task module trains with them
  unless the trainer has its own.
"""

from .averaging import CheckpointAveragingCallback
from .export import HFExportCallback
from .hub import HubPushCallback
from .model_card import build_model_card
from .nonfinite import NonFiniteLossError, NonFiniteLossGuard
from .throughput import TokenThroughput

__all__ = ["CheckpointAveragingCallback", "HFExportCallback", "HubPushCallback", "NonFiniteLossError",
           "NonFiniteLossGuard", "TokenThroughput", "build_model_card"]
