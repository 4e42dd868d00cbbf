"""Checkpoint averaging (§6.1 of the paper: the base model averages the last 5 checkpoints, big the last 20): the
averaging itself, and `CheckpointAveragingCallback`, which runs it at the end of fit (`python -m
lightning_modules.average` runs it on the command line).

Checkpoints are Lightning `.ckpt` files, loaded with `weights_only=True` only. Every floating-point tensor of their
`state_dict` is averaged key by key (accumulated in float64, cast back to its dtype); other tensors (integer buffers)
are taken from the last checkpoint. The HF model is rebuilt from the model class and `VaswaniConfig` the last
checkpoint stores (`MODEL_KEY`, written by the task modules), never through a LightningModule, and written as a
Hugging Face folder (`save_pretrained` of the model, the tokenizer and a model card), atomically.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from transformers import PreTrainedTokenizerBase

from hf_transformer import load_tokenizer

from ..checkpointing import MODEL_KEY, CheckpointLoadError, load_checkpoint_file, model_from_checkpoint
from ..redaction import known_secrets, redact_command
from ..runs import materialize_tokenizer, read_run_record
from .export import HFExportCallback, find_callback, run_dir, write_export

log = logging.getLogger(__name__)

PathLike = str | os.PathLike
MODEL_PREFIX = "model."  # a task module keeps the HF model in `self.model`
LAST_CHECKPOINT_NAMES = ("last",)  # ModelCheckpoint.CHECKPOINT_NAME_LAST, possibly with a -vN suffix
AVERAGED_FOLDER_NAME = "hf_model_averaged"


@dataclass
class AveragedCheckpoints:
    """The averaged `state_dict` and what the checkpoints said about themselves."""

    state_dict: dict[str, torch.Tensor]
    paths: list[Path]
    steps: list[int | None]
    model_entry: dict[str, Any] = field(default_factory=dict)  # the last checkpoint's MODEL_KEY: class and config
    datamodule_hyper_parameters: dict[str, Any] = field(default_factory=dict)


def tensor_alias_key(tensor: torch.Tensor) -> tuple:
    """Identifies tensors that are views of the same memory (tied weights saved under several keys)."""
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()))


def read_state_dict(checkpoint: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict) or not state:
        raise CheckpointLoadError(f"Checkpoint {path} has no 'state_dict' (is it a Lightning .ckpt file?).")
    return state


def average_checkpoint_files(paths: Sequence[PathLike]) -> AveragedCheckpoints:
    """Average the `state_dict`s of `paths` (see the module docstring); see `average_checkpoints`."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("average_checkpoints needs at least one checkpoint path.")
    sums: dict[str, torch.Tensor] = {}
    reference: dict[str, tuple[torch.Size, torch.dtype]] = {}
    aliases: dict[tuple, list[str]] = {}
    steps: list[int | None] = []
    checkpoint: dict[str, Any] = {}
    for index, path in enumerate(paths):
        checkpoint = load_checkpoint_file(path)
        state = read_state_dict(checkpoint, path)
        steps.append(checkpoint.get("global_step"))
        if index == 0:
            for key, value in state.items():
                if not isinstance(value, torch.Tensor):
                    raise CheckpointLoadError(f"Checkpoint {path}: state_dict[{key!r}] is a {type(value).__name__}.")
                reference[key] = (value.shape, value.dtype)
                aliases.setdefault(tensor_alias_key(value), []).append(key)
                sums[key] = value.to(torch.float64) if value.is_floating_point() else value.clone()
            continue
        check_same_layout(state, reference, path, paths[0])
        for key, value in state.items():
            if value.is_floating_point():
                sums[key] += value.to(torch.float64)
            else:
                sums[key] = value.clone()
        del state
    averaged = {
        key: (total / len(paths)).to(reference[key][1]) if reference[key][1].is_floating_point else total
        for key, total in sums.items()
    }
    # Tied weights (e.g. model.lm_head.weight and model.model.shared.weight) were one tensor in the checkpoint:
    # keep them one tensor, so that whoever loads the result sees the tie.
    for keys in aliases.values():
        if len(keys) > 1 and all(torch.equal(averaged[keys[0]], averaged[key]) for key in keys[1:]):
            for key in keys[1:]:
                averaged[key] = averaged[keys[0]]
    return AveragedCheckpoints(
        state_dict=averaged,
        paths=paths,
        steps=steps,
        model_entry=dict(checkpoint.get(MODEL_KEY) or {}),
        datamodule_hyper_parameters=dict(checkpoint.get("datamodule_hyper_parameters") or {}),
    )


