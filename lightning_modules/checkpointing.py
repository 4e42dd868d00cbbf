"""Crash-safe checkpoint files, loaded with `torch.load(..., weights_only=True)` only.

What Lightning 2.6.6 does on its own (checked in lightning/fabric/plugins/io/torch_io.py and
lightning/fabric/utilities/cloud_io.py): `TorchCheckpointIO.save_checkpoint` serialises the checkpoint into a
`BytesIO`, then writes it inside an fsspec transaction. On a local disk the transaction writes to a
`tempfile.mkstemp()` file in the *system* temp directory and `shutil.move`s it onto the target on commit: when
/tmp is another filesystem that move is a copy straight into the target (a crash mid-copy leaves a truncated
checkpoint), and nothing is fsynced, so a power cut can leave an empty file behind a completed rename.
`AtomicCheckpointIO` writes a hidden temporary file in the target's own directory, fsyncs it, `os.replace`s it onto
the target and fsyncs the directory: a reader sees the old file or the new one, never part of one.

`ModelCheckpoint(save_last=True)` writes `last.ckpt` through `trainer.save_checkpoint`, i.e. through this plugin,
so it is atomic too. `save_last="link"` is not: `ModelCheckpoint._link_checkpoint` removes `last.ckpt` and then
creates a symlink (falling back to `shutil.copy`), outside the CheckpointIO plugin; recipes use `save_last=True`.

Loading: `weights_only=True` refuses any pickled global that is not a tensor, dict, list, tuple, set, str, bytes,
number, bool, None, `torch.dtype`/`torch.device` or an allow-listed torch type. What Lightning itself puts in a
checkpoint is safe (loop and callback states are dicts of numbers, strings and tensors; Adam and LambdaLR states are
dicts of tensors and numbers; the hyper-parameters are stored as a plain `dict(hparams)`). What breaks it comes from
the user side: a hyper-parameter holding a class, a function, a `pathlib.Path`, an `Enum` or a numpy value
(`save_hyperparameters` keeps init arguments as given), hparams that are an OmegaConf container (Lightning then also
stores `hparams_type`, a class), and numpy arrays (e.g. `np.random.get_state()`) in `on_save_checkpoint`.
`TranslationModule` avoids them: it keeps only numbers, strings and bools in its hparams (the optimiser and scheduler
callables are excluded with `save_hyperparameters(ignore=...)`) and stores RNG states as tensors and lists of ints.
"""

from __future__ import annotations

import glob
import os
import pickle
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

import fsspec.utils
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

PathLike = str | os.PathLike


class CheckpointLoadError(RuntimeError):
    """A checkpoint file that is truncated, corrupt, or not loadable with `weights_only=True`."""


def is_local_path(path: PathLike) -> bool:
    """True for plain paths and file:// URLs (remote fsspec URLs are left to Lightning's own code)."""
    return fsspec.utils.get_protocol(str(path)) == "file"


def fsync_directory(directory: PathLike) -> None:
    """Flush a directory entry (a rename into it) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_sibling(path: Path, kind: str = "tmp") -> Path:
    """A unique hidden name next to `path` that no `*.ckpt` glob (or the final name itself) matches."""
    return path.with_name(f".{path.name}.{kind}-{uuid.uuid4().hex[:12]}")


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """`torch.save(obj)` into a temporary file in the same directory, fsync it, then `os.replace` it onto `path`.

    On any error the temporary file is removed and the previous `path` (if any) is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    # os.open with 0o666 lets the umask decide the permissions, as a plain open() would (mkstemp forces 0o600)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def weights_only_failure(error: BaseException) -> str | None:
    """The reason torch gave for refusing a weights_only load, or None if `error` is not such a refusal."""
    message = str(error)
    if not isinstance(error, pickle.UnpicklingError) or "Weights only load failed" not in message:
        return None
    match = re.search(r"WeightsUnpickler error: ([^\n]*)", message)
    return match.group(1).strip() if match else message.splitlines()[0]


