"""`HFExportCallback`: a Hugging Face folder (`save_pretrained` of the model and the tokenizer, plus a model card)
written atomically whenever the monitored metric improves and at the end of fit.

Only global rank 0 writes. A failed export is logged, the previous folder stays as it was, and training goes on.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ..checkpointing import recover_directory, replace_directory_atomically
from ..redaction import known_secrets, redact, redact_command
from .model_card import build_model_card

log = logging.getLogger(__name__)

EXPORT_FOLDER_NAME = "hf_model"


def gathered_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """Under FSDP2 the parameters are DTensor shards: gather the full state dict on CPU (a collective: call it on
    every rank; rank 0 receives the tensors). None for an unsharded model, whose own state dict is complete."""
    from torch.distributed.tensor import DTensor

    if not any(isinstance(parameter, DTensor) for parameter in model.parameters()):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def run_dir(trainer: Trainer) -> Path:
    """`trainer.log_dir` (or `default_root_dir`). Call it on every rank: `log_dir` broadcasts."""
    return Path(trainer.log_dir or trainer.default_root_dir)


def find_callback(trainer: Trainer, kind: type) -> Any | None:
    return next((cb for cb in trainer.callbacks if isinstance(cb, kind)), None)


class HFExportCallback(Callback):
    """Writes a Hugging Face folder (model, tokenizer, README.md model card) atomically.

    When: after every validation that improves `monitor` (so the folder holds the best model while training runs)
    and, with `export_on_train_end`, once more at the end of fit (then it holds the final weights). The folder
    loads with `AutoModelForSeq2SeqLM.from_pretrained` / `AutoTokenizer.from_pretrained`. An export that fails is
    logged, the previous folder stays as it was, and training goes on.

    Args:
        dirpath: the folder; default `<trainer.log_dir or default_root_dir>/hf_model`.
        monitor: the logged metric that decides "improved".
        mode: "max" (BLEU) or "min" (a loss).
        export_on_train_end: also export the final weights when fit ends.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        monitor: str = "val/bleu",
        mode: str = "max",
        export_on_train_end: bool = True,
    ) -> None:
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"`mode` must be 'max' or 'min', got {mode!r}.")
        self.dirpath = dirpath
        self.monitor = monitor
        self.mode = mode
        self.export_on_train_end = export_on_train_end
        self.folder: Path | None = Path(dirpath) if dirpath else None
        self.best_score: float | None = None
        self.last_validation_step: int | None = None
        self.exports: list[dict[str, Any]] = []  # one entry per successful export
        self.failed_exports = 0
        self.fit_started_at: float | None = None
        self.command: str | None = None
        self.warned_missing_metric = False

    @property
    def state_key(self) -> str:
        return f"{type(self).__qualname__}{{'dirpath': {self.dirpath!r}, 'monitor': {self.monitor!r}}}"

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict.get("best_score")

    def resolve_folder(self, trainer: Trainer) -> Path:
        """The export folder (resolving the default needs `trainer.log_dir`: call on every rank)."""
        if self.folder is None:
            self.folder = run_dir(trainer) / EXPORT_FOLDER_NAME
        return self.folder

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        folder = self.resolve_folder(trainer)
        if trainer.is_global_zero and stage == TrainerFn.FITTING:
            recover_directory(folder)  # a run killed mid-export: put the old folder back now, not at the next export

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.fit_started_at = time.monotonic()
        self.command = redact_command(sys.argv, known_secrets(trainer.callbacks))

    def improves(self, score: float) -> bool:
        if math.isnan(score):
            return False
        if self.best_score is None:
            return True
        return score > self.best_score if self.mode == "max" else score < self.best_score

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            if not self.warned_missing_metric:
                rank_zero_warn(f"HFExportCallback: {self.monitor!r} was not logged; exporting only at the end of fit.")
                self.warned_missing_metric = True
            return
        self.last_validation_step = trainer.global_step
        score = float(value)
        if self.improves(score):
            self.best_score = score
            self.export(trainer, pl_module, reason=f"{self.monitor} improved to {score:.4f}")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.export_on_train_end:
            self.export(trainer, pl_module, reason="end of fit")

    def model_card(self, trainer: Trainer, pl_module: LightningModule) -> str:
        datamodule = trainer.datamodule
        bleu_key = self.monitor if "bleu" in self.monitor else "val/bleu"
        bleu = trainer.callback_metrics.get(bleu_key)
        return build_model_card(
            pl_module.model,
            source_lang=getattr(datamodule, "source_lang", None),
            target_lang=getattr(datamodule, "target_lang", None),
            dataset_name=getattr(datamodule, "dataset_name", None),
            bleu=float(bleu) if bleu is not None else None,
            bleu_signature=getattr(pl_module, "bleu_signature", None),
            global_step=trainer.global_step,
            training_seconds=time.monotonic() - self.fit_started_at if self.fit_started_at is not None else None,
            command=self.command,
            validation_step=self.last_validation_step,
        )

    def export(self, trainer: Trainer, pl_module: LightningModule, reason: str) -> Path | None:
        """Write the folder now (global rank 0 only). Returns it, or None if nothing was written."""
        state_dict = gathered_state_dict(pl_module.model)  # FSDP2 shards: gathered on every rank, else None
        if not trainer.is_global_zero:
            return None
        folder = self.resolve_folder(trainer)
        model = pl_module.model
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        image_processor = getattr(trainer.datamodule, "image_processor", None)
        if tokenizer is None:
            rank_zero_warn("HFExportCallback: the data module has no `tokenizer`; the folder will have none.")
        try:
            card = redact(self.model_card(trainer, pl_module), known_secrets(trainer.callbacks))

            def write(tmp: Path) -> None:
                model.save_pretrained(tmp, state_dict=state_dict)  # the module's own weights: fp32 under bf16-mixed
                if tokenizer is not None:
                    tokenizer.save_pretrained(tmp)
                if image_processor is not None:  # captioning: preprocessor_config.json + its code for remote loading
                    image_processor.save_pretrained(tmp)
                (tmp / "README.md").write_text(card, encoding="utf-8")

            replace_directory_atomically(folder, write)
        except Exception:
            self.failed_exports += 1
            log.exception("HF export to %s (%s) failed; the previous folder is unchanged and training goes on.",
                          folder, reason)
            return None
        self.exports.append({"step": trainer.global_step, "reason": reason, "score": self.best_score,
                             "time": time.time(), "path": str(folder)})
        rank_zero_info(f"HFExportCallback: wrote {folder} at step {trainer.global_step} ({reason}).")
        return folder

__all__ = ["HFExportCallback", "EXPORT_FOLDER_NAME", "find_callback", "gathered_state_dict", "run_dir"]