def check_same_layout(
    state: dict[str, torch.Tensor], reference: dict[str, tuple[torch.Size, torch.dtype]], path: Path, first: Path
) -> None:
    """Raise a ValueError naming `path` and the first key whose presence, shape or dtype differs from `first`."""
    for key in reference:
        if key not in state:
            raise ValueError(f"Checkpoint {path} has no key {key!r}, which {first} has: cannot average them.")
    for key, value in state.items():
        if key not in reference:
            raise ValueError(f"Checkpoint {path} has a key {key!r} that {first} does not have: cannot average them.")
        if not isinstance(value, torch.Tensor):
            raise CheckpointLoadError(f"Checkpoint {path}: state_dict[{key!r}] is a {type(value).__name__}.")
        shape, dtype = reference[key]
        if value.shape != shape or value.dtype != dtype:
            raise ValueError(
                f"Checkpoint {path}: {key!r} is {tuple(value.shape)} {value.dtype}, but {tuple(shape)} {dtype} in "
                f"{first}: cannot average them."
            )


def average_checkpoints(paths: Sequence[PathLike]) -> dict[str, torch.Tensor]:
    """The key-by-key mean of the `state_dict`s of Lightning checkpoints `paths`.

    Floating-point tensors are averaged (float64 accumulation); other tensors come from the last checkpoint; tied
    tensors stay tied. Raises `CheckpointLoadError` naming the file for a truncated/corrupt or weights_only-unsafe
    checkpoint, and `ValueError` naming the file and the first differing key when the checkpoints do not match.
    """
    return average_checkpoint_files(paths).state_dict


def checkpoint_step(path: PathLike) -> int | None:
    """The `global_step` stored in a checkpoint (memory-mapped: tensors are not read)."""
    step = load_checkpoint_file(path, mmap=True).get("global_step")
    return int(step) if isinstance(step, int) else None


def is_last_checkpoint(path: Path) -> bool:
    stem = path.stem
    return any(stem == name or stem.startswith(f"{name}-v") for name in LAST_CHECKPOINT_NAMES)


def find_checkpoints(directories: Sequence[PathLike], last: int | None = None) -> list[Path]:
    """The `*.ckpt` files of `directories`, oldest first by (stored `global_step`, mtime), the last `last` of them.

    Files holding the same step count once (e.g. `last.ckpt` saved next to the step's own checkpoint, or a
    `save_last="link"` symlink): a non-`last` name is preferred. Hidden files (temporary writes) are ignored.
    """
    found: dict[Path, tuple[int, bool, float, Path]] = {}
    for directory in directories:
        for path in sorted(Path(directory).glob("*.ckpt")):
            real = path.resolve()
            if path.name.startswith(".") or not real.is_file() or real in found:
                continue
            step = checkpoint_step(path)
            found[real] = (-1 if step is None else step, is_last_checkpoint(path), real.stat().st_mtime, path)
    best_per_step: dict[int, tuple[int, bool, float, Path]] = {}
    unknown_step: list[tuple[int, bool, float, Path]] = []
    for item in found.values():
        step, is_last, mtime, _ = item
        if step < 0:
            unknown_step.append(item)
            continue
        kept = best_per_step.get(step)
        if kept is None or (kept[1], -kept[2]) > (is_last, -mtime):  # prefer non-last, then the newest
            best_per_step[step] = item
    ordered = sorted([*best_per_step.values(), *unknown_step], key=lambda item: (item[0], item[2]))
    paths = [item[3] for item in ordered]
    return paths[-last:] if last else paths


