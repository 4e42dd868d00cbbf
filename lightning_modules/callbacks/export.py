"""`HFExportCallback`: the Hugging Face folders of a run, each written atomically with its model card:
`<run>/hf_model` holds the weights of the best validation score (rewritten whenever the monitored metric improves),
`<run>/hf_model_last` the last weights (written at the end of fit); the card of each says which it is and where the
other is.

Every folder is `save_pretrained` of the model and the tokenizer (and the image processor of a captioning model), the
model card (README.md) and the run record `hf_transformer_run.json` (the data module's class and arguments, what the
scores were measured on, the weights' kind and step: what `hf-transformer test --ckpt_path FOLDER` reads, and what the
card is rendered from); a translation model also carries its pipeline code (`pipeline(model=folder,
trust_remote_code=True)`). Only global rank 0 writes. A failed export is logged, the previous folder stays as it was,
and training goes on.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from transformers.utils import logging as transformers_logging

from hf_transformer.integrity import MANIFEST, write_manifest
from hf_transformer.pipeline_vaswani import add_pipeline_to_folder

from ..checkpointing import recover_directory, replace_directory_atomically
from ..redaction import known_secrets, redact, redact_command
from ..runs import RUN_FILE, class_path
from .model_card import build_model_card, model_kind

log = logging.getLogger(__name__)

EXPORT_FOLDER_NAME = "hf_model"
LAST_SUFFIX = "_last"


def gathered_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """Under FSDP2 the parameters are DTensor shards: gather the full state dict on CPU (a collective: call it on
    every rank; rank 0 receives the tensors). None for an unsharded model, whose own state dict is complete."""
    from torch.distributed.tensor import DTensor

    if not any(isinstance(parameter, DTensor) for parameter in model.parameters()):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def run_dir(trainer: Trainer) -> Path:
    """The run directory: `trainer.default_root_dir`, which holds everything the run writes."""
    return Path(trainer.default_root_dir)


def find_callback(trainer: Trainer, kind: type) -> Any | None:
    return next((cb for cb in trainer.callbacks if isinstance(cb, kind)), None)


@contextmanager
def quiet_saving() -> Iterator[None]:
    """transformers' "Writing model shards" progress bar off while a folder is written (it printed at every export)."""
    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


