"""`TranslationModule`: trains `VaswaniForConditionalGeneration` with Lightning. Thin on purpose: it builds the HF
model, computes the label-smoothed loss (§5.4), and scores beam-search translations with sacreBLEU.

Batches come from `TranslationDataModule`: `input_ids`, `attention_mask`, `labels` (-100 on padding), `ids`
(example indices, to count each sentence once under DDP) and, for evaluation, `references` / `sources` (raw text).
"""

import logging
import math
import random
import time
from collections.abc import Callable
from pathlib import Path

import sacrebleu
import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
from sacrebleu.tokenizers.tokenizer_re import TokenizerRegexp

from hf_transformer import VaswaniConfig, VaswaniForConditionalGeneration, shift_tokens_right
from hf_transformer.translation import paper_generation_config

from .schedules import inverse_sqrt_schedule, paper_adam

log = logging.getLogger(__name__)

NONFINITE_POLICIES = ("skip", "stop")


class NonFiniteLossError(FloatingPointError):
    """Training met a non-finite loss or gradient and its `nonfinite_policy` says stop."""


def label_smoothed_loss(
    logits: torch.Tensor, labels: torch.Tensor, epsilon: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed over target tokens (labels != -100): label-smoothed cross-entropy (§5.4, Szegedy et al.: mass
    epsilon spread uniformly over the vocabulary), the plain negative log-likelihood, and the token count."""
    lprobs = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    keep = labels != -100  # (B, T)
    target = labels.masked_fill(~keep, 0).unsqueeze(-1)  # (B, T, 1)
    nll = -lprobs.gather(-1, target).squeeze(-1)[keep]  # (N,)
    smooth = -lprobs.mean(-1)[keep]  # (N,) cross-entropy against the uniform distribution
    loss = (1.0 - epsilon) * nll + epsilon * smooth
    return loss.sum(), nll.sum(), keep.sum()


def corpus_bleu(hypotheses: list[str], reference_streams: list[list[str | None]]) -> tuple[float, str]:
    """sacreBLEU corpus score and signature. sacreBLEU memoises every line it tokenizes in LRU caches of 65,536
    entries keyed by the tokenizer object, new for each score: over a long run with frequent validation they filled
    up and RSS grew by tens of MB (benchmarks/soak.py). Evaluation lines are not scored twice, so they are dropped."""
    metric = sacrebleu.BLEU()
    score = metric.corpus_score(hypotheses, reference_streams).score
    for tokenizer in (Tokenizer13a, TokenizerRegexp):
        cache_clear = getattr(tokenizer.__call__, "cache_clear", None)  # functools.lru_cache's, if the method has one
        if cache_clear is not None:
            cache_clear()
    return score, str(metric.get_signature())


def gathered_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """Under FSDP2 the parameters are DTensor shards: gather the full state dict on CPU (a collective: call it on
    every rank; rank 0 receives the tensors). None for an unsharded model, whose own state dict is complete."""
    from torch.distributed.tensor import DTensor

    if not any(isinstance(parameter, DTensor) for parameter in model.parameters()):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def gather_objects(items: list) -> list:
    """All ranks' lists, concatenated (a no-op without torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return items
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


class TranslationModule(LightningModule):
    """Builds the HF model from its sizes; vocabulary size and special ids are linked from the data module."""

    def __init__(
        self,
        vocab_size: int = 37000,
        pad_token_id: int = 0,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        decoder_start_token_id: int = 1,
        d_model: int = 512,
        encoder_layers: int = 6,
        decoder_layers: int = 6,
        attention_heads: int = 8,
        ffn_dim: int = 2048,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        max_position_embeddings: int = 1024,
        normalize_before: bool = False,
        position_embedding_type: str = "sinusoidal",
        tie_word_embeddings: bool = True,
        attn_implementation: str = "sdpa",
        label_smoothing: float = 0.1,
        optimizer: OptimizerCallable = paper_adam,
        lr_scheduler: LRSchedulerCallable = inverse_sqrt_schedule,
        num_beams: int = 4,
        length_penalty: float = 0.6,
        validation_num_beams: int | None = None,
        predictions_path: str | None = None,
        nonfinite_policy: str = "skip",
        max_consecutive_nonfinite: int = 5,
        compile: bool | None = None,
    ):
        """Args:
            vocab_size ... decoder_start_token_id: from the tokenizer (linked from `data.*` by the CLI).
            d_model ... tie_word_embeddings: the model's sizes (see `VaswaniConfig`; Table 3 of the paper).
            label_smoothing: epsilon_ls of §5.4.
            optimizer, lr_scheduler: injected (LightningCLI style); default Adam(0.9, 0.98, 1e-9) and the
                warmup / inverse-square-root schedule of §5.3, stepped every optimiser step.
            num_beams, length_penalty: test-time decoding (§6.1: beam 4, alpha 0.6; max length = input + 50).
            validation_num_beams: beams for validation BLEU (default: num_beams); fewer is faster.
            predictions_path: where `predict` writes translations (default: <log dir>/predictions.txt).
            nonfinite_policy: what an optimiser step whose loss or gradients are inf/NaN does (checked before every
                update, the same decision on every rank): "skip" drops the update (gradients discarded, weights
                and optimiser state unchanged; the step and the LR schedule still advance), logs a warning with
                the step and the batch's example ids and counts it in `train/nonfinite_skips`; "stop" raises
                `NonFiniteLossError` (the last checkpoint on disk predates the bad step).
            max_consecutive_nonfinite: with "skip", this many skipped steps in a row raise `NonFiniteLossError`
                (a diverged run, e.g. a learning rate far too high, is not a bad batch).
            compile: `torch.compile` the model's forward for the training steps (one graph, no breaks; the
                backward is compiled with it). None = on when training on CUDA, where it pays, off on CPU, where
                compiling takes longer than it saves on short runs (see benchmarks/README.md).
        """
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"`label_smoothing` must be in [0, 1), got {label_smoothing!r}.")
        if nonfinite_policy not in NONFINITE_POLICIES:
            raise ValueError(f"`nonfinite_policy` must be one of {NONFINITE_POLICIES}, got {nonfinite_policy!r}.")
        if max_consecutive_nonfinite < 1:
            raise ValueError(f"`max_consecutive_nonfinite` must be >= 1, got {max_consecutive_nonfinite!r}.")
        # Saved hyperparameters describe the model and its training; a checkpoint's override the command line when
        # LightningCLI loads it, so the decoding and output settings stay out of them and can change at test time.
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", "num_beams", "length_penalty",
                                          "validation_num_beams", "predictions_path", "compile"])
        self.num_beams = num_beams
        self.length_penalty = length_penalty
        self.validation_num_beams = validation_num_beams or num_beams
        self.predictions_path = predictions_path
        self.compile_model = compile
        self.compiled_forward: Callable | None = None  # set in on_fit_start; a function, not a registered module
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.model = self.build_model_from_hparams(dict(self.hparams))
        self.model.generation_config.num_beams = num_beams  # what the exported folder's generate() uses
        self.model.generation_config.length_penalty = length_penalty
        self.bleu_signature: str | None = None
        self.evaluation_outputs: list[tuple[int, str, str, str]] = []  # (id, source, hypothesis, reference)
        self.evaluation_sums = torch.zeros(2, dtype=torch.float64)  # nll, tokens
        self.rng_states_to_restore: dict | None = None
        self.step_started: float | None = None
        self.step_tokens: torch.Tensor | float = 0.0
        self.window_checks: list[tuple[torch.Tensor | None, torch.Tensor]] = []  # (example ids, loss finite) per batch
        self.nonfinite_skips = 0
        self.consecutive_nonfinite = 0

    @staticmethod
    def model_config_from_hparams(hparams: dict) -> VaswaniConfig:
        return VaswaniConfig(
            vocab_size=hparams["vocab_size"],
            pad_token_id=hparams["pad_token_id"],
            bos_token_id=hparams["bos_token_id"],
            eos_token_id=hparams["eos_token_id"],
            decoder_start_token_id=hparams["decoder_start_token_id"],
            d_model=hparams["d_model"],
            encoder_layers=hparams["encoder_layers"],
            decoder_layers=hparams["decoder_layers"],
            encoder_attention_heads=hparams["attention_heads"],
            decoder_attention_heads=hparams["attention_heads"],
            encoder_ffn_dim=hparams["ffn_dim"],
            decoder_ffn_dim=hparams["ffn_dim"],
            dropout=hparams["dropout"],
            attention_dropout=hparams["attention_dropout"],
            activation_dropout=hparams["activation_dropout"],
            max_position_embeddings=hparams["max_position_embeddings"],
            normalize_before=hparams["normalize_before"],
            position_embedding_type=hparams["position_embedding_type"],
            tie_word_embeddings=hparams["tie_word_embeddings"],
        )

    @classmethod
    def build_model_from_hparams(cls, hparams: dict) -> VaswaniForConditionalGeneration:
        """The HF model described by a checkpoint's `hyper_parameters` (used by checkpoint averaging too)."""
        config = cls.model_config_from_hparams(hparams)
        model = VaswaniForConditionalGeneration(config)
        model.set_attn_implementation(hparams.get("attn_implementation", "sdpa"))
        return model

    def configure_model(self) -> None:
        """FSDP2 for models that do not fit on one device (`strategy: lightning.pytorch.strategies.
        ModelParallelStrategy`): every encoder and decoder layer is its own shard group; the shared embedding, the
        output layer and the final norms form the root group. Other strategies leave the model as it is."""
        mesh = self.device_mesh
        if mesh is None or self.is_sharded():
            return
        if "tensor_parallel" in mesh.mesh_dim_names and mesh["tensor_parallel"].size() > 1:
            raise ValueError(
                "TranslationModule shards with FSDP2 only: use ModelParallelStrategy(tensor_parallel_size=1)."
            )
        from torch.distributed.fsdp import fully_shard

        data_parallel = mesh["data_parallel"]
        for layer in [*self.model.model.encoder.layers, *self.model.model.decoder.layers]:
            fully_shard(layer, mesh=data_parallel)
        fully_shard(self.model, mesh=data_parallel)

    def is_sharded(self) -> bool:
        from torch.distributed.fsdp import FSDPModule

        return isinstance(self.model, FSDPModule)

    # ------------------------------------------------------------------------------------------------------------
    # Training
    # ------------------------------------------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        """Resolve `compile` now that the model is on its device (auto: CUDA and an unsharded model)."""
        use = self.compile_model if self.compile_model is not None else (
            self.device.type == "cuda" and not self.is_sharded())
        if use and self.compiled_forward is None:
            self.compiled_forward = torch.compile(self.model.forward)

    def forward_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        decoder_input_ids = shift_tokens_right(
            batch["labels"], self.hparams.pad_token_id, self.hparams.decoder_start_token_id
        )
        forward = self.compiled_forward if self.training and self.compiled_forward is not None else self.model
        logits = forward(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=decoder_input_ids,
            use_cache=False,
        ).logits
        return label_smoothed_loss(logits, batch["labels"], self.hparams.label_smoothing)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss_sum, nll_sum, tokens = self.forward_loss(batch)
        # Normalise by the target tokens of the whole step across ranks (fairseq does the same): DDP averages the
        # ranks' gradients, so each rank scales by world_size / global tokens and the result equals one process
        # training on the union of the ranks' batches.
        # one all-reduce for the step's sums over ranks: [label-smoothed loss, nll, target tokens]
        sums = self.trainer.strategy.reduce(
            torch.stack([loss_sum.detach(), nll_sum.detach(), tokens.to(loss_sum.dtype)]), reduce_op="sum"
        )
        global_tokens = sums[2].clamp(min=1)
        loss = loss_sum * self.trainer.world_size / global_tokens

        global_nll = sums[1] / global_tokens
        slots = batch["input_ids"].numel() + batch["labels"].numel()
        padding = 1.0 - (batch["attention_mask"].sum() + tokens) / slots  # a tensor: no host sync here
        self.log_dict(
            {"train/loss": sums[0] / global_tokens, "train/nll": global_nll, "train/ppl": torch.exp(global_nll),
             "train/padding": padding},
            prog_bar=False, on_step=True, on_epoch=False, batch_size=batch["input_ids"].shape[0],
        )
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, prog_bar=True)
        self.step_tokens = global_tokens  # read in on_train_batch_end, once the step is done
        # the reduced sums are non-finite on every rank if any rank's loss is: one decision for all ranks, checked
        # (one host sync) in on_before_optimizer_step, after every micro-batch of the accumulation window
        self.window_checks.append((batch.get("ids"), torch.isfinite(sums).all()))
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Apply `nonfinite_policy`: runs after the backward of the step's last micro-batch, before the update."""
        checks, self.window_checks = self.window_checks, []
        finite_loss = torch.stack([ok for _, ok in checks]).all() if checks else torch.tensor(True)
        finite = finite_loss
        if getattr(self.trainer.precision_plugin, "scaler", None) is None:  # a GradScaler handles inf grads itself
            grads = [p.grad for p in self.parameters() if p.grad is not None]
            if grads:
                norm = torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False)
                norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: shards -> global
                finite = finite & torch.isfinite(norm).to(finite.device)
        if self.trainer.world_size > 1:  # every rank must take the same decision (FSDP2 grads are rank-local)
            finite = self.trainer.strategy.reduce((~finite).float(), reduce_op="sum") == 0
        if bool(finite):
            self.consecutive_nonfinite = 0
            return
        self.nonfinite_skips += 1
        self.consecutive_nonfinite += 1
        bad = [ids for ids, ok in checks if not bool(ok)] or [ids for ids, _ in checks]  # grads only: the window
        example_ids = sorted({int(i) for ids in bad if ids is not None for i in ids.tolist()})
        what = "loss" if not bool(finite_loss) else "gradients"
        where = (f"non-finite {what} at step {self.global_step} (epoch {self.current_epoch}), batch example ids "
                 f"{example_ids[:32]}{' ...' if len(example_ids) > 32 else ''}")
        if self.hparams.nonfinite_policy == "stop":
            raise NonFiniteLossError(
                f"{where}; nonfinite_policy='stop'. No update was applied and the last checkpoint on disk predates "
                "this step: resume from it with a lower learning rate (or gradient clipping), or remove those "
                "examples; nonfinite_policy='skip' drops such steps instead."
            )
        if self.consecutive_nonfinite >= self.hparams.max_consecutive_nonfinite:
            raise NonFiniteLossError(
                f"{where}: {self.consecutive_nonfinite} consecutive non-finite steps (max_consecutive_nonfinite="
                f"{self.hparams.max_consecutive_nonfinite}): training diverged (learning rate too high?). The weights "
                "are those of the last good step; resume from the last checkpoint with a lower learning rate."
            )
        optimizer.zero_grad(set_to_none=True)  # the optimiser skips parameters without gradients: no update at all
        log.warning("Skipped the update of step %d: %s (%d skipped so far; nonfinite_policy='skip').",
                    self.global_step, where, self.nonfinite_skips)
        self.log("train/nonfinite_skips", float(self.nonfinite_skips), on_step=True, on_epoch=False)

    def on_train_batch_end(self, outputs: dict, batch: dict, batch_idx: int) -> None:
        # target tokens per second of wall time from one batch's end to the next: data loading, forward, backward
        # and the optimiser step of every rank (the first batch of a fit or after a validation has no predecessor)
        now = time.perf_counter()
        if self.step_started is not None:
            self.log("train/tokens_per_s", float(self.step_tokens) / max(now - self.step_started, 1e-9), prog_bar=True,
                     on_step=True, on_epoch=False)
        self.step_started = now

    def on_validation_start(self) -> None:
        self.step_started = None  # validation time is not training throughput

    def configure_optimizers(self) -> dict:
        optimizer = self.optimizer_factory(self.parameters())
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------------------------------------------------
    # Evaluation: loss and corpus BLEU over every sentence exactly once, whatever the number of ranks
    # ------------------------------------------------------------------------------------------------------------

    def translate_batch(self, batch: dict, num_beams: int) -> list[str]:
        config = paper_generation_config(
            self.model, batch["input_ids"].shape[1], num_beams=num_beams, length_penalty=self.length_penalty
        )
        if self.is_sharded():
            # generate() calls the encoder directly, outside the root module's forward that would gather the root
            # group (embeddings, output layer): gather it for the whole decoding
            self.model.unshard()
        output = self.model.generate(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], generation_config=config
        )
        if self.is_sharded():
            self.model.reshard()
        return self.trainer.datamodule.tokenizer.batch_decode(output, skip_special_tokens=True)

    def evaluation_step(self, batch: dict, num_beams: int) -> None:
        _, nll_sum, tokens = self.forward_loss(batch)
        self.evaluation_sums += torch.stack([nll_sum.double().cpu(), tokens.double().cpu()])
        hypotheses = self.translate_batch(batch, num_beams)
        self.evaluation_outputs.extend(zip(batch["ids"].tolist(), batch["sources"], hypotheses, batch["references"]))

    def on_validation_epoch_start(self) -> None:
        self.reset_evaluation()

    def on_test_epoch_start(self) -> None:
        self.reset_evaluation()

    def reset_evaluation(self) -> None:
        self.evaluation_outputs = []
        self.evaluation_sums = torch.zeros(2, dtype=torch.float64)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluation_step(batch, self.validation_num_beams)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluation_step(batch, self.num_beams)

    def on_validation_epoch_end(self) -> None:
        self.log_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self.log_evaluation("test")

    def log_evaluation(self, prefix: str) -> None:
        # Sentences may be split unevenly across ranks: gather them all, keep each id once, score the corpus.
        outputs = {idx: (src, hyp, ref) for idx, src, hyp, ref in gather_objects(self.evaluation_outputs)}
        sums = self.trainer.strategy.reduce(self.evaluation_sums.to(self.device), reduce_op="sum").cpu()
        if self.trainer.sanity_checking:
            return
        ordered = [outputs[idx] for idx in sorted(outputs)]
        hypotheses, references = [h for _, h, _ in ordered], [r for _, _, r in ordered]
        bleu, self.bleu_signature = corpus_bleu(hypotheses, [references]) if ordered else (0.0, None)
        nll = (sums[0] / sums[1].clamp(min=1)).item()
        exact = sum(h.strip() == r.strip() for h, r in zip(hypotheses, references)) / max(len(ordered), 1)
        metrics = {f"{prefix}/loss": nll, f"{prefix}/ppl": math.exp(min(nll, 50.0)),
                   f"{prefix}/bleu": bleu,
                   f"{prefix}/exact_match": exact, f"{prefix}/sentences": float(len(ordered))}
        self.log_dict(metrics, prog_bar=True, sync_dist=False, rank_zero_only=False)
        if ordered and self.trainer.is_global_zero:
            self.print(f"{prefix}: BLEU {metrics[f'{prefix}/bleu']:.2f}, exact match {exact:.1%} on {len(ordered)} "
                       f"sentences ({self.bleu_signature})")
            for source, hypothesis, reference in ordered[:3]:
                self.print(f"  {source!r} -> {hypothesis!r}  (reference: {reference!r})")

    # ------------------------------------------------------------------------------------------------------------
    # Prediction: translations of a file, in the file's order
    # ------------------------------------------------------------------------------------------------------------

    def on_predict_epoch_start(self) -> None:
        self.evaluation_outputs = []

    def predict_step(self, batch: dict, batch_idx: int) -> list[str]:
        hypotheses = self.translate_batch(batch, self.num_beams)
        # a blank line translates to a blank line, as in `translate()`: the output stays aligned with the input
        hypotheses = [h if source.strip() else "" for h, source in zip(hypotheses, batch["sources"])]
        self.evaluation_outputs.extend(zip(batch["ids"].tolist(), batch["sources"], hypotheses, hypotheses))
        return hypotheses

    def on_predict_epoch_end(self) -> None:
        outputs = {idx: hyp for idx, _, hyp, _ in gather_objects(self.evaluation_outputs)}
        if not self.trainer.is_global_zero:
            return
        path = Path(self.predictions_path or Path(self.trainer.log_dir or ".") / "predictions.txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(outputs[idx] + "\n" for idx in sorted(outputs)), encoding="utf-8")
        self.print(f"wrote {len(outputs)} translations to {path}")

    # ------------------------------------------------------------------------------------------------------------
    # Exact resume: the RNG streams (dropout) of every rank travel with the checkpoint
    # ------------------------------------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
                 "python_version": random.getstate()[0], "python_gauss": random.getstate()[2]}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["rng_states"] = gather_objects([state])

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        states = checkpoint.get("rng_states")
        if states:
            try:
                rank = self.trainer.global_rank
            except RuntimeError:  # `load_from_checkpoint` outside a Trainer: nothing to resume
                return
            self.rng_states_to_restore = states[rank] if rank < len(states) else states[0]

    def on_train_start(self) -> None:
        # Applied here, after the restore and the sanity check, right before the next training batch.
        state, self.rng_states_to_restore = self.rng_states_to_restore, None
        if state is None:
            return
        torch.set_rng_state(state["torch"])
        random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


__all__ = ["TranslationModule", "label_smoothed_loss", "gathered_state_dict"]
