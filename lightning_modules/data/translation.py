"""`TranslationDataModule`: parallel corpora from the Hugging Face hub or local files, as token-budget batches.

Data flow: load a split (hub repo, local dataset folder, parquet/json/csv files, or a pair of aligned plain-text
files) -> check it has the two languages -> tokenize with the joint BPE tokenizer (trained on the training split and
cached, or loaded) -> clean (empty pairs, overlong pairs, bad length ratio; counted in `cleaning_report`) -> batch.
Splits, cache keys, the tokenizer cache, batching and exact resume: see `corpus.py`.

Layouts understood: a `translation` column of `{language: text}` dicts (`wmt/wmt14`, `Helsinki-NLP/opus_books`), or
one column per language (`bentrevett/multi30k`: `en`, `de`).

Streaming (`streaming=True`, for corpora that do not fit on disk): the training split is read as a stream, sharded by
rank, tokenized and cleaned on the fly and batched buffer by buffer (`streaming.py`). Under DDP ranks may get
different numbers of batches: bound an epoch with `limit_train_batches` (or train by `max_steps` with a stream longer
than that). Mid-epoch resume is not supported with streaming (end-of-epoch states are fine). Evaluation splits are
small and are read fully into memory.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerFast

from hf_transformer.tokenization_vaswani import iter_parallel_texts, train_tokenizer

from .corpus import (
    CACHE_FORMAT_VERSION,
    COMPRESSION_SUFFIXES,
    LABEL_PAD_ID,
    STRUCTURED_BUILDERS,
    CorpusDataModule,
    check_batching,
    check_int,
    digest,
    drop_damaged_cache_file,
    file_stamp,
    literal_paths,
    parse_split,
    slug,
    structured_builder,
)
from .parallel_text import check_aligned, read_lines, read_text_pair, scan_text_file
from .streaming import EpochAwareDataLoader, StreamingTokenBudgetBatches

logger = logging.getLogger(__name__)

#: Keys of a split's entry in `TranslationDataModule.cleaning_report`.
REPORT_KEYS = ("total", "kept", "dropped", "empty", "too_long", "bad_ratio", "truncated")

# Per-example flags computed while tokenizing (a bit mask, stored in the `flags` column).
EMPTY, BAD_RATIO, TOO_LONG, TRUNCATED, DROPPED = 1, 2, 4, 8, 16
FLAG_OF_KEY = {"empty": EMPTY, "bad_ratio": BAD_RATIO, "too_long": TOO_LONG, "truncated": TRUNCATED}


# ----------------------------------------------------------------------------------------------------------------
# Tokenization and cleaning (module-level functions: `datasets.map` pickles them for num_proc > 1)
# ----------------------------------------------------------------------------------------------------------------


class RowError(ValueError):
    """A raw row whose language column is not text (the caller adds which split it is in)."""


def is_text_feature(feature: Any) -> bool:
    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


def texts_of_batch(
    batch: dict[str, list[Any]], layout: str, source_lang: str, target_lang: str, indices: Any = None
) -> tuple[list[str], list[str]]:
    """Source and target strings of a batch of raw rows (None and missing languages become "", counted as empty).

    Raises `RowError` naming the row (from `indices`, when given) and column for a value that is not text.
    """
    def bad(position: int, column: str, value: Any) -> RowError:
        row = f"row {indices[position]}" if indices is not None else "a row"
        return RowError(f"{row}: column {column!r} holds a value of type {type(value).__name__} "
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


def truncate(ids: list[int], max_length: int) -> list[int]:
    """`ids` cut to `max_length`, keeping the final `</s>`."""
    return ids if len(ids) <= max_length else [*ids[: max_length - 1], ids[-1]]


def pair_flag(source_ids: list[int], target_ids: list[int], empty: bool, max_source_length: int,
              max_target_length: int, max_length_ratio: float, overlong: str, is_train: bool) -> int:
    """The `EMPTY` / `BAD_RATIO` / `TOO_LONG` / `TRUNCATED` / `DROPPED` bits of one tokenized pair."""
    if empty:
        return EMPTY | DROPPED
    flag = 0
    source_length, target_length = len(source_ids), len(target_ids)
    if max(source_length, target_length) > max_length_ratio * min(source_length, target_length):
        flag |= BAD_RATIO | (DROPPED if is_train else 0)
    if source_length > max_source_length or target_length > max_target_length:
        flag |= TOO_LONG | (DROPPED if is_train and overlong == "drop" else 0)
    if flag & TOO_LONG and not flag & DROPPED:
        flag |= TRUNCATED
    return flag


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
    sources, targets = texts_of_batch(batch, layout, source_lang, target_lang, indices)
    source_ids = tokenizer(sources, add_special_tokens=True, return_attention_mask=False)["input_ids"]
    target_ids = tokenizer(targets, add_special_tokens=True, return_attention_mask=False)["input_ids"]
    flags = []
    for i, (source, target) in enumerate(zip(sources, targets)):
        flag = pair_flag(source_ids[i], target_ids[i], not source.strip() or not target.strip(), max_source_length,
                         max_target_length, max_length_ratio, overlong, is_train)
        if flag & TRUNCATED:
            source_ids[i] = truncate(source_ids[i], max_source_length)
            target_ids[i] = truncate(target_ids[i], max_target_length)
        flags.append(flag)
    return {"id": list(indices), "source": sources, "target": targets, "input_ids": source_ids, "labels": target_ids,
            "source_length": [len(ids) for ids in source_ids], "target_length": [len(ids) for ids in target_ids],
            "flags": flags}


def encode_sources(
    batch: dict[str, list[Any]], indices: list[int], tokenizer: PreTrainedTokenizerFast, max_source_length: int
) -> dict[str, list[Any]]:
    """Tokenize source sentences to translate (predict); overlong ones are truncated and flagged."""
    sources = [text or "" for text in batch["source"]]
    source_ids = tokenizer(sources, add_special_tokens=True, return_attention_mask=False)["input_ids"]
    flags = [TOO_LONG | TRUNCATED if len(ids) > max_source_length else 0 for ids in source_ids]
    source_ids = [truncate(ids, max_source_length) for ids in source_ids]
    return {"id": list(indices), "source": sources, "input_ids": source_ids,
            "source_length": [len(ids) for ids in source_ids], "flags": flags}


def cleaning_counts(flags: np.ndarray) -> dict[str, int]:
    """The `REPORT_KEYS` counts of an array of per-example flags."""
    flags = np.asarray(flags, dtype=np.int64)
    dropped = int(np.count_nonzero(flags & DROPPED))
    counts = {"total": int(flags.size), "kept": int(flags.size) - dropped, "dropped": dropped}
    for key, bit in FLAG_OF_KEY.items():
        counts[key] = int(np.count_nonzero(flags & bit))
    return {key: counts[key] for key in REPORT_KEYS}


def pad(sequences: list[list[int]], value: int) -> torch.Tensor:
    """(len(sequences), longest) right-padded with `value`."""
    padded = torch.full((len(sequences), max(len(seq) for seq in sequences)), value, dtype=torch.long)
    for row, seq in enumerate(sequences):
        padded[row, : len(seq)] = torch.as_tensor(np.asarray(seq), dtype=torch.long)
    return padded


class TranslationCollator:
    """Pads a list of tokenized examples into a batch dict.

    Keys: `input_ids` (B, S) right-padded with `pad_token_id`, `attention_mask` (B, S), `labels` (B, T) with -100 on
    padding (the model shifts labels right itself), `ids` (B,) the examples' row numbers in their split, `sources`
    and `references` (raw strings). Examples without `labels` (predict) give no `labels` / `references`.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        input_ids = pad([example["input_ids"] for example in examples], self.pad_token_id)
        batch: dict[str, Any] = {
            "input_ids": input_ids,
            # `</s>` ends every sequence, so a source never ends in pad ids it would need: the mask is exact
            "attention_mask": (input_ids != self.pad_token_id).long(),
            "ids": torch.as_tensor([example["id"] for example in examples], dtype=torch.long),
            "sources": [example["source"] for example in examples],
        }
        if "labels" in examples[0]:
            batch["labels"] = pad([example["labels"] for example in examples], LABEL_PAD_ID)
            batch["references"] = [example["target"] for example in examples]
        return batch


