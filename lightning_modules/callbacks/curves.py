"""Learning curves: one PNG of the training and validation loss, the validation scores (BLEU and chrF, or perplexity)
and the learning rate against the step, read from a run's CSV logs (`<run>/csv/version_*/metrics.csv`).

`LearningCurves` draws `<run>/learning_curves.png` at the end of every fit; `hf-transformer plot RUN [-o FILE]`
draws it for any run, finished, running or resumed (the versions of a resumed run continue one curve). Drawing needs
matplotlib (`pip install hf-transformer[plots]`); without it the run goes on and says so.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger

log = logging.getLogger(__name__)

CURVES_FILE = "learning_curves.png"
#: Panel title -> the metrics drawn in it: the first group of them that the run logged.
PANELS = {"loss (nats per target token)": [("train/loss", "val/loss")],
          "validation score": [("val/bleu", "val/chrf"), ("val/ppl",)],
          "learning rate": [("lr",)]}


def read_metrics(run_dir: str | Path) -> dict[str, dict[int, float]]:
    """metric -> {step: value} from every metrics.csv under `run_dir`, oldest file first: a resumed run (a new
    version) continues the curve, later values win at equal steps."""
    series: dict[str, dict[int, float]] = {}
    for path in sorted(Path(run_dir).rglob("metrics.csv"), key=lambda p: p.stat().st_mtime):
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if not row.get("step"):
                    continue
                for name, value in row.items():
                    if name not in ("step", "epoch") and value not in (None, ""):
                        series.setdefault(name, {})[int(row["step"])] = float(value)
    return series


def panel_metrics(groups: list[tuple[str, ...]], series: dict[str, dict[int, float]]) -> list[str]:
    """The metrics of the first group that the run logged (BLEU and chrF for translation, perplexity else)."""
    for group in groups:
        present = [name for name in group if series.get(name)]
        if present:
            return present
    return []


def plot_learning_curves(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Draw the learning curves of the run in `run_dir` into `output` (default `<run>/learning_curves.png`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("drawing learning curves needs matplotlib: pip install hf-transformer[plots]") from None
    series = read_metrics(run_dir)
    if not any(panel_metrics(groups, series) for groups in PANELS.values()):
        raise ValueError(f"{run_dir}: no metrics.csv with a loss, a score or a learning rate under it: is it a run "
                         "directory (the --trainer.default_root_dir of a fit)?")
    figure, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.6), constrained_layout=True)
    for axis, (title, groups) in zip(axes, PANELS.items()):
        drawn = panel_metrics(groups, series)
        for name in drawn:
            steps = sorted(series[name])
            style = "-" if name.startswith("train/") or name == "lr" else "o-"
            axis.plot(steps, [series[name][s] for s in steps], style, label=name, markersize=3,
                      linewidth=0.8 if name.startswith("train/") else 1.5)
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        if drawn:
            axis.legend()
    figure.suptitle(f"learning curves of {Path(run_dir).resolve().name}")
    path = Path(output) if output is not None else Path(run_dir) / CURVES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


class LearningCurves(Callback):
    """Draws `<run>/learning_curves.png` (`trainer.default_root_dir`) at the end of fit, from the CSV logs. A run
    without a CSV logger, or without matplotlib, gets a message instead; the run itself is never at risk."""

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        csv_loggers = [logger for logger in trainer.loggers if isinstance(logger, CSVLogger)]
        if not trainer.is_global_zero or not csv_loggers:
            return
        for logger in csv_loggers:
            logger.save()  # the rows logged since the last flush
        try:
            path = plot_learning_curves(trainer.default_root_dir)
        except Exception as error:  # noqa: BLE001 (a picture never fails a run)
            log.warning("learning curves not drawn: %s", error)
            return
        log.info("learning curves: %s", path)


def main(argv: list[str] | None = None) -> int:
    """`hf-transformer plot RUN [-o FILE]`; returns the exit status."""
    parser = argparse.ArgumentParser(prog="hf-transformer plot",
                                     description="Draw the learning curves (loss, BLEU / chrF, learning rate) of a "
                                                 "run directory from its CSV logs.")
    parser.add_argument("run", help="the run directory (--trainer.default_root_dir of the fit)")
    parser.add_argument("-o", "--output", help=f"the PNG to write (default: RUN/{CURVES_FILE})")
    args = parser.parse_args(argv)
    try:
        path = plot_learning_curves(args.run, args.output)
    except (ImportError, ValueError, OSError) as error:
        print(f"hf-transformer plot: error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


__all__ = ["CURVES_FILE", "LearningCurves", "plot_learning_curves", "read_metrics", "main"]
