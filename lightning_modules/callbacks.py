"""Callbacks that publish what training produces, without ever putting the training run at risk.

- `HFExportCallback`: a Hugging Face folder (`save_pretrained` of the model and the tokenizer, plus a model card)
  written atomically whenever the monitored metric improves and at the end of fit.
- `HubPushCallback`: uploads that folder to the Hub in a background thread, with retries; a failed push is logged,
  never raised.
- `CheckpointAveragingCallback`: at the end of fit, averages the last N checkpoints (§6.1) into another HF folder.

Only global rank 0 writes or uploads anything. A failed export or push is logged and training goes on.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shlex
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import huggingface_hub
from huggingface_hub import EvalResult, HfApi, ModelCardData
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from .average import export_average, find_checkpoints
from .checkpointing import recover_directory, replace_directory_atomically
from .module import gathered_state_dict

log = logging.getLogger(__name__)

EXPORT_FOLDER_NAME = "hf_model"
AVERAGED_FOLDER_NAME = "hf_model_averaged"
# Hub user access tokens ("hf_" + 34 letters/digits) and org API tokens, wherever they appear in a command line.
HUB_TOKEN_PATTERN = re.compile(r"\b(?:hf_|api_org_)[A-Za-z0-9]{30,}\b")
HIDDEN = "***"


# ----------------------------------------------------------------------------------------------------------------
# Secrets and the command line
# ----------------------------------------------------------------------------------------------------------------


def known_secrets(trainer: Trainer | None = None) -> list[str]:
    """Tokens that must never be written or logged: those given to HubPushCallbacks, HF_TOKEN, the login token."""
    secrets = [os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")]
    try:
        secrets.append(huggingface_hub.get_token())
    except Exception:  # a broken token file must not break an export
        pass
    if trainer is not None:
        secrets.extend(cb.token for cb in trainer.callbacks if isinstance(cb, HubPushCallback))
    return [s for s in secrets if s]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every known secret and anything shaped like a Hub token replaced by ***."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, HIDDEN)
    return HUB_TOKEN_PATTERN.sub(HIDDEN, text)


def redact_command(argv: Sequence[str], secrets: Iterable[str] = ()) -> str:
    """The shell-quoted command line, with the values of `*token` arguments and known secrets hidden."""
    words: list[str] = []
    hide_next = False
    for word in argv:
        if hide_next:
            words.append(HIDDEN)
            hide_next = False
            continue
        key, equals, _ = word.partition("=")
        if re.search(r"token$", key.lstrip("-"), flags=re.IGNORECASE):
            if equals:
                word = f"{key}={HIDDEN}"
            elif word.startswith("-"):
                hide_next = True
        words.append(word)
    return redact(shlex.join(words), secrets)


# ----------------------------------------------------------------------------------------------------------------
# The model card
# ----------------------------------------------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min {secs:02d} s"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def looks_like_hub_dataset(name: str | None) -> bool:
    return bool(name) and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) is not None and not Path(name).exists()


def config_table(model: Any) -> str:
    config = model.config
    rows = [
        ("vocabulary (shared, tied)" if getattr(config, "tie_word_embeddings", False) else "vocabulary",
         getattr(config, "vocab_size", None)),
        ("d_model", getattr(config, "d_model", None)),
        ("encoder / decoder layers",
         f"{getattr(config, 'encoder_layers', '?')} / {getattr(config, 'decoder_layers', '?')}"),
        ("attention heads", getattr(config, "encoder_attention_heads", None)),
        ("d_ff", getattr(config, "encoder_ffn_dim", None)),
        ("dropout", getattr(config, "dropout", None)),
        ("positions", getattr(config, "position_embedding_type", None)),
        ("layer norm", "pre-LN" if getattr(config, "normalize_before", False) else "post-LN (the paper's)"),
        ("parameters", f"{model.num_parameters():,}"),
    ]
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows if value is not None]
    return "\n".join(lines)


def build_model_card(
    model: Any,
    *,
    source_lang: str | None,
    target_lang: str | None,
    dataset_name: str | None,
    bleu: float | None,
    bleu_signature: str | None,
    global_step: int | None,
    training_seconds: float | None,
    command: str | None,
    validation_step: int | None = None,
    notes: Sequence[str] = (),
) -> str:
    """README.md text: YAML metadata (library, tags, languages, dataset, BLEU as model-index) and the prose."""
    languages = [lang for lang in (source_lang, target_lang) if lang]
    pair = "-".join(languages) if len(languages) == 2 else None
    # a decoder-only model (VaswaniForCausalLM) is a text generator, loaded with AutoModelForCausalLM; the captioning
    # model (VaswaniForImageCaptioning) reads pixel_values and loads with AutoModelForImageTextToText
    seq2seq = getattr(model.config, "is_encoder_decoder", True)
    captioning = getattr(model, "main_input_name", None) == "pixel_values"
    task = "image-to-text" if captioning else ("translation" if seq2seq else "text-generation")
    auto_class = ("AutoModelForImageTextToText" if captioning
                  else "AutoModelForSeq2SeqLM" if seq2seq else "AutoModelForCausalLM")
    model_name = f"vaswani-transformer-{pair}" if pair else "vaswani-transformer"
    dataset_label = dataset_name or "unknown"
    eval_results = None
    if bleu is not None:
        eval_results = [EvalResult(
            task_type=task,
            task_name=f"Translation {pair}" if pair else task.replace("-", " ").capitalize(),
            dataset_type=dataset_label,
            dataset_name=f"{dataset_label} (validation)",
            metric_type="bleu",
            metric_name="BLEU (sacreBLEU)",
            metric_value=round(float(bleu), 4),
            metric_config=bleu_signature,
        )]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=task,
        tags=[task, "transformer", "attention-is-all-you-need",
              "seq2seq" if seq2seq else "causal-lm", "vaswani"],
        language=languages or None,
        datasets=[dataset_name] if looks_like_hub_dataset(dataset_name) else None,
        metrics=["bleu"] if bleu is not None else None,
        model_name=model_name,
        eval_results=eval_results,
    )
    direction = f"{source_lang} → {target_lang}" if pair else (
        "image captioning" if captioning else "translation" if seq2seq else "language modelling")
    if bleu is None:
        bleu_line = "- BLEU: not measured for these weights."
    else:
        at = f", measured at step {validation_step}" if validation_step is not None else ""
        if validation_step is not None and global_step is not None and validation_step != global_step:
            at += f" (these weights are from step {global_step})"
        bleu_line = f"- BLEU (sacreBLEU) on the validation set{at}: **{bleu:.2f}**"
        bleu_line += f"\n- sacreBLEU signature: `{bleu_signature}`" if bleu_signature else ""
    lines = [
        "---",
        card_data.to_yaml().strip(),
        "---",
        "",
        f"# {model_name}",
        "",
        f"A Transformer (Vaswani et al., 2017, *Attention Is All You Need*) trained from scratch for {direction} "
        f"on `{dataset_label}`.",
        "",
        f"- Languages: {', '.join(languages) if languages else 'unknown'} (source first)",
        f"- Dataset: `{dataset_label}`",
        "",
        "## Model",
        "",
        config_table(model),
        "",
        "## Results",
        "",
        bleu_line,
        "",
        "## Training",
        "",
        f"- Global step: {global_step if global_step is not None else 'unknown'}",
        f"- Training time (wall clock since fit start): "
        f"{format_duration(training_seconds) if training_seconds is not None else 'unknown'}",
        f"- Exported: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')}",
        *[f"- {note}" for note in notes],
        "",
        "Command:",
        "",
        "```bash",
        command or "unknown",
        "```",
        "",
        "## Usage",
        "",
        "```python",
        f"from transformers import {auto_class}, AutoTokenizer" + (", AutoImageProcessor" if captioning else ""),
        "",
        "# with the hf_transformer package installed, `import hf_transformer` instead of trust_remote_code",
        f'model = {auto_class}.from_pretrained("<this folder or repo>", trust_remote_code=True)',
        'tokenizer = AutoTokenizer.from_pretrained("<this folder or repo>")',
        *(['processor = AutoImageProcessor.from_pretrained("<this folder or repo>", trust_remote_code=True)',
           "caption_ids = model.generate(**processor(images, return_tensors=\"pt\"))"] if captioning else []),
        "```",
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------------------


def run_dir(trainer: Trainer) -> Path:
    """`trainer.log_dir` (or `default_root_dir`). Call it on every rank: `log_dir` broadcasts."""
    return Path(trainer.log_dir or trainer.default_root_dir)


def find_callback(trainer: Trainer, kind: type) -> Any | None:
    return next((cb for cb in trainer.callbacks if isinstance(cb, kind)), None)


class HFExportCallback(Callback):
    """Writes a Hugging Face folder (model, tokenizer, README.md model card) atomically.

    When: after every validation that improves `monitor` (so the folder holds the best model while training runs)
    and, with `export_on_train_end`, once more at the end of fit (then it holds the final weights). The folder
    loads with `AutoModelForSeq2SeqLM.from_pretrained` / `AutoTokenizer.from_pretrained`. An export that fails is
    logged, the previous folder stays as it was, and training goes on.

    Args:
        dirpath: the folder; default `<trainer.log_dir or default_root_dir>/hf_model`.
        monitor: the logged metric that decides "improved".
        mode: "max" (BLEU) or "min" (a loss).
        export_on_train_end: also export the final weights when fit ends.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        monitor: str = "val/bleu",
        mode: str = "max",
        export_on_train_end: bool = True,
    ) -> None:
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"`mode` must be 'max' or 'min', got {mode!r}.")
        self.dirpath = dirpath
        self.monitor = monitor
        self.mode = mode
        self.export_on_train_end = export_on_train_end
        self.folder: Path | None = Path(dirpath) if dirpath else None
        self.best_score: float | None = None
        self.last_validation_step: int | None = None
        self.exports: list[dict[str, Any]] = []  # one entry per successful export
        self.failed_exports = 0
        self.fit_started_at: float | None = None
        self.command: str | None = None
        self.warned_missing_metric = False

    @property
    def state_key(self) -> str:
        return f"{type(self).__qualname__}{{'dirpath': {self.dirpath!r}, 'monitor': {self.monitor!r}}}"

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict.get("best_score")

    def resolve_folder(self, trainer: Trainer) -> Path:
        """The export folder (resolving the default needs `trainer.log_dir`: call on every rank)."""
        if self.folder is None:
            self.folder = run_dir(trainer) / EXPORT_FOLDER_NAME
        return self.folder

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        folder = self.resolve_folder(trainer)
        if trainer.is_global_zero and stage == TrainerFn.FITTING:
            recover_directory(folder)  # a run killed mid-export: put the old folder back now, not at the next export

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.fit_started_at = time.monotonic()
        self.command = redact_command(sys.argv, known_secrets(trainer))

    def improves(self, score: float) -> bool:
        if math.isnan(score):
            return False
        if self.best_score is None:
            return True
        return score > self.best_score if self.mode == "max" else score < self.best_score

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            if not self.warned_missing_metric:
                rank_zero_warn(f"HFExportCallback: {self.monitor!r} was not logged; exporting only at the end of fit.")
                self.warned_missing_metric = True
            return
        self.last_validation_step = trainer.global_step
        score = float(value)
        if self.improves(score):
            self.best_score = score
            self.export(trainer, pl_module, reason=f"{self.monitor} improved to {score:.4f}")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.export_on_train_end:
            self.export(trainer, pl_module, reason="end of fit")

    def model_card(self, trainer: Trainer, pl_module: LightningModule) -> str:
        datamodule = trainer.datamodule
        bleu_key = self.monitor if "bleu" in self.monitor else "val/bleu"
        bleu = trainer.callback_metrics.get(bleu_key)
        return build_model_card(
            pl_module.model,
            source_lang=getattr(datamodule, "source_lang", None),
            target_lang=getattr(datamodule, "target_lang", None),
            dataset_name=getattr(datamodule, "dataset_name", None),
            bleu=float(bleu) if bleu is not None else None,
            bleu_signature=getattr(pl_module, "bleu_signature", None),
            global_step=trainer.global_step,
            training_seconds=time.monotonic() - self.fit_started_at if self.fit_started_at is not None else None,
            command=self.command,
            validation_step=self.last_validation_step,
        )

    def export(self, trainer: Trainer, pl_module: LightningModule, reason: str) -> Path | None:
        """Write the folder now (global rank 0 only). Returns it, or None if nothing was written."""
        state_dict = gathered_state_dict(pl_module.model)  # FSDP2 shards: gathered on every rank, else None
        if not trainer.is_global_zero:
            return None
        folder = self.resolve_folder(trainer)
        model = pl_module.model
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        image_processor = getattr(trainer.datamodule, "image_processor", None)
        if tokenizer is None:
            rank_zero_warn("HFExportCallback: the data module has no `tokenizer`; the folder will have none.")
        try:
            card = redact(self.model_card(trainer, pl_module), known_secrets(trainer))

            def write(tmp: Path) -> None:
                model.save_pretrained(tmp, state_dict=state_dict)  # the module's own weights: fp32 under bf16-mixed
                if tokenizer is not None:
                    tokenizer.save_pretrained(tmp)
                if image_processor is not None:  # captioning: preprocessor_config.json + its code for remote loading
                    image_processor.save_pretrained(tmp)
                (tmp / "README.md").write_text(card, encoding="utf-8")

            replace_directory_atomically(folder, write)
        except Exception:
            self.failed_exports += 1
            log.exception("HF export to %s (%s) failed; the previous folder is unchanged and training goes on.",
                          folder, reason)
            return None
        self.exports.append({"step": trainer.global_step, "reason": reason, "score": self.best_score,
                             "time": time.time(), "path": str(folder)})
        rank_zero_info(f"HFExportCallback: wrote {folder} at step {trainer.global_step} ({reason}).")
        return folder


