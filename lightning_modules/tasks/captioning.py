"""`CaptioningModule`: trains `VaswaniForImageCaptioning` (a ViT-style patch encoder and the paper's decoder) and
scores beam-search captions with BLEU against every reference of an image and with exact match.

Batches come from `CaptioningDataModule`: `pixel_values` (B, C, H, W), `labels` (B, T) caption ids (-100 on padding),
`ids` (image indices, to count each image once under DDP) and `references` (all captions of each image).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from lightning.pytorch.cli import OptimizerCallable

from hf_transformer import VaswaniForImageCaptioning, shift_tokens_right

from ..schedules import ScheduleCallable, inverse_sqrt_schedule, paper_adam
from .base import TaskModule
from .metrics import corpus_bleu, label_smoothed_loss


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


def most_common_caption(captions: list[list[str]]) -> str:
    """The baseline caption: the most frequent training caption (ties: the first seen)."""
    counts = Counter(c for caps in captions for c in caps)
    return counts.most_common(1)[0][0] if counts else ""


class CaptioningModule(TaskModule):
    """Image to text. The model_config needs the image geometry (`image_size`, `patch_size`, `num_channels`, equal to
    the data module's images); without one the defaults below are a small pre-LN model for 32 x 32 images.

    Args:
        model_config: The model's `VaswaniConfig` fields (a mapping), or the path of a config.json or of a folder
            holding one; `image_size`, `patch_size` and `num_channels` must match the data module's images.
        tokenizer_fields: vocab_size and the special token ids of the tokenizer (linked by the CLI).
        label_smoothing: epsilon_ls of §5.4.
        optimizer: Parameters -> optimiser; default Adam(0.9, 0.98, 1e-9) (§5.3).
        lr_scheduler: (optimiser, d_model) -> schedule; default warmup then inverse square root (§5.3).
        compile: `torch.compile` the training forward; None: on CUDA only.
        pretrained: An exported folder or Hub model id to start from (its weights and configuration).
        num_beams: Beams at test time (and in the exported folder's `generate()`).
        length_penalty: Length penalty alpha at test time.
        validation_num_beams: Beams for validation scores (default: num_beams).
        max_caption_length: Longest generated caption in tokens.
    """

    model_class = VaswaniForImageCaptioning
    default_model_fields = {
        **TaskModule.default_model_fields, "vocab_size": 8000, "image_size": 32, "patch_size": 4, "d_model": 256,
        "encoder_layers": 4, "decoder_layers": 4, "encoder_attention_heads": 4, "decoder_attention_heads": 4,
        "encoder_ffn_dim": 1024, "decoder_ffn_dim": 1024, "max_position_embeddings": 256, "normalize_before": True,
    }

    def __init__(
        self,
        model_config: dict[str, Any] | str | None = None,
        tokenizer_fields: dict[str, int] | None = None,
        label_smoothing: float = 0.1,
        optimizer: OptimizerCallable = paper_adam,
        lr_scheduler: ScheduleCallable = inverse_sqrt_schedule,
        compile: bool | None = None,
        pretrained: str | None = None,
        num_beams: int = 4,
        length_penalty: float = 0.6,
        validation_num_beams: int | None = None,
        max_caption_length: int = 48,
    ) -> None:
        super().__init__(model_config, tokenizer_fields, label_smoothing, optimizer, lr_scheduler, compile, pretrained)
        self.set_decoding(num_beams, length_penalty, validation_num_beams)
        self.model.generation_config.max_length = max_caption_length + 1  # <s> + caption
        self.bleu_signature: str | None = None

    def setup(self, stage: str) -> None:
        processor = getattr(self.trainer.datamodule, "image_processor", None)
        if processor is None:
            return
        size = (processor.size["height"], processor.size["width"])
        config = self.model.config
        if size != (config.image_size, config.image_size) or processor.num_channels != config.num_channels:
            raise ValueError(
                f"the data module makes {processor.num_channels} x {size[0]} x {size[1]} images but the model reads "
                f"{config.num_channels} x {config.image_size} x {config.image_size}: set data image_size / "
                f"num_channels equal to model_config image_size / num_channels"
            )

    def forward_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        config = self.model.config
        decoder_input_ids = shift_tokens_right(batch["labels"], config.pad_token_id, config.decoder_start_token_id)
        logits = self.model_forward()(pixel_values=batch["pixel_values"], decoder_input_ids=decoder_input_ids,
                                      use_cache=False).logits
        return label_smoothed_loss(logits, batch["labels"], self.hparams.label_smoothing)

    def evaluation_records(self, batch: dict, test: bool) -> list[tuple[int, Any]]:
        hypotheses = self.generate_text({"pixel_values": batch["pixel_values"]},
                                        num_beams=self.num_beams if test else self.validation_num_beams,
                                        length_penalty=self.length_penalty,
                                        max_new_tokens=self.hparams.max_caption_length)
        return list(zip(batch["ids"].tolist(), zip(hypotheses, batch["references"])))

    def score(self, records: list[Any]) -> dict[str, float]:
        scores = caption_scores([h for h, _ in records], [r for _, r in records])
        self.bleu_signature = scores["signature"]
        self.metric_signatures = {"bleu": scores["signature"]} if scores["signature"] else {}
        return {"bleu": scores["bleu"], "exact_match": scores["exact_match"], "images": float(len(records))}

    def output_lines(self, records: list[Any]) -> list[str]:
        return [hypothesis for hypothesis, _ in records]

    def describe(self, prefix: str, metrics: dict[str, float], records: list[Any]) -> list[str]:
        if not records:
            return []
        return [f"{prefix}: BLEU {metrics[f'{prefix}/bleu']:.2f}, exact match {metrics[f'{prefix}/exact_match']:.1%} "
                f"on {len(records)} images",
                *[f"  {hypothesis!r}  (references: {references!r})" for hypothesis, references in records[:3]]]


__all__ = ["CaptioningModule", "caption_scores", "most_common_caption"]
