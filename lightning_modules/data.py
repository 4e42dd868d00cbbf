"""`TranslationDataModule`: parallel corpora from the Hugging Face hub or local files, as token-budget batches.

Data flow: load a split (hub repo, local dataset folder, parquet/json/csv files, or a pair of aligned plain-text
files) -> check it has the two languages -> tokenize with the joint BPE tokenizer (trained on the training split and
cached, or loaded) -> clean (empty pairs, overlong pairs, bad length ratio; counted in `cleaning_report`) -> batch
(`TokenBudgetBatchSampler` for training, length-sorted batches for evaluation).

Layouts understood: a `translation` column of `{language: text}` dicts (`wmt/wmt14`, `Helsinki-NLP/opus_books`), or
one column per language (`bentrevett/multi30k`: `en`, `de`).

Splits: `train_split`, `validation_split`, `test_split` name a split, optionally sliced as in `datasets`:
`"train[:1000]"`, `"train[1000:]"`, `"train[:5%]"` (integers may be negative, percents are of the split's size).
A corpus with a train split only (`opus_books`) is used with `train_split: "train[1000:]"` and
`validation_split: "train[:1000]"`. A missing split raises a ValueError listing the ones that exist.

Caching: raw downloads stay in the `datasets` cache (`HF_DATASETS_CACHE`, shared with other tools); the tokenizer
and the tokenized splits go under `cache_dir`, in folders/files keyed by a hash of what determines them (dataset
identity: hub id and config, or local paths with their sizes and modification times; languages; vocabulary size;
length limits), so a second run with the same arguments loads them instead of recomputing.

Trainer requirements: `Trainer(use_distributed_sampler=False)`. The training batch sampler shards across ranks
itself (same number of batches on every rank) and the evaluation loaders shard disjointly; with Lightning's default
(`True`) under DDP, Lightning would try to wrap the batch sampler in a `DistributedSampler`, which raises a TypeError
that says so.

Exact mid-epoch resume: `state_dict()` stores the epoch and the number of training batches completed in it, read
from the trainer's progress counters (the loader prefetches, so counting what the sampler handed out would be off by
the prefetched batches). After `load_state_dict()` the train loader skips those batches of that epoch. Not
supported with `streaming=True` (`load_state_dict` raises on a mid-epoch state; end-of-epoch states are fine).

Streaming (`streaming=True`, for corpora that do not fit on disk): the training split is read as a stream, sharded by
rank with `datasets.distributed.split_dataset_by_node`, tokenized and cleaned on the fly, and batched by reading
`streaming_buffer_size` examples, sorting them by length, cutting token-budget batches and shuffling their order with
a generator seeded by `(seed, epoch, rank, worker, buffer)`. The cleaning report of the streamed split is logged at
the end of each pass instead of up front. Under DDP ranks may get different numbers of batches: bound an epoch with
`limit_train_batches` (or train by `max_steps` with a stream longer than that). Evaluation splits are small and are
read fully into memory.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import hashlib
import json
import logging
import lzma
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import datasets
import numpy as np
import torch
from datasets.distributed import split_dataset_by_node
from filelock import FileLock
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset
from transformers import PreTrainedTokenizerFast

from hf_transformer.tokenization_vaswani import MIN_VOCAB_SIZE, iter_parallel_texts, load_tokenizer, train_tokenizer
from lightning_modules.sampler import EvalBatchSampler, TokenBudgetBatchSampler

logger = logging.getLogger(__name__)

#: Bump when the tokenization/cleaning output changes, so stale cache files are not reused.
CACHE_FORMAT_VERSION = 1

#: Label value ignored by the loss (`torch.nn.CrossEntropyLoss(ignore_index=-100)`, as in `transformers`).
LABEL_PAD_ID = -100

#: Keys of a split's entry in `TranslationDataModule.cleaning_report`.
REPORT_KEYS = ("total", "kept", "dropped", "empty", "too_long", "bad_ratio", "truncated")

# Per-example flags computed while tokenizing (a bit mask, stored in the `flags` column).
_EMPTY, _BAD_RATIO, _TOO_LONG, _TRUNCATED, _DROPPED = 1, 2, 4, 8, 16
_FLAG_OF_KEY = {"empty": _EMPTY, "bad_ratio": _BAD_RATIO, "too_long": _TOO_LONG, "truncated": _TRUNCATED}

_COMPRESSION_SUFFIXES = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_BUILDER_OF_SUFFIX = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".arrow": "arrow"}
_SPLIT_PATTERN = re.compile(r"^\s*([^\[\]\s]+)\s*(?:\[\s*(-?\d+%?)?\s*:\s*(-?\d+%?)?\s*\])?\s*$")


# ----------------------------------------------------------------------------------------------------------------
# Files and splits
# ----------------------------------------------------------------------------------------------------------------


def _open_text(path: str | os.PathLike) -> IO[str]:
    """Open a UTF-8 text file, decompressing `.gz`/`.bz2`/`.xz`; only "\\n" ends a line (alignment-safe).

    A UTF-8 byte order mark at the start of the file (Windows editors write one) is dropped ("utf-8-sig"), so it
    does not become part of the first sentence.
    """
    opener = _COMPRESSION_SUFFIXES.get(Path(path).suffix.lower(), open)
    return opener(path, "rt", encoding="utf-8-sig", newline="\n")


def count_lines(path: str | os.PathLike) -> int:
    """Number of lines of a (possibly compressed) text file, a last line without "\\n" included."""
    opener = _COMPRESSION_SUFFIXES.get(Path(path).suffix.lower(), open)
    count = 0
    last = b"\n"
    with opener(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def scan_text_file(path: str | os.PathLike, role: str = "file") -> int:
    """Number of lines of a (possibly compressed) text file, after checking that it decompresses and is UTF-8.

    Raises a ValueError naming `role` and the file, and for invalid UTF-8 the line, the byte offset and the bytes,
    instead of the `UnicodeDecodeError` / `BadGzipFile` / `EOFError` that would otherwise surface mid-way through
    tokenization without a file name.
    """
    opener = _COMPRESSION_SUFFIXES.get(Path(path).suffix.lower(), open)
    lines, offset, pending, last = 0, 0, b"", b"\n"
    try:
        with opener(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                data = pending + chunk
                try:
                    _, consumed = codecs.utf_8_decode(data, "strict", False)  # stops before an incomplete tail
                except UnicodeDecodeError as error:
                    line = lines + data[: error.start].count(b"\n") + 1
                    raise ValueError(
                        f"{role} {str(path)!r} is not valid UTF-8: line {line} (byte {offset + error.start}) holds "
                        f"{data[error.start:error.end + 8]!r}. Convert the file to UTF-8 (e.g. `iconv -f latin1 "
                        f"-t utf-8`) or remove that line (from both files, for a pair of aligned files)"
                    ) from None
                lines += chunk.count(b"\n")
                offset += consumed
                pending, last = data[consumed:], chunk[-1:]
    except (OSError, EOFError, lzma.LZMAError) as error:  # BadGzipFile is an OSError; truncated gzip an EOFError
        raise ValueError(
            f"{role} {str(path)!r} cannot be read as a {Path(path).suffix or 'plain text'} file "
            f"({type(error).__name__}: {error}); is it truncated, or compressed differently than its name says?"
        ) from error
    if pending:
        raise ValueError(
            f"{role} {str(path)!r} is not valid UTF-8: it ends in the middle of a character ({pending!r} at byte "
            f"{offset}); was it truncated?"
        )
    if lines == 0 and offset == len(codecs.BOM_UTF8):
        with opener(path, "rb") as handle:
            if handle.read() == codecs.BOM_UTF8:
                return 0  # a byte order mark alone: no line, as the reader (utf-8-sig) sees it
    return lines + (last != b"\n")


def read_lines(path: str | os.PathLike) -> list[str]:
    """All lines of a (possibly compressed) UTF-8 text file, without their line endings."""
    with _open_text(path) as handle:
        return [line.rstrip("\n").removesuffix("\r") for line in handle]


def _read_text_pair(
    source_path: str, target_path: str, source_lang: str, target_lang: str, stamp: str
) -> Iterator[dict[str, str]]:
    """Yield `{source_lang: line, target_lang: line}` from two aligned files (`stamp` only fingerprints them)."""
    del stamp
    with _open_text(source_path) as source, _open_text(target_path) as target:
        for source_line, target_line in zip(source, target, strict=True):
            yield {
                source_lang: source_line.rstrip("\n").removesuffix("\r"),
                target_lang: target_line.rstrip("\n").removesuffix("\r"),
            }


def _builder_for(path: str) -> str | None:
    """The `datasets` builder ("parquet", "json", ...) of a structured file, None for plain text."""
    suffixes = [suffix.lower() for suffix in Path(path).suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    return _BUILDER_OF_SUFFIX.get(suffixes[-1]) if suffixes else None


def _file_stamp(path: str | os.PathLike) -> list[Any]:
    """What identifies a local file's content cheaply: absolute path, size, modification time."""
    stat = os.stat(path)
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]