def load_checkpoint_file(path: PathLike, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """`torch.load(path, weights_only=True)` with errors that name the file and say what is wrong.

    Raises:
        FileNotFoundError: no such file.
        CheckpointLoadError: the file is truncated/corrupt, or holds objects that `weights_only=True` refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as error:  # torch raises OSError, EOFError, KeyError, RuntimeError... for damaged files
        reason = weights_only_failure(error)
        if reason is not None:
            raise CheckpointLoadError(
                f"Checkpoint {path} cannot be loaded with weights_only=True: {reason} Only weights_only-safe "
                "checkpoints are accepted (tensors, dicts, lists, numbers, strings): keep classes, functions, "
                "paths and numpy objects out of the module's hyper-parameters and on_save_checkpoint."
            ) from error
        size = path.stat().st_size
        raise CheckpointLoadError(
            f"Checkpoint {path} ({size} bytes) is truncated or corrupt and cannot be loaded "
            f"({type(error).__name__}: {error}). Was it written by an interrupted save or copy?"
        ) from error
    if not isinstance(checkpoint, dict):
        raise CheckpointLoadError(f"Checkpoint {path} holds a {type(checkpoint).__name__}, not a checkpoint dict.")
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose saves are atomic and durable and whose loads are `weights_only=True`.

    Use it with `Trainer(plugins=[AtomicCheckpointIO()])`. Remote (fsspec URL) paths fall back to Lightning's
    own transactional save; local paths get a same-directory temporary file + fsync + `os.replace`.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: PathLike, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint does not support `storage_options`.")
        if not is_local_path(path):
            super().save_checkpoint(checkpoint, path)
            return
        atomic_torch_save(checkpoint, local_path(path))

    def load_checkpoint(
        self,
        path: PathLike,
        map_location: Callable | Any | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Load with `weights_only=True`; `weights_only=False` is refused (untrusted pickles run code)."""
        if weights_only is False:
            raise ValueError(
                f"{type(self).__name__} loads checkpoints with weights_only=True only; weights_only=False would "
                "unpickle arbitrary objects. Remove the unsafe objects from the checkpoint instead."
            )
        if not is_local_path(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return load_checkpoint_file(local_path(path), map_location=map_location)


def recover_directory(target: PathLike) -> None:
    """Undo what a crash inside `replace_directory_atomically` can leave next to `target`.

    Partial `.<name>.tmp-*` folders are deleted. If `target` is missing but a `.<name>.old-*` folder exists (a crash
    between the two renames), the newest one is renamed back to `target`; otherwise `.old-*` folders are deleted.
    """
    target = Path(target)
    if not target.parent.is_dir():
        return
    for partial in target.parent.glob(f".{glob.escape(target.name)}.tmp-*"):
        shutil.rmtree(partial, ignore_errors=True)
    olds = sorted(target.parent.glob(f".{glob.escape(target.name)}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds and not target.exists():
        os.replace(olds.pop(), target)
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)


def replace_directory_atomically(target: PathLike, write: Callable[[Path], None]) -> Path:
    """Let `write(tmp)` fill a fresh hidden sibling folder, then swap it in for `target`.

    Readers (and a crash at any point) see either the complete old folder or the complete new one: the old folder
    stays untouched until the new one is written and fsynced; the swap is two renames on the same filesystem
    (`target` -> `.<name>.old-*`, `.<name>.tmp-*` -> `target`; Linux cannot rename a directory over a non-empty
    one), and `recover_directory` puts the old folder back if a crash hits between them. If `write` raises, the
    partial folder is removed and the error propagates. Not safe against two processes writing the same target.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(target)
    tmp = temporary_sibling(target, "tmp")
    tmp.mkdir()
    try:
        write(tmp)
        fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists() or target.is_symlink():
        old = temporary_sibling(target, "old")
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_directory(target.parent)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    return target


def fsync_tree(directory: Path) -> None:
    """fsync every file under `directory`, then the directories themselves."""
    for root, _dirs, files in os.walk(directory):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_directory(root)


def local_path(path: PathLike) -> Path:
    """A local path or file:// URL as a `Path`."""
    text = str(path)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


__all__ = [
    "AtomicCheckpointIO",
    "CheckpointLoadError",
    "atomic_torch_save",
    "fsync_directory",
    "load_checkpoint_file",
    "recover_directory",
    "replace_directory_atomically",
]
