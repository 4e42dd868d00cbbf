"""Crash-safe checkpoint files, loaded with `torch.load(..., weights_only=True)` only.

What Lightning 2.6.6 does on its own (checked in lightning/fabric/plugins/io/torch_io.py and
lightning/fabric/utilities/cloud_io.py): `TorchCheckpointIO.save_checkpoint` serialises the checkpoint into a
`BytesIO`, then writes it inside an fsspec transaction. On a local disk the transaction writes to a
`tempfile.mkstemp()` file in the *system* temp directory and `shutil.move`s it onto the target on commit: when
/tmp is another filesystem that move is a copy straight into the target (a crash mid-copy leaves a truncated
checkpoint), and nothing is fsynced, so a power cut can leave an empty file behind a completed rename.
`AtomicCheckpointIO` writes a hidden temporary file in the target's own directory, fsyncs it, `os.replace`s it onto
the target and fsyncs the directory: a reader sees the old file or the new one, never part of one. Next to every
checkpoint it keeps `<name>.ckpt.sha256` (sha256sum's format), which `load_checkpoint_file` checks: torch's format has
no checksum of its data, so a flipped byte inside a tensor would load as another weight.

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
The task modules avoid them: they keep only numbers, strings, bools and dicts of them in their hparams (the optimiser
and scheduler callables are excluded with `save_hyperparameters(ignore=...)`), store RNG states as tensors and lists of
ints, and the model's configuration (`MODEL_KEY`, what checkpoint averaging rebuilds the model from) as a JSON dict.

Every load of this repository is `weights_only=True` (tests/lightning_modules/test_safe_loading.py scans the source
for it): this plugin, checkpoint averaging (through `load_checkpoint_file`), and the HF folders, which hold safetensors
only. What cannot be:
- `ModelParallelStrategy`'s sharded checkpoint folder: the strategy loads it itself, not through this plugin, and
  `torch.distributed.checkpoint` reads its `.metadata` file with plain `pickle.load` (torch 2.13,
  distributed/checkpoint/filesystem.py). Only resume sharded checkpoints that you wrote yourself.
- `LightningModule.load_from_checkpoint("https://...")`: Lightning 2.6 defaults to weights_only=False for URLs
  (fabric/utilities/cloud_io.py); pass `weights_only=True`. Local paths follow torch's default (True); a Trainer
  with this plugin (the CLI's default) refuses anything else, URLs included.
"""

from __future__ import annotations

import ctypes
import errno
import functools
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
from transformers import PreTrainedModel

import hf_transformer
from hf_transformer.integrity import file_sha256, read_manifest

PathLike = str | os.PathLike


class CheckpointLoadError(RuntimeError):
    """A checkpoint file that is truncated, corrupt, or not loadable with `weights_only=True`."""


class CheckpointSaveError(OSError):
    """A checkpoint that could not be written (disk full, file-size limit, unwritable folder); the previous file at
    that path is untouched."""


#: The checkpoint entry holding the HF model's class name and `VaswaniConfig` (written by the task modules).
MODEL_KEY = "hf_model"
MODEL_CLASSES = ("VaswaniForConditionalGeneration", "VaswaniForCausalLM", "VaswaniForImageCaptioning")

