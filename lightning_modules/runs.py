"""Where a run writes, where the caches live, and what a run leaves behind so that it can be used on its own.

- The run directory is Lightning's `--trainer.default_root_dir` (the CLI's default: `runs/<recipe name>`). Everything
  a run writes goes under it (`RUN_LAYOUT`); recipes carry no output paths.
- Caches (trained tokenizers, tokenized corpora, generated corpora) are shared by every run of a user, keyed by what
  determines them: `$HF_TRANSFORMER_CACHE`, else `$XDG_CACHE_HOME/hf-transformer`, else `~/.cache/hf-transformer`.
- Packaged recipes are found by name: `--config quickstart` is `recipes/configs/quickstart.yaml` of the package.
- The run record (`RUN_KEY` in every checkpoint, `RUN_FILE` in every exported folder): the task and data module with
  their arguments, and (in checkpoints) the tokenizer's files, so that `test`, `validate` and `predict` need nothing
  but the checkpoint or the folder.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from hf_transformer import load_tokenizer

CACHE_ENV = "HF_TRANSFORMER_CACHE"
#: The checkpoint entry and the file of an exported folder that hold the run record.
RUN_KEY = "hf_transformer_run"
RUN_FILE = "hf_transformer_run.json"
#: The lock file of a run directory: held by the `fit` that writes into it (`RunLock`).
LOCK_FILE = "fit.lock"
#: What a run directory holds (README.md "Where a run writes").
RUN_LAYOUT = {
    "fit.lock": "who writes into the run: one fit at a time (free as soon as that process ends)",
    "checkpoints": "best.ckpt (best validation score), last.ckpt, step=N.ckpt (periodic, for averaging)",
    "hf_model": "the Hugging Face folder of the best validation score's weights",
    "hf_model_last": "the Hugging Face folder of the last weights",
    "hf_model_averaged": "the average of the last N checkpoints (CheckpointAveragingCallback)",
    "csv": "metrics.csv, hparams.yaml and config.yaml per invocation (version_N)",
    "tensorboard": "the same metrics for TensorBoard (version_N)",
    "test": "<weights>-<split>.txt hypotheses and <weights>-<split>.json scores of every `test`",
    "predictions": "<weights>-<file name> translations of every `predict`",
    "learning_curves.png": "loss, BLEU / chrF and learning rate against the step",
}


def cache_dir() -> Path:
    """The per-user cache: `$HF_TRANSFORMER_CACHE`, else `$XDG_CACHE_HOME/hf-transformer`, else
    `~/.cache/hf-transformer` (as the Hugging Face libraries place theirs)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "hf-transformer"


def packaged_recipes() -> dict[str, Path]:
    """Recipe name -> path of every packaged recipe (`recipes/configs/*.yaml`)."""
    folder = resources.files("recipes") / "configs"
    return {Path(entry.name).stem: Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def resolve_recipe(value: str) -> str:
    """`--config VALUE`: an existing file as it is, else the packaged recipe of that name (`quickstart`,
    `quickstart.yaml`); anything else is left to the parser (a YAML string, or a missing file it reports)."""
    if Path(value).is_file() or "\n" in value or ":" in value:
        return value
    return str(packaged_recipes().get(Path(value).stem if value.endswith(".yaml") else value, value))


def run_dir_of(path: str | os.PathLike) -> Path:
    """The run directory a checkpoint or an exported folder belongs to: `<run>/checkpoints/x.ckpt` -> `<run>`,
    `<run>/hf_model` -> `<run>`; a checkpoint elsewhere -> its folder."""
    path = Path(path)
    if path.is_dir():
        return path.parent
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def weights_name(path: str | os.PathLike | None) -> str:
    """How output files name the weights: `best` for best.ckpt, `hf_model` for an exported folder."""
    if path is None:
        return "model"
    path = Path(path)
    return path.name if path.is_dir() else path.stem


# ----------------------------------------------------------------------------------------------------------------
# One writer per run directory
# ----------------------------------------------------------------------------------------------------------------


class RunDirectoryInUse(RuntimeError):
    """Another process holds the run directory's lock."""


def is_first_process() -> bool:
    """False in the other processes of a multi-process run (DDP ranks started by Lightning, torchrun or srun): only
    the first one locks the run directory."""
    return all(os.environ.get(name, "0") in ("", "0") for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


class RunLock:
    """An exclusive lock on `<run>/fit.lock` for the life of a `fit` (`fcntl.flock`, non-blocking).

    The kernel drops the lock when its process ends, however it ends (SIGKILL included): a lock file left by a dead
    process is free and is simply taken over, its content (pid, host, start time, command) rewritten. The file is
    never deleted: deleting it would let a process that opened it lock a file that no longer has a name. A process
    that holds the lock already gets it again (`held`).
    """

    held: ClassVar[dict[str, RunLock]] = {}  # realpath of the run directory -> the lock this process holds

    def __init__(self, run_dir: str | os.PathLike, command: str = "") -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.command = command
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        key = os.path.realpath(self.run_dir)
        holder = RunLock.held.get(key)
        if holder is not None:  # this process holds it already
            return holder
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunDirectoryInUse(self.refusal()) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                                   "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n").encode(), 0)
        os.fsync(fd)
        self.fd = fd
        RunLock.held[key] = self
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        RunLock.held.pop(os.path.realpath(self.run_dir), None)
        os.close(self.fd)  # closing the descriptor drops the lock
        self.fd = None

    def refusal(self) -> str:
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
            who = (f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}: "
                   f"{holder.get('command')}")
        except (OSError, ValueError, AttributeError):
            who = "a process that has not written its name yet"
        return (f"The run directory {self.run_dir} is in use by another fit ({who}). Two fits into one run would mix "
                f"their checkpoints, exports and logs. Wait for it to end (or stop it), or give this run another "
                f"directory: --trainer.default_root_dir {self.run_dir}-2. The lock ({self.path}) is free as soon as "
                "that process ends, however it ends.")


