"""Images as sequences of pixel intensities, for the Image Transformer's decoder-only setting (Parmar et al. 2018):
`VaswaniForCausalLM` predicts every sub-pixel from the ones before it, in raster order.

- Order: rows top to bottom, within a row the pixels left to right, within a pixel its channels (R, G, B): an
  image of H x W pixels and C channels is H W C tokens, and on the grid of 2D local attention a row is W C positions
  (`local_grid_width` = image_size x num_channels).
- Output: a categorical distribution over the 256 intensities (the paper's "categorical" choice; it also has a
  discretized mixture of logistics, not built here). The vocabulary is the four special tokens (ids 0-3) then the
  intensities 0-255 (id 4 + v): 260 tokens. The model could put probability on the special tokens; it learns not to,
  and whatever it puts there only raises the loss, so bits/dim measured this way are never flattering.
- Input embedding: one learned vector per intensity, shared by the three channels (the paper keeps one per channel
  and intensity); the channel is given by the position.
- An example is `<s>` + the H W C intensities; the loss per token is the NLL per sub-pixel in nats, and
  bits/dim = loss / ln 2.

`PixelDataModule` reads any script-free hub or local dataset with an image column (CIFAR-10: `uoft-cs/cifar10`,
column `img`); `ShapesPixelDataModule` generates the project's coloured-shapes pictures (`shapes.py`; held-out pictures
show scenes never seen in training).
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..runs import cache_dir as user_cache_dir
from .corpus import check_int
from .fixed_vocabulary import FIRST_SYMBOL_ID, FixedVocabularyDataModule
from .shapes import write_shapes_dataset

INTENSITY_SYMBOLS = [str(value) for value in range(256)]
FIRST_INTENSITY_ID = FIRST_SYMBOL_ID  # 4: intensity v is token id 4 + v
MODES = {1: "L", 3: "RGB"}


def image_to_ids(image: Image.Image | dict, image_size: int, num_channels: int) -> np.ndarray:
    """(H W C,) token ids of an image in raster order (rows, columns, channels), converted to `num_channels` channels
    and resized (bilinear) to image_size x image_size when it has another size. `image` may be a PIL image or the
    {"bytes", "path"} dict of an undecoded `datasets.Image`."""
    if isinstance(image, dict):
        image = Image.open(io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"])
    image = image.convert(MODES[num_channels])
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.int64).reshape(image_size, image_size, num_channels)  # (H, W, C)
    return pixels.reshape(-1) + FIRST_INTENSITY_ID


def ids_to_image(ids: Any, image_size: int, num_channels: int) -> np.ndarray:
    """The (H, W, C) uint8 picture of H W C token ids (special tokens, never sampled, read as 0)."""
    values = np.asarray(ids, dtype=np.int64).reshape(-1)[: image_size * image_size * num_channels] - FIRST_INTENSITY_ID
    return np.clip(values, 0, 255).astype(np.uint8).reshape(image_size, image_size, num_channels)


def write_image_grid(images: list[np.ndarray], path: str | os.PathLike, columns: int = 8, scale: int = 4,
                     gap: int = 2) -> Path:
    """Pictures (H, W, C) uint8 side by side, `columns` per row, each enlarged `scale` times (nearest neighbour), on
    a white background; written as PNG."""
    height, width, channels = images[0].shape
    rows = math.ceil(len(images) / columns)
    cell_h, cell_w = height * scale + gap, width * scale + gap
    canvas = np.full((rows * cell_h + gap, columns * cell_w + gap, 3), 255, dtype=np.uint8)
    for index, picture in enumerate(images):
        picture = np.repeat(np.repeat(picture, scale, axis=0), scale, axis=1)
        picture = np.repeat(picture, 3, axis=2) if channels == 1 else picture
        top, left = gap + index // columns * cell_h, gap + index % columns * cell_w
        canvas[top : top + height * scale, left : left + width * scale] = picture
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)
    return path


class PixelSequences(Dataset):
    """The images of a split as examples `<s>` + their intensity ids, decoded when an example is read."""

    def __init__(self, raw: datasets.Dataset, image_column: str, image_size: int, num_channels: int,
                 bos_token_id: int) -> None:
        self.raw = raw.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
        self.image_column = image_column
        self.image_size = image_size
        self.num_channels = num_channels
        self.bos_token_id = bos_token_id

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ids = image_to_ids(self.raw[index][self.image_column], self.image_size, self.num_channels)
        return {"input_ids": np.concatenate([[self.bos_token_id], ids]), "id": index}


class PixelDataModule(FixedVocabularyDataModule):
    """Images of a hub or local dataset as sequences of sub-pixel intensities (see the module docstring).

    Args:
        dataset: Hub repository id of a script-free (parquet) dataset (`uoft-cs/cifar10`), or a local folder
            `load_dataset` reads.
        dataset_config: Its configuration name, if any.
        revision: Hub revision.
        image_column: The column holding the images (a `datasets.Image` feature).
        train_split / validation_split / test_split: Split names, `datasets` slices allowed ("train[5000:]").
        image_size: Side of the square images the model reads (others are resized).
        num_channels: 3 (RGB) or 1 (grey).
        batch_size: Images per training batch.
        eval_batch_size: Images per validation/test batch.
        cache_dir: Where the tokenizer (the fixed vocabulary) is kept; None: the per-user cache
            (`$HF_TRANSFORMER_CACHE`, else `~/.cache/hf-transformer`).
        tokenizer_path: The fixed vocabulary's folder (what a checkpoint brings); None: written to the cache.
        num_workers: DataLoader worker processes (images are decoded in them).
        seed: Seed of the batch order.
    """

    example_dataset = "'uoft-cs/cifar10'"
    tokenizer_kind = "pixels"

    def __init__(
        self,
        dataset: str,
        dataset_config: str | None = None,
        revision: str | None = None,
        image_column: str = "img",
        train_split: str = "train",
        validation_split: str = "validation",
        test_split: str = "test",
        image_size: int = 32,
        num_channels: int = 3,
        batch_size: int = 16,
        eval_batch_size: int = 32,
        cache_dir: str | None = None,
        num_workers: int = 0,
        seed: int = 0,
        tokenizer_path: str | None = None,
    ) -> None:
        if not isinstance(dataset, str) or not dataset:
            raise ValueError(f"dataset must be a hub id or a local dataset folder, got {dataset!r}")
        if not isinstance(image_column, str) or not image_column:
            raise ValueError(f"image_column must be a non-empty column name, got {image_column!r}")
        check_int("image_size", image_size, 1)
        if num_channels not in MODES:
            raise ValueError(f"num_channels must be one of {sorted(MODES)} (grey or RGB), got {num_channels!r}")
        super().__init__(dataset, dataset_config, revision,
                         {"train": train_split, "validation": validation_split, "test": test_split},
                         INTENSITY_SYMBOLS, batch_size, eval_batch_size, cache_dir, num_workers, seed,
                         tokenizer_path)
        self.image_column = image_column
        self.image_size = image_size
        self.num_channels = num_channels

    @property
    def sequence_length(self) -> int:
        """Sub-pixels per image: the tokens of an example after its `<s>`."""
        return self.image_size * self.image_size * self.num_channels

    @property
    def grid_width(self) -> int:
        """Positions per image row (width x channels): the model's `local_grid_width` for 2D local attention."""
        return self.image_size * self.num_channels

    def check_rows(self, raw: datasets.Dataset, split: str) -> None:
        if self.image_column not in raw.column_names:
            raise ValueError(f"{self.where(split)} has no column {self.image_column!r}; its columns are "
                             f"{raw.column_names}: set image_column to the one holding the images")
        if not isinstance(raw.features[self.image_column], datasets.Image):
            raise ValueError(f"column {self.image_column!r} of {self.where(split)} holds "
                             f"{raw.features[self.image_column]}, not images: set image_column to the column with a "
                             "datasets.Image feature")

    def build_examples(self, role: str) -> tuple[Dataset, np.ndarray]:
        raw = self.load_split(self.splits[role])
        if len(raw) == 0:
            raise ValueError(f"{self.where(self.splits[role])} has no images")
        examples = PixelSequences(raw, self.image_column, self.image_size, self.num_channels, self.bos_token_id)
        return examples, np.full(len(examples), self.sequence_length + 1, dtype=np.int64)


