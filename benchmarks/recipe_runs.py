"""What the chorale and pixel benchmarks share: they run the project's recipes through its own CLI (as `hf-transformer
fit --config RECIPE --trainer.default_root_dir RUN` would; caches in the per-user cache, `$HF_TRANSFORMER_CACHE`),
score the best checkpoint, and report the machine, the wall time and the load beside their figures."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers

from lightning_modules.cli import build_cli

REPO_ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.enable_model_summary", "false"]  # the recipes keep their progress bar (StepProgressBar)


def shown(path: Path) -> str:
    """A path as a report shows it: relative to the repository when inside it."""
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def fit_and_evaluate(recipe: Path, overrides: list[str], run_dir: Path) -> tuple[object, dict, dict, float]:
    """Fit `recipe` (with command-line `overrides`) in the run directory `run_dir`, then validate and test its best
    checkpoint (lowest validation loss). Returns the CLI (its model holds the best weights), the validation and test
    metrics and the seconds `fit` took."""
    cli = build_cli(["--config", str(recipe), "--trainer.default_root_dir", str(run_dir), *QUIET, *overrides],
                    run=False)
    started = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds = time.perf_counter() - started
    validation = cli.trainer.validate(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)[0]
    test = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)[0]
    return cli, validation, test, seconds


def run_record(command: str, started: float, load_before: tuple[float, float, float]) -> dict:
    """Wall time since `started` (perf_counter), the CPU time of the process (all its threads: what the run costs
    whatever else the machine does), the load average before and now, the machine and the date."""
    return {
        "wall_seconds_total": round(time.perf_counter() - started, 1),
        "cpu_seconds_total": round(time.process_time(), 1),
        "load_average_before": [round(value, 2) for value in load_before],
        "load_average_after": [round(value, 2) for value in os.getloadavg()],
        "command": command,
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "transformers": transformers.__version__, "threads": torch.get_num_threads(),
                    "cpu_count": os.cpu_count()},
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str] | None, workdir: Path, output: Path,
                    what_docs_get: str) -> argparse.Namespace:
    """The arguments both scripts take (threads, seed, folders), added to `parser`, then parsed; paths made
    absolute."""
    parser.add_argument("--threads", type=int, default=2,
                        help="torch CPU threads (1 on a machine busy with other work: 2 threads ran 2 to 3 times "
                             "slower here)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples")
    parser.add_argument("--workdir", type=Path, default=workdir,
                        help="the folder of the run directories (caches go to the per-user cache)")
    parser.add_argument("--docs", type=Path, default=REPO_ROOT / "docs", help=f"where {what_docs_get} go")
    parser.add_argument("--output", type=Path, default=output, help="the JSON report")
    args = parser.parse_args(argv)
    args.workdir, args.docs, args.output = args.workdir.resolve(), args.docs.resolve(), args.output.resolve()
    args.arguments = list(sys.argv[1:] if argv is None else argv)  # as given, for the report's command
    return args


def write_report(report: dict, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"\nwrote {output}")


__all__ = ["REPO_ROOT", "fit_and_evaluate", "parse_arguments", "run_record", "shown", "write_report"]
