"""What the three data modules share: where a corpus comes from, its splits, cache keys, the tokenizer, the loaders.

- Source: a hub dataset (`dataset`, `dataset_config`, `revision`), a local folder `load_dataset` reads, or local
  files per split (`data_files`); each task reads its rows from them (`load_files`).
- Splits: `train_split`, `validation_split`, `test_split` name a split, optionally sliced as in `datasets`:
  `"train[:1000]"`, `"train[1000:]"`, `"train[:5%]"` (integers may be negative, percents are of the split's size).
  A corpus with a train split only uses e.g. `train_split: "train[1000:]"`, `validation_split: "train[:1000]"`.
- Cache keys: `digest` of what determines an artefact. Local files count by `file_stamp` (path, size, mtime), a local
  dataset folder by the stamps of its non-hidden files. Bump `CACHE_FORMAT_VERSION` when the cached output changes.
- The tokenizer: loaded from `tokenizer_path`, or trained on the training split once and cached under
  `cache_dir/tokenizers/` (`cached_tokenizer`: a file lock makes DDP ranks started together train it once).
  `cache_dir` defaults to the per-user cache (`lightning_modules.runs.cache_dir`: `$HF_TRANSFORMER_CACHE`, else
  `~/.cache/hf-transformer`), shared by every run and keyed by content, never the run directory or the working folder.
- The run record: `run_config()` gives the class and the arguments that rebuild the data module, which every
  checkpoint carries (`lightning_modules.runs`), so that evaluating a checkpoint needs nothing else.
- Batches: training batches come from `TokenBudgetBatchSampler` (length-bucketed, shuffled as a function of seed and
  epoch, sharded over ranks), evaluation batches from `EvalBatchSampler` (length-sorted, disjoint across ranks). Hence
  `Trainer(use_distributed_sampler=False)`: Lightning would otherwise try to wrap the batch sampler.
- Exact mid-epoch resume: `state_dict()` stores the epoch and the training batches completed in it, read from the
  trainer's progress counters (the loader prefetches, so the sampler's own count is ahead); after `load_state_dict()`
  the next train loader skips those batches of that epoch.
"""

from __future__ import annotations

import glob
import hashlib
import inspect
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from filelock import FileLock
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerFast

from hf_transformer.tokenization_vaswani import MIN_VOCAB_SIZE, load_tokenizer

from ..runs import cache_dir as user_cache_dir
from ..runs import class_path
from .sampler import EvalBatchSampler, TokenBudgetBatchSampler

logger = logging.getLogger(__name__)

#: Bump when the tokenized output changes, so that stale cache files are not reused.
CACHE_FORMAT_VERSION = 1

#: Label value ignored by the loss (`torch.nn.CrossEntropyLoss(ignore_index=-100)`, as in `transformers`).
LABEL_PAD_ID = -100

COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz")
STRUCTURED_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".arrow": "arrow"}
SPLIT_PATTERN = re.compile(r"^\s*([^\[\]\s]+)\s*(?:\[\s*(-?\d+%?)?\s*:\s*(-?\d+%?)?\s*\])?\s*$")

#: The splits each trainer stage needs.
ROLES_OF_STAGE = {"fit": ("train", "validation"), "validate": ("validation",), "test": ("test",),
                  "predict": ("predict",)}


# ----------------------------------------------------------------------------------------------------------------
# Files, splits, cache keys
# ----------------------------------------------------------------------------------------------------------------


def structured_builder(path: str) -> str | None:
    """The `datasets` builder ("parquet", "json", ...) of a structured file, None for plain text (compressed files
    are named by their inner suffix)."""
    suffixes = [suffix.lower() for suffix in Path(path).suffixes]
    if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    return STRUCTURED_BUILDERS.get(suffixes[-1]) if suffixes else None


def literal_paths(paths: list[str]) -> list[str]:
    """`paths` as `datasets.load_dataset(data_files=)` must get them to read exactly those files: it expands
    data_files as glob patterns, so `my docs/in[1].jsonl` would look for `in1.jsonl` (and fail with a bare
    StopIteration); `[`, `]`, `*` and `?` are escaped."""
    return [glob.escape(path) for path in paths]


def digest(value: Any, length: int = 16) -> str:
    """Short stable hash of a JSON-serializable value (cache keys)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:length]


def file_stamp(path: str | os.PathLike) -> list[Any]:
    """What identifies a local file's content cheaply: absolute path, size, modification time."""
    stat = os.stat(path)
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]