def _folder_stamp(folder: str | os.PathLike) -> list[list[Any]]:
    """`_file_stamp` of every non-hidden file under `folder`."""
    stamps = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        stamps.extend(_file_stamp(os.path.join(root, name)) for name in sorted(files) if not name.startswith("."))
    return stamps


def _digest(value: Any, length: int = 16) -> str:
    """Short stable hash of a JSON-serializable value."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:length]


def _slug(text: str) -> str:
    """`text` reduced to characters safe in a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:60] or "data"


def parse_split(split: str) -> tuple[str, slice | None]:
    """`"train[1000:]"` -> `("train", slice(1000, None))`; bounds may be negative or percents (kept as "5%")."""
    match = _SPLIT_PATTERN.match(split) if isinstance(split, str) else None
    if match is None:
        raise ValueError(
            f"split {split!r} is not a split name optionally followed by a slice, e.g. 'validation', "
            f"'train[:1000]', 'train[1000:]', 'train[:5%]'"
        )
    name, start, stop = match.groups()
    has_slice = "[" in split
    return name, (slice(start, stop) if has_slice else None)


def _resolve_bound(bound: str | None, size: int) -> int | None:
    if bound is None:
        return None
    if bound.endswith("%"):
        return round(int(bound[:-1]) * size / 100)
    return int(bound)


def _slice_range(split_slice: slice, size: int) -> range:
    """The rows of a split of `size` rows selected by `split_slice` (Python slice semantics)."""
    start = _resolve_bound(split_slice.start, size)
    stop = _resolve_bound(split_slice.stop, size)
    return range(size)[slice(start, stop)]


# ----------------------------------------------------------------------------------------------------------------
# Tokenization and cleaning (module-level functions: `datasets.map` pickles them for num_proc > 1)
# ----------------------------------------------------------------------------------------------------------------


class _RowError(ValueError):
    """A raw row whose language column is not text (the caller adds which split it is in)."""


def _is_text_feature(feature: Any) -> bool:
    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


def _texts_of_batch(
    batch: dict[str, list[Any]], layout: str, source_lang: str, target_lang: str, indices: Any = None
) -> tuple[list[str], list[str]]:
    """Source and target strings of a batch of raw rows (None and missing languages become "", counted as empty).

    Raises `_RowError` naming the row (from `indices`, when given) and column for a value that is not text.
    """
    def bad(position: int, column: str, value: Any) -> _RowError:
        row = f"row {indices[position]}" if indices is not None else "a row"
        return _RowError(f"{row}: column {column!r} holds a value of type {type(value).__name__} "
                         f"({str(value)[:60]!r}), not text: fix or remove that row")

    if layout == "translation":
        pairs = batch["translation"]
        for position, pair in enumerate(pairs):
            if pair is not None and not isinstance(pair, dict):
                raise bad(position, "translation", pair)
        sources = [(pair or {}).get(source_lang) for pair in pairs]
        targets = [(pair or {}).get(target_lang) for pair in pairs]
        columns = (f"translation.{source_lang}", f"translation.{target_lang}")
    else:
        sources, targets = batch[source_lang], batch[target_lang]
        columns = (source_lang, target_lang)
    for column, texts in zip(columns, (sources, targets)):
        for position, text in enumerate(texts):
            if text is not None and not isinstance(text, str):
                raise bad(position, column, text)
    return [text or "" for text in sources], [text or "" for text in targets]


def _truncate(ids: list[int], max_length: int) -> list[int]:
    """`ids` cut to `max_length`, keeping the final `</s>`."""
    return ids if len(ids) <= max_length else [*ids[: max_length - 1], ids[-1]]


def encode_pairs(
    batch: dict[str, list[Any]],
    indices: list[int],
    tokenizer: PreTrainedTokenizerFast,
    layout: str,
    source_lang: str,
    target_lang: str,
    max_source_length: int,
    max_target_length: int,
    max_length_ratio: float,
    overlong: str,
    is_train: bool,
) -> dict[str, list[Any]]:
    """Tokenize a batch of sentence pairs and flag each one (see `REPORT_KEYS`); for `datasets.map(batched=True)`.

    Train: empty pairs, pairs with a bad length ratio and (with overlong="drop") overlong pairs are flagged dropped;
    with overlong="truncate" overlong pairs are cut (keeping `</s>`). Evaluation: only empty pairs are dropped;
    overlong pairs are truncated (the raw strings stay whole) and a bad ratio is only reported.
    """
    sources, targets = _texts_of_batch(batch, layout, source_lang, target_lang, indices)
    source_ids = tokenizer(sources, add_special_tokens=True, return_attention_mask=False)["input_ids"]
    target_ids = tokenizer(targets, add_special_tokens=True, return_attention_mask=False)["input_ids"]
    flags = []
    for i, (source, target) in enumerate(zip(sources, targets)):
        flag = 0
        if not source.strip() or not target.strip():
            flag = _EMPTY | _DROPPED
        else:
            source_length, target_length = len(source_ids[i]), len(target_ids[i])
            if max(source_length, target_length) > max_length_ratio * min(source_length, target_length):
                flag |= _BAD_RATIO
                if is_train:
                    flag |= _DROPPED
            if source_length > max_source_length or target_length > max_target_length:
                flag |= _TOO_LONG
                if is_train and overlong == "drop":
                    flag |= _DROPPED
            if flag & _TOO_LONG and not flag & _DROPPED:
                flag |= _TRUNCATED
                source_ids[i] = _truncate(source_ids[i], max_source_length)
                target_ids[i] = _truncate(target_ids[i], max_target_length)
        flags.append(flag)
    return {
        "id": list(indices),
        "source": sources,
        "target": targets,
        "input_ids": source_ids,
        "labels": target_ids,
        "source_length": [len(ids) for ids in source_ids],
        "target_length": [len(ids) for ids in target_ids],
        "flags": flags,
    }