# ----------------------------------------------------------------------------------------------------------------
# Hub push
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class PushRequest:
    snapshot: Path  # a private copy of the folder, deleted after the upload
    step: int
    identity: tuple  # what the folder looked like (names, sizes, mtimes): equal identity = same export


def folder_identity(folder: Path) -> tuple:
    entries = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            stat = path.stat()
            entries.append((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


def link_or_copy(source: str, destination: str) -> None:
    """Hard-link (instant; safe because exports never rewrite a file in place), else copy."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


class HubPushCallback(Callback):
    """Uploads the exported folder to the Hub in a background thread, so training never waits for the network.

    Every `every_n_validations` validations (and at the end of fit with `push_on_train_end`) the folder is
    snapshotted into a private staging folder (hard links, or copies for a folder this run does not export) and
    queued. One upload runs at a time; a newer request replaces a queued one. An upload that fails (network error,
    HTTP 5xx, ...) is retried `max_retries` times with exponential backoff (`backoff_seconds` * 2^k), then given up;
    failures are logged as warnings (the error type and attempt, never the token) and recorded in `push_history`;
    training is never interrupted. When fit ends, the last push is awaited up to `timeout_seconds`.

    The requests are made after all validation hooks have run (at the next training batch, at the end of training
    and at teardown), so the push sees the export of the same validation whatever the callbacks' order.

    Args:
        repo_id: "user/name" on the Hub; created (private by default) if missing.
        every_n_validations: push after every N-th validation.
        private: visibility of a newly created repo (an existing repo keeps its own).
        push_on_train_end: push the final folder when fit ends.
        folder: what to upload; default: the HFExportCallback's folder, else `<log_dir>/hf_model`.
        max_retries: retries after a failed attempt (so up to max_retries + 1 attempts per push).
        backoff_seconds: wait before the first retry, doubled after each failed retry.
        timeout_seconds: how long the end of fit waits for the last push before giving up with a warning.
        token: a Hub token; default None uses huggingface_hub's resolution (HF_TOKEN, then `hf auth login`).
            Prefer HF_TOKEN: a token written in a YAML recipe sits in that file and in shell history. The run's
            config.yaml shows it as *** (lightning_modules/cli.py), and it is never logged or shown in repr().
    """

    def __init__(
        self,
        repo_id: str,
        every_n_validations: int = 1,
        private: bool = True,
        push_on_train_end: bool = True,
        folder: str | None = None,
        max_retries: int = 5,
        backoff_seconds: float = 2.0,
        timeout_seconds: float = 600.0,
        token: str | None = None,
    ) -> None:
        super().__init__()
        if every_n_validations < 1:
            raise ValueError(f"`every_n_validations` must be >= 1, got {every_n_validations!r}.")
        if max_retries < 0 or backoff_seconds < 0 or timeout_seconds <= 0:
            raise ValueError("`max_retries` and `backoff_seconds` must be >= 0 and `timeout_seconds` > 0.")
        self.repo_id = repo_id
        self.every_n_validations = every_n_validations
        self.private = private
        self.push_on_train_end = push_on_train_end
        self.folder: Path | None = Path(folder) if folder else None
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        self.timeout_seconds = timeout_seconds
        self.token = token
        self.push_history: list[dict[str, Any]] = []
        self.validations = 0
        self.push_due = False
        self.links_are_safe = False  # True when the folder is written by an HFExportCallback of this trainer
        self.staging_root: Path | None = None
        self.lock = threading.Lock()
        self.cancelled = threading.Event()
        self.pending: PushRequest | None = None
        self.in_flight: PushRequest | None = None
        self.worker: threading.Thread | None = None
        self.pushed_identity: tuple | None = None
        self.repo_created = False

    def __repr__(self) -> str:
        token = HIDDEN if self.token else None
        return (f"{type(self).__name__}(repo_id={self.repo_id!r}, every_n_validations={self.every_n_validations}, "
                f"private={self.private}, folder={str(self.folder) if self.folder else None!r}, token={token!r})")

    @property
    def state_key(self) -> str:
        return f"{type(self).__qualname__}{{'repo_id': {self.repo_id!r}}}"

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self.validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validations = int(state_dict.get("validations", 0))

    # -- hooks ----------------------------------------------------------------------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        exporter = find_callback(trainer, HFExportCallback)
        exported = exporter.resolve_folder(trainer) if exporter is not None else None  # on every rank (broadcast)
        if self.folder is None:
            if exported is None:
                rank_zero_warn("HubPushCallback: no HFExportCallback registered; pushing <log_dir>/hf_model.")
            self.folder = exported if exported is not None else run_dir(trainer) / EXPORT_FOLDER_NAME
        self.links_are_safe = exported is not None and Path(exported).resolve() == self.folder.resolve()
        self.staging_root = self.folder.parent / f".{self.folder.name}.hub-staging"
        if trainer.is_global_zero and stage == TrainerFn.FITTING and self.worker is None:
            shutil.rmtree(self.staging_root, ignore_errors=True)  # left over by an earlier, killed run
        self.cancelled.clear()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        self.validations += 1
        if self.validations % self.every_n_validations == 0:
            self.push_due = True  # requested at the next hook, once every validation-end hook has run

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self.push_due:
            self.request_push(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.push_due:
            self.request_push(trainer)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # After every callback's on_fit_end: the final export is on disk.
        if stage != TrainerFn.FITTING or not trainer.is_global_zero:
            return
        if self.push_due or self.push_on_train_end:
            self.request_push(trainer)
        if not self.wait(self.timeout_seconds):
            self.cancelled.set()
            self.record("timeout", error=f"still running after {self.timeout_seconds:.0f} s; abandoned")
            log.warning("Hub push to %s did not finish within %.0f s; giving up on it (training is done).",
                        self.repo_id, self.timeout_seconds)
            return
        if self.staging_root is not None:
            shutil.rmtree(self.staging_root, ignore_errors=True)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.cancelled.set()  # no more retries; an upload already running finishes if the process lives on

    # -- requests and the worker ----------------------------------------------------------------------------------

    def request_push(self, trainer: Trainer) -> bool:
        """Snapshot the folder and queue its upload (global rank 0). False if there was nothing new to push."""
        self.push_due = False
        if not trainer.is_global_zero or self.folder is None:
            return False
        if not self.folder.is_dir():
            log.warning("HubPushCallback: %s does not exist yet; nothing to push.", self.folder)
            return False
        identity = folder_identity(self.folder)
        with self.lock:
            queued = [r.identity for r in (self.pending, self.in_flight) if r is not None]
            if identity == self.pushed_identity or identity in queued:
                return False
        assert self.staging_root is not None
        snapshot = self.staging_root / uuid.uuid4().hex[:12]
        try:
            shutil.copytree(self.folder, snapshot, copy_function=link_or_copy if self.links_are_safe else shutil.copy2)
        except OSError as error:  # e.g. the folder was being replaced by another process
            shutil.rmtree(snapshot, ignore_errors=True)
            log.warning("HubPushCallback: could not snapshot %s (%s); skipping this push.", self.folder,
                        type(error).__name__)
            return False
        request = PushRequest(snapshot=snapshot, step=trainer.global_step, identity=identity)
        with self.lock:
            if self.pending is not None:
                shutil.rmtree(self.pending.snapshot, ignore_errors=True)
                self.record("superseded", step=self.pending.step)
            self.pending = request
            if self.worker is None:
                self.worker = threading.Thread(target=self.work, name=f"hub-push-{self.repo_id}", daemon=True)
                self.worker.start()
        return True

    def wait(self, timeout: float) -> bool:
        """Block until no push is queued or running, at most `timeout` seconds. True if everything finished."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                worker = self.worker
            if worker is None:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            worker.join(min(remaining, 0.2))

    def work(self) -> None:
        while True:
            with self.lock:
                request, self.pending = self.pending, None
                self.in_flight = request
                if request is None:
                    self.worker = None
                    return
            try:
                self.push(request)
            except Exception as error:  # never let the thread die silently
                log.warning("Hub push to %s: unexpected %s", self.repo_id, type(error).__name__)
            finally:
                shutil.rmtree(request.snapshot, ignore_errors=True)
                with self.lock:
                    self.in_flight = None

    def push(self, request: PushRequest) -> None:
        api = HfApi(token=self.token)
        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            if self.cancelled.is_set():
                self.record("cancelled", step=request.step, attempt=attempt)
                return
            try:
                if not self.repo_created:
                    api.create_repo(self.repo_id, private=self.private, exist_ok=True)
                    self.repo_created = True
                info = api.upload_folder(
                    repo_id=self.repo_id,
                    folder_path=request.snapshot,
                    commit_message=f"Training step {request.step}",
                )
            except Exception as error:
                message = redact(f"{type(error).__name__}: {error}", [*known_secrets(), self.token or ""])
                self.record("error", step=request.step, attempt=attempt, error=message)
                log.warning("Hub push of step %d to %s failed (attempt %d of %d, %s)%s", request.step,
                            self.repo_id, attempt, attempts, type(error).__name__,
                            "; retrying" if attempt < attempts else "")
                if attempt < attempts:
                    self.cancelled.wait(self.backoff_seconds * 2 ** (attempt - 1))
                continue
            with self.lock:
                self.pushed_identity = request.identity
            self.record("ok", step=request.step, attempt=attempt, commit_url=getattr(info, "commit_url", None))
            log.info("Pushed step %d to %s", request.step, self.repo_id)
            return
        self.record("failed", step=request.step, attempt=attempts)
        log.warning("Hub push of step %d to %s failed after %d attempts; training goes on without it.",
                    request.step, self.repo_id, attempts)

    def record(self, status: str, **details: Any) -> None:
        self.push_history.append({"time": time.time(), "status": status, **details})


# ----------------------------------------------------------------------------------------------------------------
# Checkpoint averaging
# ----------------------------------------------------------------------------------------------------------------


class CheckpointAveragingCallback(Callback):
    """At the end of fit, averages the last `last_n` checkpoints (§6.1: 5 for base, 20 for big) into an HF folder.

    The checkpoints are the `*.ckpt` files in the folders of the trainer's ModelCheckpoint callbacks, ordered by the
    `global_step` stored in them (then mtime), one per step (`last.ckpt` duplicating a step is skipped). Have a
    ModelCheckpoint save regularly, e.g. `every_n_train_steps=1000, save_top_k=-1`. The folder is written like
    HFExportCallback's (model, tokenizer, card; atomically; global rank 0). A failure is logged, not raised.

    Args:
        last_n: how many checkpoints to average (fewer if fewer exist, with a warning).
        dirpath: the output folder; default `hf_model_averaged` next to the HFExportCallback's folder, else
            `<log_dir or default_root_dir>/hf_model_averaged`.
    """

    def __init__(self, last_n: int = 5, dirpath: str | None = None) -> None:
        super().__init__()
        if last_n < 1:
            raise ValueError(f"`last_n` must be >= 1, got {last_n!r}.")
        self.last_n = last_n
        self.dirpath = dirpath
        self.folder: Path | None = Path(dirpath) if dirpath else None
        self.averaged_paths: list[Path] = []
        self.fit_started_at: float | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        exporter = find_callback(trainer, HFExportCallback)
        exported = exporter.resolve_folder(trainer) if exporter is not None else None  # on every rank (broadcast)
        if self.folder is None:
            base = exported.parent if exported is not None else run_dir(trainer)
            self.folder = base / AVERAGED_FOLDER_NAME

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.fit_started_at = time.monotonic()

    def checkpoint_dirs(self, trainer: Trainer) -> list[Path]:
        dirs = [getattr(cb, "dirpath", None) for cb in trainer.checkpoint_callbacks]
        return list(dict.fromkeys(Path(d) for d in dirs if d))

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero or self.folder is None:
            return
        try:
            paths = find_checkpoints(self.checkpoint_dirs(trainer), last=self.last_n)
            if not paths:
                rank_zero_warn("CheckpointAveragingCallback: no checkpoints found; nothing to average.")
                return
            if len(paths) < self.last_n:
                rank_zero_warn(f"CheckpointAveragingCallback: only {len(paths)} checkpoints, averaging those.")
            datamodule = trainer.datamodule
            exporter = find_callback(trainer, HFExportCallback)
            card_info = {
                "source_lang": getattr(datamodule, "source_lang", None),
                "target_lang": getattr(datamodule, "target_lang", None),
                "dataset_name": getattr(datamodule, "dataset_name", None),
                "training_seconds": time.monotonic() - self.fit_started_at if self.fit_started_at else None,
                "command": exporter.command if exporter is not None and exporter.command else
                redact_command(sys.argv, known_secrets(trainer)),
            }
            export_average(paths, self.folder, tokenizer=getattr(datamodule, "tokenizer", None),
                           module_class=type(pl_module), card_info=card_info)
        except Exception:
            log.exception("Checkpoint averaging into %s failed; the training run itself is complete.", self.folder)
            return
        self.averaged_paths = paths
        rank_zero_info(f"CheckpointAveragingCallback: averaged {len(paths)} checkpoints into {self.folder}: "
                       + ", ".join(p.name for p in paths))


__all__ = [
    "CheckpointAveragingCallback",
    "HFExportCallback",
    "HubPushCallback",
    "build_model_card",
    "redact_command",
]
