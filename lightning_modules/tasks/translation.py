"""`TranslationModule`: trains `VaswaniForConditionalGeneration` and scores beam-search translations with sacreBLEU
(BLEU and chrF; COMET when asked).

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
from ..callbacks.model_card import describe_decoding, describe_set
from .base import TaskModule, gather_objects
from .metrics import comet_score, label_smoothed_loss, translation_scores


class TranslationModule(TaskModule):
    """Sequence to sequence: the label-smoothed loss (§5.4) of the target given the source; corpus BLEU and chrF
    (sacreBLEU), exact match and optionally COMET of beam-search translations (§6.1: beam 4, alpha 0.6, max length =
    input length + 50).

    Args:
        model_config: The model's `VaswaniConfig` fields (a mapping), or the path of a config.json or of a folder
            holding one; the task's defaults fill what it leaves out.
        tokenizer_fields: vocab_size and the pad/bos/eos/decoder_start token ids of the tokenizer (linked by the CLI
            from the data module).
        label_smoothing: epsilon_ls of §5.4 (0.1 in the paper).
        optimizer: Parameters -> optimiser; default Adam(0.9, 0.98, 1e-9) (§5.3).
        lr_scheduler: (optimiser, d_model) -> schedule, stepped every optimiser step; default warmup 4000 then
            inverse square root (§5.3).
        compile: `torch.compile` the training forward; None: on CUDA only.
        pretrained: An exported folder or Hub model id to start from (its weights and configuration).
        num_beams: Beams at test and predict time (§6.1: 4); also what the exported folder's `generate()` uses.
        length_penalty: Length penalty alpha at test and predict time (§6.1: 0.6).
        validation_num_beams: Beams for validation scores (default: num_beams); 1 (greedy) is several times faster.
        predictions_path: Where `predict` writes its translations; default `<run>/predictions/<weights>-<file>`.
        comet_model: A COMET model (e.g. `Unbabel/wmt22-comet-da`) that `test` scores with, besides BLEU and chrF;
            needs `pip install unbabel-comet`. None: no COMET.
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
        pretrained: str | None = None,
        num_beams: int = 4,
        length_penalty: float = 0.6,
        validation_num_beams: int | None = None,
        predictions_path: str | None = None,
        comet_model: str | None = None,
    ) -> None:
        super().__init__(model_config, tokenizer_fields, label_smoothing, optimizer, lr_scheduler, compile, pretrained)
        self.set_decoding(num_beams, length_penalty, validation_num_beams)
        self.predictions_path = predictions_path
        self.comet_model = comet_model

    @property
    def bleu_signature(self) -> str | None:
        """The sacreBLEU signature of the last BLEU score (what the callbacks and the card show)."""
        return self.metric_signatures.get("bleu")

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
        if not records:
            self.metric_signatures = {}
            return {"bleu": 0.0, "bleu_lc": 0.0, "chrf": 0.0, "exact_match": 0.0, "sentences": 0.0}
        sources, hypotheses, references = ([record[k] for record in records] for k in range(3))
        scores, self.metric_signatures = translation_scores(hypotheses, references)
        exact = sum(h.strip() == r.strip() for h, r in zip(hypotheses, references)) / len(records)
        scores.update(exact_match=exact, sentences=float(len(records)))
        if self.comet_model is not None and self.trainer.testing:
            scores["comet"] = comet_score(self.comet_model, sources, hypotheses, references)
        return scores

    def describe(self, prefix: str, metrics: dict[str, float], records: list[Any]) -> list[str]:
        if not records:
            return []
        role = "validation" if prefix == "val" else prefix
        summary = self.evaluations.get(role) or {"sentences": len(records)}
        comet = f", COMET {metrics[f'{prefix}/comet']:.2f}" if f"{prefix}/comet" in metrics else ""
        return [f"{prefix}: BLEU {metrics[f'{prefix}/bleu']:.2f} (lowercased {metrics[f'{prefix}/bleu_lc']:.2f}), "
                f"chrF {metrics[f'{prefix}/chrf']:.2f}{comet}, exact match {metrics[f'{prefix}/exact_match']:.1%} "
                f"on {describe_set(summary, role)}; "
                f"{describe_decoding(summary.get('decoding'))} ({self.bleu_signature})",
                *[f"  {source!r} -> {hypothesis!r}  (reference: {reference!r})"
                  for source, hypothesis, reference in records[:3]]]

    def output_lines(self, records: list[Any]) -> list[str]:
        return [hypothesis for _, hypothesis, _ in records]

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
        source = Path(getattr(self.trainer.datamodule, "predict_file", None) or "predictions.txt")
        default = Path(self.trainer.default_root_dir) / "predictions" / f"{self.weights_name()}-{source.name}"
        path = Path(self.predictions_path or default)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(outputs[idx] + "\n" for idx in sorted(outputs)), encoding="utf-8")
        self.print(f"wrote {len(outputs)} translations to {path}")


__all__ = ["TranslationModule"]