NO_ROOM = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def os_error_in_chain(error: BaseException) -> OSError | None:
    """The first OSError among `error` and its causes (torch.save reports a failed write() as a RuntimeError
    "unexpected pos ..." whose context is the OSError)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def save_error(path: Path, error: OSError) -> CheckpointSaveError:
    """A `CheckpointSaveError` naming the file, the reason and the fix."""
    reason = error.strerror or str(error)
    if error.errno in NO_ROOM:
        fix = (f"free space on the disk holding {path.parent} (or raise the file-size limit, `ulimit -f`), or point "
               "the checkpoint folder (ModelCheckpoint dirpath / trainer default_root_dir) at a disk with room")
    elif error.errno in NOT_WRITABLE:
        fix = (f"make {path.parent} writable for this user (or remount it read-write), or point the checkpoint "
               "folder (ModelCheckpoint dirpath / trainer default_root_dir) somewhere writable")
    else:
        fix = "check the disk and the folder, then resume from the previous checkpoint"
    return CheckpointSaveError(
        error.errno, f"Could not write checkpoint {path}: {reason}. Fix: {fix}. The previous {path.name} (if any) "
        "is unchanged and loadable."
    )


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


CHECKSUM_SUFFIX = ".sha256"


def checksum_file(path: PathLike) -> Path:
    """The checksum file of a checkpoint: `last.ckpt` -> `last.ckpt.sha256` (sha256sum's format)."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def write_text_atomically(path: Path, text: str) -> None:
    tmp = temporary_sibling(path)
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def recorded_checksums(path: Path) -> list[str]:
    """The checksums `path`'s checksum file lists for it (none when it has no readable one)."""
    try:
        return read_manifest(checksum_file(path)).get(path.name, [])
    except (OSError, UnicodeDecodeError):
        return []


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """`torch.save(obj)` into a temporary file in the same directory, fsync it, then `os.replace` it onto `path`,
    with its sha256 in `<path>.sha256`.

    On any error the temporary file is removed and the previous `path` (if any) is left untouched; a write that
    fails for lack of room or permission raises `CheckpointSaveError` naming the file and the fix. Temporary files
    of `path` left by a process killed while saving are removed first. The checksum file always vouches for the
    file in place: before the rename it lists the new checksum and the old one, after it only the new one
    (`load_checkpoint_file` accepts either), so a kill at any point leaves a file that matches it.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for pattern in (f".{glob.escape(path.name)}.tmp-*", f".{glob.escape(checksum_file(path).name)}.tmp-*"):
            for stale in path.parent.glob(pattern):  # a save killed half-way (SIGKILL)
                stale.unlink(missing_ok=True)
        tmp = temporary_sibling(path)
        # os.open with 0o666 lets the umask decide the permissions, as a plain open() would (mkstemp forces 0o600)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as error:
        raise save_error(path, error) from error
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        checksum = file_sha256(tmp)
        # what the file in place may be until the rename (a file saved without a checksum file: hashed now)
        previous = (recorded_checksums(path) or [file_sha256(path)]) if path.is_file() else []
        write_text_atomically(checksum_file(path), "".join(f"{value}  {path.name}\n"
                                                           for value in [checksum, *previous]))
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        os_error = os_error_in_chain(error) if isinstance(error, Exception) else None
        if os_error is not None:
            raise save_error(path, os_error) from error
        raise
    fsync_directory(path.parent)
    try:
        write_text_atomically(checksum_file(path), f"{checksum}  {path.name}\n")
    except OSError:
        pass  # the file in place still lists the new checksum


def weights_only_failure(error: BaseException) -> str | None:
    """The reason torch gave for refusing a weights_only load, or None if `error` is not such a refusal."""
    message = str(error)
    if not isinstance(error, pickle.UnpicklingError) or "Weights only load failed" not in message:
        return None
    match = re.search(r"WeightsUnpickler error:\s*([^\n]+)", message)
    reason = match.group(1).strip() if match else message.splitlines()[0]
    if reason.startswith("Unsupported operand"):  # bytes that are no pickle at all (a file cut short): damage
        return None
    return reason


@functools.lru_cache(maxsize=64)
def checksum_of(path: str, size: int, mtime_ns: int, inode: int) -> str:
    """sha256 of a file, remembered while its size, modification time and inode stay the same (the CLI reads one
    checkpoint several times)."""
    return file_sha256(path)


def verify_checkpoint(path: Path) -> None:
    """Refuse a checkpoint whose sha256 is not the one its `.sha256` file recorded when it was written (a checkpoint
    without one, older or written by another plugin, is not checked)."""
    expected = recorded_checksums(path)
    if not expected:
        return
    stat = path.stat()
    actual = checksum_of(str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if actual not in expected:
        raise CheckpointLoadError(
            f"Checkpoint {path} does not match its checksum: its sha256 is {actual[:16]}..., but "
            f"{checksum_file(path).name} recorded {expected[0][:16]}... when it was written, so the file changed since "
            "(a disk or copy error, or an edit) and may load as other weights. Resume or evaluate from another "
            "checkpoint of the run, or copy this one again from its source.")


def load_checkpoint_file(path: PathLike, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """`torch.load(path, weights_only=True)` with errors that name the file and say what is wrong.

    Raises:
        FileNotFoundError: no such file.
        CheckpointLoadError: the file is truncated/corrupt, holds objects that `weights_only=True` refuses, or is not
            what its checksum file (`<name>.ckpt.sha256`) recorded.
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
    verify_checkpoint(path)  # after the load: a truncated file is reported as such
    return checkpoint


def describe_model(model: PreTrainedModel) -> dict[str, Any]:
    """The checkpoint's `MODEL_KEY` entry: the model's class name and configuration (plain values only; the
    private `_name_or_path` of a loaded model left out)."""
    config = {key: value for key, value in model.config.to_dict().items() if not key.startswith("_")}
    return {"class": type(model).__name__, "config": config}


def model_from_checkpoint(checkpoint: dict[str, Any], path: PathLike) -> PreTrainedModel:
    """A freshly initialised HF model of the class and configuration a checkpoint was written with."""
    entry = checkpoint.get(MODEL_KEY)
    if not isinstance(entry, dict) or entry.get("class") not in MODEL_CLASSES:
        raise CheckpointLoadError(
            f"Checkpoint {path} does not say which model it holds (no {MODEL_KEY!r} entry naming one of "
            f"{list(MODEL_CLASSES)}): it was written by an older version of the task modules, or by another module."
        )
    config = hf_transformer.VaswaniConfig.from_dict(entry["config"])
    return getattr(hf_transformer, entry["class"])(config)


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

    def remove_checkpoint(self, path: PathLike) -> None:
        """Remove a checkpoint (ModelCheckpoint's top-k rotation) and its checksum file."""
        super().remove_checkpoint(path)
        if is_local_path(path):
            checksum_file(local_path(path)).unlink(missing_ok=True)

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
    stays untouched until the new one is written and fsynced; the swap is one atomic renameat2(RENAME_EXCHANGE) on
    Linux, elsewhere two renames on the same filesystem (`target` -> `.<name>.old-*`, `.<name>.tmp-*` -> `target`;
    a directory cannot be renamed over a non-empty one), and `recover_directory` puts the old folder back if a crash
    hits between them. If `write` raises, the partial folder is removed and the error propagates. Not safe against
    two processes writing the same target.
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
    if target.is_dir() and not target.is_symlink() and exchange_paths(tmp, target):
        fsync_directory(target.parent)  # one atomic swap: `target` was never missing, `tmp` now holds the old folder
        shutil.rmtree(tmp, ignore_errors=True)
        return target
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


RENAME_EXCHANGE = 2  # linux/fs.h
AT_FDCWD = -100


def exchange_paths(first: Path, second: Path) -> bool:
    """Atomically swap two paths with Linux's renameat2(RENAME_EXCHANGE). False where that is unavailable (another
    OS, an old C library, a filesystem without it): the caller falls back to two renames."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    result = renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE)
    return result == 0


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
    "MODEL_KEY",
    "AtomicCheckpointIO",
    "CheckpointLoadError",
    "CheckpointSaveError",
    "atomic_torch_save",
    "checksum_file",
    "fsync_directory",
    "describe_model",
    "load_checkpoint_file",
    "model_from_checkpoint",
    "recover_directory",
    "replace_directory_atomically",
]
