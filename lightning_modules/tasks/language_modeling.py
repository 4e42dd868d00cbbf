"""`CausalLanguageModule`: trains `VaswaniForCausalLM` (the decoder stack alone, as in the Music Transformer, Huang et
al. 2018) to predict the next token. Validation and test report `loss` (mean NLL per token, nats) and `ppl`.

Batches come from `LanguageModelingDataModule`: `input_ids`, `attention_mask`, `labels` (the inputs, -100 on padding),
`ids`. Any variant of the model (`position_embedding_type: relative`, `attention_type: local`) is a model_config field.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.cli import OptimizerCallable

from hf_transformer import VaswaniForCausalLM

from ..schedules import ScheduleCallable, inverse_sqrt_schedule, paper_adam
from .base import TaskModule
from .metrics import label_smoothed_loss


class CausalLanguageModule(TaskModule):
    """Next-token prediction; `label_smoothing` defaults to 0 (plain NLL, the usual choice for language models).

    Args:
        model_config: The model's `VaswaniConfig` fields (a mapping; the decoder's sizes), or the path of a
            config.json or of a folder holding one.
        tokenizer_fields: vocab_size and the special token ids of the tokenizer (linked by the CLI).
        label_smoothing: epsilon_ls of §5.4 (0: plain negative log-likelihood).
        optimizer: Parameters -> optimiser; default Adam(0.9, 0.98, 1e-9) (§5.3).
        lr_scheduler: (optimiser, d_model) -> schedule; default warmup then inverse square root (§5.3).
        compile: `torch.compile` the training forward; None: on CUDA only.
        pretrained: An exported folder or Hub model id to start from (its weights and configuration).
    """

    model_class = VaswaniForCausalLM
    fixed_model_fields = {"is_encoder_decoder": False}

    def __init__(
        self,
        model_config: dict[str, Any] | str | None = None,
        tokenizer_fields: dict[str, int] | None = None,
        label_smoothing: float = 0.0,
        optimizer: OptimizerCallable = paper_adam,
        lr_scheduler: ScheduleCallable = inverse_sqrt_schedule,
        compile: bool | None = None,
        pretrained: str | None = None,
    ) -> None:
        super().__init__(model_config, tokenizer_fields, label_smoothing, optimizer, lr_scheduler, compile, pretrained)

    def forward_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Position t predicts token t + 1."""
        logits = self.model_forward()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                      use_cache=False).logits  # (B, L, V)
        return label_smoothed_loss(logits[:, :-1], batch["labels"][:, 1:], self.hparams.label_smoothing)


__all__ = ["CausalLanguageModule"]