# ----------------------------------------------------------------------------------------------------------------
# The run record
# ----------------------------------------------------------------------------------------------------------------


def class_path(obj: object) -> str:
    """The importable path of an object's class, as in `class_path:` entries of a config (the public package path
    when the class is exported by its package, e.g. `lightning_modules.data.TranslationDataModule`)."""
    cls = type(obj)
    package = cls.__module__.rsplit(".", 1)[0]
    try:
        if getattr(__import__(package, fromlist=[cls.__name__]), cls.__name__, None) is cls:
            return f"{package}.{cls.__name__}"
    except ImportError:
        pass
    return f"{cls.__module__}.{cls.__name__}"


def tokenizer_files(tokenizer: Any) -> dict[str, str]:
    """The files `save_pretrained` writes for `tokenizer`, as {name: text} (what a checkpoint carries)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="hf_transformer_tokenizer_") as folder:
        tokenizer.save_pretrained(folder)
        return {path.name: path.read_text(encoding="utf-8") for path in sorted(Path(folder).iterdir())
                if path.is_file()}


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of what maps text to ids: the tokenizer's vocabulary and merges, added tokens, normalizer,
    pre-tokenizer, post-processor and decoder (not runtime settings such as padding). Equal fingerprints: every id
    means the same token."""
    definition = json.loads(tokenizer.backend_tokenizer.to_str())
    kept = {key: definition.get(key) for key in ("model", "added_tokens", "normalizer", "pre_tokenizer",
                                                  "post_processor", "decoder")}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def vocabulary_of_files(files: dict[str, str]) -> dict[str, int] | None:
    """token -> id of the tokenizer files a checkpoint carries (None when they hold no readable vocabulary)."""
    try:
        definition = json.loads(files["tokenizer.json"])
        vocabulary = dict(definition["model"]["vocab"])
        vocabulary.update({entry["content"]: entry["id"] for entry in definition.get("added_tokens") or []})
        return vocabulary
    except (KeyError, TypeError, ValueError):
        return None


def describe_vocabulary_change(old: dict[str, int] | None, new: dict[str, int]) -> str:
    """How two vocabularies differ, for an error message: sizes, ids that now stand for another token (one example)."""
    if old is None:
        return "its fingerprint differs"
    if len(old) != len(new):
        return f"the vocabularies have {len(old)} and {len(new)} tokens"
    old_ids, new_ids = {i: t for t, i in old.items()}, {i: t for t, i in new.items()}
    changed = sorted(i for i in old_ids if new_ids.get(i) != old_ids[i])
    if not changed:
        return "the vocabularies are equal but the merges or the normalisation differ"
    example = changed[0]
    return (f"{len(changed)} of {len(old)} token ids stand for other tokens now (e.g. id {example}: "
            f"{old_ids[example]!r} in the checkpoint, {new_ids.get(example)!r} now)")


def materialize_tokenizer(files: dict[str, str]) -> Path:
    """The tokenizer a checkpoint carries, written once into the cache (named by its content); its folder. A cached
    copy whose files differ from `files` (damaged, edited) is written again."""
    key = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_dir() / "tokenizers" / f"from-checkpoint-{key}"
    if not all(cached_text(folder / Path(name).name) == text for name, text in files.items()):
        partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for name, text in files.items():
            (partial / Path(name).name).write_text(text, encoding="utf-8")
        load_tokenizer(partial)  # refuse a damaged one before it is cached
        shutil.rmtree(folder, ignore_errors=True)  # a damaged copy
        try:
            os.replace(partial, folder)
        except OSError:  # another process put it there first
            shutil.rmtree(partial, ignore_errors=True)
    return folder


def cached_text(path: Path) -> str | None:
    """The text of a cached file, None when it is missing or unreadable."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def read_run_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The run record of a checkpoint file or an exported folder; None when it has none (older runs, a model from
    elsewhere)."""
    path = Path(path)
    if path.is_dir():
        file = path / RUN_FILE
        return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None
    from .checkpointing import load_checkpoint_file

    record = load_checkpoint_file(path, mmap=True).get(RUN_KEY)
    return dict(record) if isinstance(record, dict) else None


__all__ = ["CACHE_ENV", "LOCK_FILE", "RUN_FILE", "RUN_KEY", "RUN_LAYOUT", "RunDirectoryInUse", "RunLock",
           "is_first_process", "cache_dir", "class_path", "describe_vocabulary_change",
           "materialize_tokenizer", "packaged_recipes", "read_run_record", "resolve_recipe", "run_dir_of",
           "tokenizer_files", "tokenizer_fingerprint", "vocabulary_of_files", "weights_name"]