def folder_stamp(folder: str | os.PathLike) -> list[list[Any]]:
    """`file_stamp` of every file under `folder`, hidden files and folders left out."""
    stamps = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        stamps.extend(file_stamp(os.path.join(root, name)) for name in sorted(files) if not name.startswith("."))
    return stamps


def slug(text: str) -> str:
    """`text` reduced to characters safe in a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:60] or "data"


def parse_split(split: str) -> tuple[str, slice | None]:
    """`"train[1000:]"` -> `("train", slice("1000", None))`; bounds may be negative or percents (kept as "5%")."""
    match = SPLIT_PATTERN.match(split) if isinstance(split, str) else None
    if match is None:
        raise ValueError(
            f"split {split!r} is not a split name optionally followed by a slice, e.g. 'validation', "
            f"'train[:1000]', 'train[1000:]', 'train[:5%]'"
        )
    name, start, stop = match.groups()
    return name, (slice(start, stop) if "[" in split else None)


def slice_rows(split_slice: slice, size: int) -> range:
    """The rows of a split of `size` rows that `split_slice` selects (Python slice semantics, percents of `size`)."""
    def bound(value: str | None) -> int | None:
        if value is None:
            return None
        return round(int(value[:-1]) * size / 100) if value.endswith("%") else int(value)

    return range(size)[slice(bound(split_slice.start), bound(split_slice.stop))]


def check_int(name: str, value: object, minimum: int, optional: bool = False) -> None:
    """Raise a ValueError naming `name` unless `value` is an int (not a bool) >= `minimum` (or None if optional)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = f"None or an int >= {minimum}" if optional else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def check_batching(budget_name: str, budget: int | None, size_name: str, size: int | None, longest: int,
                   longest_name: str) -> None:
    """Exactly one of a token budget and a number of examples per batch; a budget that holds the longest example."""
    if (budget is None) == (size is None):
        raise ValueError(f"give exactly one of {budget_name} and {size_name}, got {budget_name}={budget!r} and "
                         f"{size_name}={size!r} (set the other to null)")
    if budget is not None and budget < longest:
        raise ValueError(f"{budget_name}={budget} is smaller than the longest allowed example ({longest_name} = "
                         f"{longest}): raise {budget_name} or lower the length limits")


def check_data_files(data_files: dict[str, str | list[str]], example: str) -> dict[str, list[str]]:
    """`{split: [paths]}`: every file exists, one format per split. `example` shows a valid value in errors."""
    if not isinstance(data_files, dict) or not data_files:
        raise ValueError(f"data_files must be a non-empty dict {{split: file or [files]}}, got {data_files!r}; e.g. "
                         f"{example}")
    checked = {}
    for split, files in data_files.items():
        paths = [files] if isinstance(files, (str, os.PathLike)) else list(files)
        if not paths:
            raise ValueError(f"data_files[{split!r}] is empty: give a file or a list of files")
        paths = [os.fspath(path) for path in paths]
        for path in paths:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"data_files[{split!r}]: {path!r} does not exist or is not a file")
        if len({structured_builder(path) for path in paths}) > 1:
            raise ValueError(f"data_files[{split!r}] = {paths} mixes file formats: use one format per split")
        checked[str(split)] = paths
    return checked


