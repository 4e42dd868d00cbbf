"""Image captioning with Lightning: `CaptioningDataModule` (a hub / local image-caption dataset, or the generated
shapes corpus) and `CaptioningModule` (trains `VaswaniForImageCaptioning`, scores beam-search captions with BLEU
against every reference of an image and with exact match).

Batches: `pixel_values` (B, C, H, W) from the image processor, `labels` (B, T) caption ids ending with `</s>` (-100 on
padding), `ids` (image indices, to count each image once under DDP) and, for evaluation, `references` (all captions
of each image). Training pairs each image with each of its captions; evaluation sees each image once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import datasets
import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerFast

from hf_transformer import (
    VaswaniConfig,
    VaswaniForImageCaptioning,
    VaswaniImageProcessor,
    shift_tokens_right,
)
from hf_transformer.tokenization_vaswani import (
    MIN_VOCAB_SIZE,
    load_tokenizer,
    train_tokenizer,
)

from .data import TokenizerLinks, cached_tokenizer
from .module import corpus_bleu, gather_objects, label_smoothed_loss
from .schedules import inverse_sqrt_schedule, paper_adam
from .shapes import write_shapes_dataset

logger = logging.getLogger(__name__)


def caption_scores(hypotheses: list[str], references: list[list[str]]) -> dict[str, float]:
    """Corpus BLEU (sacreBLEU, every reference of an image counts), its signature, and exact match (the hypothesis
    equals one of the image's references), over aligned lists."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if not hypotheses:
        return {"bleu": 0.0, "exact_match": 0.0, "signature": None}
    depth = max(len(refs) for refs in references)
    streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(depth)]
    bleu, signature = corpus_bleu(hypotheses, streams)
    exact = sum(h.strip() in {r.strip() for r in refs} for h, refs in zip(hypotheses, references)) / len(hypotheses)
    return {"bleu": bleu, "exact_match": exact, "signature": signature}


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


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
        labels = torch.full((len(examples), longest), -100, dtype=torch.long)
        for row, example in enumerate(examples):
            labels[row, : len(example["labels"])] = torch.tensor(example["labels"])
        return {"pixel_values": pixel_values, "labels": labels, "ids": torch.tensor([e["id"] for e in examples]),
                "references": [e["references"] for e in examples]}