class ShapesPixelDataModule(PixelDataModule):
    """`PixelDataModule` on the generated coloured-shapes pictures (`shapes.py`, no download): written once, on first
    use, under `cache_dir/shapes-...` as the captioning demo writes them (the same folder for the same arguments);
    validation and test pictures show scenes that never occur in training.

    Args:
        num_train / num_validation / num_test: Pictures per split.
        image_size: Side of the pictures in pixels (RGB).
        batch_size, eval_batch_size, cache_dir, num_workers, tokenizer_path: As for `PixelDataModule`.
        seed: Seed of the pictures and of the batch order.
    """

    def __init__(
        self,
        num_train: int = 4000,
        num_validation: int = 200,
        num_test: int = 200,
        image_size: int = 16,
        batch_size: int = 16,
        eval_batch_size: int = 50,
        cache_dir: str | None = None,
        num_workers: int = 0,
        seed: int = 0,
        tokenizer_path: str | None = None,
    ) -> None:
        for name, value, minimum in (("num_train", num_train, 1), ("num_validation", num_validation, 1),
                                     ("num_test", num_test, 1), ("image_size", image_size, 8)):
            check_int(name, value, minimum)
        self.sizes = (num_train, num_validation, num_test)
        root = Path(cache_dir) if cache_dir is not None else user_cache_dir()
        folder = str(root / f"shapes-{num_train}-{num_validation}-{num_test}-{image_size}px-seed{seed}")
        super().__init__(folder, image_column="image", image_size=image_size, num_channels=3, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, cache_dir=cache_dir, num_workers=num_workers, seed=seed,
                         tokenizer_path=tokenizer_path)

    @property
    def dataset_name(self) -> str:
        return "synthetic coloured shapes pictures"

    def data_identity(self, split: str) -> dict[str, Any]:
        return {"dataset": self.dataset}  # the pictures are a function of the arguments their folder is named by

    def build_examples(self, role: str) -> tuple[Dataset, np.ndarray]:
        write_shapes_dataset(self.dataset, *self.sizes, image_size=self.image_size, seed=self.seed)
        return super().build_examples(role)


__all__ = ["PixelDataModule", "ShapesPixelDataModule", "PixelSequences", "image_to_ids", "ids_to_image",
           "write_image_grid", "INTENSITY_SYMBOLS", "FIRST_INTENSITY_ID"]
