"""Decoder-only language modelling with Lightning: `LanguageModelingDataModule` and `CausalLanguageModule`.

The model is `VaswaniForCausalLM` (the decoder stack alone, as in the Music Transformer, Huang et al. 2018), trained
to predict the next token. Thin on purpose, like `TranslationModule`: build the HF model, compute the loss
(`label_smoothed_loss` of §5.4, plain NLL with `label_smoothing: 0`), report loss and perplexity.

Data flow: load a split (hub repo by name, a local dataset folder, parquet/json/jsonl/csv files, or plain-text files,
one document per line, `.gz` accepted) -> take its `text_column` -> tokenize with the project's byte-level BPE
(trained on the training split and cached, or loaded) -> either

- `packing: "chunks"`: every document ends with `</s>`, all are concatenated and cut into sequences of exactly
  `sequence_length` tokens (the last partial one is dropped), no padding (GPT-2 / `run_clm` style), or
- `packing: "lines"`: one example per row, `<s>` + text + `</s>`, cut to `sequence_length`, padded per batch.

Blank rows are skipped and counted. Batches: `batch_size` sequences (or `max_tokens` padded tokens), shuffled as a
pure function of (seed, epoch), sharded over DDP ranks by `TokenBudgetBatchSampler`, resumable mid-epoch (the
data module's state says how many batches of the epoch were done). Trainer: `use_distributed_sampler=False`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerFast

from hf_transformer import VaswaniConfig, VaswaniForCausalLM
from hf_transformer.tokenization_vaswani import (
    MIN_VOCAB_SIZE,
    load_tokenizer,
    train_tokenizer,
)

from .data import LABEL_PAD_ID, TokenizerLinks, cached_tokenizer, parse_split
from .module import TranslationModule, label_smoothed_loss
from .sampler import EvalBatchSampler, TokenBudgetBatchSampler
from .schedules import inverse_sqrt_schedule, paper_adam

logger = logging.getLogger(__name__)

#: Bump when the tokenized output changes, so stale cache files are not reused.
CACHE_FORMAT_VERSION = 1

PACKING_MODES = ("chunks", "lines")
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz")
STRUCTURED_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".arrow": "arrow"}


def builder_of(path: str) -> str:
    """The `datasets` builder of a local file: parquet/json/csv/arrow by suffix, "text" otherwise (one line, one
    document; compressed files are read through their inner suffix)."""
    suffixes = [suffix.lower() for suffix in Path(path).suffixes]
    if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    return STRUCTURED_BUILDERS.get(suffixes[-1], "text") if suffixes else "text"


def digest(value: Any, length: int = 16) -> str:
    """Short stable hash of a JSON-serializable value (cache keys)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:length]


def file_stamp(path: str) -> list[Any]:
    """What identifies a local file's content cheaply: absolute path, size, modification time."""
    stat = os.stat(path)
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]


def encode_texts(batch: dict[str, list[Any]], tokenizer: PreTrainedTokenizerFast, column: str,
                 add_bos: bool) -> dict[str, list[Any]]:
    """Tokenize a batch of rows for `datasets.map(batched=True)`: blank rows give no ids (`length` 0)."""
    texts = [text if isinstance(text, str) else "" for text in batch[column]]
    non_blank = [text for text in texts if text.strip()]
    encoded = tokenizer(non_blank, add_special_tokens=True, return_attention_mask=False)["input_ids"] if non_blank \
        else []  # each ends with </s>
    prefix = [tokenizer.bos_token_id] if add_bos else []
    ids, kept = [], iter(encoded)
    for text in texts:
        ids.append([*prefix, *next(kept)] if text.strip() else [])
    return {"input_ids": ids, "length": [len(row) for row in ids]}


class TokenBlocks(Dataset):
    """Rows of a (N, L) array of token ids as `{"input_ids": ...}` examples (the "chunks" packing)."""

    def __init__(self, blocks: np.ndarray) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"input_ids": self.blocks[index], "id": index}


