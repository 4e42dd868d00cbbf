"""`CaptioningDataModule`: image-caption pairs from a hub or local dataset, or the generated shapes corpus
(`ShapesCaptioningDataModule`).

Batches: `pixel_values` (B, C, H, W) from the image processor, `labels` (B, T) caption ids ending with `</s>` (-100 on
padding), `ids` (image indices, to count each image once under DDP) and `references` (all captions of each image).
Training pairs each image with each of its captions, in an order shuffled by (seed, epoch); evaluation sees each
image once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import datasets
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerFast

from hf_transformer import VaswaniImageProcessor
from hf_transformer.tokenization_vaswani import train_tokenizer

from ..runs import cache_dir as user_cache_dir
from .corpus import LABEL_PAD_ID, CorpusDataModule, check_int
from .shapes import write_shapes_dataset

logger = logging.getLogger(__name__)


class CaptionExamples(Dataset):
    """(image row, caption) training pairs, or one entry per image for evaluation (all its captions as references)."""

    def __init__(self, raw: datasets.Dataset, image_column: str, captions: list[list[str]],
                 caption_ids: list[list[list[int]]], pairs: bool):
        self.raw = raw.select_columns([image_column])
        self.image_column = image_column
        self.captions = captions
        self.caption_ids = caption_ids
        self.index = ([(row, k) for row, ids in enumerate(caption_ids) for k in range(len(ids))] if pairs
                      else [(row, 0) for row in range(len(captions))])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict[str, Any]:
        row, k = self.index[item]
        return {"id": row, "image": self.raw[row][self.image_column], "labels": self.caption_ids[row][k],
                "references": self.captions[row]}


class CaptionCollator:
    """Images through the image processor; captions right-padded with -100."""

    def __init__(self, image_processor: VaswaniImageProcessor):
        self.image_processor = image_processor

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        pixel_values = self.image_processor([e["image"] for e in examples], return_tensors="pt")["pixel_values"]
        longest = max(len(e["labels"]) for e in examples)
        labels = torch.full((len(examples), longest), LABEL_PAD_ID, dtype=torch.long)
        for row, example in enumerate(examples):
            labels[row, : len(example["labels"])] = torch.tensor(example["labels"])
        return {"pixel_values": pixel_values, "labels": labels, "ids": torch.tensor([e["id"] for e in examples]),
                "references": [e["references"] for e in examples]}


class CaptioningDataModule(CorpusDataModule):
    """Image-caption pairs from the Hugging Face hub or a local dataset folder.

    Args:
        dataset: Hub repository id of a script-free (parquet) dataset, or a local folder `load_dataset` reads.
        dataset_config: Its configuration name, if any.
        revision: Hub revision, e.g. "refs/convert/parquet".
        image_column: Column holding the images (a `datasets.Image` feature: PIL images).
        caption_column: Column holding the captions: one str or a list of str (several captions per image); or a list
            of columns with one caption each (`jxie/flickr8k`: caption_0 ... caption_4).
        train_split: Split to train on; `datasets` slices allowed ("train[1000:]").
        validation_split: Split for validation ("train[:1000]" for a dataset without one).
        test_split: Split for testing.
        image_size: Side of the square images the processor produces (the model's `image_size`).
        num_channels: 3 (RGB) or 1 (grayscale): the model's `num_channels`.
        tokenizer_path: Folder of an existing tokenizer; otherwise one is trained on the training captions.
        vocab_size: Size of the BPE vocabulary trained on the captions.
        cache_dir: Where the trained tokenizer is cached; None: the per-user cache (`$HF_TRANSFORMER_CACHE`, else
            `~/.cache/hf-transformer`).
        max_caption_length: Captions are truncated to this many tokens, `</s>` included.
        batch_size: (image, caption) pairs per training batch.
        eval_batch_size: Images per validation/test batch.
        num_workers: DataLoader worker processes.
        seed: Seed of the training order.
    """

    example_dataset = "'jxie/flickr8k'"
    tokenizer_kind = "captions"

    def __init__(
        self,
        dataset: str,
        dataset_config: str | None = None,
        revision: str | None = None,
        image_column: str = "image",
        caption_column: str | list[str] = "captions",
        train_split: str = "train",
        validation_split: str = "validation",
        test_split: str = "test",
        image_size: int = 32,
        num_channels: int = 3,
        tokenizer_path: str | None = None,
        vocab_size: int = 8000,
        cache_dir: str | None = None,
        max_caption_length: int = 48,
        batch_size: int = 64,
        eval_batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        if not isinstance(dataset, str) or not dataset:
            raise ValueError(f"dataset must be a hub id or a local dataset folder, got {dataset!r}")
        caption_columns = [caption_column] if isinstance(caption_column, str) else list(caption_column)
        for name, value in (("image_column", image_column), *[("caption_column", c) for c in caption_columns]):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty column name (or a list of them), got {value!r}")
        if not caption_columns:
            raise ValueError("caption_column must name at least one column")
        super().__init__(dataset, dataset_config, revision, None,
                         {"train": train_split, "validation": validation_split, "test": test_split},
                         tokenizer_path, vocab_size, cache_dir, num_workers, seed)
        for name, value, minimum in (("image_size", image_size, 1), ("max_caption_length", max_caption_length, 2),
                                     ("batch_size", batch_size, 1), ("eval_batch_size", eval_batch_size, 1)):
            check_int(name, value, minimum)
        self.image_column = image_column
        self.caption_columns = caption_columns
        self.image_size = image_size
        self.num_channels = num_channels
        self.max_caption_length = max_caption_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.image_processor = VaswaniImageProcessor.for_model(image_size, num_channels)
        self._examples: dict[str, CaptionExamples] = {}

    def check_rows(self, raw: datasets.Dataset, split: str) -> None:
        missing = [c for c in (self.image_column, *self.caption_columns) if c not in raw.column_names]
        if missing:
            raise ValueError(f"{self.where(split)} has no column {missing[0]!r}; its columns are {raw.column_names}: "
                             "set image_column / caption_column to the names it uses")
        if not isinstance(raw.features[self.image_column], datasets.Image):
            raise ValueError(f"column {self.image_column!r} of {self.dataset!r} holds {raw.features[self.image_column]}"
                             ", not images: set image_column to the column with a datasets.Image feature")

    def raw_split(self, role: str) -> datasets.Dataset:
        """The rows of the split for `role` ("train", "validation", "test"), checked to have both columns."""
        if role not in self._splits:
            self._splits[role] = self.load_split(self.splits[role])
        return self._splits[role]

    def captions(self, role: str) -> list[list[str]]:
        """Every image's captions as a list (a single-caption column becomes one-element lists)."""
        raw = self.raw_split(role)
        captions: list[list[str]] = [[] for _ in range(len(raw))]
        for name in self.caption_columns:
            for row, value in enumerate(raw[name]):
                values = [value] if isinstance(value, str) or value is None else value
                captions[row].extend(c for c in values if c and c.strip())
        return captions

    def tokenizer_settings(self) -> dict[str, Any]:
        return {"columns": self.caption_columns}

    def train_tokenizer(self) -> PreTrainedTokenizerFast:
        texts = [c for captions in self.captions("train") for c in captions]
        logger.info("training a %d-token BPE tokenizer on %d training captions", self.requested_vocab_size, len(texts))
        return train_tokenizer(texts, vocab_size=self.requested_vocab_size)

    def examples(self, role: str) -> CaptionExamples:
        if role not in self._examples:
            captions = self.captions(role)
            flat = [c for caps in captions for c in caps]
            encoded = self.tokenizer(flat, truncation=True, max_length=self.max_caption_length)["input_ids"]
            ids, position = [], 0
            for caps in captions:
                ids.append(encoded[position:position + len(caps)])
                position += len(caps)
            empty = [row for row, caps in enumerate(captions) if not caps]
            if empty and role == "train":
                logger.info("%d training images without captions are skipped", len(empty))
            self._examples[role] = CaptionExamples(self.raw_split(role), self.image_column, captions, ids,
                                                   pairs=role == "train")
        return self._examples[role]

    def prepare_role(self, role: str) -> None:
        if role != "predict":
            self.examples(role)

    def loader(self, role: str, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed + (self.trainer.current_epoch if self.trainer else 0))
        return DataLoader(self.examples(role), batch_size=self.batch_size if role == "train" else self.eval_batch_size,
                          shuffle=shuffle, generator=generator, collate_fn=CaptionCollator(self.image_processor),
                          num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("validation", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.loader("test", shuffle=False)


class ShapesCaptioningDataModule(CaptioningDataModule):
    """`CaptioningDataModule` on the generated coloured-shapes corpus (`shapes.py`; no download).

    The corpus is written once, on first use, under `cache_dir/shapes-...` (named by its arguments) as a hub-style
    parquet folder and read through the same path as a hub dataset. Validation and test scenes never occur in training.

    Args:
        num_train: Training images (each with its captions).
        num_validation: Validation images, scenes unseen in training.
        num_test: Test images, scenes unseen in training and validation.
        image_size: Side of the square images, in pixels (the model's `image_size`).
        tokenizer_path: Folder of an existing tokenizer; otherwise one is trained on the training captions.
        vocab_size: Size of the BPE vocabulary trained on the captions.
        cache_dir: Where the corpus and the tokenizer are cached; None: the per-user cache.
        max_caption_length: Captions are truncated to this many tokens, `</s>` included.
        batch_size: (image, caption) pairs per training batch.
        eval_batch_size: Images per validation/test batch.
        num_workers: DataLoader worker processes.
        seed: Seed of the corpus and of the training order.
    """

    def __init__(
        self,
        num_train: int = 20000,
        num_validation: int = 300,
        num_test: int = 500,
        image_size: int = 32,
        tokenizer_path: str | None = None,
        vocab_size: int = 300,
        cache_dir: str | None = None,
        max_caption_length: int = 24,
        batch_size: int = 64,
        eval_batch_size: int = 100,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        for name, value, minimum in (("num_train", num_train, 1), ("num_validation", num_validation, 1),
                                     ("num_test", num_test, 1), ("image_size", image_size, 8)):
            check_int(name, value, minimum)
        self.sizes = (num_train, num_validation, num_test)
        root = Path(cache_dir) if cache_dir is not None else user_cache_dir()
        folder = str(root / f"shapes-{num_train}-{num_validation}-{num_test}-{image_size}px-seed{seed}")
        super().__init__(dataset=folder, image_column="image", caption_column="captions", image_size=image_size,
                         num_channels=3, tokenizer_path=tokenizer_path, vocab_size=vocab_size, cache_dir=cache_dir,
                         max_caption_length=max_caption_length, batch_size=batch_size, eval_batch_size=eval_batch_size,
                         num_workers=num_workers, seed=seed)

    @property
    def dataset_name(self) -> str:
        return "synthetic coloured shapes captions"

    def data_identity(self, split: str) -> dict[str, Any]:
        return {"dataset": self.dataset}  # the corpus is a function of the arguments its folder is named by

    def raw_split(self, role: str) -> datasets.Dataset:
        # written on first use (kept afterwards), not when the recipe is only instantiated
        write_shapes_dataset(self.dataset, *self.sizes, image_size=self.image_size, seed=self.seed)
        return super().raw_split(role)


__all__ = ["CaptioningDataModule", "ShapesCaptioningDataModule", "CaptionCollator", "CaptionExamples"]
