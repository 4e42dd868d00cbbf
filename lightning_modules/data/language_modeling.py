"""`LanguageModelingDataModule`: monolingual text as token sequences for a decoder-only language model.

Data flow: load a split (hub repo by name, a local dataset folder, parquet/json/jsonl/csv files, or plain-text files,
one document per line, `.gz` accepted) -> take its `text_column` -> tokenize with the project's byte-level BPE
(trained on the training split and cached, or loaded) -> either

- `packing: "chunks"`: every document ends with `</s>`, all are concatenated and cut into sequences of exactly
  `sequence_length` tokens (the last partial one is dropped), no padding (GPT-2 / `run_clm` style), or
- `packing: "lines"`: one example per row, `<s>` + text + `</s>`, cut to `sequence_length`, padded per batch.

Blank rows are skipped and counted. Batches: `batch_size` sequences (or `max_tokens` padded tokens), shuffled as a
pure function of (seed, epoch), sharded over DDP ranks, resumable mid-epoch (see `corpus.py`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerFast

from hf_transformer.tokenization_vaswani import train_tokenizer

from .corpus import (
    CACHE_FORMAT_VERSION,
    LABEL_PAD_ID,
    CorpusDataModule,
    check_batching,
    check_int,
    digest,
    drop_damaged_cache_file,
    literal_paths,
    parse_split,
    slug,
    structured_builder,
)

logger = logging.getLogger(__name__)

PACKING_MODES = ("chunks", "lines")


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
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "labels": input_ids.masked_fill(attention_mask == 0, LABEL_PAD_ID),
                "ids": torch.as_tensor([int(example["id"]) for example in examples], dtype=torch.long)}


class LanguageModelingDataModule(CorpusDataModule):
    """Monolingual text -> tokenized sequences for a decoder-only language model.

    Args:
        dataset: Hub repository id (e.g. `"Salesforce/wikitext"`) or a local folder `load_dataset` reads.
        dataset_config: Its configuration (e.g. `"wikitext-103-raw-v1"`).
        revision: Hub revision, e.g. `"refs/convert/parquet"` for the hub's parquet conversion of a dataset.
        data_files: Local files per split instead of `dataset`: parquet / json / jsonl / csv files (the text in
            `text_column`) or plain-text files (one document per line, `.gz`/`.bz2`/`.xz` accepted).
        text_column: Column holding the text in a dataset or structured file (plain-text files have `"text"`).
        train_split: Split to train on; slices allowed as in `datasets` (`"train[:5%]"`, `"train[1000:]"`).
        validation_split: Split for validation; a corpus with a train split only can use `"train[:1000]"`.
        test_split: Split for testing.
        packing: "chunks" (concatenate documents, cut into `sequence_length`-token sequences) or "lines" (one
            example per row, cut to `sequence_length`).
        sequence_length: Tokens per training sequence (the context the model is trained on).
        tokenizer_path: Folder of an existing tokenizer instead of training one.
        vocab_size: Size of the byte-level BPE vocabulary trained on the training split.
        tokenizer_training_texts: Train the tokenizer on at most this many rows (a seeded sample); None: all.
        cache_dir: Where the tokenizer and the tokenized splits are cached (keyed by what determines them); None:
            the per-user cache (`$HF_TRANSFORMER_CACHE`, else `~/.cache/hf-transformer`).
        batch_size: Sequences per training batch (exactly one of it and `max_tokens`).
        max_tokens: Padded tokens per training batch instead (length-bucketed; useful with "lines").
        eval_batch_size: Sequences per validation/test batch.
        num_workers: DataLoader worker processes.
        num_proc: Processes for tokenizing with `datasets.map`.
        seed: Seed of the batch order (and of the tokenizer's training sample).
    """

    example_dataset = "'Salesforce/wikitext'"
    example_data_files = "{'train': 'train.txt.gz', 'validation': 'valid.txt.gz'}"
    tokenizer_kind = "lm"

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
        cache_dir: str | None = None,
        batch_size: int | None = 32,
        max_tokens: int | None = None,
        eval_batch_size: int = 32,
        num_workers: int = 0,
        num_proc: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(dataset, dataset_config, revision, data_files,
                         {"train": train_split, "validation": validation_split, "test": test_split},
                         tokenizer_path, vocab_size, cache_dir, num_workers, seed)
        if packing not in PACKING_MODES:
            raise ValueError(f"packing must be one of {list(PACKING_MODES)}, got {packing!r}")
        if not isinstance(text_column, str) or not text_column:
            raise ValueError(f"text_column must be a non-empty str (the column holding the text), got {text_column!r}")
        for name, value, minimum, optional in (
            ("sequence_length", sequence_length, 2, False), ("batch_size", batch_size, 1, True),
            ("max_tokens", max_tokens, 1, True), ("eval_batch_size", eval_batch_size, 1, False),
            ("tokenizer_training_texts", tokenizer_training_texts, 1, True), ("num_proc", num_proc, 1, False),
        ):
            check_int(name, value, minimum, optional)
        check_batching("max_tokens", max_tokens, "batch_size", batch_size, sequence_length, "sequence_length")
        self.text_column = text_column
        self.packing = packing
        self.sequence_length = sequence_length
        self.tokenizer_training_texts = tokenizer_training_texts
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.eval_batch_size = eval_batch_size
        self.num_proc = num_proc
        #: Per role ("train", "validation", "test"): rows, blank rows skipped, tokens, sequences.
        self.corpus_report: dict[str, dict[str, int]] = {}

    # ------------------------------------------------------------------------------------------------------------
    # Raw rows and the tokenizer
    # ------------------------------------------------------------------------------------------------------------

    def text_column_of(self, split: str) -> str:
        """Plain-text files always give a "text" column; other sources use `text_column`."""
        files = (self.data_files or {}).get(parse_split(split)[0])
        return "text" if files and structured_builder(files[0]) is None else self.text_column

    def load_files(self, name: str, paths: list[str], streaming: bool) -> datasets.Dataset:
        return datasets.load_dataset(structured_builder(paths[0]) or "text", data_files={name: literal_paths(paths)},
                                     split=name)

    def check_rows(self, raw: datasets.Dataset, split: str) -> None:
        column = self.text_column_of(split)
        if column not in raw.column_names:
            raise ValueError(f"{self.where(split)} has no column {column!r}; it has columns {raw.column_names}: set "
                             "text_column to the one holding the text")

    def tokenizer_settings(self) -> dict[str, Any]:
        return {"column": self.text_column_of(self.train_split), "texts": self.tokenizer_training_texts,
                "seed": self.seed}

    def train_tokenizer(self) -> PreTrainedTokenizerFast:
        raw = self.load_split(self.train_split)
        cap = self.tokenizer_training_texts
        if cap is not None and cap < len(raw):
            raw = raw.shuffle(seed=self.seed).select(range(cap))
        column = self.text_column_of(self.train_split)
        texts = (text for batch in raw.iter(batch_size=1000) for text in batch[column] if isinstance(text, str))
        try:
            return train_tokenizer(texts, vocab_size=self.requested_vocab_size)
        except ValueError as error:
            raise ValueError(f"{self.where(self.train_split)}, column {column!r}: {error}") from None

    # ------------------------------------------------------------------------------------------------------------
    # Tokenized splits
    # ------------------------------------------------------------------------------------------------------------

    def tokenized_split(self, role: str) -> Dataset | datasets.Dataset:
        """The examples of `role` ("train", "validation", "test"), cached under `cache_dir`: a `TokenBlocks` of
        (N, sequence_length) ids for "chunks", a `datasets.Dataset` with `input_ids`, `length`, `id` for "lines".
        Records `corpus_report[role]`. An empty split (no non-blank text, or too little for one sequence) raises."""
        if role in self._splits:
            return self._splits[role]
        split = self.splits[role]
        raw = self.load_split(split)
        column = self.text_column_of(split)
        key = digest({"version": CACHE_FORMAT_VERSION, "data": self.data_identity(split), "split": split,
                      "column": column, "packing": self.packing,
                      "tokenizer": digest(self.tokenizer.backend_tokenizer.to_str(), 64)})
        cache = os.path.join(self.cache_dir, "lm_tokenized", f"{self.short_name()}-{slug(split)}-{key}")
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        drop_damaged_cache_file(f"{cache}.arrow")
        encoded = raw.map(
            encode_texts, batched=True, remove_columns=raw.column_names,
            fn_kwargs={"tokenizer": self.tokenizer, "column": column, "add_bos": self.packing == "lines"},
            num_proc=self.num_proc if self.num_proc > 1 else None,
            cache_file_name=f"{cache}.arrow", new_fingerprint=key, desc=f"tokenizing {role}",
        )
        lengths = np.asarray(encoded.with_format("numpy")["length"], dtype=np.int64)
        report = {"rows": int(lengths.size), "blank": int(np.count_nonzero(lengths == 0)),
                  "tokens": int(lengths.sum())}
        if report["tokens"] == 0:
            raise ValueError(f"{self.where(split)}, column {column!r}: the corpus is empty ({report['rows']} rows, "
                             "none with non-blank text)")
        examples = self.pack(encoded, lengths, split, f"{cache}-lines", key, role)
        report["sequences"] = len(examples)
        self.corpus_report[role] = report
        if self.is_global_zero():
            logger.info("%s (%s): %s", role, self.where(split), report)
        self._splits[role] = examples
        return examples

    def pack(self, encoded: datasets.Dataset, lengths: np.ndarray, split: str, cache: str, key: str,
             role: str) -> Dataset | datasets.Dataset:
        """The examples of a tokenized split: (N, sequence_length) blocks ("chunks") or rows cut to it ("lines")."""
        if self.packing == "chunks":
            # all documents back to back (each ends with </s>), cut into (N, sequence_length) blocks
            flat = encoded.data.column("input_ids").combine_chunks().flatten().to_numpy()  # (total tokens,)
            count = flat.size // self.sequence_length
            if count == 0:
                raise ValueError(
                    f"{self.where(split)} has {flat.size} tokens, fewer than one sequence of sequence_length="
                    f"{self.sequence_length}: give more text or a shorter sequence_length"
                )
            return TokenBlocks(flat[: count * self.sequence_length].reshape(count, self.sequence_length)
                               .astype(np.int64))
        cut = self.sequence_length
        drop_damaged_cache_file(f"{cache}{cut}.arrow")
        return encoded.add_column("id", list(range(len(encoded)))).select(np.flatnonzero(lengths > 0)).map(
            lambda row: {"input_ids": row["input_ids"][:cut], "length": min(row["length"], cut)},
            cache_file_name=f"{cache}{cut}.arrow", new_fingerprint=f"{key}-{cut}",
            desc=f"cutting {role} to {cut} tokens",
        )

    def lengths_of(self, examples: Dataset | datasets.Dataset) -> np.ndarray:
        if isinstance(examples, TokenBlocks):
            return np.full(len(examples), self.sequence_length, dtype=np.int64)
        return np.asarray(examples.with_format("numpy")["length"], dtype=np.int64)

    def prepare_role(self, role: str) -> None:
        if role == "predict":
            raise ValueError("LanguageModelingDataModule has no predict stage: use fit, validate or test")
        self.tokenized_split(role)

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches (a function of seed and epoch), sharded over ranks, resumable mid-epoch."""
        train = self.tokenized_split("train")
        return self.train_loader(train, self.lengths_of(train), LanguageModelingCollator(self.pad_token_id),
                                 self.max_tokens, self.batch_size)

    def evaluation_loader(self, role: str) -> DataLoader:
        examples = self.tokenized_split(role)
        return self.eval_loader(examples, self.lengths_of(examples), LanguageModelingCollator(self.pad_token_id),
                                None, self.eval_batch_size)

    def val_dataloader(self) -> DataLoader:
        return self.evaluation_loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self.evaluation_loader("test")


__all__ = ["LanguageModelingCollator", "LanguageModelingDataModule", "TokenBlocks", "encode_texts"]