def find_tokenizer_folder(checkpoint_paths: Sequence[Path]) -> Path | None:
    """`<run>/hf_model` next to the checkpoints' folder (or inside it) if it holds a tokenizer."""
    for checkpoint in checkpoint_paths:
        for candidate in (checkpoint.parent.parent / "hf_model", checkpoint.parent / "hf_model"):
            if (candidate / "tokenizer_config.json").is_file() or (candidate / "tokenizer.json").is_file():
                return candidate
    return None


def resolve_tokenizer(
    tokenizer: PreTrainedTokenizerBase | PathLike | None, checkpoint_paths: Sequence[Path], record: dict[str, Any]
) -> PreTrainedTokenizerBase:
    """The tokenizer given, or the one the last checkpoint carries (its run record), or `<run>/hf_model`'s."""
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        return tokenizer
    if tokenizer is None and record.get("tokenizer"):
        return load_tokenizer(materialize_tokenizer(record["tokenizer"]))
    folder = Path(tokenizer) if tokenizer is not None else find_tokenizer_folder(checkpoint_paths)
    if folder is None:
        raise FileNotFoundError(
            "No tokenizer given, none in the checkpoints (written before they carried one) and none found in "
            f"<run>/hf_model next to them ({checkpoint_paths[0].parent.parent / 'hf_model'}): pass --tokenizer DIR."
        )
    return load_tokenizer(folder)  # checks the special ids the model was trained with


def distinct_steps(paths: Sequence[Path]) -> list[Path]:
    """`paths` with one checkpoint per stored step: `last.ckpt` and `best.ckpt` of the step of another one are the
    same weights, which an average must count once (said in a warning)."""
    kept: dict[int | None, Path] = {}
    for path in paths:
        step = checkpoint_step(path)
        if step is not None and step in kept:
            rank_zero_warn(f"{path.name} holds step {step}, as {kept[step].name} does: averaged once.")
            if is_last_checkpoint(kept[step]) and not is_last_checkpoint(path):
                kept[step] = path
            continue
        kept[step if step is not None else -len(kept) - 1] = path
    return list(kept.values())


