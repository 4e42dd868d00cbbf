"""Checkpoint averaging (§6.1 of the paper: the base model averages the last 5 checkpoints, big the last 20).

    python -m lightning_modules.average --checkpoint-dir runs/x/checkpoints --last 5 \\
        --output runs/x/hf_model_averaged
    python -m lightning_modules.average --checkpoints a.ckpt b.ckpt c.ckpt --output averaged \\
        [--tokenizer runs/x/hf_model] [--module-class lightning_modules.module.TranslationModule]

Checkpoints are Lightning `.ckpt` files, loaded with `weights_only=True` only. Every floating-point tensor of their
`state_dict` is averaged key by key (accumulated in float64, cast back to its dtype); other tensors (integer buffers)
are taken from the last checkpoint. The result is written as a Hugging Face folder (`save_pretrained` of the model,
the tokenizer and a model card), atomically.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from hf_transformer import load_tokenizer

from .checkpointing import CheckpointLoadError, load_checkpoint_file, replace_directory_atomically

PathLike = str | os.PathLike
MODEL_PREFIX = "model."  # TranslationModule keeps the HF model in `self.model`
LAST_CHECKPOINT_NAMES = ("last",)  # ModelCheckpoint.CHECKPOINT_NAME_LAST, possibly with a -vN suffix


@dataclass
class AveragedCheckpoints:
    """The averaged `state_dict` and what the checkpoints said about themselves."""

    state_dict: dict[str, torch.Tensor]
    paths: list[Path]
    steps: list[int | None]
    hyper_parameters: dict[str, Any] = field(default_factory=dict)  # of the last checkpoint
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
        hyper_parameters=dict(checkpoint.get("hyper_parameters") or {}),
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


def default_module_class() -> type:
    from .module import TranslationModule

    return TranslationModule


def import_object(dotted: str) -> Any:
    """`package.module.Name` -> the object."""
    module_name, _, name = dotted.rpartition(".")
    if not module_name:
        raise ValueError(f"Expected a dotted path like 'lightning_modules.module.TranslationModule', got {dotted!r}.")
    return getattr(importlib.import_module(module_name), name)


def build_model(module_class: type, hyper_parameters: dict[str, Any]) -> PreTrainedModel:
    """The HF model described by a checkpoint's hyper-parameters.

    Uses `module_class.build_model_from_hparams(hparams)` when the class has it (TranslationModule does);
    otherwise instantiates the module from the hyper-parameters (as `load_from_checkpoint` would) and takes `.model`.
    """
    hparams = {k: v for k, v in hyper_parameters.items() if k not in ("_instantiator", "_class_path")}
    if hasattr(module_class, "build_model_from_hparams"):
        return module_class.build_model_from_hparams(hparams)
    return module_class(**hparams).model


def find_tokenizer_folder(checkpoint_paths: Sequence[Path]) -> Path | None:
    """`<run>/hf_model` next to the checkpoints' folder (or inside it) if it holds a tokenizer."""
    for checkpoint in checkpoint_paths:
        for candidate in (checkpoint.parent.parent / "hf_model", checkpoint.parent / "hf_model"):
            if (candidate / "tokenizer_config.json").is_file() or (candidate / "tokenizer.json").is_file():
                return candidate
    return None


def resolve_tokenizer(
    tokenizer: PreTrainedTokenizerBase | PathLike | None, checkpoint_paths: Sequence[Path]
) -> PreTrainedTokenizerBase:
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        return tokenizer
    folder = Path(tokenizer) if tokenizer is not None else find_tokenizer_folder(checkpoint_paths)
    if folder is None:
        raise FileNotFoundError(
            "No tokenizer given and none found in <run>/hf_model next to the checkpoints "
            f"({checkpoint_paths[0].parent.parent / 'hf_model'}): pass --tokenizer DIR."
        )
    return load_tokenizer(folder)  # checks the special ids the model was trained with


