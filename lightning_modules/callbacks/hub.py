"""`HubPushCallback`: uploads the exported folder to the Hub in a background thread, with retries; a failed push is
logged, never raised, and training never waits for the network. Only global rank 0 uploads."""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn

from ..redaction import HIDDEN, known_secrets, redact
from .export import EXPORT_FOLDER_NAME, HFExportCallback, find_callback, link_or_copy, run_dir

log = logging.getLogger(__name__)


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
        token: a Hub token, for use from Python only; default None uses huggingface_hub's resolution (HF_TOKEN,
            then `hf auth login`). The command line refuses a token argument or a `token:` in a config file
            (`lightning_modules.cli.refuse_secret_arguments`): it would be printed by --print_config and errors.
            It is never logged or shown in repr().
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
        self.token = None if token == HIDDEN else token  # *** : a saved config.yaml reused, no token given
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

__all__ = ["HubPushCallback"]