def encode_sources(
    batch: dict[str, list[Any]], indices: list[int], tokenizer: PreTrainedTokenizerFast, max_source_length: int
) -> dict[str, list[Any]]:
    """Tokenize source sentences to translate (predict); overlong ones are truncated and flagged."""
    sources = [text or "" for text in batch["source"]]
    source_ids = tokenizer(sources, add_special_tokens=True, return_attention_mask=False)["input_ids"]
    flags = [_TOO_LONG | _TRUNCATED if len(ids) > max_source_length else 0 for ids in source_ids]
    source_ids = [_truncate(ids, max_source_length) for ids in source_ids]
    return {
        "id": list(indices),
        "source": sources,
        "input_ids": source_ids,
        "source_length": [len(ids) for ids in source_ids],
        "flags": flags,
    }


def cleaning_counts(flags: np.ndarray) -> dict[str, int]:
    """The `REPORT_KEYS` counts of an array of per-example flags."""
    flags = np.asarray(flags, dtype=np.int64)
    dropped = int(np.count_nonzero(flags & _DROPPED))
    counts = {"total": int(flags.size), "kept": int(flags.size) - dropped, "dropped": dropped}
    for key, bit in _FLAG_OF_KEY.items():
        counts[key] = int(np.count_nonzero(flags & bit))
    return {key: counts[key] for key in REPORT_KEYS}


# ----------------------------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------------------------


class TranslationCollator:
    """Pads a list of tokenized examples into a batch dict.

    Keys: `input_ids` (B, S) right-padded with `pad_token_id`, `attention_mask` (B, S), `labels` (B, T) with -100 on
    padding (the model shifts labels right itself), `ids` (B,) the examples' row numbers in their split, `sources`
    and `references` (raw strings). Examples without `labels` (predict) give no `labels` / `references`.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    @staticmethod
    def _pad(sequences: list[list[int]], value: int) -> torch.Tensor:
        padded = torch.full((len(sequences), max(len(seq) for seq in sequences)), value, dtype=torch.long)
        for row, seq in enumerate(sequences):
            padded[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        return padded

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        input_ids = self._pad([example["input_ids"] for example in examples], self.pad_token_id)
        batch: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": (input_ids != self.pad_token_id).long(),
            "ids": torch.as_tensor([example["id"] for example in examples], dtype=torch.long),
            "sources": [example["source"] for example in examples],
        }
        # `</s>` ends every sequence, so a source never ends in pad ids it would need: the mask is exact.
        if "labels" in examples[0]:
            batch["labels"] = self._pad([example["labels"] for example in examples], LABEL_PAD_ID)
            batch["references"] = [example["target"] for example in examples]
        return batch


class StreamingTokenBudgetBatches(IterableDataset):
    """Token-budget batches from a stream of tokenized examples: bucket a buffer, cut batches, shuffle their order.

    Args:
        examples: A `datasets.IterableDataset` of rows as `encode_pairs` makes them (dropped rows are skipped).
        collate: Turns a list of rows into a batch.
        max_tokens: Token budget of a batch (exactly one of it and `batch_size`).
        batch_size: Fixed number of examples per batch instead.
        buffer_size: Examples read before they are sorted and batched.
        seed: With the epoch, rank and worker, seeds the order within each buffer.
        rank: This process's rank (only for the seed: the stream is already sharded).
    """

    def __init__(
        self,
        examples: datasets.IterableDataset,
        collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
        max_tokens: int | None,
        batch_size: int | None,
        buffer_size: int,
        seed: int,
        rank: int = 0,
    ) -> None:
        self.examples = examples
        self.collate = collate
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.buffer_size = buffer_size
        self.seed = seed
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next pass produces."""
        self.epoch = epoch

    def _buffer_seed(self, worker_id: int, buffer_index: int) -> int:
        """Seed of one buffer's order: a function of (seed, epoch, rank, worker, buffer)."""
        entropy = [self.seed, self.epoch, self.rank, worker_id, buffer_index]
        return int(np.random.SeedSequence(entropy).generate_state(1)[0])

    def _batches_of_buffer(self, buffer: list[dict[str, Any]], buffer_seed: int) -> Iterator[dict[str, Any]]:
        lengths = [(row["source_length"], row["target_length"]) for row in buffer]
        sampler = TokenBudgetBatchSampler(
            lengths, max_tokens=self.max_tokens, batch_size=self.batch_size, shuffle=True, seed=buffer_seed
        )
        for batch in sampler:
            yield self.collate([buffer[i] for i in batch])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = torch.utils.data.get_worker_info()
        worker_id = 0 if worker is None else worker.id
        self.examples.set_epoch(self.epoch)
        flags: list[int] = []
        buffer: list[dict[str, Any]] = []
        buffers = 0
        for row in self.examples:
            flags.append(row["flags"])
            if row["flags"] & _DROPPED:
                continue
            buffer.append(row)
            if len(buffer) >= self.buffer_size:
                yield from self._batches_of_buffer(buffer, self._buffer_seed(worker_id, buffers))
                buffer, buffers = [], buffers + 1
        if buffer:
            yield from self._batches_of_buffer(buffer, self._buffer_seed(worker_id, buffers))
        counts = cleaning_counts(np.asarray(flags, dtype=np.int64))
        logger.info(
            "streamed train split (epoch %d, rank %d, worker %d) cleaning report: %s",
            self.epoch, self.rank, worker_id, counts,
        )