def write_export(folder: Path, model: Any, tokenizer: Any, record: dict[str, Any], image_processor: Any = None,
                 state_dict: dict[str, torch.Tensor] | None = None, secrets: list[str] = ()) -> Path:
    """Write (atomically replace) the HF folder: model, tokenizer, image processor, pipeline code of a translation
    model, the run record and the model card rendered from it (secrets redacted)."""
    card = redact(build_model_card(model, record), secrets)
    record_text = redact(json.dumps(record, indent=2, sort_keys=True, default=str), secrets)

    def write(tmp: Path) -> None:
        with quiet_saving():
            model.save_pretrained(tmp, state_dict=state_dict)  # the module's own weights: fp32 under bf16-mixed
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if image_processor is not None:  # captioning: preprocessor_config.json + its code for remote loading
            image_processor.save_pretrained(tmp)
        if model_kind(model)[0] == "translation":
            add_pipeline_to_folder(tmp)
        (tmp / RUN_FILE).write_text(record_text + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(card, encoding="utf-8")
        write_manifest(tmp)  # the sha256 of every file, swapped in with them

    return replace_directory_atomically(folder, write)


def link_or_copy(source: str, destination: str) -> None:
    """Hard-link (instant; safe because exports never rewrite a file in place), else copy."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def rewrite_card(folder: Path, model: Any, record: dict[str, Any]) -> None:
    """Replace the run record and the card of an exported folder, e.g. with a test score: a new folder (the other
    files hard-linked) with its new checksums, swapped in atomically like an export."""
    texts = {RUN_FILE: json.dumps(record, indent=2, sort_keys=True, default=str) + "\n",
             "README.md": build_model_card(model, record)}

    def write(tmp: Path) -> None:
        keep = shutil.ignore_patterns(".*", MANIFEST, *texts)
        shutil.copytree(folder, tmp, ignore=keep, copy_function=link_or_copy, dirs_exist_ok=True)
        for name, text in texts.items():
            (tmp / name).write_text(text, encoding="utf-8")
        write_manifest(tmp)

    replace_directory_atomically(folder, write)


def validation_summary(trainer: Trainer, pl_module: LightningModule, monitor: str) -> dict[str, Any] | None:
    """The last validation's summary (`TaskModule.evaluations`); for a module without one, its logged BLEU."""
    summary = getattr(pl_module, "evaluations", {}).get("validation")
    if summary is not None:
        return summary
    key = monitor if "bleu" in monitor else "val/bleu"
    bleu = trainer.callback_metrics.get(key)
    if bleu is None:
        return None
    signature = getattr(pl_module, "bleu_signature", None)
    return {"step": trainer.global_step, "metrics": {"bleu": float(bleu)},
            "signatures": {"bleu": signature} if signature else {}}


class HFExportCallback(Callback):
    """Writes the run's Hugging Face folders: the best validation score's weights and the last weights.

    When: after every validation that improves `monitor`, into `dirpath` (so it holds the best model while training
    runs and after), and with `export_on_train_end` at the end of fit into `<dirpath>_last` (`hf_model_last`). A run
    that never logged `monitor` gets the last weights in both, the card saying so. The folders load with
    `AutoModelForSeq2SeqLM.from_pretrained` / `AutoTokenizer.from_pretrained`. An export that fails is logged, the
    previous folder stays as it was, and training goes on.

    Args:
        dirpath: The folder of the best weights; default `<run>/hf_model` (run: `trainer.default_root_dir`).
        monitor: The logged metric that decides "best".
        mode: "max" (BLEU) or "min" (a loss).
        export_on_train_end: Also export the last weights when fit ends (into `<dirpath>_last`).
        license: The license the model card declares (a Hub license id such as "apache-2.0", "cc-by-4.0"); the
            training data's terms apply on top of it.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        monitor: str = "val/bleu",
        mode: str = "max",
        export_on_train_end: bool = True,
        license: str = "unknown",
    ) -> None:
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"`mode` must be 'max' or 'min', got {mode!r}.")
        self.dirpath = dirpath
        self.monitor = monitor
        self.mode = mode
        self.export_on_train_end = export_on_train_end
        self.license = license
        self.folder: Path | None = Path(dirpath) if dirpath else None
        self.best_score: float | None = None
        self.best_step: int | None = None
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
        return {"best_score": self.best_score, "best_step": self.best_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict.get("best_score")
        self.best_step = state_dict.get("best_step")

    def resolve_folder(self, trainer: Trainer) -> Path:
        """The folder of the best weights (`<run>/hf_model` unless `dirpath` says otherwise)."""
        if self.folder is None:
            self.folder = run_dir(trainer) / EXPORT_FOLDER_NAME
        return self.folder

    @property
    def last_folder(self) -> Path | None:
        return None if self.folder is None else self.folder.with_name(self.folder.name + LAST_SUFFIX)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        folder = self.resolve_folder(trainer)
        if trainer.is_global_zero and stage == TrainerFn.FITTING:
            for target in (folder, self.last_folder):
                recover_directory(target)  # a run killed mid-export: put the old folder back now

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
            self.best_score, self.best_step = score, trainer.global_step
            self.export(trainer, pl_module, kind="best", reason=f"{self.monitor} improved to {score:.4f}")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.export_on_train_end:
            return
        self.export(trainer, pl_module, kind="last", reason="end of fit")
        if self.best_score is None and not self.resolve_folder(trainer).exists():
            self.export(trainer, pl_module, kind="last", reason="end of fit, no validation score",
                        folder=self.resolve_folder(trainer))

    def record(self, trainer: Trainer, pl_module: LightningModule, kind: str) -> dict[str, Any]:
        """The run record of an export of `kind` ("best", "last"): what the card says and evaluation reads."""
        datamodule = trainer.datamodule
        weights: dict[str, Any] = {"kind": kind, "step": trainer.global_step}
        if kind == "best":
            weights.update(monitor=self.monitor, score=self.best_score)
            if self.export_on_train_end:
                weights.update(sibling=self.last_folder.name, sibling_kind="last")
        elif self.best_score is not None:
            weights.update(sibling=self.folder.name, sibling_kind="best")
        validation = validation_summary(trainer, pl_module, self.monitor)
        if validation is not None and validation.get("step") != trainer.global_step:
            validation = None  # measured on other weights
        run_config = getattr(datamodule, "run_config", None)
        return {
            "task": class_path(pl_module), "data": run_config() if run_config else None,
            "languages": [lang for lang in (getattr(datamodule, "source_lang", None),
                                            getattr(datamodule, "target_lang", None)) if lang],
            "dataset": getattr(datamodule, "dataset_name", None), "license": self.license, "weights": weights,
            "evaluations": {"validation": validation}, "command": self.command,
            "training_seconds": time.monotonic() - self.fit_started_at if self.fit_started_at is not None else None,
        }

    def export(self, trainer: Trainer, pl_module: LightningModule, kind: str, reason: str,
               folder: Path | None = None) -> Path | None:
        """Write the folder of `kind` now (global rank 0 only). Returns it, or None if nothing was written."""
        state_dict = gathered_state_dict(pl_module.model)  # FSDP2 shards: gathered on every rank, else None
        if not trainer.is_global_zero:
            return None
        self.resolve_folder(trainer)
        folder = folder or (self.folder if kind == "best" else self.last_folder)
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        if tokenizer is None:
            rank_zero_warn("HFExportCallback: the data module has no `tokenizer`; the folder will have none.")
        try:
            write_export(folder, pl_module.model, tokenizer, self.record(trainer, pl_module, kind),
                         getattr(trainer.datamodule, "image_processor", None), state_dict,
                         known_secrets(trainer.callbacks))
        except Exception:
            self.failed_exports += 1
            log.exception("HF export to %s (%s) failed; the previous folder is unchanged and training goes on.",
                          folder, reason)
            return None
        self.exports.append({"step": trainer.global_step, "kind": kind, "reason": reason, "score": self.best_score,
                             "time": time.time(), "path": str(folder)})
        rank_zero_info(f"HFExportCallback: wrote {folder} at step {trainer.global_step} ({reason}).")
        return folder


__all__ = ["HFExportCallback", "EXPORT_FOLDER_NAME", "find_callback", "gathered_state_dict", "link_or_copy",
           "rewrite_card", "run_dir", "write_export"]