def averaged_model_card(averaged: AveragedCheckpoints, model: PreTrainedModel, info: dict[str, Any]) -> str:
    from .callbacks import build_model_card

    data = averaged.datamodule_hyper_parameters
    steps = ", ".join(str(s) for s in averaged.steps)
    return build_model_card(
        model,
        source_lang=info.get("source_lang", data.get("source_lang")),
        target_lang=info.get("target_lang", data.get("target_lang")),
        dataset_name=info.get("dataset_name", data.get("dataset_name", data.get("dataset"))),
        bleu=None,
        bleu_signature=None,
        global_step=max((s for s in averaged.steps if s is not None), default=None),
        training_seconds=info.get("training_seconds"),
        command=info.get("command"),
        notes=[
            f"Weights: the average of {len(averaged.paths)} checkpoints (steps {steps}), as in §6.1 of the paper: "
            + ", ".join(p.name for p in averaged.paths) + ".",
            "BLEU: not evaluated after averaging; evaluate this folder to get it.",
        ],
    )


def export_average(
    checkpoint_paths: Sequence[PathLike],
    output_dir: PathLike,
    tokenizer: PreTrainedTokenizerBase | PathLike | None = None,
    module_class: type | None = None,
    card_info: dict[str, Any] | None = None,
) -> Path:
    """Average `checkpoint_paths` and write the HF folder `output_dir` (model, tokenizer, README.md) atomically.

    Args:
        checkpoint_paths: Lightning checkpoints of one run (same keys and shapes).
        output_dir: the folder to (re)place.
        tokenizer: a tokenizer, or its folder; default: `<run>/hf_model` next to the checkpoints' folder.
        module_class: the LightningModule class that wrote the checkpoints (default `TranslationModule`); its
            `build_model_from_hparams(hparams)` builds the model from the last checkpoint's `hyper_parameters`.
        card_info: optional `source_lang`, `target_lang`, `dataset_name`, `training_seconds`, `command` for the card.
    Returns:
        `output_dir` as a Path.
    """
    paths = [Path(p) for p in checkpoint_paths]
    if not paths:
        raise ValueError("export_average needs at least one checkpoint path.")
    tokenizer = resolve_tokenizer(tokenizer, paths)  # before the (slow) averaging: fail early
    averaged = average_checkpoint_files(paths)
    if not averaged.hyper_parameters:
        raise CheckpointLoadError(f"Checkpoint {paths[-1]} has no 'hyper_parameters' to build the model from.")
    model = build_model(module_class or default_module_class(), averaged.hyper_parameters)
    weights = {k[len(MODEL_PREFIX):]: v for k, v in averaged.state_dict.items() if k.startswith(MODEL_PREFIX)}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        raise ValueError(f"The averaged weights of {paths[-1]} do not fit the model built from its "
                         f"hyper-parameters: {error}") from error
    card = averaged_model_card(averaged, model, card_info or {})

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / "README.md").write_text(card, encoding="utf-8")

    return replace_directory_atomically(output_dir, write)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_modules.average",
        description="Average Lightning checkpoints (§6.1 of 'Attention Is All You Need') into a Hugging Face folder.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoints", nargs="+", metavar="CKPT", help="checkpoint files to average")
    source.add_argument("--checkpoint-dir", metavar="DIR", help="average the last --last *.ckpt files of DIR")
    parser.add_argument("--last", type=int, default=5, help="with --checkpoint-dir: how many (5 base, 20 big)")
    parser.add_argument("--output", required=True, metavar="DIR", help="the Hugging Face folder to write")
    parser.add_argument("--tokenizer", metavar="DIR", help="tokenizer folder (default: <run>/hf_model)")
    parser.add_argument("--module-class", default="lightning_modules.module.TranslationModule",
                        help="the LightningModule class that wrote the checkpoints")
    args = parser.parse_args(argv)
    if args.last < 1:
        parser.error("--last must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.checkpoint_dir:
            paths = find_checkpoints([args.checkpoint_dir], last=args.last)
            if not paths:
                print(f"error: no *.ckpt files in {args.checkpoint_dir}", file=sys.stderr)
                return 1
            if len(paths) < args.last:
                print(f"warning: only {len(paths)} checkpoints in {args.checkpoint_dir}, averaging those",
                      file=sys.stderr)
        else:
            paths = [Path(p) for p in args.checkpoints]
        module_class = import_object(args.module_class)
        output = export_average(paths, args.output, tokenizer=args.tokenizer, module_class=module_class)
        steps = [checkpoint_step(path) for path in paths]
    except (CheckpointLoadError, ValueError, FileNotFoundError, ImportError, AttributeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"averaged {len(paths)} checkpoints:")
    for path, step in zip(paths, steps):
        print(f"  {path} (step {step})")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
