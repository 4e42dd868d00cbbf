"""`EvaluationOutputs`: what a `test` leaves behind, in the run directory and in the model card.

- `<run>/test/<weights>-<split>.txt`: one hypothesis per example, in the split's order (sacreBLEU and COMET read it
  as it is), and `<run>/test/<weights>-<split>.json`: the scores, what they were measured on (split, size), the
  decoding settings, the signatures and the weights (`<weights>`: `best` for best.ckpt, `hf_model` for a folder).
- The model card: the exported folder holding the tested weights (the folder tested, or the run's `hf_model` /
  `hf_model_last` exported at the checkpoint's step) gets the test score in its card and run record.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from ..data.corpus import slug
from ..runs import RUN_FILE, run_dir_of
from .export import rewrite_card

log = logging.getLogger(__name__)


def folders_with_weights(trainer: Trainer, pl_module: LightningModule) -> list[Path]:
    """The exported folders whose weights were tested: the folder itself (`pretrained`), or the run's exports of the
    tested checkpoint's step (best or last; an average is other weights)."""
    pretrained = getattr(pl_module, "pretrained", None)
    if pretrained is not None:
        return [Path(pretrained)] if (Path(pretrained) / RUN_FILE).is_file() else []
    step = getattr(pl_module, "loaded_step", None)
    if not trainer.ckpt_path or step is None:
        return []
    folders = []
    for folder in sorted(run_dir_of(trainer.ckpt_path).glob("hf_model*")):
        record_file = folder / RUN_FILE
        if not record_file.is_file():
            continue
        weights = json.loads(record_file.read_text(encoding="utf-8")).get("weights") or {}
        if weights.get("kind") in ("best", "last") and weights.get("step") == step:
            folders.append(folder)
    return folders


def record_test_in_cards(trainer: Trainer, pl_module: LightningModule, summary: dict[str, Any]) -> list[Path]:
    """Add the test summary to the run record and the card of every folder holding the tested weights."""
    updated = []
    for folder in folders_with_weights(trainer, pl_module):
        record = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
        record.setdefault("evaluations", {})["test"] = {**summary, "weights": str(trainer.ckpt_path or folder)}
        rewrite_card(folder, pl_module.model, record)
        updated.append(folder)
    return updated


class EvaluationOutputs(Callback):
    """Writes the test hypotheses and scores into `<run>/test/` and the test score into the model card; see the
    module docstring. Global rank 0 only; a module without evaluation summaries is left alone."""

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        summary = getattr(pl_module, "evaluations", {}).get("test")
        if not trainer.is_global_zero or summary is None:
            return
        split = (summary.get("set") or {}).get("split", "test")
        folder, stem = Path(trainer.default_root_dir) / "test", f"{pl_module.weights_name()}-{slug(split)}"
        folder.mkdir(parents=True, exist_ok=True)
        lines = pl_module.output_lines(pl_module.evaluated_records.get("test", []))
        if lines:
            (folder / f"{stem}.txt").write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
        weights = str(trainer.ckpt_path or getattr(pl_module, "pretrained", None))
        (folder / f"{stem}.json").write_text(json.dumps({**summary, "weights": weights}, indent=2) + "\n",
                                             encoding="utf-8")
        pl_module.print(f"test scores: {folder / stem}.json" + (f"; hypotheses: {folder / stem}.txt" if lines else ""))
        for folder in record_test_in_cards(trainer, pl_module, summary):
            pl_module.print(f"test score added to the model card of {folder}")


__all__ = ["EvaluationOutputs", "record_test_in_cards"]