# ----------------------------------------------------------------------------------------------------------------
# The data module
# ----------------------------------------------------------------------------------------------------------------


def check_languages(source_lang: str, target_lang: str) -> None:
    for name, value in (("source_lang", source_lang), ("target_lang", target_lang)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty str (a language code), got {value!r}")
    if source_lang == target_lang:
        raise ValueError(f"source_lang and target_lang must differ, both are {source_lang!r}")


def check_lengths(max_length_ratio: float, overlong: str, longest: int, batching: dict[str, int | None]) -> None:
    """The length-cleaning settings, and batches (training, evaluation) that hold the longest allowed example."""
    if overlong not in ("drop", "truncate"):
        raise ValueError(f"overlong must be 'drop' or 'truncate', got {overlong!r}")
    if isinstance(max_length_ratio, bool) or not isinstance(max_length_ratio, (int, float)) or max_length_ratio < 1:
        raise ValueError(f"max_length_ratio must be a number >= 1, got {max_length_ratio!r}")
    for prefix in ("", "eval_"):
        budget, size = f"{prefix}max_tokens", f"{prefix}batch_size"
        check_batching(budget, batching[budget], size, batching[size], longest,
                       "max(max_source_length, max_target_length)")


def language_suffix(path: str) -> str:
    """The language a plain-text file's name says: `train.de.gz` -> "de", `val.en` -> "en" ("" for none)."""
    suffixes = [suffix.lower() for suffix in Path(path).suffixes]
    if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    return suffixes[-1][1:] if suffixes else ""


def expand_prefixes(data_files: Any, source_lang: str, target_lang: str) -> Any:
    """A split given as a prefix (fairseq style: `data/train` for `data/train.de.gz` + `data/train.en.gz`) becomes its
    pair of files; anything else is returned as it is (the corpus layer checks it)."""
    if not isinstance(data_files, dict):
        return data_files
    expanded = {}
    for split, files in data_files.items():
        prefix = files[0] if isinstance(files, list) and len(files) == 1 else files
        if isinstance(prefix, (str, os.PathLike)) and not os.path.isfile(prefix):
            found = [next((f"{prefix}.{lang}{ext}" for ext in ("", *COMPRESSION_SUFFIXES)
                           if os.path.isfile(f"{prefix}.{lang}{ext}")), None) for lang in (source_lang, target_lang)]
            if all(found):
                files = found
        expanded[split] = files
    return expanded


def order_text_pairs(data_files: dict[str, list[str]], source_lang: str,
                     target_lang: str) -> dict[str, list[str]]:
    """Plain-text data comes as pairs of aligned files, matched to the languages by their suffix (`train.de.gz` is
    German, whatever its place in the list); files whose names name no language are taken in order, source first.
    Structured files (parquet, json, csv) carry their language columns and are returned as they are."""
    ordered = {}
    for name, files in data_files.items():
        if structured_builder(files[0]) is not None:
            ordered[name] = files
            continue
        if len(files) != 2:
            raise ValueError(
                f"data_files[{name!r}] = {files}: plain-text data must be a pair of aligned files, e.g. "
                f"['train.{source_lang}.gz', 'train.{target_lang}.gz'] (matched to source_lang/target_lang by their "
                f"suffix), or the prefix 'train'; structured files must end in one of {sorted(STRUCTURED_BUILDERS)} "
                f"(optionally compressed)"
            )
        suffixes = [language_suffix(path) for path in files]
        known = [suffix for suffix in suffixes if suffix in (source_lang, target_lang)]
        if not known:
            ordered[name] = list(files)  # no language in the names: the order says it
            logger.info("data_files[%r]: no language suffix in %s: %s is the source (%s), %s the target (%s)",
                        name, files, files[0], source_lang, files[1], target_lang)
        elif sorted(known) == sorted([source_lang, target_lang]):
            ordered[name] = [files[suffixes.index(source_lang)], files[suffixes.index(target_lang)]]
        else:
            raise ValueError(
                f"data_files[{name!r}] = {files}: the file names say languages {suffixes}, not source_lang="
                f"{source_lang!r} and target_lang={target_lang!r}: name the files *.{source_lang} and "
                f"*.{target_lang} (optionally .gz), or set source_lang/target_lang to the languages of the files"
            )
    return ordered


def check_settings(max_source_length: int, max_target_length: int, max_length_ratio: float, overlong: str,
                   num_proc: int, streaming_buffer_size: int, tokenizer_training_pairs: int | None,
                   validation_sample: int | None, max_tokens: int | None, batch_size: int | None,
                   eval_max_tokens: int | None, eval_batch_size: int | None) -> None:
    """The sizes and length rules of `TranslationDataModule`, each refused by name when invalid."""
    for name, value, minimum, optional in (
        ("max_source_length", max_source_length, 2, False), ("max_target_length", max_target_length, 2, False),
        ("num_proc", num_proc, 1, False), ("streaming_buffer_size", streaming_buffer_size, 1, False),
        ("tokenizer_training_pairs", tokenizer_training_pairs, 1, True), ("max_tokens", max_tokens, 1, True),
        ("validation_sample", validation_sample, 1, True),
        ("batch_size", batch_size, 1, True), ("eval_max_tokens", eval_max_tokens, 1, True),
        ("eval_batch_size", eval_batch_size, 1, True)):
        check_int(name, value, minimum, optional)
    check_lengths(max_length_ratio, overlong, max(max_source_length, max_target_length),
                  {"max_tokens": max_tokens, "batch_size": batch_size, "eval_max_tokens": eval_max_tokens,
                   "eval_batch_size": eval_batch_size})


class TranslationDataModule(CorpusDataModule):
    """Parallel corpus -> tokenized, cleaned, token-budget batches for training, evaluation and prediction.

    Args:
        dataset: Hub repository id (`"bentrevett/multi30k"`, `"wmt/wmt14"`) or a local folder `load_dataset` reads.
        dataset_config: Its configuration, e.g. `"de-en"` for `wmt/wmt14`.
        revision: Hub revision to read, e.g. `"refs/convert/parquet"`: the hub's parquet conversion of a dataset
            whose loading script `datasets` 5 refuses (`IWSLT/iwslt2017`).
        data_files: Local files per split instead of `dataset`: parquet, json/jsonl or csv files, or two aligned
            plain-text files (one sentence per line; `.gz`, `.bz2`, `.xz` accepted) matched to the languages by their
            suffix (`{train: [train.de.gz, train.en.gz], validation: [val.de.gz, val.en.gz]}`; without language
            suffixes the source comes first), or the prefix they share (`{train: data/train}`).
        source_lang: Source language (column name, or key inside the `translation` column).
        target_lang: Target language.
        train_split: Split to train on (slices allowed: `"train[1000:]"`).
        validation_split: Split for validation (`"train[:1000]"` for a corpus without one).
        validation_sample: Score validation on a fixed random sample of this many pairs of the validation split
            (drawn once with `seed`, the same sentences at every validation; the log and the model card say so);
            None scores the whole split. Prefer it to `trainer.limit_val_batches`, which keeps whole batches.
        test_split: Split for testing.
        streaming: Stream the training split instead of downloading/preparing it (see the module docstring).
        tokenizer_path: Folder of an existing tokenizer to use instead of training one.
        vocab_size: Size of the joint BPE vocabulary trained on the training split (the paper: about 37000).
        tokenizer_training_pairs: Train the tokenizer on at most this many pairs (a seeded random sample; the first
            ones when streaming); None uses the whole training split.
        cache_dir: Where the tokenizer and the tokenized splits are cached; None: the per-user cache
            (`$HF_TRANSFORMER_CACHE`, else `~/.cache/hf-transformer`), shared by runs and keyed by content.
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
        predict_file: Plain-text file, one source sentence per line, translated by `predict` (into
            `<run>/predictions/`).
        num_workers: DataLoader worker processes.
        num_proc: Processes for tokenizing with `datasets.map`.
        seed: Seed of the batch order (and of the tokenizer's training sample).
        streaming_buffer_size: With `streaming`, examples bucketed together before batching.

    The CLI links `tokenizer_fields` (the tokenizer's size and special ids) into the model; `dataset_name`,
    `source_lang` and `target_lang` go into the model card.
    """

    example_data_files = "{'train': ['train.de.gz', 'train.en.gz'], 'validation': 'valid.jsonl'}"

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
        validation_sample: int | None = None,
        test_split: str = "test",
        streaming: bool = False,
        tokenizer_path: str | None = None,
        vocab_size: int = 37000,
        tokenizer_training_pairs: int | None = None,
        cache_dir: str | None = None,
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
        check_languages(source_lang, target_lang)
        self.source_lang, self.target_lang = source_lang, target_lang
        super().__init__(dataset, dataset_config, revision, expand_prefixes(data_files, source_lang, target_lang),
                         {"train": train_split, "validation": validation_split, "test": test_split},
                         tokenizer_path, vocab_size, cache_dir, num_workers, seed)
        if self.data_files is not None:
            self.data_files = order_text_pairs(self.data_files, source_lang, target_lang)
        check_settings(max_source_length, max_target_length, max_length_ratio, overlong, num_proc,
                       streaming_buffer_size, tokenizer_training_pairs, validation_sample, max_tokens, batch_size,
                       eval_max_tokens, eval_batch_size)
        self.streaming, self.streaming_buffer_size, self.num_proc = streaming, streaming_buffer_size, num_proc
        self.tokenizer_training_pairs, self.predict_file = tokenizer_training_pairs, predict_file
        self.validation_sample = validation_sample
        self.max_source_length, self.max_target_length = max_source_length, max_target_length
        self.max_length_ratio, self.overlong = float(max_length_ratio), overlong
        self.max_tokens, self.batch_size = max_tokens, batch_size
        self.eval_max_tokens, self.eval_batch_size = eval_max_tokens, eval_batch_size
        #: Per split name: counts of `REPORT_KEYS` ("predict" too); filled as splits are prepared.
        self.cleaning_report: dict[str, dict[str, int]] = {}
        #: Per role: what its evaluation covers (`evaluation_set`), filled as the splits are prepared.
        self.evaluation_sets: dict[str, dict[str, Any]] = {}
        #: Fraction of pad tokens in this epoch's training batches (source and target), set by `train_dataloader`.
        self.train_padding_fraction: float | None = None

    @property
    def tokenizer_kind(self) -> str:
        return f"{self.source_lang}-{self.target_lang}"

    # ------------------------------------------------------------------------------------------------------------
    # Raw rows
    # ------------------------------------------------------------------------------------------------------------

    def load_files(self, name: str, paths: list[str], streaming: bool) -> datasets.Dataset | datasets.IterableDataset:
        """Structured files through their `datasets` builder, a pair of aligned plain-text files row by row; empty,
        non-UTF-8 or malformed files give a ValueError naming them."""
        where = f"data_files[{name!r}]"
        builder = structured_builder(paths[0])
        if builder is None:
            check_aligned(*paths, where)
            gen_kwargs = {"source_path": paths[0], "target_path": paths[1], "source_lang": self.source_lang,
                          "target_lang": self.target_lang, "stamp": json.dumps([file_stamp(path) for path in paths])}
            features = datasets.Features({self.source_lang: datasets.Value("string"),
                                          self.target_lang: datasets.Value("string")})
            if streaming:
                return datasets.IterableDataset.from_generator(read_text_pair, features=features,
                                                               gen_kwargs=gen_kwargs)
            return datasets.Dataset.from_generator(read_text_pair, features=features, gen_kwargs=gen_kwargs,
                                                   fingerprint=digest(["text-pair", CACHE_FORMAT_VERSION, gen_kwargs]))
        for path in paths:
            # text formats must be UTF-8; parquet and arrow are binary
            empty = scan_text_file(path, f"{where}: file") == 0 if builder in ("json", "csv") else \
                os.path.getsize(path) == 0
            if empty:
                raise ValueError(f"{where}: {path!r} is empty; give a file with one sentence pair per row")
        try:
            raw = datasets.load_dataset(builder, data_files={name: literal_paths(paths)}, split=name,
                                        streaming=streaming)
        except Exception as error:  # the reader's own error is the cause of `datasets`' DatasetGenerationError
            cause = error.__cause__ or error
            raise ValueError(f"{where} = {paths} cannot be read as {builder} ({type(cause).__name__}: {cause}); rows "
                             "are counted from 0: fix or remove that row") from error
        if isinstance(raw, datasets.Dataset) and len(raw) == 0:
            raise ValueError(f"{where} = {paths} holds no rows")
        return raw

    def check_rows(self, raw: datasets.Dataset | datasets.IterableDataset, split: str) -> None:
        try:
            self.check_text_values(raw, split, self.layout(raw, split))
        except RowError as error:
            raise ValueError(f"{self.where(parse_split(split)[0])}: {error}") from None

    def columns(self, raw: datasets.Dataset | datasets.IterableDataset) -> dict[str, list[str] | None]:
        """Column name -> languages inside it (for a `translation`-like column) or None."""
        features = raw.features
        if features is None:  # a stream without declared features: look at its first row
            first = next(iter(raw), None)
            return {} if first is None else {key: sorted(value) if isinstance(value, dict) else None
                                             for key, value in first.items()}
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

    def check_text_values(self, raw: datasets.Dataset | datasets.IterableDataset, split: str, layout: str) -> None:
        """Raise a ValueError naming the column (and row) when the language columns do not hold text.

        Columns typed string pass at once; `Json`-typed columns (`datasets` gives mixed-type JSON that type) are
        read and checked row by row. Streams without declared features are checked as they are tokenized.
        """
        features = raw.features
        if features is None:
            return
        languages = (self.source_lang, self.target_lang)
        for name in ["translation"] if layout == "translation" else languages:
            feature = features[name]
            if isinstance(feature, datasets.Translation):
                continue
            if isinstance(feature, dict):
                bad = {lang: sub for lang, sub in feature.items() if lang in languages and not is_text_feature(sub)}
                if not bad:
                    continue
                lang, feature = next(iter(bad.items()))
                name = f"translation.{lang}"
            elif is_text_feature(feature):
                continue
            if isinstance(feature, datasets.Json) and isinstance(raw, datasets.Dataset):
                for start in range(0, len(raw), 10000):
                    batch = raw[start : start + 10000]
                    rows = len(next(iter(batch.values())))
                    texts_of_batch(batch, layout, *languages, indices=range(start, start + rows))
                continue
            raise ValueError(
                f"{self.where(split)}: column {name!r} has type {feature}, not text (a string column): convert it "
                f"to strings, or set source_lang/target_lang to the columns that hold the sentences"
            )

    def layout(self, raw: datasets.Dataset | datasets.IterableDataset, split: str) -> str:
        """"flat" (one column per language) or "translation"; a ValueError listing what exists otherwise."""
        columns = self.columns(raw)
        source, target = self.source_lang, self.target_lang
        if source in columns and target in columns:
            return "flat"
        languages = columns.get("translation")
        if languages is not None:
            if source in languages and target in languages:
                return "translation"
            raise ValueError(
                f"{self.where(split)}: its 'translation' column has languages {languages}, which do not include "
                f"both source_lang={source!r} and target_lang={target!r}: set source_lang/target_lang to two of them"
            )
        described = ", ".join(
            f"{name!r}" if langs is None else f"{name!r} (languages {langs})" for name, langs in columns.items()
        )
        raise ValueError(
            f"{self.where(split)} has no columns for source_lang={source!r} and target_lang={target!r}; it has "
            f"columns [{described}]. Expected a 'translation' column of {{language: text}} dicts or one column per "
            f"language: set source_lang/target_lang to the names it uses"
        )

    # ------------------------------------------------------------------------------------------------------------
    # Tokenizer
    # ------------------------------------------------------------------------------------------------------------

    def tokenizer_settings(self) -> dict[str, Any]:
        return {"languages": [self.source_lang, self.target_lang], "training_pairs": self.tokenizer_training_pairs,
                "seed": self.seed if self.tokenizer_training_pairs is not None else None}

    def tokenizer_training_texts(self) -> Iterator[tuple[str, str]]:
        """Sentence pairs of the training split the tokenizer learns from (capped by tokenizer_training_pairs)."""
        raw = self.load_split(self.train_split, streaming=self.streaming)
        layout = self.layout(raw, self.train_split)
        cap = self.tokenizer_training_pairs
        if isinstance(raw, datasets.IterableDataset):
            raw = raw.take(cap) if cap is not None else raw
        elif cap is not None and cap < len(raw):
            raw = raw.shuffle(seed=self.seed).select(range(cap))
        try:
            for batch in raw.iter(batch_size=1000):
                yield from zip(*texts_of_batch(batch, layout, self.source_lang, self.target_lang))
        except RowError as error:  # a stream is checked only as it is read
            raise ValueError(f"{self.where(self.train_split)}: {error}") from None

    def train_tokenizer(self) -> PreTrainedTokenizerFast:
        logger.info("training a %d-token joint BPE tokenizer on %s (%s -> %s)", self.requested_vocab_size,
                    self.where(self.train_split), self.source_lang, self.target_lang)
        return train_tokenizer(iter_parallel_texts(self.tokenizer_training_texts()),
                               vocab_size=self.requested_vocab_size)

    # ------------------------------------------------------------------------------------------------------------
    # Tokenized splits
    # ------------------------------------------------------------------------------------------------------------

    def encode_kwargs(self, layout: str, is_train: bool) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer, "layout": layout, "source_lang": self.source_lang,
                "target_lang": self.target_lang, "max_source_length": self.max_source_length,
                "max_target_length": self.max_target_length, "max_length_ratio": self.max_length_ratio,
                "overlong": self.overlong, "is_train": is_train}

    def record_report(self, role: str, source: str, counts: dict[str, int]) -> None:
        """Keep and log the cleaning counts of `role`; `source` says where its rows came from."""
        self.cleaning_report[role] = counts
        if self.is_global_zero():
            logger.info("%s (%s) cleaning report: %s", role, source, counts)

    def tokenized_split(self, role: str) -> datasets.Dataset:
        """The tokenized, cleaned split for `role` ("train", "validation", "test"), cached under `cache_dir`.

        Columns: `id` (row number in the split), `source`, `target`, `input_ids`, `labels`, `source_length`,
        `target_length`, `flags`. Also records `cleaning_report[role]`.
        """
        if role in self._splits:
            return self._splits[role]
        split, is_train = self.splits[role], role == "train"
        if self.streaming:  # evaluation splits are small: read the stream into memory (never the training split)
            rows = list(self.load_split(split, streaming=True))
            if not rows:
                raise ValueError(f"{self.where(split)} is empty")
            raw = datasets.Dataset.from_list(rows)
        else:
            raw = self.load_split(split)
        layout = self.layout(raw, split)
        key = digest({"version": CACHE_FORMAT_VERSION, "data": self.data_identity(split), "split": split,
                      "tokenizer": digest(self.tokenizer.backend_tokenizer.to_str(), 64),
                      "languages": [self.source_lang, self.target_lang],
                      "lengths": [self.max_source_length, self.max_target_length, self.max_length_ratio,
                                  self.overlong], "is_train": is_train})
        cache_file = os.path.join(self.cache_dir, "tokenized", f"{self.short_name()}-{slug(split)}-{key}.arrow")
        os.makedirs(os.path.dirname(cache_file), exist_ok=True)
        drop_damaged_cache_file(cache_file)
        encoded = raw.map(encode_pairs, batched=True, with_indices=True, fn_kwargs=self.encode_kwargs(layout, is_train),
                          remove_columns=raw.column_names, num_proc=self.num_proc if self.num_proc > 1 else None,
                          cache_file_name=cache_file, new_fingerprint=key, desc=f"tokenizing {role}")
        flags = np.asarray(encoded.with_format("numpy")["flags"], dtype=np.int64)
        self.record_report(role, self.where(split), cleaning_counts(flags))
        kept = np.flatnonzero((flags & DROPPED) == 0)
        if kept.size == 0:
            raise ValueError(
                f"{self.where(split)}: cleaning dropped all {len(flags)} pairs ({self.cleaning_report[role]}): "
                f"check source_lang/target_lang and the files, or loosen max_source_length/max_target_length/"
                f"max_length_ratio (overlong: 'truncate' keeps long pairs)"
            )
        cleaned = kept.size
        if role == "validation":
            kept = self.sample_validation(kept, split)
        self.evaluation_sets[role] = {"dataset": self.split_dataset_name(split), "split": split,
                                      "pairs": int(kept.size), "total": len(flags),
                                      "sample": f"a fixed random sample (seed {self.seed})" if kept.size < cleaned
                                      else None}
        self._splits[role] = encoded if kept.size == len(encoded) else encoded.select(kept)
        return self._splits[role]

    def sample_validation(self, kept: np.ndarray, split: str) -> np.ndarray:
        """The fixed random sample of `validation_sample` pairs (seeded, sorted), or all of `kept`."""
        if self.validation_sample is None or self.validation_sample >= kept.size:
            return kept
        chosen = np.sort(np.random.default_rng(self.seed).choice(kept, size=self.validation_sample, replace=False))
        if self.is_global_zero():
            logger.info("validation scores a fixed random sample of %d of the %d pairs of %s (seed %d), the same "
                        "at every validation; validation_sample: null scores them all", chosen.size, kept.size,
                        self.where(split), self.seed)
        return chosen

    def evaluation_set(self, role: str) -> dict[str, Any] | None:
        """What the evaluation of `role` ("validation", "test") covers: dataset, split, pairs scored, pairs in the
        split, and how the sample was drawn (None: the whole split, cleaned of empty pairs)."""
        return self.evaluation_sets.get(role)

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
        encoded = datasets.Dataset.from_dict({"source": lines}).map(
            encode_sources, batched=True, with_indices=True, remove_columns=["source"],
            fn_kwargs={"tokenizer": self.tokenizer, "max_source_length": self.max_source_length},
        )
        # a file name, never a split expression: `my docs/in[1].txt` is a path
        self.record_report("predict", f"predict_file {self.predict_file!r}",
                           cleaning_counts(encoded.with_format("numpy")["flags"]))
        self._splits["predict"] = encoded
        return encoded

    def prepare_role(self, role: str) -> None:
        if role == "predict":
            self.predict_split()
        elif not (role == "train" and self.streaming):  # the streamed train split is read on the fly
            self.tokenized_split(role)

    # ------------------------------------------------------------------------------------------------------------
    # Loaders
    # ------------------------------------------------------------------------------------------------------------

    def train_dataloader(self) -> DataLoader:
        """Token-budget batches, shuffled per epoch, sharded over the trainer's ranks (resumes mid-epoch)."""
        world_size, rank = self.world()
        collate = TranslationCollator(self.pad_token_id)
        if self.streaming:
            raw = self.load_split(self.train_split, streaming=True)
            fn_kwargs = self.encode_kwargs(self.layout(raw, self.train_split), is_train=True)
            columns = raw.column_names or list(self.columns(raw))
            if world_size > 1:
                raw = split_dataset_by_node(raw, rank=rank, world_size=world_size)
            examples = raw.map(encode_pairs, batched=True, with_indices=True, remove_columns=columns,
                               fn_kwargs=fn_kwargs)
            batches = StreamingTokenBudgetBatches(examples, collate, max_tokens=self.max_tokens,
                                                  batch_size=self.batch_size, buffer_size=self.streaming_buffer_size,
                                                  seed=self.seed, rank=rank, drop_flag=DROPPED,
                                                  report=cleaning_counts)
            return EpochAwareDataLoader(batches, epoch_fn=self.trainer_epoch, num_workers=self.num_workers,
                                        generator=torch.Generator().manual_seed(self.seed))
        train = self.tokenized_split("train").with_format("numpy")
        lengths = np.stack([np.asarray(train["source_length"]), np.asarray(train["target_length"])], axis=1)
        loader = self.train_loader(self.tokenized_split("train"), lengths, collate, self.max_tokens, self.batch_size)
        self.train_padding_fraction = self._train_sampler.padding_fraction()
        if self.is_global_zero():
            logger.info(
                "train: %d examples in %d batches per rank (%d ranks), %s; padding %.2f%% of the padded tokens",
                len(train), len(self._train_sampler), world_size,
                f"max_tokens={self.max_tokens}" if self.max_tokens else f"batch_size={self.batch_size}",
                100 * self.train_padding_fraction,
            )
        return loader

    def evaluation_loader(self, split: datasets.Dataset, with_targets: bool = True,
                          fixed_random_order: bool = False) -> DataLoader:
        columns = ["source_length", "target_length"] if with_targets else ["source_length"]
        numpy_split = split.with_format("numpy")
        lengths = np.stack([np.asarray(numpy_split[column]) for column in columns], axis=1) if len(split) else []
        if len(split) and not with_targets:
            lengths = lengths[:, 0]
        return self.eval_loader(split, lengths, TranslationCollator(self.pad_token_id), self.eval_max_tokens,
                                self.eval_batch_size, fixed_random_order)

    def val_dataloader(self) -> DataLoader:
        return self.evaluation_loader(self.tokenized_split("validation"), fixed_random_order=True)

    def test_dataloader(self) -> DataLoader:
        return self.evaluation_loader(self.tokenized_split("test"))

    def predict_dataloader(self) -> DataLoader:
        """Length-sorted batches of `predict_file` (keys `ids`, `sources`, `input_ids`, `attention_mask`)."""
        return self.evaluation_loader(self.predict_split(), with_targets=False)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "streaming": self.streaming}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        mid_epoch = state_dict.get("batches_done", 0) > 0 and not state_dict.get("epoch_finished", False)
        if self.streaming and mid_epoch:
            raise ValueError(
                f"cannot resume mid-epoch with streaming=True (the checkpoint stopped after "
                f"{state_dict['batches_done']} batches of epoch {state_dict['epoch']}): a stream has no random "
                "access. Resume from an end-of-epoch checkpoint, or with streaming=False"
            )
        super().load_state_dict(state_dict)


__all__ = ["TranslationDataModule", "TranslationCollator", "REPORT_KEYS", "encode_pairs", "encode_sources",
           "cleaning_counts"]