def averaged_record(averaged: AveragedCheckpoints, record: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """The run record of the averaged folder: the checkpoints' run (data, languages, dataset, command) and which
    checkpoints it averages; no evaluation yet."""
    steps = ", ".join(str(s) for s in averaged.steps)
    names = ", ".join(p.name for p in averaged.paths)
    return {
        "task": record.get("task"), "data": record.get("data"),
        "languages": record.get("languages") or info.get("languages") or [],
        "dataset": record.get("dataset") or info.get("dataset"), "license": info.get("license"),
        "weights": {"kind": "average", "step": max((s for s in averaged.steps if s is not None), default=None),
                    "checkpoints": f"{len(averaged.paths)} checkpoints (steps {steps}): {names}"},
        "evaluations": {}, "command": info.get("command") or record.get("command"),
        "training_seconds": info.get("training_seconds"),
    }


def export_average(
    checkpoint_paths: Sequence[PathLike],
    output_dir: PathLike,
    tokenizer: PreTrainedTokenizerBase | PathLike | None = None,
    card_info: dict[str, Any] | None = None,
) -> Path:
    """Average `checkpoint_paths` and write the HF folder `output_dir` (model, tokenizer, run record, README.md)
    atomically, as `HFExportCallback` writes its folders.

    Args:
        checkpoint_paths: Lightning checkpoints of one run (same keys and shapes); two of the same step count once.
        output_dir: the folder to (re)place.
        tokenizer: a tokenizer, or its folder; default: the one the checkpoints carry, else `<run>/hf_model`'s.
        card_info: optional `license`, `training_seconds`, `command` for the card, and `languages`, `dataset` for
            checkpoints without a run record (it comes first).
    Returns:
        `output_dir` as a Path.
    """
    paths = distinct_steps([Path(p) for p in checkpoint_paths])
    if not paths:
        raise ValueError("export_average needs at least one checkpoint path.")
    record = read_run_record(paths[-1]) or {}
    tokenizer = resolve_tokenizer(tokenizer, paths, record)  # before the (slow) averaging: fail early
    averaged = average_checkpoint_files(paths)
    model = model_from_checkpoint({MODEL_KEY: averaged.model_entry}, paths[-1])
    weights = {k[len(MODEL_PREFIX):]: v for k, v in averaged.state_dict.items() if k.startswith(MODEL_PREFIX)}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        raise ValueError(f"The averaged weights of {paths[-1]} do not fit the model its configuration describes: "
                         f"{error}") from error
    return write_export(Path(output_dir), model, tokenizer, averaged_record(averaged, record, card_info or {}))


class CheckpointAveragingCallback(Callback):
    """At the end of fit, averages the last `last_n` checkpoints (§6.1: 5 for base, 20 for big) into an HF folder.

    The checkpoints are the `*.ckpt` files in the folders of the trainer's ModelCheckpoint callbacks, ordered by the
    `global_step` stored in them (then mtime), one per step (`last.ckpt` duplicating a step is skipped). Have a
    ModelCheckpoint save regularly, e.g. `every_n_train_steps=1000, save_top_k=-1`. The folder is written like
    HFExportCallback's (model, tokenizer, card; atomically; global rank 0). A failure is logged, not raised.

    Args:
        last_n: how many checkpoints to average (fewer if fewer exist, with a warning).
        dirpath: the output folder; default `hf_model_averaged` next to the HFExportCallback's folder, else
            `<log_dir or default_root_dir>/hf_model_averaged`.
    """

    def __init__(self, last_n: int = 5, dirpath: str | None = None) -> None:
        super().__init__()
        if last_n < 1:
            raise ValueError(f"`last_n` must be >= 1, got {last_n!r}.")
        self.last_n = last_n
        self.dirpath = dirpath
        self.folder: Path | None = Path(dirpath) if dirpath else None
        self.averaged_paths: list[Path] = []
        self.fit_started_at: float | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        exporter = find_callback(trainer, HFExportCallback)
        exported = exporter.resolve_folder(trainer) if exporter is not None else None  # on every rank (broadcast)
        if self.folder is None:
            base = exported.parent if exported is not None else run_dir(trainer)
            self.folder = base / AVERAGED_FOLDER_NAME

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.fit_started_at = time.monotonic()

    def checkpoint_dirs(self, trainer: Trainer) -> list[Path]:
        dirs = [getattr(cb, "dirpath", None) for cb in trainer.checkpoint_callbacks]
        return list(dict.fromkeys(Path(d) for d in dirs if d))

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero or self.folder is None:
            return
        try:
            paths = find_checkpoints(self.checkpoint_dirs(trainer), last=self.last_n)
            if not paths:
                rank_zero_warn("CheckpointAveragingCallback: no checkpoints found; nothing to average.")
                return
            if len(paths) < self.last_n:
                rank_zero_warn(f"CheckpointAveragingCallback: only {len(paths)} checkpoints, averaging those.")
            datamodule = trainer.datamodule
            exporter = find_callback(trainer, HFExportCallback)
            languages = [getattr(datamodule, name, None) for name in ("source_lang", "target_lang")]
            card_info = {
                "languages": [lang for lang in languages if lang], "dataset": getattr(datamodule, "dataset_name", None),
                "license": exporter.license if exporter is not None else None,
                "training_seconds": time.monotonic() - self.fit_started_at if self.fit_started_at else None,
                "command": exporter.command if exporter is not None and exporter.command else
                redact_command(sys.argv, known_secrets(trainer.callbacks)),
            }
            export_average(paths, self.folder, tokenizer=getattr(datamodule, "tokenizer", None), card_info=card_info)
        except Exception:
            log.exception("Checkpoint averaging into %s failed; the training run itself is complete.", self.folder)
            return
        self.averaged_paths = paths
        rank_zero_info(f"CheckpointAveragingCallback: averaged {len(paths)} checkpoints into {self.folder}: "
                       + ", ".join(p.name for p in paths))


__all__ = ["CheckpointAveragingCallback", "average_checkpoints", "export_average", "find_checkpoints",
           "checkpoint_step"]