class EpochAwareDataLoader(DataLoader):
    """A DataLoader over a `StreamingTokenBudgetBatches` that tells it the epoch each time it is iterated.

    Lightning calls `set_epoch` only on a loader's sampler, which an iterable dataset cannot have; this loader asks
    `epoch_fn` (the trainer's epoch) when a pass starts, before the dataset is handed to workers.
    """

    def __init__(
        self,
        dataset: StreamingTokenBudgetBatches,
        epoch_fn: Callable[[], int],
        num_workers: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(dataset, batch_size=None, num_workers=num_workers, generator=generator)
        self.epoch_fn = epoch_fn

    def __iter__(self) -> Iterator[Any]:
        self.dataset.set_epoch(self.epoch_fn())
        return super().__iter__()


# ----------------------------------------------------------------------------------------------------------------
# The data module
# ----------------------------------------------------------------------------------------------------------------

#: Integer arguments of `TranslationDataModule` that may be None.
_OPTIONAL_INT_ARGUMENTS = frozenset(
    {"tokenizer_training_pairs", "max_tokens", "batch_size", "eval_max_tokens", "eval_batch_size"}
)


def _check_int(name: str, value: object, minimum: int, optional: bool = False) -> None:
    """Raise a ValueError naming `name` unless `value` is an int (not a bool) >= `minimum` (or None if optional)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = f"None or an int >= {minimum}" if optional else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


#: The tokenized splits each trainer stage needs.
_ROLES_OF_STAGE = {
    "fit": ("train", "validation"),
    "validate": ("validation",),
    "test": ("test",),
    "predict": ("predict",),
}


def cached_tokenizer(folder: Path, train: Callable[[], PreTrainedTokenizerFast]) -> PreTrainedTokenizerFast:
    """The tokenizer saved in `folder`, or `train()`'s result saved there first. A file lock makes processes started
    together (DDP ranks) train once; the folder appears whole (saved aside, then renamed) or not at all."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / "tokenizer.json").is_file():
            logger.info("loading the cached tokenizer from %s", folder)
        else:
            start = time.perf_counter()
            tokenizer = train()
            partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
            shutil.rmtree(partial, ignore_errors=True)
            tokenizer.save_pretrained(str(partial))
            os.replace(partial, folder)
            logger.info("trained the tokenizer (%d tokens) in %.1f s, saved to %s", len(tokenizer),
                        time.perf_counter() - start, folder)
        return load_tokenizer(folder)


class TokenizerLinks:
    """What the CLI links from a data module into the model (lightning_modules/cli.py): the size of the data module's
    `tokenizer` and its special ids. The decoder starts from `<s>`."""

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


class TranslationDataModule(TokenizerLinks, LightningDataModule):
    """Parallel corpus -> tokenized, cleaned, token-budget batches for training, evaluation and prediction.

    Args:
        dataset: Hub repository id (`"bentrevett/multi30k"`, `"wmt/wmt14"`) or a local folder `load_dataset` reads.
        dataset_config: Its configuration, e.g. `"de-en"` for `wmt/wmt14`.
        revision: Hub revision to read, e.g. `"refs/convert/parquet"`: the hub's parquet conversion of a dataset
            whose loading script `datasets` 5 refuses (`IWSLT/iwslt2017`).
        data_files: Local files per split instead of `dataset`: parquet, json/jsonl or csv files, or a pair
            `[source_file, target_file]` of aligned plain-text files (one sentence per line; `.gz` accepted).
        source_lang: Source language (column name, or key inside the `translation` column).
        target_lang: Target language.
        train_split: Split to train on (slices allowed: `"train[1000:]"`).
        validation_split: Split for validation (`"train[:1000]"` for a corpus without one).
        test_split: Split for testing.
        streaming: Stream the training split instead of downloading/preparing it (see the module docstring).
        tokenizer_path: Folder of an existing tokenizer to use instead of training one.
        vocab_size: Size of the joint BPE vocabulary trained on the training split (the paper: about 37000).
        tokenizer_training_pairs: Train the tokenizer on at most this many pairs (a seeded random sample; the first
            ones when streaming); None uses the whole training split.
        cache_dir: Where the tokenizer and the tokenized splits are cached.
        max_source_length: Longest source in tokens, `</s>` included.
        max_target_length: Longest target in tokens, `</s>` included.
        max_length_ratio: Training pairs whose longer side has more than this many times the tokens of the shorter
            one are dropped (Moses `clean-corpus-n` style); evaluation pairs are only counted.
        overlong: What to do with training pairs over a length limit: "drop" them or "truncate" them (keeping
            `</s>`). Evaluation pairs are never dropped for length: they are truncated, their raw text kept whole.
        max_tokens: Training batches hold at most this many padded tokens per side (exactly one of it and
            `batch_size`; set `max_tokens: null` to use `batch_size`).
        batch_size: Fixed number of pairs per training batch instead.
        eval_max_tokens: Token budget of validation/test/predict batches (exactly one of it and `eval_batch_size`).
        eval_batch_size: Fixed number of pairs per validation/test/predict batch instead.
        predict_file: Plain-text file, one source sentence per line, translated by `trainer.predict`.
        num_workers: DataLoader worker processes.
        num_proc: Processes for tokenizing with `datasets.map`.
        seed: Seed of the batch order (and of the tokenizer's training sample).
        streaming_buffer_size: With `streaming`, examples bucketed together before batching.

    Properties for LightningCLI links into the model: `tokenizer`, `vocab_size` (the tokenizer's, not the
    requested one), `pad_token_id`, `bos_token_id`, `eos_token_id`, `decoder_start_token_id`; and `dataset_name`.
    """

    def __init__(
        self,
        dataset: str | None = None,
        dataset_config: str | None = None,
        revision: str | None = None,
        data_files: dict[str, str | list[str]] | None = None,
        source_lang: str = "de",
        target_lang: str = "en",
        train_split: str = "train",
        validation_split: str = "validation",
        test_split: str = "test",
        streaming: bool = False,
        tokenizer_path: str | None = None,
        vocab_size: int = 37000,
        tokenizer_training_pairs: int | None = None,
        cache_dir: str = "cache",
        max_source_length: int = 256,
        max_target_length: int = 256,
        max_length_ratio: float = 9.0,
        overlong: str = "drop",
        max_tokens: int | None = 4096,
        batch_size: int | None = None,
        eval_max_tokens: int | None = None,
        eval_batch_size: int | None = 64,
        predict_file: str | None = None,
        num_workers: int = 0,
        num_proc: int = 1,
        seed: int = 0,
        streaming_buffer_size: int = 50000,
    ) -> None:
        super().__init__()
        if (dataset is None) == (data_files is None):
            raise ValueError(
                "give exactly one of dataset (a hub id such as 'bentrevett/multi30k', or a local dataset folder) and "
                f"data_files (local files per split), got dataset={dataset!r} and data_files={data_files!r}"
            )
        if data_files is not None:
            data_files = self._check_data_files(data_files)
        for name, value in (("source_lang", source_lang), ("target_lang", target_lang)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty str (a language code), got {value!r}")
        if source_lang == target_lang:
            raise ValueError(f"source_lang and target_lang must differ, both are {source_lang!r}")
        for name, value in (("train_split", train_split), ("validation_split", validation_split),
                            ("test_split", test_split)):
            try:
                parse_split(value)
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from None
        if overlong not in ("drop", "truncate"):
            raise ValueError(f"overlong must be 'drop' or 'truncate', got {overlong!r}")
        for name, value, minimum in (
            ("max_source_length", max_source_length, 2),
            ("max_target_length", max_target_length, 2),
            ("num_workers", num_workers, 0),
            ("num_proc", num_proc, 1),
            ("seed", seed, 0),
            ("streaming_buffer_size", streaming_buffer_size, 1),
            ("tokenizer_training_pairs", tokenizer_training_pairs, 1),
            ("max_tokens", max_tokens, 1),
            ("batch_size", batch_size, 1),
            ("eval_max_tokens", eval_max_tokens, 1),
            ("eval_batch_size", eval_batch_size, 1),
        ):
            _check_int(name, value, minimum, optional=name in _OPTIONAL_INT_ARGUMENTS)
        if tokenizer_path is None:
            _check_int("vocab_size", vocab_size, MIN_VOCAB_SIZE)
        if isinstance(max_length_ratio, bool) or not isinstance(max_length_ratio, (int, float)) or max_length_ratio < 1:
            raise ValueError(f"max_length_ratio must be a number >= 1, got {max_length_ratio!r}")
        longest = max(max_source_length, max_target_length)
        for budget_name, budget, size_name, size in (
            ("max_tokens", max_tokens, "batch_size", batch_size),
            ("eval_max_tokens", eval_max_tokens, "eval_batch_size", eval_batch_size),
        ):
            if (budget is None) == (size is None):
                raise ValueError(
                    f"give exactly one of {budget_name} and {size_name}, got {budget_name}={budget!r} and "
                    f"{size_name}={size!r} (set the other to null)"
                )
            if budget is not None and budget < longest:
                raise ValueError(
                    f"{budget_name}={budget} is smaller than the longest allowed example "
                    f"(max(max_source_length, max_target_length) = {longest}): raise {budget_name} or lower the "
                    f"length limits"
                )

        self.dataset = dataset
        self.dataset_config = dataset_config
        self.revision = revision
        self.data_files = data_files
        self.source_lang = source_lang
        self.target_lang = target_lang
        self.train_split = train_split
        self.validation_split = validation_split
        self.test_split = test_split
        self.streaming = streaming
        self.tokenizer_path = tokenizer_path
        self.requested_vocab_size = vocab_size
        self.tokenizer_training_pairs = tokenizer_training_pairs
        self.cache_dir = cache_dir
        self.max_source_length = max_source_length
        self.max_target_length = max_target_length
        self.max_length_ratio = float(max_length_ratio)
        self.overlong = overlong
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.eval_max_tokens = eval_max_tokens
        self.eval_batch_size = eval_batch_size
        self.predict_file = predict_file
        self.num_workers = num_workers
        self.num_proc = num_proc
        self.seed = seed
        self.streaming_buffer_size = streaming_buffer_size

        #: Per split name: counts of `REPORT_KEYS` ("predict" too); filled as splits are prepared.
        self.cleaning_report: dict[str, dict[str, int]] = {}
        #: Fraction of pad tokens in this epoch's training batches (source and target), set by `train_dataloader`.
        self.train_padding_fraction: float | None = None
        self._tokenizer: PreTrainedTokenizerFast | None = None
        self._splits: dict[str, datasets.Dataset] = {}
        self._train_sampler: TokenBudgetBatchSampler | None = None
        self._resume_state: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------------------------------------
    # Properties linked into the model
    # ------------------------------------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> PreTrainedTokenizerFast:
        """The joint tokenizer: loaded from `tokenizer_path`, from the cache, or trained now (first access)."""
        if self._tokenizer is None:
            if self.tokenizer_path is not None:
                self._tokenizer = load_tokenizer(self.tokenizer_path)
            else:
                self._tokenizer = self._cached_or_trained_tokenizer()
        return self._tokenizer

    @property
    def dataset_name(self) -> str:
        """Name of the corpus for the model card: the hub id (with its config) or the local training files."""
        if self.dataset is not None:
            return self.dataset if self.dataset_config is None else f"{self.dataset} ({self.dataset_config})"
        name, _ = parse_split(self.train_split)
        files = self.data_files.get(name, [])
        return "local files: " + ", ".join(Path(path).name for path in files)

    # ------------------------------------------------------------------------------------------------------------
    # Loading raw splits
    # ------------------------------------------------------------------------------------------------------------

    @staticmethod
    def _check_data_files(data_files: dict[str, str | list[str]]) -> dict[str, list[str]]:
        if not isinstance(data_files, dict) or not data_files:
            raise ValueError(
                f"data_files must be a non-empty dict {{split: file or [files]}}, got {data_files!r}; e.g. "
                "{'train': ['train.de.gz', 'train.en.gz'], 'validation': 'valid.jsonl'}"
            )
        checked = {}
        for split, files in data_files.items():
            paths = [files] if isinstance(files, (str, os.PathLike)) else list(files)
            if not paths:
                raise ValueError(f"data_files[{split!r}] is empty: give a file or a [source_file, target_file] pair")
            paths = [os.fspath(path) for path in paths]
            for path in paths:
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"data_files[{split!r}]: {path!r} does not exist or is not a file")
            builders = {_builder_for(path) for path in paths}
            if None in builders and (len(builders) > 1 or len(paths) != 2):
                raise ValueError(
                    f"data_files[{split!r}] = {paths}: plain-text data must be a pair [source_file, target_file] of "
                    f"aligned files; structured files must end in one of {sorted(_BUILDER_OF_SUFFIX)} (optionally "
                    f"compressed)"
                )
            if len(builders) > 1:
                raise ValueError(f"data_files[{split!r}] = {paths} mixes file formats: use one format per split")
            checked[str(split)] = paths
        return checked

    def _where(self, split: str) -> str:
        """How a split is named in error messages."""
        if self.dataset is not None:
            config = "" if self.dataset_config is None else f", config {self.dataset_config!r}"
            return f"split {split!r} of dataset {self.dataset!r}{config}"
        name, _ = parse_split(split)
        return f"split {split!r} (data_files[{name!r}] = {self.data_files.get(name)})"

    def _load_base_split(self, name: str, streaming: bool) -> datasets.Dataset | datasets.IterableDataset:
        """The whole split `name` (no slice), as `datasets` loads it."""
        if self.data_files is not None:
            if name not in self.data_files:
                raise ValueError(
                    f"data_files has no entry for split {name!r}: it has {sorted(self.data_files)}; add one, or take "
                    f"a slice of another split (e.g. validation_split: 'train[:1000]')"
                )
            paths = self.data_files[name]
            builder = _builder_for(paths[0])
            if builder is None:
                return self._load_text_pair(name, paths, streaming)
            return self._load_structured_files(name, paths, builder, streaming)
        try:
            return datasets.load_dataset(
                self.dataset, self.dataset_config, split=name, streaming=streaming, revision=self.revision
            )
        except ValueError as error:
            if "split" not in str(error).lower():
                raise
            raise ValueError(
                f"{self._where(name)} does not exist ({error}); for a corpus with only a train split use e.g. "
                f"train_split: 'train[1000:]' and validation_split: 'train[:1000]'"
            ) from error

    def _load_structured_files(
        self, name: str, paths: list[str], builder: str, streaming: bool
    ) -> datasets.Dataset | datasets.IterableDataset:
        """`load_dataset(builder)` of local files; empty, non-UTF-8 or malformed files give a ValueError naming them
        (instead of a `StopIteration`, `UnicodeDecodeError` or `DatasetGenerationError` without a file name)."""
        where = f"data_files[{name!r}]"
        for path in paths:
            if builder in ("json", "csv"):  # text formats must be UTF-8; parquet and arrow are binary
                empty = scan_text_file(path, f"{where}: file") == 0
            else:
                empty = os.path.getsize(path) == 0
            if empty:
                raise ValueError(f"{where}: {path!r} is empty; give a file with one sentence pair per row")
        try:
            raw = datasets.load_dataset(builder, data_files={name: paths}, split=name, streaming=streaming)
        except Exception as error:  # the reader's own error is the cause of `datasets`' DatasetGenerationError
            cause = error.__cause__ or error
            raise ValueError(
                f"{where} = {paths} cannot be read as {builder} ({type(cause).__name__}: {cause}); rows are "
                f"counted from 0: fix or remove that row"
            ) from error
        if isinstance(raw, datasets.Dataset) and len(raw) == 0:
            raise ValueError(f"{where} = {paths} holds no rows")
        return raw

    def _load_text_pair(
        self, name: str, paths: list[str], streaming: bool
    ) -> datasets.Dataset | datasets.IterableDataset:
        source_path, target_path = paths
        source_count = scan_text_file(source_path, f"data_files[{name!r}]: source file")
        target_count = scan_text_file(target_path, f"data_files[{name!r}]: target file")
        if source_count != target_count:
            raise ValueError(
                f"data_files[{name!r}]: the plain-text files are not aligned: {source_path!r} has {source_count} "
                f"lines but {target_path!r} has {target_count}; they must hold one sentence pair per line"
            )
        if source_count == 0:
            raise ValueError(f"data_files[{name!r}]: {source_path!r} and {target_path!r} are empty (0 lines)")
        gen_kwargs = {
            "source_path": source_path,
            "target_path": target_path,
            "source_lang": self.source_lang,
            "target_lang": self.target_lang,
            "stamp": json.dumps([_file_stamp(source_path), _file_stamp(target_path)]),
        }
        features = datasets.Features({self.source_lang: datasets.Value("string"),
                                      self.target_lang: datasets.Value("string")})
        if streaming:
            return datasets.IterableDataset.from_generator(_read_text_pair, features=features, gen_kwargs=gen_kwargs)
        return datasets.Dataset.from_generator(
            _read_text_pair, features=features, gen_kwargs=gen_kwargs,
            fingerprint=_digest(["text-pair", CACHE_FORMAT_VERSION, gen_kwargs]),
        )

    def load_raw_split(self, split: str, streaming: bool = False) -> datasets.Dataset | datasets.IterableDataset:
        """The raw rows of `split` (slice applied), checked to hold both languages."""
        name, split_slice = parse_split(split)
        raw = self._load_base_split(name, streaming)
        try:  # before slicing: a row number in an error is the row of the whole split
            self._check_text_values(raw, split, self._layout(raw, split))
        except _RowError as error:
            raise ValueError(f"{self._where(name)}: {error}") from None
        if split_slice is not None:
            if isinstance(raw, datasets.IterableDataset):
                start, stop = split_slice.start, split_slice.stop
                if any(bound is not None and (bound.endswith("%") or bound.startswith("-")) for bound in (start, stop)):
                    raise ValueError(
                        f"{self._where(split)}: with streaming=True a split slice must use non-negative row numbers "
                        f"(e.g. 'train[:1000]', 'train[1000:]'); percents and negative bounds need the split's size"
                    )
                start = int(start or 0)
                raw = raw.skip(start) if start else raw
                raw = raw.take(int(stop) - start) if stop is not None else raw
            else:
                raw = raw.select(_slice_range(split_slice, len(raw)))
        return raw

    def _columns(self, raw: datasets.Dataset | datasets.IterableDataset) -> dict[str, list[str] | None]:
        """Column name -> languages inside it (for a `translation`-like column) or None."""
        features = raw.features
        if features is None:  # a stream without declared features: look at its first row
            first = next(iter(raw), None)
            if first is None:
                return {}
            return {key: sorted(value) if isinstance(value, dict) else None for key, value in first.items()}
        columns: dict[str, list[str] | None] = {}
        for key, feature in features.items():
            if isinstance(feature, datasets.Translation):
                columns[key] = list(feature.languages)
            elif isinstance(feature, dict):
                columns[key] = list(feature)
            elif isinstance(feature, datasets.Json) and isinstance(raw, datasets.Dataset):
                # Mixed-type JSON (e.g. some rows lack a language): the languages are the keys its dicts use.
                keys = {lang for value in raw[:1000][key] if isinstance(value, dict) for lang in value}
                columns[key] = sorted(keys) if keys else None
            else:
                columns[key] = None
        return columns

    def _check_text_values(self, raw: datasets.Dataset | datasets.IterableDataset, split: str, layout: str) -> None:
        """Raise a ValueError naming the column (and row) when the language columns do not hold text.

        Columns typed string pass at once; `Json`-typed columns (`datasets` gives mixed-type JSON that type) are
        read and checked row by row. Streams without declared features are checked as they are tokenized.
        """
        features = raw.features
        if features is None:
            return
        column = "translation" if layout == "translation" else None
        languages = (self.source_lang, self.target_lang)
        for name in [column] if column else languages:
            feature = features[name]
            if isinstance(feature, datasets.Translation):
                continue
            if isinstance(feature, dict):
                bad = {lang: sub for lang, sub in feature.items() if lang in languages and not _is_text_feature(sub)}
                if not bad:
                    continue
                lang, sub = next(iter(bad.items()))
                feature, name = sub, f"translation.{lang}"
            elif _is_text_feature(feature):
                continue
            if isinstance(feature, datasets.Json) and isinstance(raw, datasets.Dataset):
                for start in range(0, len(raw), 10000):
                    batch = raw[start : start + 10000]
                    rows = len(next(iter(batch.values())))
                    _texts_of_batch(batch, layout, *languages, indices=range(start, start + rows))
                continue
            raise ValueError(
                f"{self._where(split)}: column {name!r} has type {feature}, not text (a string column): convert it "
                f"to strings, or set source_lang/target_lang to the columns that hold the sentences"
            )

    def _layout(self, raw: datasets.Dataset | datasets.IterableDataset, split: str) -> str:
        """"flat" (one column per language) or "translation"; a ValueError listing what exists otherwise."""
        columns = self._columns(raw)
        source, target = self.source_lang, self.target_lang
        if source in columns and target in columns:
            return "flat"
        languages = columns.get("translation")
        if languages is not None:
            if source in languages and target in languages:
                return "translation"
            raise ValueError(
                f"{self._where(split)}: its 'translation' column has languages {languages}, which do not include "
                f"both source_lang={source!r} and target_lang={target!r}: set source_lang/target_lang to two of them"
            )
        described = ", ".join(
            f"{name!r}" if langs is None else f"{name!r} (languages {langs})" for name, langs in columns.items()
        )
        raise ValueError(
            f"{self._where(split)} has no columns for source_lang={source!r} and target_lang={target!r}; it has "
            f"columns [{described}]. Expected a 'translation' column of {{language: text}} dicts or one column per "
            f"language: set source_lang/target_lang to the names it uses"
        )

    # ------------------------------------------------------------------------------------------------------------
    # Tokenizer
    # ------------------------------------------------------------------------------------------------------------

    def _data_identity(self, splits: list[str] | None = None) -> dict[str, Any]:
        """What identifies the data (of `splits`' files, for local files): hashed into cache keys."""
        if self.dataset is not None:
            identity: dict[str, Any] = {"dataset": self.dataset, "config": self.dataset_config}
            if self.revision is not None:
                identity["revision"] = self.revision
            if os.path.isdir(self.dataset):
                identity["files"] = _folder_stamp(self.dataset)
            return identity
        names = sorted(self.data_files) if splits is None else [parse_split(split)[0] for split in splits]
        return {
            "data_files": {
                name: [_file_stamp(path) for path in self.data_files[name]]
                for name in names if name in self.data_files
            }
        }

    def tokenizer_cache_path(self) -> Path:
        """The folder the trained tokenizer is cached in (keyed by data, languages and vocabulary settings)."""
        key = _digest({
            "version": CACHE_FORMAT_VERSION,
            "data": self._data_identity([self.train_split]),
            "train_split": self.train_split,
            "languages": [self.source_lang, self.target_lang],
            "vocab_size": self.requested_vocab_size,
            "training_pairs": self.tokenizer_training_pairs,
            "seed": self.seed if self.tokenizer_training_pairs is not None else None,
        }, length=12)
        return Path(self.cache_dir) / "tokenizers" / f"{self._short_name()}-{self.source_lang}-{self.target_lang}-{key}"

    def _short_name(self) -> str:
        """A readable file-name part for the data: hub id, local folder name, or first training file name."""
        if self.dataset is not None:
            name = Path(self.dataset).name if os.path.isdir(self.dataset) else self.dataset.replace("/", "--")
        else:
            name = Path(self.data_files.get(parse_split(self.train_split)[0], ["local"])[0]).name
        return _slug(name)

    def _tokenizer_training_pairs(self) -> Iterator[tuple[str, str]]:
        """Sentence pairs of the training split the tokenizer learns from (capped by tokenizer_training_pairs)."""
        raw = self.load_raw_split(self.train_split, streaming=self.streaming)
        layout = self._layout(raw, self.train_split)
        cap = self.tokenizer_training_pairs
        if isinstance(raw, datasets.IterableDataset):
            if cap is not None:
                raw = raw.take(cap)
        elif cap is not None and cap < len(raw):
            raw = raw.shuffle(seed=self.seed).select(range(cap))
        try:
            for batch in raw.iter(batch_size=1000):
                yield from zip(*_texts_of_batch(batch, layout, self.source_lang, self.target_lang))
        except _RowError as error:  # a stream is checked only as it is read
            raise ValueError(f"{self._where(self.train_split)}: {error}") from None

    def _cached_or_trained_tokenizer(self) -> PreTrainedTokenizerFast:
        def train() -> PreTrainedTokenizerFast:
            logger.info(
                "training a %d-token joint BPE tokenizer on %s (%s -> %s)",
                self.requested_vocab_size, self._where(self.train_split), self.source_lang, self.target_lang,
            )
            pairs = iter_parallel_texts(self._tokenizer_training_pairs())
            return train_tokenizer(pairs, vocab_size=self.requested_vocab_size)

        return cached_tokenizer(self.tokenizer_cache_path(), train)

    # ------------------------------------------------------------------------------------------------------------
    # Tokenized splits
    # ------------------------------------------------------------------------------------------------------------

    def _encode_kwargs(self, layout: str, is_train: bool) -> dict[str, Any]:
        return {
            "tokenizer": self.tokenizer,
            "layout": layout,
            "source_lang": self.source_lang,
            "target_lang": self.target_lang,
            "max_source_length": self.max_source_length,
            "max_target_length": self.max_target_length,
            "max_length_ratio": self.max_length_ratio,
            "overlong": self.overlong,
            "is_train": is_train,
        }

    def _cache_key(self, split: str, is_train: bool) -> str:
        return _digest({
            "version": CACHE_FORMAT_VERSION,
            "data": self._data_identity([split]),
            "split": split,
            "tokenizer": hashlib.sha256(self.tokenizer.backend_tokenizer.to_str().encode()).hexdigest(),
            "languages": [self.source_lang, self.target_lang],
            "lengths": [self.max_source_length, self.max_target_length, self.max_length_ratio, self.overlong],
            "is_train": is_train,
        })

    def _is_global_zero(self) -> bool:
        return self.trainer is None or self.trainer.is_global_zero

    def _record_report(self, role: str, split: str, counts: dict[str, int]) -> None:
        self.cleaning_report[role] = counts
        if self._is_global_zero():
            logger.info("%s (%s) cleaning report: %s", role, self._where(split), counts)

    def tokenized_split(self, role: str) -> datasets.Dataset:
        """The tokenized, cleaned split for `role` ("train", "validation", "test"), cached under `cache_dir`.

        Columns: `id` (row number in the split), `source`, `target`, `input_ids`, `labels`, `source_length`,
        `target_length`, `flags`. Also records `cleaning_report[role]`.
        """
        if role in self._splits:
            return self._splits[role]
        split = {"train": self.train_split, "validation": self.validation_split, "test": self.test_split}[role]
        is_train = role == "train"
        if self.streaming:
            # Evaluation splits are small: read the stream into memory (never the whole training split).
            rows = list(self.load_raw_split(split, streaming=True))
            if not rows:
                raise ValueError(f"{self._where(split)} is empty")
            raw = datasets.Dataset.from_list(rows)
        else:
            raw = self.load_raw_split(split)
        layout = self._layout(raw, split)
        key = self._cache_key(split, is_train)
        cache_file = Path(self.cache_dir) / "tokenized" / f"{self._short_name()}-{_slug(split)}-{key}.arrow"
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        encoded = raw.map(
            encode_pairs,
            batched=True,
            with_indices=True,
            fn_kwargs=self._encode_kwargs(layout, is_train),
            remove_columns=raw.column_names,
            num_proc=self.num_proc if self.num_proc > 1 else None,
            cache_file_name=str(cache_file),
            new_fingerprint=key,
            desc=f"tokenizing {role}",
        )
        flags = np.asarray(encoded.with_format("numpy")["flags"], dtype=np.int64)
        self._record_report(role, split, cleaning_counts(flags))
        kept = np.flatnonzero((flags & _DROPPED) == 0)
        if kept.size == 0:
            raise ValueError(
                f"{self._where(split)}: cleaning dropped all {len(flags)} pairs ({self.cleaning_report[role]}): "
                f"check source_lang/target_lang and the files, or loosen max_source_length/max_target_length/"
                f"max_length_ratio (overlong: 'truncate' keeps long pairs)"
            )
        cleaned = encoded if kept.size == len(encoded) else encoded.select(kept)
        self._splits[role] = cleaned
        return cleaned

    def predict_split(self) -> datasets.Dataset:
        """The tokenized `predict_file` lines (all kept, in file order; overlong ones truncated)."""
        if "predict" in self._splits:
            return self._splits["predict"]
        if self.predict_file is None:
            raise ValueError("predict needs predict_file: a plain-text file with one source sentence per line")
        if not os.path.isfile(self.predict_file):
            raise FileNotFoundError(f"predict_file {self.predict_file!r} does not exist or is not a file")
        scan_text_file(self.predict_file, "predict_file")
        lines = read_lines(self.predict_file)
        if not lines:
            raise ValueError(f"predict_file {self.predict_file!r} is empty: it needs one source sentence per line")
        raw = datasets.Dataset.from_dict({"source": lines})
        encoded = raw.map(
            encode_sources, batched=True, with_indices=True, remove_columns=["source"],
            fn_kwargs={"tokenizer": self.tokenizer, "max_source_length": self.max_source_length},
        )
        flags = np.asarray(encoded.with_format("numpy")["flags"], dtype=np.int64)
        self._record_report("predict", self.predict_file, cleaning_counts(flags))
        self._splits["predict"] = encoded
        return encoded

    def _streaming_train(self, rank: int, world_size: int) -> datasets.IterableDataset:
        raw = self.load_raw_split(self.train_split, streaming=True)
        layout = self._layout(raw, self.train_split)
        if world_size > 1:
            raw = split_dataset_by_node(raw, rank=rank, world_size=world_size)
        columns = raw.column_names or list(self._columns(raw))
        return raw.map(
            encode_pairs, batched=True, with_indices=True, remove_columns=columns,
            fn_kwargs=self._encode_kwargs(layout, is_train=True),
        )

    # ------------------------------------------------------------------------------------------------------------
    # Lightning hooks
    # ------------------------------------------------------------------------------------------------------------

    def _prepare(self, stages: list[str]) -> None:
        """Tokenize (or load from the cache) the splits `stages` need."""
        for stage in stages:
            for role in _ROLES_OF_STAGE[stage]:
                if role == "predict":
                    self.predict_split()
                elif not (role == "train" and self.streaming):  # the streamed train split is read on the fly
                    self.tokenized_split(role)

    def prepare_data(self) -> None:
        """Download, train or load the tokenizer, tokenize the splits the trainer's stage needs (all without a
        trainer) into the cache; Lightning runs it on one process per node before `setup` runs on all."""
        _ = self.tokenizer
        stage = None if self.trainer is None else self.trainer.state.fn  # a TrainerFn: "fit", "test", ...
        self._prepare(["fit", "test"] if stage is None else [stage.value])

    def setup(self, stage: str) -> None:
        """Load the tokenized splits `stage` needs ("fit", "validate", "test", "predict"); idempotent."""
        if stage not in _ROLES_OF_STAGE:
            raise ValueError(f"unknown stage {stage!r}: expected one of {sorted(_ROLES_OF_STAGE)}")
        self._prepare([stage])

    def _world(self) -> tuple[int, int]:
        """(world_size, global_rank) of the attached trainer, (1, 0) without one."""
        if self.trainer is None:
            return 1, 0
        return self.trainer.world_size, self.trainer.global_rank

    def _trainer_epoch(self) -> int:
        """The epoch the trainer runs or is about to run (what Lightning passes to `set_epoch`); 0 without one."""
        if self.trainer is None:
            return 0
        return self.trainer.fit_loop.epoch_progress.current.processed

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)

    def train_dataloader(self) -> DataLoader:
        """Token-budget batches, shuffled per epoch, sharded over the trainer's ranks (resumes mid-epoch)."""
        world_size, rank = self._world()
        collate = TranslationCollator(self.pad_token_id)
        if self.streaming:
            batches = StreamingTokenBudgetBatches(
                self._streaming_train(rank, world_size), collate, max_tokens=self.max_tokens,
                batch_size=self.batch_size, buffer_size=self.streaming_buffer_size, seed=self.seed, rank=rank,
            )
            return EpochAwareDataLoader(batches, epoch_fn=self._trainer_epoch, num_workers=self.num_workers,
                                        generator=self._generator())
        train = self.tokenized_split("train")
        lengths = np.stack([np.asarray(train.with_format("numpy")["source_length"]),
                            np.asarray(train.with_format("numpy")["target_length"])], axis=1)
        sampler = TokenBudgetBatchSampler(
            lengths, max_tokens=self.max_tokens, batch_size=self.batch_size, shuffle=True, seed=self.seed,
            num_replicas=world_size, rank=rank,
        )
        # The loader's first batch is fetched before Lightning calls set_epoch: select the epoch now.
        sampler.set_epoch(self._trainer_epoch())
        if self._resume_state is not None:
            self._apply_resume_state(sampler, self._resume_state)
            self._resume_state = None  # used up: a later loader (a new fit) starts where the trainer says
        self._train_sampler = sampler
        self.train_padding_fraction = sampler.padding_fraction()
        if self._is_global_zero():
            logger.info(
                "train: %d examples in %d batches per rank (%d ranks), %s; padding %.2f%% of the padded tokens",
                len(train), len(sampler), world_size,
                f"max_tokens={self.max_tokens}" if self.max_tokens else f"batch_size={self.batch_size}",
                100 * self.train_padding_fraction,
            )
        return DataLoader(train, batch_sampler=sampler, collate_fn=collate, num_workers=self.num_workers,
                          generator=self._generator())

    def _eval_dataloader(self, split: datasets.Dataset, with_targets: bool = True) -> DataLoader:
        world_size, rank = self._world()
        columns = ["source_length", "target_length"] if with_targets else ["source_length"]
        numpy_split = split.with_format("numpy")
        lengths = np.stack([np.asarray(numpy_split[column]) for column in columns], axis=1) if len(split) else []
        if len(split) and not with_targets:
            lengths = lengths[:, 0]
        batches = EvalBatchSampler(lengths, max_tokens=self.eval_max_tokens, batch_size=self.eval_batch_size,
                                   num_replicas=world_size, rank=rank)
        return DataLoader(split, batch_sampler=batches, collate_fn=TranslationCollator(self.pad_token_id),
                          num_workers=self.num_workers, generator=self._generator())

    def val_dataloader(self) -> DataLoader:
        """Length-sorted validation batches (no shuffle), disjoint across ranks."""
        return self._eval_dataloader(self.tokenized_split("validation"))

    def test_dataloader(self) -> DataLoader:
        """Length-sorted test batches (no shuffle), disjoint across ranks."""
        return self._eval_dataloader(self.tokenized_split("test"))

    def predict_dataloader(self) -> DataLoader:
        """Length-sorted batches of `predict_file` (keys `ids`, `sources`, `input_ids`, `attention_mask`)."""
        return self._eval_dataloader(self.predict_split(), with_targets=False)

    # ------------------------------------------------------------------------------------------------------------
    # Checkpointed state: exact mid-epoch resume
    # ------------------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """`{"epoch", "batches_done", "epoch_finished", "streaming", ...sampler settings}` for the checkpoint.

        `epoch` is the trainer's current epoch and `batches_done` the training batches completed in it, read from
        `trainer.fit_loop.epoch_loop.batch_progress.current.processed` (it counts the batch whose
        `on_train_batch_end` saves the checkpoint; prefetched batches are not counted).
        """
        if self.trainer is not None:
            progress = self.trainer.fit_loop.epoch_loop.batch_progress
            state: dict[str, Any] = {
                "epoch": self.trainer.current_epoch,
                "batches_done": progress.current.processed,
                "epoch_finished": bool(progress.is_last_batch),
            }
        elif self._train_sampler is not None:
            sampler_state = self._train_sampler.state_dict()
            state = {"epoch": sampler_state["epoch"], "batches_done": sampler_state["batches_done"],
                     "epoch_finished": sampler_state["batches_done"] >= len(self._train_sampler)}
        else:
            state = {"epoch": 0, "batches_done": 0, "epoch_finished": False}
        state["streaming"] = self.streaming
        if self._train_sampler is not None:
            signature = self._train_sampler.state_dict()
            state.update({key: value for key, value in signature.items() if key not in ("epoch", "batches_done")})
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Remember where training stopped; the next train loader skips the batches done in that epoch."""
        for key in ("epoch", "batches_done"):
            if key not in state_dict:
                raise ValueError(f"data module state is missing {key!r}: got keys {sorted(state_dict)}")
        mid_epoch = state_dict["batches_done"] > 0 and not state_dict.get("epoch_finished", False)
        if self.streaming and mid_epoch:
            raise ValueError(
                f"cannot resume mid-epoch with streaming=True (the checkpoint stopped after "
                f"{state_dict['batches_done']} batches of epoch {state_dict['epoch']}): a stream has no random "
                "access. Resume from an end-of-epoch checkpoint, or with streaming=False"
            )
        self._resume_state = dict(state_dict)  # applied by the next train_dataloader()
        if self._train_sampler is not None and not self.streaming:  # or now, to a loader that already exists
            self._apply_resume_state(self._train_sampler, self._resume_state)

    def _apply_resume_state(self, sampler: TokenBudgetBatchSampler, state: dict[str, Any]) -> None:
        """Skip the batches `state` says were done, if `sampler` is at that epoch (later epochs start at 0)."""
        if state["epoch"] != sampler.epoch:
            return
        sampler_state = {key: value for key, value in state.items() if key not in ("epoch_finished", "streaming")}
        try:
            sampler.load_state_dict(sampler_state, strict=True)
        except ValueError as error:
            logger.warning("mid-epoch resume is approximate: %s", error)
            sampler.load_state_dict(sampler_state, strict=False)
        if self._is_global_zero():
            logger.info("resuming epoch %d after %d batches", state["epoch"], state["batches_done"])


__all__ = [
    "TranslationDataModule",
    "TranslationCollator",
    "StreamingTokenBudgetBatches",
    "EpochAwareDataLoader",
    "REPORT_KEYS",
    "LABEL_PAD_ID",
    "count_lines",
    "scan_text_file",
    "read_lines",
    "parse_split",
    "encode_pairs",
    "encode_sources",
    "cleaning_counts",
]