def cached_tokenizer(folder: Path, train: Callable[[], PreTrainedTokenizerFast]) -> PreTrainedTokenizerFast:
    """The tokenizer saved in `folder`, or `train()`'s result saved there first. A file lock makes processes started
    together (DDP ranks) train once; the folder appears whole (saved aside, then renamed) or not at all. A cached
    folder that does not load (a truncated or edited file, a disk error) is removed with a warning naming it, and the
    tokenizer is trained again."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if folder.exists():
            try:
                tokenizer = load_tokenizer(folder)
                logger.info("loading the cached tokenizer from %s", folder)
                return tokenizer
            except Exception as error:  # tokenizers / json / transformers raise many kinds for a damaged file
                logger.warning("the cached tokenizer %s is damaged and cannot be loaded (%s: %s); removing it and "
                               "training it again", folder, type(error).__name__, str(error)[:300])
                shutil.rmtree(folder)
        start = time.perf_counter()
        tokenizer = train()
        partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        tokenizer.save_pretrained(str(partial))
        os.replace(partial, folder)
        logger.info("trained the tokenizer (%d tokens) in %.1f s, saved to %s", len(tokenizer),
                    time.perf_counter() - start, folder)
        return load_tokenizer(folder)


def drop_damaged_cache_file(path: str) -> None:
    """Remove a cached `datasets` file (a tokenized split) that cannot be read whole (truncated, overwritten), with a
    warning naming it, so that `map(cache_file_name=path)` writes it again instead of failing with pyarrow's bare
    "Expected to be able to read N bytes"."""
    if not os.path.exists(path):
        return
    try:
        datasets.Dataset.from_file(path)
    except Exception as error:  # pyarrow raises OSError / ArrowInvalid / ArrowTypeError for damaged files
        logger.warning("the cached file %s is damaged and cannot be read (%s: %s); removing it and building it again",
                       path, type(error).__name__, str(error)[:300])
        os.remove(path)


# ----------------------------------------------------------------------------------------------------------------
# The base of the data modules
# ----------------------------------------------------------------------------------------------------------------


class TokenizerLinks:
    """What the CLI links from a data module into the model (lightning_modules/cli.py): `tokenizer_fields`, the
    `VaswaniConfig` fields the tokenizer decides (its size and special ids; the decoder starts from `<s>`)."""

    tokenizer: PreTrainedTokenizerFast

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def bos_token_id(self) -> int:
        return self.tokenizer.bos_token_id

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def decoder_start_token_id(self) -> int:
        return self.tokenizer.bos_token_id

    @property
    def tokenizer_fields(self) -> dict[str, int]:
        return {"vocab_size": self.vocab_size, "pad_token_id": self.pad_token_id, "bos_token_id": self.bos_token_id,
                "eos_token_id": self.eos_token_id, "decoder_start_token_id": self.decoder_start_token_id}


class CorpusDataModule(TokenizerLinks, LightningDataModule):
    """A corpus from the hub, a local dataset folder or local files; its splits, tokenizer, cache and loaders.

    A task's data module says how its rows are read (`load_files`, `check_rows`), how the tokenizer is trained
    (`train_tokenizer`, `tokenizer_settings`) and prepares the examples of a role (`prepare_role`).
    """

    #: Shown in the error of a missing or doubled source.
    example_dataset = "'bentrevett/multi30k'"
    example_data_files = "{'train': 'train.jsonl', 'validation': 'valid.jsonl'}"
    #: Part of the tokenizer cache folder's name.
    tokenizer_kind = "corpus"

    def __init__(
        self,
        dataset: str | None,
        dataset_config: str | None,
        revision: str | None,
        data_files: dict[str, str | list[str]] | None,
        splits: dict[str, str],
        tokenizer_path: str | None,
        vocab_size: int,
        cache_dir: str | None,
        num_workers: int,
        seed: int,
    ) -> None:
        super().__init__()
        # the arguments of the concrete class (Lightning collects them up the __init__ chain): the run record
        self.save_hyperparameters(logger=False)
        if dataset is not None and data_files is not None:
            raise ValueError(
                f"give one of dataset (a hub id such as {self.example_dataset}, or a local dataset folder) and "
                f"data_files (local files per split), not both; got dataset={dataset!r} and data_files={data_files!r}"
            )
        for role, split in splits.items():
            try:
                parse_split(split)
            except ValueError as error:
                raise ValueError(f"{role}_split: {error}") from None
        for name, value, minimum in (("num_workers", num_workers, 0), ("seed", seed, 0)):
            check_int(name, value, minimum)
        if tokenizer_path is None:
            check_int("vocab_size", vocab_size, MIN_VOCAB_SIZE)
        self.dataset = dataset
        self.dataset_config = dataset_config
        self.revision = revision
        self.data_files = None if data_files is None else check_data_files(data_files, self.example_data_files)
        self.splits = dict(splits)
        self.train_split, self.validation_split, self.test_split = (splits[r] for r in ("train", "validation", "test"))
        self.tokenizer_path = tokenizer_path
        self.requested_vocab_size = vocab_size
        self.cache_dir = str(user_cache_dir()) if cache_dir is None else cache_dir
        self.num_workers = num_workers
        self.seed = seed
        self._tokenizer: PreTrainedTokenizerFast | None = None
        self._splits: dict[str, Any] = {}
        self._train_sampler: TokenBudgetBatchSampler | None = None
        self._resume_state: dict[str, Any] | None = None

    # -- what a task says --------------------------------------------------------------------------------------

    def load_files(self, name: str, paths: list[str], streaming: bool) -> datasets.Dataset | datasets.IterableDataset:
        """The rows of the local files of split `name`."""
        raise NotImplementedError

    def check_rows(self, raw: datasets.Dataset | datasets.IterableDataset, split: str) -> None:
        """Raise a ValueError naming the split when its rows lack what the task reads."""

    def train_tokenizer(self) -> PreTrainedTokenizerFast:
        raise NotImplementedError

    def tokenizer_settings(self) -> dict[str, Any]:
        """What else determines the trained tokenizer (hashed into its cache key)."""
        return {}

    def prepare_role(self, role: str) -> None:
        """Tokenize (or load from the cache) the examples of `role` ("train", "validation", "test", "predict")."""
        raise NotImplementedError

    # -- the tokenizer and names -------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> PreTrainedTokenizerFast:
        """Loaded from `tokenizer_path`, from the cache, or trained now (first access)."""
        if self._tokenizer is None:
            self._tokenizer = (load_tokenizer(self.tokenizer_path) if self.tokenizer_path is not None
                               else cached_tokenizer(self.tokenizer_cache_path(), self.train_tokenizer))
        return self._tokenizer

    def tokenizer_cache_path(self) -> Path:
        """The folder the trained tokenizer is cached in (keyed by the data, the split and the settings)."""
        key = digest({"version": CACHE_FORMAT_VERSION, "data": self.data_identity(self.train_split),
                      "train_split": self.train_split, "vocab_size": self.requested_vocab_size,
                      **self.tokenizer_settings()}, length=12)
        return Path(self.cache_dir) / "tokenizers" / f"{self.short_name()}-{self.tokenizer_kind}-{key}"

    @property
    def dataset_name(self) -> str:
        """Name of the corpus for the model card: the hub id (with its config) or the local training files."""
        if self.dataset is not None:
            return self.dataset if self.dataset_config is None else f"{self.dataset} ({self.dataset_config})"
        files = (self.data_files or {}).get(parse_split(self.train_split)[0], [])
        return "local files: " + ", ".join(Path(path).name for path in files) if files else "unknown"

    def split_dataset_name(self, split: str) -> str:
        """Name of the data a split is read from, for evaluation records: the hub id, or that split's local files."""
        files = (self.data_files or {}).get(parse_split(split)[0], []) if self.dataset is None else []
        files = [files] if isinstance(files, str) else files
        return "local files: " + ", ".join(Path(path).name for path in files) if files else self.dataset_name

    def where(self, split: str) -> str:
        """How a split is named in messages."""
        if self.dataset is not None:
            config = "" if self.dataset_config is None else f", config {self.dataset_config!r}"
            return f"split {split!r} of dataset {self.dataset!r}{config}"
        name, _ = parse_split(split)
        return f"split {split!r} (data_files[{name!r}] = {(self.data_files or {}).get(name)})"

    def data_identity(self, split: str) -> dict[str, Any]:
        """What identifies the data of `split` (hashed into cache keys)."""
        if self.dataset is not None:
            identity: dict[str, Any] = {"dataset": self.dataset, "config": self.dataset_config,
                                        "revision": self.revision}
            if os.path.isdir(self.dataset):
                identity["files"] = folder_stamp(self.dataset)
            return identity
        name, _ = parse_split(split)
        return {"files": [file_stamp(path) for path in (self.data_files or {}).get(name, [])]}

    def short_name(self) -> str:
        """A readable file-name part for the data: hub id, local folder name, or first training file name."""
        if self.dataset is not None:
            return slug(Path(self.dataset).name if os.path.isdir(self.dataset) else self.dataset.replace("/", "--"))
        return slug(Path((self.data_files or {}).get(parse_split(self.train_split)[0], ["local"])[0]).name)

    def run_config(self) -> dict[str, Any]:
        """`{"class_path", "init_args"}` that rebuild this data module elsewhere: the arguments it was given, local
        paths made absolute, without `tokenizer_path` and `predict_file` (a checkpoint carries the tokenizer; the
        file to translate is the user's)."""
        parameters = inspect.signature(type(self).__init__).parameters
        init_args = {key: value for key, value in self.hparams.items() if key in parameters}
        for key in ("tokenizer_path", "predict_file"):
            if key in init_args:
                init_args[key] = None
        if init_args.get("data_files") is not None and self.data_files is not None:
            init_args["data_files"] = {split: [os.path.abspath(path) for path in paths]
                                       for split, paths in self.data_files.items()}
        for key in ("dataset", "cache_dir"):
            value = init_args.get(key)
            if isinstance(value, str) and (key == "cache_dir" or os.path.isdir(value)):
                init_args[key] = os.path.abspath(value)
        return {"class_path": class_path(self), "init_args": init_args}

    # -- raw rows ----------------------------------------------------------------------------------------------

    def load_split(self, split: str, streaming: bool = False) -> datasets.Dataset | datasets.IterableDataset:
        """The raw rows of `split`, checked by the task before the slice (a row number in an error is the row of the
        whole split), then sliced."""
        name, split_slice = parse_split(split)
        raw = self.load_whole_split(name, streaming)
        self.check_rows(raw, split)
        if split_slice is None:
            return raw
        if isinstance(raw, datasets.Dataset):
            return raw.select(slice_rows(split_slice, len(raw)))
        start, stop = split_slice.start, split_slice.stop
        if any(bound is not None and (bound.endswith("%") or bound.startswith("-")) for bound in (start, stop)):
            raise ValueError(
                f"{self.where(split)}: with streaming=True a split slice must use non-negative row numbers "
                f"(e.g. 'train[:1000]', 'train[1000:]'); percents and negative bounds need the split's size"
            )
        start = int(start or 0)
        raw = raw.skip(start) if start else raw
        return raw.take(int(stop) - start) if stop is not None else raw

    def load_whole_split(self, name: str, streaming: bool) -> datasets.Dataset | datasets.IterableDataset:
        """The whole split `name` (no slice), as `datasets` loads it."""
        if self.dataset is None and self.data_files is None:
            raise ValueError(
                f"split {name!r} needs a corpus: give dataset (a hub id such as {self.example_dataset}, or a local "
                f"dataset folder) or data_files (local files per split, e.g. {self.example_data_files}); to "
                "evaluate or translate with a trained model, `--ckpt_path CKPT` brings the corpus it was trained on"
            )
        if self.data_files is not None:
            if name not in self.data_files:
                raise ValueError(
                    f"data_files has no entry for split {name!r}: it has {sorted(self.data_files)}; add one, or take "
                    f"a slice of another split (e.g. validation_split: 'train[:1000]')"
                )
            return self.load_files(name, self.data_files[name], streaming)
        try:
            return datasets.load_dataset(self.dataset, self.dataset_config, split=name, streaming=streaming,
                                         revision=self.revision)
        except ValueError as error:
            if "split" not in str(error).lower():
                raise
            raise ValueError(
                f"{self.where(name)} does not exist ({error}); for a corpus with only a train split use e.g. "
                f"train_split: 'train[1000:]' and validation_split: 'train[:1000]'"
            ) from error

    # -- Lightning hooks ---------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Train or load the tokenizer and prepare what the trainer's stage needs (fit and test without a trainer)
        into the cache; Lightning runs it on one process per node before `setup` runs on all."""
        _ = self.tokenizer
        stage = None if self.trainer is None else self.trainer.state.fn  # a TrainerFn: "fit", "test", ...
        for name in ("fit", "test") if stage is None else (stage.value,):
            self.setup(name)

    def setup(self, stage: str) -> None:
        """Load the examples `stage` needs ("fit", "validate", "test", "predict"); idempotent."""
        if stage not in ROLES_OF_STAGE:
            raise ValueError(f"unknown stage {stage!r}: expected one of {sorted(ROLES_OF_STAGE)}")
        for role in ROLES_OF_STAGE[stage]:
            self.prepare_role(role)

    def world(self) -> tuple[int, int]:
        """(world_size, global_rank) of the attached trainer, (1, 0) without one."""
        return (1, 0) if self.trainer is None else (self.trainer.world_size, self.trainer.global_rank)

    def is_global_zero(self) -> bool:
        return self.trainer is None or self.trainer.is_global_zero

    def trainer_epoch(self) -> int:
        """The epoch the trainer runs or is about to run (what Lightning passes to `set_epoch`); 0 without one."""
        return 0 if self.trainer is None else self.trainer.fit_loop.epoch_progress.current.processed

    def train_loader(self, examples: Dataset, lengths: np.ndarray, collate: Callable, max_tokens: int | None,
                     batch_size: int | None) -> DataLoader:
        """Token-budget batches of `examples`, shuffled per epoch, sharded over the ranks, resumed mid-epoch."""
        world_size, rank = self.world()
        sampler = TokenBudgetBatchSampler(lengths, max_tokens=max_tokens, batch_size=batch_size, shuffle=True,
                                          seed=self.seed, num_replicas=world_size, rank=rank)
        sampler.set_epoch(self.trainer_epoch())  # the first batch is fetched before Lightning calls set_epoch
        if self._resume_state is not None:
            self.apply_resume_state(sampler, self._resume_state)
            self._resume_state = None  # used up: a later loader (a new fit) starts where the trainer says
        self._train_sampler = sampler
        return DataLoader(examples, batch_sampler=sampler, collate_fn=collate, num_workers=self.num_workers,
                          generator=torch.Generator().manual_seed(self.seed))

    def eval_loader(self, examples: Dataset, lengths: np.ndarray, collate: Callable, max_tokens: int | None,
                    batch_size: int | None, fixed_random_order: bool = False) -> DataLoader:
        """Length-sorted batches, disjoint across ranks; shortest first, or (`fixed_random_order`, for validation)
        in an order fixed by `seed`, so that `limit_val_batches` keeps batches of every length."""
        world_size, rank = self.world()
        batches = EvalBatchSampler(lengths, max_tokens=max_tokens, batch_size=batch_size, num_replicas=world_size,
                                   rank=rank, order_seed=self.seed if fixed_random_order else None)
        return DataLoader(examples, batch_sampler=batches, collate_fn=collate, num_workers=self.num_workers,
                          generator=torch.Generator().manual_seed(self.seed))

    # -- checkpointed state: exact mid-epoch resume ------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """`{"epoch", "batches_done", "epoch_finished", ...sampler settings}` for the checkpoint.

        `batches_done` is `trainer.fit_loop.epoch_loop.batch_progress.current.processed`: it counts the batch whose
        `on_train_batch_end` saves the checkpoint; prefetched batches are not counted.
        """
        state: dict[str, Any] = {"epoch": 0, "batches_done": 0, "epoch_finished": False}
        if self.trainer is not None:
            progress = self.trainer.fit_loop.epoch_loop.batch_progress
            state = {"epoch": self.trainer.current_epoch, "batches_done": progress.current.processed,
                     "epoch_finished": bool(progress.is_last_batch)}
        elif self._train_sampler is not None:
            done = self._train_sampler.state_dict()["batches_done"]
            state = {"epoch": self._train_sampler.epoch, "batches_done": done,
                     "epoch_finished": done >= len(self._train_sampler)}
        if self._train_sampler is not None:
            state.update({key: value for key, value in self._train_sampler.state_dict().items()
                          if key not in ("epoch", "batches_done")})
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Remember where training stopped; the next train loader (or the one that exists) skips those batches."""
        for key in ("epoch", "batches_done"):
            if key not in state_dict:
                raise ValueError(f"data module state is missing {key!r}: got keys {sorted(state_dict)}")
        self._resume_state = dict(state_dict)
        if self._train_sampler is not None:
            self.apply_resume_state(self._train_sampler, self._resume_state)

    def apply_resume_state(self, sampler: TokenBudgetBatchSampler, state: dict[str, Any]) -> None:
        """Skip the batches `state` says were done, if `sampler` is at that epoch (later epochs start at 0)."""
        if state["epoch"] != sampler.epoch:
            return
        sampler_state = {key: value for key, value in state.items() if key not in ("epoch_finished", "streaming")}
        try:
            sampler.load_state_dict(sampler_state, strict=True)
        except ValueError as error:
            logger.warning("mid-epoch resume is approximate: %s", error)
            sampler.load_state_dict(sampler_state, strict=False)
        if self.is_global_zero():
            logger.info("resuming epoch %d after %d batches", state["epoch"], state["batches_done"])


__all__ = ["CorpusDataModule", "TokenizerLinks", "cached_tokenizer", "parse_split", "digest", "file_stamp",
           "drop_damaged_cache_file", "literal_paths",
           "CACHE_FORMAT_VERSION", "LABEL_PAD_ID"]
