"""`TaskModule`: what translation, language modelling and captioning share. A task adds only what differs: its HF
model class, how its batch gives a loss (`forward_loss`) and what its evaluation scores (`evaluation_records`,
`score`, `describe`).

The base owns:
- the model, built from its own configuration: `model_config` holds `VaswaniConfig` fields (a mapping, or the path of
  a config.json or of a folder holding one). `tokenizer_fields` (vocab_size and the special ids, which the CLI links
  from the data module's tokenizer) win over it; a model_config that says otherwise is an error;
- the training step: the label-smoothed loss (§5.4) normalised by the target tokens of the whole step over every rank;
- the optimiser and its per-step schedule (given the model's d_model, §5.3);
- evaluation: the teacher-forced loss and the task's records, gathered over the ranks, every example counted once;
- the checkpoint: the RNG streams of every rank (exact resume), the model's configuration (checkpoint averaging) and
  the run record (the data module's class and arguments, the tokenizer: `lightning_modules.runs`), so that `test`,
  `validate` and `predict` need nothing but the checkpoint;
- a summary of every evaluation (`evaluations`: scores, what was scored, decoding) for the log and the model card;
- FSDP2 sharding and `torch.compile`.
Throughput and the non-finite guard are callbacks (`lightning_modules.callbacks`), added unless the trainer has one.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from transformers import PreTrainedModel

from hf_transformer import VaswaniConfig
from hf_transformer.integrity import verify_manifest

from ..callbacks.curves import LearningCurves
from ..callbacks.nonfinite import NonFiniteLossGuard
from ..callbacks.preemption import PreemptionCheckpoint
from ..callbacks.results import EvaluationOutputs
from ..callbacks.throughput import TokenThroughput
from ..checkpointing import MODEL_KEY, describe_model
from ..hardware import cpu_bf16_slowdown, slow_bf16_advice
from ..redaction import known_secrets, redact_command
from ..runs import (
    RUN_KEY,
    class_path,
    describe_vocabulary_change,
    materialize_tokenizer,
    run_dir_of,
    tokenizer_files,
    tokenizer_fingerprint,
    vocabulary_of_files,
    weights_name,
)
from ..schedules import ScheduleCallable, inverse_sqrt_schedule, paper_adam
from .metrics import label_smoothed_loss

#: The `VaswaniConfig` fields the tokenizer decides.
TOKENIZER_FIELDS = ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")
#: What a `model_config` may hold: `VaswaniConfig`'s own fields, and the attention backend ("sdpa", "eager").
MODEL_CONFIG_KEYS = frozenset(VaswaniConfig.__annotations__) | {"attn_implementation"}
#: Arguments kept out of the checkpointed hyper-parameters: the checkpoint's override the command line when LightningCLI
#: loads it, and these (decoding and output settings, runtime choices) must be free to change at test time.
RUNTIME_ARGUMENTS = ["optimizer", "lr_scheduler", "compile", "num_beams", "length_penalty", "validation_num_beams",
                     "predictions_path", "pretrained", "comet_model"]
#: The evaluation metrics the progress bar shows (all of them go to the loggers).
PROGRESS_BAR_METRICS = ("loss", "bleu", "chrf")
#: The callbacks every task trains and evaluates with, unless the trainer has its own of that class.
DEFAULT_CALLBACKS = (TokenThroughput, NonFiniteLossGuard, LearningCurves, EvaluationOutputs, PreemptionCheckpoint)


def read_model_config(model_config: dict[str, Any] | str | None) -> dict[str, Any]:
    """The `VaswaniConfig` fields of a mapping (checked: unknown keys are refused), of a config.json, or of the
    config.json in a folder (an exported model)."""
    if model_config is None:
        return {}
    if isinstance(model_config, (str, os.PathLike)):
        path = Path(model_config) / "config.json" if Path(model_config).is_dir() else Path(model_config)
        if not path.is_file():
            raise FileNotFoundError(f"model_config {str(model_config)!r} is not a config.json nor a folder with one")
        fields = json.loads(path.read_text(encoding="utf-8"))
        if fields.get("model_type", VaswaniConfig.model_type) != VaswaniConfig.model_type:
            raise ValueError(f"model_config {str(path)!r} is the config of a {fields['model_type']!r} model, not of a "
                             f"{VaswaniConfig.model_type!r} one")
        return {key: value for key, value in fields.items() if key in MODEL_CONFIG_KEYS}
    if not isinstance(model_config, dict):
        raise TypeError(f"model_config must be a mapping of VaswaniConfig fields or a path, got {model_config!r}")
    unknown = sorted(set(model_config) - MODEL_CONFIG_KEYS)
    if unknown:
        raise ValueError(f"model_config has unknown keys {unknown}: it takes VaswaniConfig fields, "
                         f"{sorted(MODEL_CONFIG_KEYS)}")
    return dict(model_config)


class ResumeMismatchError(ValueError):
    """A checkpoint resumed (or evaluated) with another tokenizer or model configuration than it was trained with."""


#: `VaswaniConfig` fields compared on resume (the attention backend is a runtime choice, not the model).
COMPARED_MODEL_FIELDS = tuple(sorted(set(VaswaniConfig.__annotations__) - {"attn_implementation"}))


def model_differences(checkpoint_fields: dict[str, Any], given_fields: dict[str, Any]) -> list[str]:
    """`"name: A in the checkpoint, B now"` for every `VaswaniConfig` field the two configurations (each completed by
    the config's defaults) set differently."""
    old = VaswaniConfig(**{k: v for k, v in checkpoint_fields.items() if k in COMPARED_MODEL_FIELDS}).to_dict()
    new = VaswaniConfig(**{k: v for k, v in given_fields.items() if k in COMPARED_MODEL_FIELDS}).to_dict()
    return [f"{key}: {old.get(key)!r} in the checkpoint, {new.get(key)!r} now" for key in COMPARED_MODEL_FIELDS
            if old.get(key) != new.get(key)]


def start_fresh_advice(ckpt: str | os.PathLike) -> str:
    run = run_dir_of(ckpt)
    return (f"To train this other configuration, start a fresh run: leave out --ckpt_path and give another "
            f"--trainer.default_root_dir. To start a new run from these weights on purpose (fine-tuning), give the "
            f"run's exported folder as --model.pretrained {run / 'hf_model'} (and --data.tokenizer_path "
            f"{run / 'hf_model'}), without --ckpt_path.")


def pretrained_fields(pretrained: str) -> dict[str, Any]:
    """The `VaswaniConfig` fields of an exported folder or a Hub model."""
    config = VaswaniConfig.from_pretrained(pretrained)
    return {key: value for key, value in config.to_dict().items() if key in MODEL_CONFIG_KEYS}


def gather_objects(items: list) -> list:
    """All ranks' lists, concatenated (a no-op without torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return items
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


class TaskModule(LightningModule):
    """Trains `model_class` on a task; see the module docstring.

    Args:
        model_config: the model's `VaswaniConfig` fields (a mapping), or the path of a config.json or of a folder
            holding one; the task's defaults fill what it leaves out.
        tokenizer_fields: vocab_size, pad/bos/eos/decoder_start token ids of the tokenizer (linked by the CLI from
            the data module's `tokenizer_fields`).
        label_smoothing: epsilon_ls of §5.4.
        optimizer: parameters -> optimiser (LightningCLI style); default Adam(0.9, 0.98, 1e-9), §5.3.
        lr_scheduler: (optimiser, d_model) -> schedule, stepped every optimiser step; default the warmup /
            inverse-square-root schedule of §5.3 with 4000 warmup steps.
        compile: `torch.compile` the model's forward for the training steps (one graph, no breaks; the backward is
            compiled with it). None = on when training on CUDA, off on CPU, where the compiled step measured slower
            than the eager one, even after compiling (benchmarks/README.md).
        pretrained: An exported folder or a Hub model id whose weights (and configuration: `model_config` only
            overrides fields of it) the model starts from: to evaluate an export (`test --ckpt_path FOLDER` sets it)
            or to fine-tune one.
    """

    model_class: ClassVar[type[PreTrainedModel]]
    #: Fields the task decides (a model_config that says otherwise is an error), and the task's defaults.
    fixed_model_fields: ClassVar[dict[str, Any]] = {"is_encoder_decoder": True}
    default_model_fields: ClassVar[dict[str, Any]] = {"attn_implementation": "sdpa"}

    def __init__(
        self,
        model_config: dict[str, Any] | str | None = None,
        tokenizer_fields: dict[str, int] | None = None,
        label_smoothing: float = 0.1,
        optimizer: OptimizerCallable = paper_adam,
        lr_scheduler: ScheduleCallable = inverse_sqrt_schedule,
        compile: bool | None = None,
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"`label_smoothing` must be in [0, 1), got {label_smoothing!r}.")
        if pretrained is not None:
            if os.path.isdir(pretrained):
                verify_manifest(pretrained)  # an exported folder: every file as it was written
            model_config = {**pretrained_fields(pretrained), **read_model_config(model_config)}
        fields = self.model_fields(model_config, tokenizer_fields)
        self.save_hyperparameters(ignore=RUNTIME_ARGUMENTS)
        # the checkpoint keeps the resolved configuration, not a path or a partial mapping: it rebuilds this model
        self.hparams["model_config"] = {key: value for key, value in fields.items() if key not in TOKENIZER_FIELDS}
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.compile_model = compile
        self.compiled_forward: Callable | None = None  # set in on_fit_start; a function, not a registered module
        self.pretrained = pretrained
        config = VaswaniConfig(**fields)
        self.model = self.model_class(config) if pretrained is None else self.model_class.from_pretrained(
            pretrained, config=config)
        self.evaluation_outputs: list[tuple[int, Any]] = []  # (example id, the task's record of it)
        #: Per evaluated role ("validation", "test"): the summary of the last evaluation (`evaluation_summary`), and
        #: the records it scored in example order (global rank 0 has all of them).
        self.evaluations: dict[str, dict[str, Any]] = {}
        self.evaluated_records: dict[str, list[Any]] = {}
        self.metric_signatures: dict[str, str] = {}  # set by a task's `score` (sacreBLEU signatures)
        self.evaluation_sums = torch.zeros(2, dtype=torch.float64)  # nll, tokens
        self.rng_states_to_restore: dict | None = None
        self.cached_run_record: dict[str, Any] | None = None
        self.loaded_step: int | None = None  # the step of the checkpoint evaluated (test --ckpt_path)

    def model_fields(self, model_config: dict[str, Any] | str | None,
                     tokenizer_fields: dict[str, int] | None) -> dict[str, Any]:
        """The model's configuration: the task's defaults, then `model_config`, then what the task and the tokenizer
        decide (a different value for those in `model_config` is an error naming both)."""
        given = read_model_config(model_config)
        unknown = sorted(set(tokenizer_fields or {}) - set(TOKENIZER_FIELDS))
        if unknown:
            raise ValueError(f"tokenizer_fields has unknown keys {unknown}: it takes {list(TOKENIZER_FIELDS)}")
        decided = {**self.fixed_model_fields, **(tokenizer_fields or {})}
        for key, value in decided.items():
            if key in given and given[key] != value:
                fix = ("the data module's tokenizer decides it (the CLI links it): leave it out of model_config, or "
                       "train with a tokenizer that matches" if key in TOKENIZER_FIELDS
                       else f"{type(self).__name__} trains that kind of model: leave it out of model_config")
                raise ValueError(f"model_config.{key} is {given[key]!r} but must be {value!r}: {fix}")
        return {**self.default_model_fields, **given, **decided}

    def configure_model(self) -> None:
        """FSDP2 for models that do not fit on one device (`strategy: lightning.pytorch.strategies.
        ModelParallelStrategy`): every encoder and decoder layer is its own shard group; the shared embedding, the
        output layer and the final norms form the root group. Other strategies leave the model as it is."""
        mesh = self.device_mesh
        if mesh is None or self.is_sharded():
            return
        if "tensor_parallel" in mesh.mesh_dim_names and mesh["tensor_parallel"].size() > 1:
            raise ValueError(f"{type(self).__name__} shards with FSDP2 only: use "
                             "ModelParallelStrategy(tensor_parallel_size=1).")
        from torch.distributed.fsdp import fully_shard

        for name, stack in list(self.model.named_modules()):
            if name.rpartition(".")[2] == "layers":  # the encoder's and the decoder's layers
                for layer in stack:
                    fully_shard(layer, mesh=mesh["data_parallel"])
        fully_shard(self.model, mesh=mesh["data_parallel"])

    def is_sharded(self) -> bool:
        from torch.distributed.fsdp import FSDPModule

        return isinstance(self.model, FSDPModule)

    def configure_callbacks(self) -> list[Callback]:
        """The throughput log, the non-finite guard ("skip"), the learning curves at the end of fit, the files of
        an evaluation (test hypotheses, the model card's test score) and the checkpoint of a run stopped by SIGTERM /
        SIGINT, unless the trainer has its own."""
        present = {type(callback) for callback in self.trainer.callbacks}
        return [callback() for callback in DEFAULT_CALLBACKS if callback not in present]

    # ------------------------------------------------------------------------------------------------------------
    # Training
    # ------------------------------------------------------------------------------------------------------------

    def forward_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Summed over the batch's target tokens: (label-smoothed loss, NLL, token count)."""
        raise NotImplementedError

    def model_forward(self) -> Callable:
        """The model's forward, compiled in training when `compile` says so."""
        return self.compiled_forward if self.training and self.compiled_forward is not None else self.model

    def on_fit_start(self) -> None:
        """Resolve `compile` now that the model is on its device (auto: CUDA and an unsharded model)."""
        use = self.compile_model if self.compile_model is not None else (
            self.device.type == "cuda" and not self.is_sharded())
        if use and self.compiled_forward is None:
            self.compiled_forward = torch.compile(self.model.forward)

    def training_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        loss_sum, nll_sum, tokens = self.forward_loss(batch)
        # Normalise by the target tokens of the whole step across ranks (fairseq does the same): DDP averages the
        # ranks' gradients, so each rank scales by world_size / global tokens and the result equals one process
        # training on the union of the ranks' batches. One all-reduce: [label-smoothed loss, nll, target tokens].
        sums = self.trainer.strategy.reduce(
            torch.stack([loss_sum.detach(), nll_sum.detach(), tokens.to(loss_sum.dtype)]), reduce_op="sum"
        )
        global_tokens = sums[2].clamp(min=1)
        global_nll = sums[1] / global_tokens
        metrics = {"train/loss": sums[0] / global_tokens, "train/nll": global_nll, "train/ppl": torch.exp(global_nll),
                   **self.training_metrics(batch, tokens)}
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=batch["labels"].shape[0])
        self.log("loss", metrics["train/loss"], on_step=True, prog_bar=True, logger=False)  # the bar's short name
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, prog_bar=True)
        # `tokens`: read by the TokenThroughput callback once the step is done
        return {"loss": loss_sum * self.trainer.world_size / global_tokens, "tokens": global_tokens}

    def training_metrics(self, batch: dict, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """More per-step metrics of the task (tensors: no host sync)."""
        return {}

    def configure_optimizers(self) -> dict:
        optimizer = self.optimizer_factory(self.parameters())
        scheduler = self.scheduler_factory(optimizer, self.model.config.d_model)
        if getattr(scheduler, "cooldown_steps", 0) and scheduler.total_steps is None:
            if self.trainer.max_steps < 1:
                raise ValueError("the schedule's cooldown ends at `trainer.max_steps`: set it (it is -1, unlimited).")
            scheduler.set_total_steps(self.trainer.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Clip as Lightning does, and also under bf16-mixed with the fused Adam of `paper_adam`.

        Lightning's mixed-precision plugin refuses to clip for an optimiser that unscales gradients itself (fused
        Adam), even under bf16, where nothing is scaled. There the gradients are the true ones and are clipped
        directly; fp16 with its loss scaler keeps Lightning's rule.
        """
        plugin = self.trainer.precision_plugin
        if gradient_clip_val and isinstance(plugin, MixedPrecision) and plugin.scaler is None:
            parameters = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(parameters, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(parameters, gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ------------------------------------------------------------------------------------------------------------
    # Evaluation: over every example exactly once, whatever the number of ranks
    # ------------------------------------------------------------------------------------------------------------

    def evaluation_records(self, batch: dict, test: bool) -> list[tuple[int, Any]]:
        """(example id, record) of a batch for `score` (translations, captions); none by default."""
        return []

    def score(self, records: list[Any]) -> dict[str, float]:
        """Metrics of the records of every evaluated example, in id order."""
        return {}

    def describe(self, prefix: str, metrics: dict[str, float], records: list[Any]) -> list[str]:
        """What the console shows after an evaluation (global rank 0)."""
        return [f"{prefix}: loss {metrics[f'{prefix}/loss']:.4f} nats/token, perplexity {metrics[f'{prefix}/ppl']:.2f} "
                f"over {int(metrics[f'{prefix}/tokens'])} tokens"]

    def evaluation_step(self, batch: dict, test: bool) -> None:
        _, nll_sum, tokens = self.forward_loss(batch)
        self.evaluation_sums += torch.stack([nll_sum.double().cpu(), tokens.double().cpu()])
        self.evaluation_outputs.extend(self.evaluation_records(batch, test))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluation_step(batch, test=False)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluation_step(batch, test=True)

    def reset_evaluation(self) -> None:
        self.evaluation_outputs = []
        self.evaluation_sums = torch.zeros(2, dtype=torch.float64)

    def on_validation_epoch_start(self) -> None:
        self.reset_evaluation()

    def on_test_epoch_start(self) -> None:
        self.reset_evaluation()

    def on_validation_epoch_end(self) -> None:
        self.log_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self.log_evaluation("test")

    def log_evaluation(self, prefix: str) -> None:
        # Examples may be split unevenly across ranks: gather them all, keep each id once.
        records = dict(gather_objects(self.evaluation_outputs))
        sums = self.trainer.strategy.reduce(self.evaluation_sums.to(self.device), reduce_op="sum").cpu()
        if self.trainer.sanity_checking:
            return
        ordered = [records[idx] for idx in sorted(records)]
        nll = (sums[0] / sums[1].clamp(min=1)).item()
        metrics = {f"{prefix}/loss": nll, f"{prefix}/ppl": math.exp(min(nll, 50.0)), f"{prefix}/tokens": float(sums[1]),
                   **{f"{prefix}/{name}": value for name, value in self.score(ordered).items()}}
        shown = {key: value for key, value in metrics.items() if key.split("/", 1)[1] in PROGRESS_BAR_METRICS}
        self.log_dict(shown, prog_bar=True, sync_dist=False, rank_zero_only=False)
        self.log_dict({key: value for key, value in metrics.items() if key not in shown}, sync_dist=False,
                      rank_zero_only=False)
        role = "validation" if prefix == "val" else prefix
        self.evaluations[role] = self.evaluation_summary(role, metrics, len(ordered))
        self.evaluated_records[role] = ordered
        if self.trainer.is_global_zero:
            for line in self.describe(prefix, metrics, ordered):
                self.print(line)

    def evaluation_summary(self, role: str, metrics: dict[str, float], scored: int) -> dict[str, Any]:
        """What an evaluation measured, on what, and how (the model card's source): the step, the metrics without
        their prefix, the number of examples scored, the set (`evaluation_set` of the data module: dataset, split,
        size, sample), the decoding settings and the sacreBLEU signatures."""
        evaluation_set = getattr(self.trainer.datamodule, "evaluation_set", None)
        step = self.trainer.global_step if self.trainer.state.fn == TrainerFn.FITTING else self.loaded_step
        return {"step": step,
                "metrics": {key.split("/", 1)[1]: float(value) for key, value in metrics.items()},
                "sentences": scored or None, "set": evaluation_set(role) if evaluation_set else None,
                "decoding": self.decoding(role), "signatures": dict(self.metric_signatures)}

    def decoding(self, role: str) -> dict[str, Any] | None:
        """The decoding settings of an evaluation of `role` (None for a task that does not generate)."""
        if not hasattr(self, "num_beams"):
            return None
        beams = self.num_beams if role == "test" else self.validation_num_beams
        return {"num_beams": beams, "length_penalty": self.length_penalty if beams > 1 else None}

    def weights_name(self) -> str:
        """How output files name the weights evaluated: the checkpoint's stem (`best`), the exported folder's name."""
        return weights_name(self.trainer.ckpt_path or self.pretrained)

    def output_lines(self, records: list[Any]) -> list[str]:
        """The lines of the hypotheses file `test` writes, one per example (none by default)."""
        return []

    def set_decoding(self, num_beams: int, length_penalty: float, validation_num_beams: int | None) -> None:
        """Beam search for evaluation (§6.1); `num_beams` and `length_penalty` are also what the exported folder's
        `generate()` uses. Validation may use fewer beams (default: as many)."""
        self.num_beams, self.length_penalty = num_beams, length_penalty
        self.validation_num_beams = validation_num_beams or num_beams
        self.model.generation_config.num_beams = num_beams
        self.model.generation_config.length_penalty = length_penalty

    def generate_text(self, inputs: dict[str, torch.Tensor], **settings: Any) -> list[str]:
        """`model.generate(**inputs, **settings)`, decoded with the data module's tokenizer."""
        if self.is_sharded():
            # generate() calls the encoder directly, outside the root module's forward that would gather the root
            # group (embeddings, output layer): gather it for the whole decoding
            self.model.unshard()
        output = self.model.generate(**inputs, **settings)
        if self.is_sharded():
            self.model.reshard()
        return self.trainer.datamodule.tokenizer.batch_decode(output, skip_special_tokens=True)

    # ------------------------------------------------------------------------------------------------------------
    # The checkpoint: the model's configuration, and the RNG streams (dropout) of every rank for an exact resume
    # ------------------------------------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[MODEL_KEY] = describe_model(self.model)
        checkpoint[RUN_KEY] = self.run_record()
        state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
                 "python_version": random.getstate()[0], "python_gauss": random.getstate()[2]}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["rng_states"] = gather_objects([state])

    def run_record(self) -> dict[str, Any]:
        """What evaluating this checkpoint needs besides the weights: the task's class, the data module's class and
        arguments, and the tokenizer's files (computed once: the tokenizer does not change during a run)."""
        if self.cached_run_record is None:
            datamodule = self.trainer.datamodule
            tokenizer = getattr(datamodule, "tokenizer", None)
            run_config = getattr(datamodule, "run_config", None)
            languages = [getattr(datamodule, name, None) for name in ("source_lang", "target_lang")]
            self.cached_run_record = {
                "task": class_path(self), "data": run_config() if run_config else None,
                "tokenizer": tokenizer_files(tokenizer) if tokenizer is not None else None,
                # what `on_load_checkpoint` compares: the ids' meaning and the model
                "fingerprints": {"tokenizer": tokenizer_fingerprint(tokenizer) if tokenizer is not None else None},
                "languages": [lang for lang in languages if lang], "dataset": getattr(datamodule, "dataset_name", None),
                "command": redact_command(sys.argv, known_secrets(self.trainer.callbacks))}
        return self.cached_run_record

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.loaded_step = checkpoint.get("global_step")
        if MODEL_KEY not in checkpoint:
            raise ValueError(
                f"this checkpoint was written by an older version of {type(self).__name__}, whose arguments were a "
                "renamed copy of the model's configuration (d_model, attention_heads, ffn_dim, ...); it cannot be "
                "resumed or tested with this version. Export its weights with that version, or train again (the "
                "recipes now give the model's VaswaniConfig fields under model.model_config)."
            )
        try:
            trainer = self.trainer
            rank = trainer.global_rank
        except RuntimeError:  # `load_from_checkpoint` outside a Trainer: nothing to resume or compare
            return
        self.check_checkpoint_matches(checkpoint, trainer.ckpt_path or "the checkpoint")
        states = checkpoint.get("rng_states")
        if states:
            self.rng_states_to_restore = states[rank] if rank < len(states) else states[0]

    def check_checkpoint_matches(self, checkpoint: dict, ckpt: str | os.PathLike) -> None:
        """Refuse (`ResumeMismatchError`) a checkpoint whose tokenizer or model configuration is not this run's: a
        resume would go on training with remapped token ids, or load weights into another model."""
        entry = checkpoint.get(MODEL_KEY) or {}
        differences = model_differences(entry.get("config") or {}, describe_model(self.model)["config"])
        if differences:
            raise ResumeMismatchError(
                f"Checkpoint {ckpt} holds another model than the one configured now: {'; '.join(differences)}. A "
                f"resume continues the same run: give the run's own model configuration (or leave it out). "
                + start_fresh_advice(ckpt))
        record = checkpoint.get(RUN_KEY) or {}
        stored = (record.get("fingerprints") or {}).get("tokenizer")
        tokenizer = getattr(self.trainer.datamodule, "tokenizer", None)
        if stored is None or tokenizer is None or tokenizer_fingerprint(tokenizer) == stored:
            return
        files = record.get("tokenizer")
        change = describe_vocabulary_change(vocabulary_of_files(files) if files else None, tokenizer.get_vocab())
        own = f" --data.tokenizer_path {materialize_tokenizer(files)}" if files else ""
        raise ResumeMismatchError(
            f"Checkpoint {ckpt} was trained with another tokenizer than the data module has now: {change}. The data "
            "module trained a new tokenizer because its training data or settings differ from the run's (dataset, "
            "data_files, train_split, vocab_size, tokenizer_training_pairs); resuming would train on remapped ids. "
            f"To resume, give the run's data settings, or its own tokenizer:{own or ' its tokenizer_path'}. "
            + start_fresh_advice(ckpt))

    def on_train_start(self) -> None:
        # Warn when bf16 was asked of a CPU that only emulates it (lightning_modules.hardware).
        if self.device.type == "cpu" and str(self.trainer.precision).startswith("bf16"):
            advice = slow_bf16_advice(str(self.trainer.precision), cpu_bf16_slowdown())
            if advice is not None:
                rank_zero_warn(advice)
        # The RNG streams: applied here, after the restore and the sanity check, right before the next training batch.
        state, self.rng_states_to_restore = self.rng_states_to_restore, None
        if state is None:
            return
        torch.set_rng_state(state["torch"])
        random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


__all__ = ["ResumeMismatchError", "TaskModule", "gather_objects", "model_differences", "read_model_config",
           "label_smoothed_loss"]