class CaptioningDataModule(TokenizerLinks, LightningDataModule):
    """Image-caption pairs from the Hugging Face hub or a local dataset folder.

    Args:
        dataset: Hub repository id of a script-free (parquet) dataset, or a local folder `load_dataset` reads.
        dataset_config: Its configuration name, if any.
        revision: Hub revision, e.g. "refs/convert/parquet".
        image_column: Column holding the images (a `datasets.Image` feature: PIL images).
        caption_column: Column holding the captions: one str or a list of str (several captions per image); or a list
            of columns with one caption each (`jxie/flickr8k`: caption_0 ... caption_4).
        train_split / validation_split / test_split: Split names, `datasets` slices allowed ("train[:1000]").
        image_size: Side of the square images the processor produces (the model's `image_size`).
        num_channels: 3 (RGB) or 1 (grayscale): the model's `num_channels`.
        tokenizer_path: Folder of an existing tokenizer; otherwise one is trained on the training captions.
        vocab_size: Size of the BPE vocabulary trained on the captions.
        cache_dir: Where the trained tokenizer is cached.
        max_caption_length: Captions are truncated to this many tokens, `</s>` included.
        batch_size: (image, caption) pairs per training batch.
        eval_batch_size: Images per validation/test batch.
        num_workers: DataLoader worker processes.
        seed: Seed of the training order.
    """

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
        cache_dir: str = "cache",
        max_caption_length: int = 48,
        batch_size: int = 64,
        eval_batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(dataset, str) or not dataset:
            raise ValueError(f"dataset must be a hub id or a local dataset folder, got {dataset!r}")
        caption_columns = [caption_column] if isinstance(caption_column, str) else list(caption_column)
        for name, value in (("image_column", image_column), *[("caption_column", c) for c in caption_columns]):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty column name (or a list of them), got {value!r}")
        if not caption_columns:
            raise ValueError("caption_column must name at least one column")
        for name, value, minimum in (("image_size", image_size, 1), ("max_caption_length", max_caption_length, 2),
                                     ("batch_size", batch_size, 1), ("eval_batch_size", eval_batch_size, 1),
                                     ("num_workers", num_workers, 0), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        if tokenizer_path is None and (isinstance(vocab_size, bool) or not isinstance(vocab_size, int)
                                       or vocab_size < MIN_VOCAB_SIZE):
            raise ValueError(f"vocab_size must be an int >= {MIN_VOCAB_SIZE}, got {vocab_size!r}")
        self.dataset = dataset
        self.dataset_config = dataset_config
        self.revision = revision
        self.image_column = image_column
        self.caption_columns = caption_columns
        self.splits = {"train": train_split, "validation": validation_split, "test": test_split}
        self.image_size = image_size
        self.num_channels = num_channels
        self.tokenizer_path = tokenizer_path
        self.requested_vocab_size = vocab_size
        self.cache_dir = cache_dir
        self.max_caption_length = max_caption_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.image_processor = VaswaniImageProcessor.for_model(image_size, num_channels)
        self._tokenizer: PreTrainedTokenizerFast | None = None
        self._raw: dict[str, datasets.Dataset] = {}
        self._examples: dict[str, CaptionExamples] = {}

    # Properties linked into the model by the CLI (see lightning_modules/cli.py)
    @property
    def tokenizer(self) -> PreTrainedTokenizerFast:
        if self._tokenizer is None:
            self._tokenizer = (load_tokenizer(self.tokenizer_path) if self.tokenizer_path is not None
                               else self._cached_or_trained_tokenizer())
        return self._tokenizer

    @property
    def dataset_name(self) -> str:
        return self.dataset if self.dataset_config is None else f"{self.dataset} ({self.dataset_config})"

    def raw_split(self, role: str) -> datasets.Dataset:
        """The rows of the split for `role` ("train", "validation", "test"), checked to have both columns."""
        if role not in self._raw:
            split = self.splits[role]
            raw = datasets.load_dataset(self.dataset, self.dataset_config, split=split, revision=self.revision)
            missing = [c for c in (self.image_column, *self.caption_columns) if c not in raw.column_names]
            if missing:
                raise ValueError(
                    f"split {split!r} of dataset {self.dataset!r} has no column {missing[0]!r}; its columns are "
                    f"{raw.column_names}: set image_column / caption_column to the names it uses"
                )
            if not isinstance(raw.features[self.image_column], datasets.Image):
                raise ValueError(
                    f"column {self.image_column!r} of {self.dataset!r} holds {raw.features[self.image_column]}, not "
                    f"images: set image_column to the column with a datasets.Image feature"
                )
            self._raw[role] = raw
        return self._raw[role]

    def captions(self, role: str) -> list[list[str]]:
        """Every image's captions as a list (a single-caption column becomes one-element lists)."""
        raw = self.raw_split(role)
        captions: list[list[str]] = [[] for _ in range(len(raw))]
        for name in self.caption_columns:
            for row, value in enumerate(raw[name]):
                values = [value] if isinstance(value, str) or value is None else value
                captions[row].extend(c for c in values if c and c.strip())
        return captions

    def tokenizer_cache_path(self) -> Path:
        key = hashlib.sha256(json.dumps(
            [self.dataset, self.dataset_config, self.revision, self.splits["train"], self.caption_columns,
             self.requested_vocab_size], sort_keys=True).encode()).hexdigest()[:12]
        name = self.dataset.replace("/", "--").strip(".").replace(os.sep, "_")[-40:]
        return Path(self.cache_dir) / "tokenizers" / f"captions-{name}-{key}"

    def _cached_or_trained_tokenizer(self) -> PreTrainedTokenizerFast:
        def train() -> PreTrainedTokenizerFast:
            texts = [c for captions in self.captions("train") for c in captions]
            logger.info("training a %d-token BPE tokenizer on %d training captions", self.requested_vocab_size,
                        len(texts))
            return train_tokenizer(texts, vocab_size=self.requested_vocab_size)

        return cached_tokenizer(self.tokenizer_cache_path(), train)

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

    def setup(self, stage: str) -> None:
        roles = {"fit": ["train", "validation"], "validate": ["validation"], "test": ["test"]}.get(stage, [])
        for role in roles:
            self.examples(role)

    def _loader(self, role: str, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed + (self.trainer.current_epoch if self.trainer else 0))
        return DataLoader(self.examples(role), batch_size=self.batch_size if role == "train" else self.eval_batch_size,
                          shuffle=shuffle, generator=generator, collate_fn=CaptionCollator(self.image_processor),
                          num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


class ShapesCaptioningDataModule(CaptioningDataModule):
    """`CaptioningDataModule` on the generated coloured-shapes corpus (lightning_modules/shapes.py; no download).

    The corpus is written once, on first use, under `cache_dir/shapes-...` (named by its arguments) as a hub-style
    parquet folder and read through the same path as a hub dataset. Validation and test scenes never occur in training.
    """

    def __init__(
        self,
        num_train: int = 20000,
        num_validation: int = 300,
        num_test: int = 500,
        image_size: int = 32,
        tokenizer_path: str | None = None,
        vocab_size: int = 300,
        cache_dir: str = "cache",
        max_caption_length: int = 24,
        batch_size: int = 64,
        eval_batch_size: int = 100,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        for name, value, minimum in (("num_train", num_train, 1), ("num_validation", num_validation, 1),
                                     ("num_test", num_test, 1), ("image_size", image_size, 8)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        self.sizes = (num_train, num_validation, num_test)
        folder = Path(cache_dir) / f"shapes-{num_train}-{num_validation}-{num_test}-{image_size}px-seed{seed}"
        super().__init__(dataset=str(folder), image_column="image", caption_column="captions",
                         image_size=image_size, num_channels=3, tokenizer_path=tokenizer_path, vocab_size=vocab_size,
                         cache_dir=cache_dir, max_caption_length=max_caption_length, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, num_workers=num_workers, seed=seed)

    @property
    def dataset_name(self) -> str:
        return "synthetic coloured shapes captions"

    def prepare_data(self) -> None:
        write_shapes_dataset(self.dataset, *self.sizes, image_size=self.image_size, seed=self.seed)

    def raw_split(self, role: str) -> datasets.Dataset:
        self.prepare_data()  # written on first use (kept afterwards), not when the recipe is only instantiated
        return super().raw_split(role)


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------


class CaptioningModule(LightningModule):
    """Builds `VaswaniForImageCaptioning` from its sizes; vocabulary size and special ids are linked from the data.

    Args:
        vocab_size ... decoder_start_token_id: from the tokenizer (linked from `data.*` by the CLI).
        image_size, patch_size, num_channels: the image encoder's input (must match the data module's images).
        d_model ... position_embedding_type: the Transformer's sizes (see `VaswaniConfig`).
        label_smoothing: epsilon_ls of §5.4.
        optimizer, lr_scheduler: injected; default Adam(0.9, 0.98, 1e-9) and the warmup / inverse-sqrt schedule.
        num_beams, length_penalty: test-time decoding; validation_num_beams: beams for validation (default num_beams).
        max_caption_length: longest generated caption in tokens.
    """

    def __init__(
        self,
        vocab_size: int = 8000,
        pad_token_id: int = 0,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        decoder_start_token_id: int = 1,
        image_size: int = 32,
        patch_size: int = 4,
        num_channels: int = 3,
        d_model: int = 256,
        encoder_layers: int = 4,
        decoder_layers: int = 4,
        attention_heads: int = 4,
        ffn_dim: int = 1024,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        max_position_embeddings: int = 256,
        normalize_before: bool = True,
        position_embedding_type: str = "sinusoidal",
        attn_implementation: str = "sdpa",
        label_smoothing: float = 0.1,
        optimizer: OptimizerCallable = paper_adam,
        lr_scheduler: LRSchedulerCallable = inverse_sqrt_schedule,
        num_beams: int = 4,
        length_penalty: float = 0.6,
        validation_num_beams: int | None = None,
        max_caption_length: int = 48,
    ):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"`label_smoothing` must be in [0, 1), got {label_smoothing!r}.")
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", "num_beams", "length_penalty",
                                          "validation_num_beams"])
        self.num_beams = num_beams
        self.length_penalty = length_penalty
        self.validation_num_beams = validation_num_beams or num_beams
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.model = self.build_model_from_hparams(dict(self.hparams))
        self.model.generation_config.num_beams = num_beams  # what the exported folder's generate() uses
        self.model.generation_config.length_penalty = length_penalty
        self.model.generation_config.max_length = max_caption_length + 1  # <s> + caption
        self.bleu_signature: str | None = None
        self.evaluation_outputs: list[tuple[int, str, list[str]]] = []

    @staticmethod
    def build_model_from_hparams(hparams: dict) -> VaswaniForImageCaptioning:
        config = VaswaniConfig(
            vocab_size=hparams["vocab_size"], pad_token_id=hparams["pad_token_id"],
            bos_token_id=hparams["bos_token_id"], eos_token_id=hparams["eos_token_id"],
            decoder_start_token_id=hparams["decoder_start_token_id"],
            image_size=hparams["image_size"], patch_size=hparams["patch_size"], num_channels=hparams["num_channels"],
            d_model=hparams["d_model"], encoder_layers=hparams["encoder_layers"],
            decoder_layers=hparams["decoder_layers"], encoder_attention_heads=hparams["attention_heads"],
            decoder_attention_heads=hparams["attention_heads"], encoder_ffn_dim=hparams["ffn_dim"],
            decoder_ffn_dim=hparams["ffn_dim"], dropout=hparams["dropout"],
            attention_dropout=hparams["attention_dropout"], max_position_embeddings=hparams["max_position_embeddings"],
            normalize_before=hparams["normalize_before"], position_embedding_type=hparams["position_embedding_type"],
        )
        model = VaswaniForImageCaptioning(config)
        model.set_attn_implementation(hparams.get("attn_implementation", "sdpa"))
        return model

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        processor = getattr(datamodule, "image_processor", None)
        if processor is None:
            return
        size = (processor.size["height"], processor.size["width"])
        expected = (self.hparams.image_size, self.hparams.image_size)
        if size != expected or processor.num_channels != self.hparams.num_channels:
            raise ValueError(
                f"the data module makes {processor.num_channels} x {size[0]} x {size[1]} images but the model reads "
                f"{self.hparams.num_channels} x {expected[0]} x {expected[1]}: set data image_size / num_channels "
                f"equal to model image_size / num_channels"
            )

    def forward_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        decoder_input_ids = shift_tokens_right(batch["labels"], self.hparams.pad_token_id,
                                               self.hparams.decoder_start_token_id)
        logits = self.model(pixel_values=batch["pixel_values"], decoder_input_ids=decoder_input_ids,
                            use_cache=False).logits
        return label_smoothed_loss(logits, batch["labels"], self.hparams.label_smoothing)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss_sum, nll_sum, tokens = self.forward_loss(batch)
        # normalised by the target tokens of the whole step over ranks (as TranslationModule does)
        sums = self.trainer.strategy.reduce(
            torch.stack([loss_sum.detach(), nll_sum.detach(), tokens.to(loss_sum.dtype)]), reduce_op="sum"
        )
        global_tokens = sums[2].clamp(min=1)
        self.log_dict({"train/loss": sums[0] / global_tokens, "train/nll": sums[1] / global_tokens},
                      on_step=True, on_epoch=False, batch_size=batch["labels"].shape[0])
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, prog_bar=True)
        return loss_sum * self.trainer.world_size / global_tokens

    def configure_optimizers(self) -> dict:
        optimizer = self.optimizer_factory(self.parameters())
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def caption(self, pixel_values: torch.Tensor, num_beams: int) -> list[str]:
        """Beam-search (or greedy, num_beams=1) captions of a batch of images."""
        output = self.model.generate(pixel_values=pixel_values, num_beams=num_beams,
                                     length_penalty=self.length_penalty,
                                     max_new_tokens=self.hparams.max_caption_length)
        return self.trainer.datamodule.tokenizer.batch_decode(output, skip_special_tokens=True)

    def on_validation_epoch_start(self) -> None:
        self.evaluation_outputs = []

    def on_test_epoch_start(self) -> None:
        self.evaluation_outputs = []

    def evaluation_step(self, batch: dict, num_beams: int) -> None:
        hypotheses = self.caption(batch["pixel_values"], num_beams)
        self.evaluation_outputs.extend(zip(batch["ids"].tolist(), hypotheses, batch["references"]))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluation_step(batch, self.validation_num_beams)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluation_step(batch, self.num_beams)

    def on_validation_epoch_end(self) -> None:
        self.log_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self.log_evaluation("test")

    def log_evaluation(self, prefix: str) -> None:
        outputs = {idx: (hyp, refs) for idx, hyp, refs in gather_objects(self.evaluation_outputs)}
        if self.trainer.sanity_checking:
            return
        ordered = [outputs[idx] for idx in sorted(outputs)]
        scores = caption_scores([h for h, _ in ordered], [r for _, r in ordered])
        self.bleu_signature = scores["signature"]
        metrics = {f"{prefix}/bleu": scores["bleu"], f"{prefix}/exact_match": scores["exact_match"],
                   f"{prefix}/images": float(len(ordered))}
        self.log_dict(metrics, prog_bar=True, sync_dist=False, rank_zero_only=False)
        if ordered and self.trainer.is_global_zero:
            self.print(f"{prefix}: BLEU {scores['bleu']:.2f}, exact match {scores['exact_match']:.1%} on "
                       f"{len(ordered)} images")
            for hypothesis, references in ordered[:3]:
                self.print(f"  {hypothesis!r}  (references: {references!r})")


def most_common_caption(captions: list[list[str]]) -> str:
    """The baseline caption: the most frequent training caption (ties: the first seen)."""
    counts = Counter(c for caps in captions for c in caps)
    return counts.most_common(1)[0][0] if counts else ""


__all__ = ["CaptioningDataModule", "ShapesCaptioningDataModule", "CaptioningModule", "caption_scores",
           "most_common_caption"]
