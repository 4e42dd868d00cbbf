"""`TranslationModule`: trains `VaswaniForConditionalGeneration` and scores beam-search translations with sacreBLEU.

Batches come from `TranslationDataModule`: `input_ids`, `attention_mask`, `labels` (-100 on padding), `ids`
(example indices, to count each sentence once under DDP) and, for evaluation, `references` / `sources` (raw text).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import OptimizerCallable

from hf_transformer import VaswaniForConditionalGeneration, shift_tokens_right
from hf_transformer.translation import paper_generation_config

from ..schedules import ScheduleCallable, inverse_sqrt_schedule, paper_adam
from .base import TaskModule, gather_objects
from .metrics import corpus_bleu, label_smoothed_loss


class TranslationModule(TaskModule):
    """Sequence to sequence: the label-smoothed loss (§5.4) of the target given the source, corpus BLEU and exact
    match of beam-search translations (§6.1: beam 4, alpha 0.6, max length = input length + 50).

    Args:
        model_config ... compile: see `TaskModule`.
        num_beams, length_penalty: test-time decoding (also what the exported folder's `generate()` uses).
        validation_num_beams: beams for validation BLEU (default: num_beams); fewer is faster.
        predictions_path: where `predict` writes translations (default: <log dir>/predictions.txt).
    """

    model_class = VaswaniForConditionalGeneration

    def __init__(
        self,
        model_config: dict[str, Any] | str | None = None,
        tokenizer_fields: dict[str, int] | None = None,
        label_smoothing: float = 0.1,
        optimizer: OptimizerCallable = paper_adam,
        lr_scheduler: ScheduleCallable = inverse_sqrt_schedule,
        compile: bool | None = None,
        num_beams: int = 4,
        length_penalty: float = 0.6,
        validation_num_beams: int | None = None,
        predictions_path: str | None = None,
    ) -> None:
        super().__init__(model_config, tokenizer_fields, label_smoothing, optimizer, lr_scheduler, compile)
        self.set_decoding(num_beams, length_penalty, validation_num_beams)
        self.predictions_path = predictions_path
        self.bleu_signature: str | None = None

    def forward_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        config = self.model.config
        decoder_input_ids = shift_tokens_right(batch["labels"], config.pad_token_id, config.decoder_start_token_id)
        logits = self.model_forward()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                      decoder_input_ids=decoder_input_ids, use_cache=False).logits
        return label_smoothed_loss(logits, batch["labels"], self.hparams.label_smoothing)

    def training_metrics(self, batch: dict, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        slots = batch["input_ids"].numel() + batch["labels"].numel()
        return {"train/padding": 1.0 - (batch["attention_mask"].sum() + tokens) / slots}

    def translate(self, batch: dict, num_beams: int) -> list[str]:
        config = paper_generation_config(self.model, batch["input_ids"].shape[1], num_beams=num_beams,
                                         length_penalty=self.length_penalty)
        return self.generate_text({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]},
                                  generation_config=config)

    def evaluation_records(self, batch: dict, test: bool) -> list[tuple[int, Any]]:
        hypotheses = self.translate(batch, self.num_beams if test else self.validation_num_beams)
        return list(zip(batch["ids"].tolist(), zip(batch["sources"], hypotheses, batch["references"])))

    def score(self, records: list[Any]) -> dict[str, float]:
        hypotheses, references = [h for _, h, _ in records], [r for _, _, r in records]
        bleu, self.bleu_signature = corpus_bleu(hypotheses, [references]) if records else (0.0, None)
        exact = sum(h.strip() == r.strip() for h, r in zip(hypotheses, references)) / max(len(records), 1)
        return {"bleu": bleu, "exact_match": exact, "sentences": float(len(records))}

    def describe(self, prefix: str, metrics: dict[str, float], records: list[Any]) -> list[str]:
        if not records:
            return []
        return [f"{prefix}: BLEU {metrics[f'{prefix}/bleu']:.2f}, exact match {metrics[f'{prefix}/exact_match']:.1%} "
                f"on {len(records)} sentences ({self.bleu_signature})",
                *[f"  {source!r} -> {hypothesis!r}  (reference: {reference!r})"
                  for source, hypothesis, reference in records[:3]]]

    # ------------------------------------------------------------------------------------------------------------
    # Prediction: translations of a file, in the file's order
    # ------------------------------------------------------------------------------------------------------------

    def on_predict_epoch_start(self) -> None:
        self.evaluation_outputs = []

    def predict_step(self, batch: dict, batch_idx: int) -> list[str]:
        hypotheses = self.translate(batch, self.num_beams)
        # a blank line translates to a blank line, as in `translate()`: the output stays aligned with the input
        hypotheses = [h if source.strip() else "" for h, source in zip(hypotheses, batch["sources"])]
        self.evaluation_outputs.extend(zip(batch["ids"].tolist(), hypotheses))
        return hypotheses

    def on_predict_epoch_end(self) -> None:
        outputs = dict(gather_objects(self.evaluation_outputs))
        if not self.trainer.is_global_zero:
            return
        path = Path(self.predictions_path or Path(self.trainer.log_dir or ".") / "predictions.txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(outputs[idx] + "\n" for idx in sorted(outputs)), encoding="utf-8")
        self.print(f"wrote {len(outputs)} translations to {path}")


__all__ = ["TranslationModule"]