class LanguageModelingCollator:
    """Pads examples into `input_ids` (B, L) with `pad_token_id`, `attention_mask` (B, L), `labels` (B, L) equal to
    the inputs with -100 on padding (the module shifts them: position t predicts token t + 1), `ids` (B,)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        longest = max(len(example["input_ids"]) for example in examples)
        input_ids = torch.full((len(examples), longest), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
        for row, example in enumerate(examples):
            length = len(example["input_ids"])
            input_ids[row, :length] = torch.as_tensor(np.asarray(example["input_ids"]), dtype=torch.long)
            attention_mask[row, :length] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": input_ids.masked_fill(attention_mask == 0, LABEL_PAD_ID),
            "ids": torch.as_tensor([int(example["id"]) for example in examples], dtype=torch.long),
        }


class LanguageModelingDataModule(TokenizerLinks, LightningDataModule):
    """Monolingual text -> tokenized sequences for a decoder-only language model.

    Args:
        dataset: Hub repository id (e.g. `"Salesforce/wikitext"`) or a local folder `load_dataset` reads.
        dataset_config: Its configuration (e.g. `"wikitext-103-raw-v1"`).
        revision: Hub revision, e.g. `"refs/convert/parquet"` for the hub's parquet conversion of a dataset.
        data_files: Local files per split instead of `dataset`: parquet / json / jsonl / csv files (the text in
            `text_column`) or plain-text files (one document per line, `.gz`/`.bz2`/`.xz` accepted).
        text_column: Column holding the text in a dataset or structured file (plain-text files have `"text"`).
        train_split / validation_split / test_split: Split names, slices allowed as in `datasets`
            (`"train[:5%]"`, `"train[1000:]"`); a corpus with a train split only can use `"train[:1000]"` for
            validation.
        packing: "chunks" (concatenate documents, cut into `sequence_length`-token sequences) or "lines" (one
            example per row, cut to `sequence_length`).
        sequence_length: Tokens per training sequence (the context the model is trained on).
        tokenizer_path: Folder of an existing tokenizer instead of training one.
        vocab_size: Size of the byte-level BPE vocabulary trained on the training split.
        tokenizer_training_texts: Train the tokenizer on at most this many rows (a seeded sample); None: all.
        cache_dir: Where the tokenizer and the tokenized splits are cached (keyed by what determines them).
        batch_size: Sequences per training batch (exactly one of it and `max_tokens`).
        max_tokens: Padded tokens per training batch instead (length-bucketed; useful with "lines").
        eval_batch_size: Sequences per validation/test batch.
        num_workers: DataLoader worker processes.
        num_proc: Processes for tokenizing with `datasets.map`.
        seed: Seed of the batch order (and of the tokenizer's training sample).

    Properties for the CLI's links into the model: `tokenizer`, `vocab_size`, `pad_token_id`, `bos_token_id`,
    `eos_token_id`, `decoder_start_token_id`; `dataset_name` for the model card.
    """

    def __init__(
        self,
        dataset: str | None = None,
        dataset_config: str | None = None,
        revision: str | None = None,
        data_files: dict[str, str | list[str]] | None = None,
        text_column: str = "text",
        train_split: str = "train",
        validation_split: str = "validation",
        test_split: str = "test",
        packing: str = "chunks",
        sequence_length: int = 256,
        tokenizer_path: str | None = None,
        vocab_size: int = 8000,
        tokenizer_training_texts: int | None = None,
        cache_dir: str = "cache",
        batch_size: int | None = 32,
        max_tokens: int | None = None,
        eval_batch_size: int = 32,
        num_workers: int = 0,
        num_proc: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if (dataset is None) == (data_files is None):
            raise ValueError(
                "give exactly one of dataset (a hub id such as 'Salesforce/wikitext', or a local dataset folder) and "
                f"data_files (local files per split), got dataset={dataset!r} and data_files={data_files!r}"
            )
        if data_files is not None:
            data_files = self.check_data_files(data_files)
        if packing not in PACKING_MODES:
            raise ValueError(f"packing must be one of {list(PACKING_MODES)}, got {packing!r}")
        if not isinstance(text_column, str) or not text_column:
            raise ValueError(f"text_column must be a non-empty str (the column holding the text), got {text_column!r}")
        for name, value in (("train_split", train_split), ("validation_split", validation_split),
                            ("test_split", test_split)):
            try:
                parse_split(value)
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from None
        for name, value, minimum, optional in (
            ("sequence_length", sequence_length, 2, False),
            ("batch_size", batch_size, 1, True),
            ("max_tokens", max_tokens, 1, True),
            ("eval_batch_size", eval_batch_size, 1, False),
            ("tokenizer_training_texts", tokenizer_training_texts, 1, True),
            ("num_workers", num_workers, 0, False),
            ("num_proc", num_proc, 1, False),
            ("seed", seed, 0, False),
        ):
            if optional and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be {'None or ' if optional else ''}an int >= {minimum}, got {value!r}")
        if (batch_size is None) == (max_tokens is None):
            raise ValueError(
                f"give exactly one of batch_size and max_tokens, got batch_size={batch_size!r} and "
                f"max_tokens={max_tokens!r} (set the other to null)"
            )
        if max_tokens is not None and max_tokens < sequence_length:
            raise ValueError(f"max_tokens={max_tokens} is smaller than sequence_length={sequence_length}: raise it")
        if tokenizer_path is None and (isinstance(vocab_size, bool) or not isinstance(vocab_size, int)
                                       or vocab_size < MIN_VOCAB_SIZE):
            raise ValueError(f"vocab_size must be an int >= {MIN_VOCAB_SIZE}, got {vocab_size!r}")

        self.dataset = dataset
        self.dataset_config = dataset_config
        self.revision = revision
        self.data_files = data_files
        self.text_column = text_column
        self.train_split = train_split
        self.validation_split = validation_split
        self.test_split = test_split
        self.packing = packing
        self.sequence_length = sequence_length
        self.tokenizer_path = tokenizer_path
        self.requested_vocab_size = vocab_size
        self.tokenizer_training_texts = tokenizer_training_texts
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.num_proc = num_proc
        self.seed = seed
        #: Per role ("train", "validation", "test"): rows, blank rows skipped, tokens, sequences.
        self.corpus_report: dict[str, dict[str, int]] = {}
        self._tokenizer: PreTrainedTokenizerFast | None = None
        self._splits: dict[str, Dataset | datasets.Dataset] = {}
        self._train_sampler: TokenBudgetBatchSampler | None = None
        self._resume_state: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------------------------------------
    # Properties linked into the model
    # ------------------------------------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> PreTrainedTokenizerFast:
        """The BPE tokenizer: loaded from `tokenizer_path`, from the cache, or trained now (first access)."""
        if self._tokenizer is None:
            self._tokenizer = (load_tokenizer(self.tokenizer_path) if self.tokenizer_path is not None
                               else self.cached_or_trained_tokenizer())
        return self._tokenizer

    @property
    def dataset_name(self) -> str:
        if self.dataset is not None:
            return self.dataset if self.dataset_config is None else f"{self.dataset} ({self.dataset_config})"
        name, _ = parse_split(self.train_split)
        return "local files: " + ", ".join(Path(path).name for path in self.data_files.get(name, []))

    # ------------------------------------------------------------------------------------------------------------
    # Raw splits
    # ------------------------------------------------------------------------------------------------------------

    @staticmethod
    def check_data_files(data_files: dict[str, str | list[str]]) -> dict[str, list[str]]:
        if not isinstance(data_files, dict) or not data_files:
            raise ValueError(
                f"data_files must be a non-empty dict {{split: file or [files]}}, got {data_files!r}; e.g. "
                "{'train': 'train.txt.gz', 'validation': 'valid.txt.gz'}"
            )
        checked = {}
        for split, files in data_files.items():
            paths = [os.fspath(files)] if isinstance(files, (str, os.PathLike)) else [os.fspath(f) for f in files]
            if not paths:
                raise ValueError(f"data_files[{split!r}] is empty: give a file or a list of files")
            for path in paths:
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"data_files[{split!r}]: {path!r} does not exist or is not a file")
            if len({builder_of(path) for path in paths}) > 1:
                raise ValueError(f"data_files[{split!r}] = {paths} mixes file formats: use one format per split")
            checked[str(split)] = paths
        return checked

    def where(self, split: str) -> str:
        """How a split is named in messages."""
        if self.dataset is not None:
            config = "" if self.dataset_config is None else f", config {self.dataset_config!r}"
            return f"split {split!r} of dataset {self.dataset!r}{config}"
        return f"split {split!r} (data_files[{parse_split(split)[0]!r}] = {self.data_files.get(parse_split(split)[0])})"

    def text_column_of(self, split: str) -> str:
        """Plain-text files always give a "text" column; other sources use `text_column`."""
        if self.data_files is not None and builder_of(self.data_files[parse_split(split)[0]][0]) == "text":
            return "text"
        return self.text_column

    def load_raw_split(self, split: str) -> datasets.Dataset:
        """The rows of `split` (slice applied by `datasets`), checked to have the text column."""
        name, _ = parse_split(split)
        if self.data_files is not None:
            if name not in self.data_files:
                raise ValueError(
                    f"data_files has no entry for split {name!r}: it has {sorted(self.data_files)}; add one, or take "
                    f"a slice of another split (e.g. validation_split: 'train[:1000]')"
                )
            paths = self.data_files[name]
            raw = datasets.load_dataset(builder_of(paths[0]), data_files={name: paths}, split=split.replace(" ", ""))
        else:
            try:
                raw = datasets.load_dataset(self.dataset, self.dataset_config, split=split.replace(" ", ""),
                                            revision=self.revision)
            except ValueError as error:
                if "split" not in str(error).lower():
                    raise
                raise ValueError(f"{self.where(split)} does not exist ({error}); for a corpus with only a train "
                                 "split use e.g. validation_split: 'train[:1000]'") from error
        column = self.text_column_of(split)
        if column not in raw.column_names:
            raise ValueError(
                f"{self.where(split)} has no column {column!r}; it has columns {raw.column_names}: set text_column "
                "to the one holding the text"
            )
        return raw

    def data_identity(self, split: str) -> dict[str, Any]:
        """What identifies the data of `split` (hashed into cache keys)."""
        if self.dataset is not None:
            identity: dict[str, Any] = {"dataset": self.dataset, "config": self.dataset_config,
                                        "revision": self.revision}
            if os.path.isdir(self.dataset):
                identity["files"] = [file_stamp(str(path)) for path in sorted(Path(self.dataset).rglob("*"))
                                     if path.is_file() and not path.name.startswith(".")]
            return identity
        return {"files": [file_stamp(path) for path in self.data_files[parse_split(split)[0]]]}

    def short_name(self) -> str:
        if self.dataset is not None:
            name = Path(self.dataset).name if os.path.isdir(self.dataset) else self.dataset.replace("/", "--")
        else:
            name = Path(self.data_files[parse_split(self.train_split)[0]][0]).name
        return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:60]

    # ------------------------------------------------------------------------------------------------------------
    # Tokenizer
    # ------------------------------------------------------------------------------------------------------------

    def tokenizer_cache_path(self) -> Path:
        key = digest({"version": CACHE_FORMAT_VERSION, "data": self.data_identity(self.train_split),
                      "split": self.train_split, "column": self.text_column_of(self.train_split),
                      "vocab_size": self.requested_vocab_size, "texts": self.tokenizer_training_texts,
                      "seed": self.seed}, length=12)
        return Path(self.cache_dir) / "tokenizers" / f"{self.short_name()}-lm-{key}"

    def cached_or_trained_tokenizer(self) -> PreTrainedTokenizerFast:
        def train() -> PreTrainedTokenizerFast:
            raw = self.load_raw_split(self.train_split)
            cap = self.tokenizer_training_texts
            if cap is not None and cap < len(raw):
                raw = raw.shuffle(seed=self.seed).select(range(cap))
            column = self.text_column_of(self.train_split)
            texts = (text for batch in raw.iter(batch_size=1000) for text in batch[column] if isinstance(text, str))
            try:
                return train_tokenizer(texts, vocab_size=self.requested_vocab_size)
            except ValueError as error:
                raise ValueError(f"{self.where(self.train_split)}, column {column!r}: {error}") from None

        return cached_tokenizer(self.tokenizer_cache_path(), train)

    # ------------------------------------------------------------------------------------------------------------
    # Tokenized splits
    # ------------------------------------------------------------------------------------------------------------

    def tokenized_split(self, role: str) -> Dataset | datasets.Dataset:
        """The examples of `role` ("train", "validation", "test"), cached under `cache_dir`: a `TokenBlocks` of
        (N, sequence_length) ids for "chunks", a `datasets.Dataset` with `input_ids`, `length`, `id` for "lines".
        Records `corpus_report[role]`. An empty split (no non-blank text, or too little for one sequence) raises."""
        if role in self._splits:
            return self._splits[role]
        split = {"train": self.train_split, "validation": self.validation_split, "test": self.test_split}[role]
        raw = self.load_raw_split(split)
        column = self.text_column_of(split)
        key = digest({"version": CACHE_FORMAT_VERSION, "data": self.data_identity(split), "split": split,
                      "column": column, "packing": self.packing,
                      "tokenizer": hashlib.sha256(self.tokenizer.backend_tokenizer.to_str().encode()).hexdigest()})
        cache = Path(self.cache_dir) / "lm_tokenized"
        cache.mkdir(parents=True, exist_ok=True)
        stem = f"{self.short_name()}-{''.join(c if c.isalnum() else '_' for c in split)}-{key}"
        encoded = raw.map(
            encode_texts, batched=True, remove_columns=raw.column_names,
            fn_kwargs={"tokenizer": self.tokenizer, "column": column, "add_bos": self.packing == "lines"},
            num_proc=self.num_proc if self.num_proc > 1 else None,
            cache_file_name=str(cache / f"{stem}.arrow"), new_fingerprint=key, desc=f"tokenizing {role}",
        )
        lengths = np.asarray(encoded.with_format("numpy")["length"], dtype=np.int64)
        report = {"rows": int(lengths.size), "blank": int(np.count_nonzero(lengths == 0)),
                  "tokens": int(lengths.sum())}
        if report["tokens"] == 0:
            raise ValueError(f"{self.where(split)}, column {column!r}: the corpus is empty ({report['rows']} rows, "
                             "none with non-blank text)")
        if self.packing == "chunks":
            # all documents back to back (each ends with </s>), cut into (N, sequence_length) blocks
            flat = encoded.data.column("input_ids").combine_chunks().flatten().to_numpy()  # (total tokens,)
            count = flat.size // self.sequence_length
            if count == 0:
                raise ValueError(
                    f"{self.where(split)} has {flat.size} tokens, fewer than one sequence of sequence_length="
                    f"{self.sequence_length}: give more text or a shorter sequence_length"
                )
            examples: Dataset | datasets.Dataset = TokenBlocks(
                flat[: count * self.sequence_length].reshape(count, self.sequence_length).astype(np.int64)
            )
        else:
            kept = np.flatnonzero(lengths > 0)
            cut = self.sequence_length
            examples = encoded.add_column("id", list(range(len(encoded)))).select(kept).map(
                lambda row: {"input_ids": row["input_ids"][:cut], "length": min(row["length"], cut)},
                cache_file_name=str(cache / f"{stem}-lines{cut}.arrow"), new_fingerprint=f"{key}-{cut}",
                desc=f"cutting {role} to {cut} tokens",
            )
        report["sequences"] = len(examples)
        self.corpus_report[role] = report
        if self.trainer is None or self.trainer.is_global_zero:
            logger.info("%s (%s): %s", role, self.where(split), report)
        self._splits[role] = examples
        return examples

    def lengths_of(self, examples: Dataset | datasets.Dataset) -> np.ndarray:
        if isinstance(examples, TokenBlocks):
            return np.full(len(examples), self.sequence_length, dtype=np.int64)
        return np.asarray(examples.with_format("numpy")["length"], dtype=np.int64)

    # ------------------------------------------------------------------------------------------------------------
    # Lightning hooks
    # ------------------------------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Train or load the tokenizer and tokenize the splits into the cache (one process per node)."""
        _ = self.tokenizer
        stage = None if self.trainer is None else self.trainer.state.fn
        self.setup("fit" if stage is None else stage.value)

    def setup(self, stage: str) -> None:
        roles = {"fit": ("train", "validation"), "validate": ("validation",), "test": ("test",)}
        if stage not in roles:
            raise ValueError(f"stage {stage!r} is not supported: expected one of {sorted(roles)}")
        for role in roles[stage]:
            self.tokenized_split(role)

    def world(self) -> tuple[int, int]:
        return (1, 0) if self.trainer is None else (self.trainer.world_size, self.trainer.global_rank)

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches (a function of seed and epoch), sharded over ranks, resumable mid-epoch."""
        world_size, rank = self.world()
        train = self.tokenized_split("train")
        sampler = TokenBudgetBatchSampler(self.lengths_of(train), max_tokens=self.max_tokens,
                                          batch_size=self.batch_size, shuffle=True, seed=self.seed,
                                          num_replicas=world_size, rank=rank)
        sampler.set_epoch(0 if self.trainer is None else self.trainer.fit_loop.epoch_progress.current.processed)
        if self._resume_state is not None and self._resume_state.get("epoch") == sampler.epoch:
            state = {k: v for k, v in self._resume_state.items() if k != "epoch_finished"}
            try:
                sampler.load_state_dict(state, strict=True)
            except ValueError as error:
                logger.warning("mid-epoch resume is approximate: %s", error)
                sampler.load_state_dict(state, strict=False)
        self._resume_state = None
        self._train_sampler = sampler
        return DataLoader(train, batch_sampler=sampler, collate_fn=LanguageModelingCollator(self.pad_token_id),
                          num_workers=self.num_workers, generator=torch.Generator().manual_seed(self.seed))

    def eval_dataloader(self, role: str) -> DataLoader:
        world_size, rank = self.world()
        examples = self.tokenized_split(role)
        batches = EvalBatchSampler(self.lengths_of(examples), batch_size=self.eval_batch_size,
                                   num_replicas=world_size, rank=rank)
        return DataLoader(examples, batch_sampler=batches, collate_fn=LanguageModelingCollator(self.pad_token_id),
                          num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("validation")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")

    def state_dict(self) -> dict[str, Any]:
        """`{"epoch", "batches_done", "epoch_finished", ...sampler settings}`: the training batches completed in
        the current epoch, read from the trainer (the loader prefetches, so the sampler's own count is ahead)."""
        state: dict[str, Any] = {"epoch": 0, "batches_done": 0, "epoch_finished": False}
        if self.trainer is not None:
            progress = self.trainer.fit_loop.epoch_loop.batch_progress
            state = {"epoch": self.trainer.current_epoch, "batches_done": progress.current.processed,
                     "epoch_finished": bool(progress.is_last_batch)}
        if self._train_sampler is not None:
            state.update({k: v for k, v in self._train_sampler.state_dict().items()
                          if k not in ("epoch", "batches_done")})
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Remember where training stopped; the next train loader skips the batches done in that epoch."""
        for key in ("epoch", "batches_done"):
            if key not in state_dict:
                raise ValueError(f"data module state is missing {key!r}: got keys {sorted(state_dict)}")
        self._resume_state = dict(state_dict)


class CausalLanguageModule(LightningModule):
    """Trains `VaswaniForCausalLM` on next-token prediction; vocabulary size and special ids are linked from the
    data module by the CLI. Validation and test report `loss` (mean NLL per token, nats) and `ppl` = exp(loss)."""

    # The same optimiser/schedule injection, per-step throughput and exact-resume RNG handling as TranslationModule
    # (these methods only use the attributes set in __init__ below).
    configure_optimizers = TranslationModule.configure_optimizers
    on_train_batch_end = TranslationModule.on_train_batch_end
    on_validation_start = TranslationModule.on_validation_start
    on_save_checkpoint = TranslationModule.on_save_checkpoint
    on_load_checkpoint = TranslationModule.on_load_checkpoint
    on_train_start = TranslationModule.on_train_start

    def __init__(
        self,
        vocab_size: int = 37000,
        pad_token_id: int = 0,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        decoder_start_token_id: int = 1,
        d_model: int = 512,
        decoder_layers: int = 6,
        attention_heads: int = 8,
        ffn_dim: int = 2048,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        max_position_embeddings: int = 1024,
        normalize_before: bool = False,
        position_embedding_type: str = "sinusoidal",
        max_relative_position: int = 64,
        relative_attention_per_head: bool = True,
        attention_type: str = "full",
        local_block_length: int = 64,
        local_memory_length: int = 64,
        tie_word_embeddings: bool = True,
        attn_implementation: str = "sdpa",
        label_smoothing: float = 0.0,
        optimizer: OptimizerCallable = paper_adam,
        lr_scheduler: LRSchedulerCallable = inverse_sqrt_schedule,
    ):
        """Args:
            vocab_size, pad_token_id, bos_token_id, eos_token_id: from the tokenizer (linked from `data.*`).
            decoder_start_token_id: `<s>`, the config's start token (linked from `data.*` like the others; the CLI
                also links it when it restores a checkpoint's hyperparameters, so the argument must exist).
            d_model ... tie_word_embeddings: the model (see `VaswaniConfig`); `position_embedding_type: relative`
                with `max_relative_position` is the Music Transformer's relative attention, `attention_type: local`
                the Image Transformer's local blocks.
            label_smoothing: epsilon_ls of §5.4 (0: plain NLL, the usual choice for language models).
            optimizer, lr_scheduler: injected (LightningCLI style); default Adam(0.9, 0.98, 1e-9) and the warmup /
                inverse-square-root schedule of §5.3, stepped every optimiser step.
        """
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"`label_smoothing` must be in [0, 1), got {label_smoothing!r}.")
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.model = self.build_model_from_hparams(dict(self.hparams))
        self.evaluation_sums = torch.zeros(2, dtype=torch.float64)  # nll, tokens
        self.rng_states_to_restore: dict | None = None
        self.step_started: float | None = None
        self.step_tokens: torch.Tensor | float = 0.0

    @staticmethod
    def model_config_from_hparams(hparams: dict) -> VaswaniConfig:
        return VaswaniConfig(
            is_encoder_decoder=False,
            vocab_size=hparams["vocab_size"],
            pad_token_id=hparams["pad_token_id"],
            bos_token_id=hparams["bos_token_id"],
            eos_token_id=hparams["eos_token_id"],
            decoder_start_token_id=hparams.get("decoder_start_token_id", hparams["bos_token_id"]),
            d_model=hparams["d_model"],
            decoder_layers=hparams["decoder_layers"],
            decoder_attention_heads=hparams["attention_heads"],
            decoder_ffn_dim=hparams["ffn_dim"],
            dropout=hparams["dropout"],
            attention_dropout=hparams["attention_dropout"],
            activation_dropout=hparams["activation_dropout"],
            max_position_embeddings=hparams["max_position_embeddings"],
            normalize_before=hparams["normalize_before"],
            position_embedding_type=hparams["position_embedding_type"],
            max_relative_position=hparams["max_relative_position"],
            relative_attention_per_head=hparams["relative_attention_per_head"],
            attention_type=hparams["attention_type"],
            local_block_length=hparams["local_block_length"],
            local_memory_length=hparams["local_memory_length"],
            tie_word_embeddings=hparams["tie_word_embeddings"],
        )

    @classmethod
    def build_model_from_hparams(cls, hparams: dict) -> VaswaniForCausalLM:
        """The HF model described by a checkpoint's `hyper_parameters` (checkpoint averaging uses it too)."""
        model = VaswaniForCausalLM(cls.model_config_from_hparams(hparams))
        model.set_attn_implementation(hparams.get("attn_implementation", "sdpa"))
        return model

    def forward_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Summed (label-smoothed loss, NLL, predicted tokens): position t predicts token t + 1."""
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            use_cache=False).logits  # (B, L, V)
        return label_smoothed_loss(logits[:, :-1], batch["labels"][:, 1:], self.hparams.label_smoothing)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss_sum, nll_sum, tokens = self.forward_loss(batch)
        # one all-reduce: normalised by the predicted tokens of all ranks (DDP then equals one process on the union)
        sums = self.trainer.strategy.reduce(
            torch.stack([loss_sum.detach(), nll_sum.detach(), tokens.to(loss_sum.dtype)]), reduce_op="sum"
        )
        global_tokens = sums[2].clamp(min=1)
        global_nll = sums[1] / global_tokens
        self.log_dict({"train/loss": sums[0] / global_tokens, "train/nll": global_nll,
                       "train/ppl": torch.exp(global_nll)},
                      on_step=True, on_epoch=False, batch_size=batch["input_ids"].shape[0])
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, prog_bar=True)
        self.step_tokens = global_tokens  # tokens per second: logged by on_train_batch_end
        return loss_sum * self.trainer.world_size / global_tokens

    def evaluation_step(self, batch: dict) -> None:
        _, nll_sum, tokens = self.forward_loss(batch)
        self.evaluation_sums += torch.stack([nll_sum.double().cpu(), tokens.double().cpu()])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluation_step(batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluation_step(batch)

    def on_validation_epoch_start(self) -> None:
        self.evaluation_sums = torch.zeros(2, dtype=torch.float64)

    def on_test_epoch_start(self) -> None:
        self.evaluation_sums = torch.zeros(2, dtype=torch.float64)

    def on_validation_epoch_end(self) -> None:
        self.log_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self.log_evaluation("test")

    def log_evaluation(self, prefix: str) -> None:
        sums = self.trainer.strategy.reduce(self.evaluation_sums.to(self.device), reduce_op="sum").cpu()
        if self.trainer.sanity_checking:
            return
        nll = (sums[0] / sums[1].clamp(min=1)).item()
        metrics = {f"{prefix}/loss": nll, f"{prefix}/ppl": math.exp(min(nll, 50.0)),
                   f"{prefix}/tokens": float(sums[1])}
        self.log_dict(metrics, prog_bar=True, sync_dist=False, rank_zero_only=False)
        if self.trainer.is_global_zero:
            self.print(f"{prefix}: loss {nll:.4f} nats/token, perplexity {metrics[f'{prefix}/ppl']:.2f} over "
                       f"{int(sums[1])} tokens")


__all__ = [
    "CausalLanguageModule",
    "LanguageModelingCollator",
    "LanguageModelingDataModule",
    "TokenBlocks",
    "encode_texts",
]
