"""Soak test: a CPU training run of a small model for a fixed wall-clock time, with frequent validation,
checkpointing and HF export, watching for memory growth and throughput decay.

    python -m benchmarks.soak                 # 20 minutes
    python -m benchmarks.soak --minutes 3 --output benchmarks/results/soak_3min.json

The run is the quickstart's (English -> German number words from `lightning_modules.synthetic`, the paper's Adam and
schedule) shrunk to d_model 64, 2 + 2 layers, with a validation (greedy, 100 sentences) every `--val-every` steps, a
checkpoint every `--checkpoint-every` steps (a step file kept per save, plus last.ckpt) and an HF export at every
validation that improves val/loss. Every `--sample-seconds` the process's resident memory (RSS: psutil if installed,
else /proc/self/statm) is sampled. Printed and written as JSON:

- RSS slope in MB/hour: least-squares line through the samples of the second half of the run (the first half holds
  the warm-up: allocator pools, the first validation, the first checkpoint);
- throughput per window of `--window-seconds`: target tokens per second of training (batch end to batch end, the
  time spent in validation, checkpoints and exports left out) and per second of wall time (everything included);
- drift: the last window's training tokens/s against the first window after the warm-up window, in percent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_modules.callbacks import HFExportCallback
from lightning_modules.checkpointing import AtomicCheckpointIO
from lightning_modules.data import NumbersDataModule
from lightning_modules.schedules import InverseSquareRootLR, paper_adam
from lightning_modules.tasks import TranslationModule


def rss_mb() -> float:
    """Resident set size of this process in MB."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def slope_per_hour(times_s: list[float], values: list[float]) -> float | None:
    """Least-squares slope of values against time, in units per hour (None with fewer than 3 points)."""
    n = len(times_s)
    if n < 3:
        return None
    mean_t, mean_v = sum(times_s) / n, sum(values) / n
    var = sum((t - mean_t) ** 2 for t in times_s)
    if var == 0:
        return None
    return sum((t - mean_t) * (v - mean_v) for t, v in zip(times_s, values)) / var * 3600.0


class SoakMonitor(L.Callback):
    """Samples RSS every `sample_seconds`; counts target tokens and training time per `window_seconds` window."""

    def __init__(self, sample_seconds: float, window_seconds: float) -> None:
        self.sample_seconds, self.window_seconds = sample_seconds, window_seconds
        self.started = time.monotonic()
        self.samples: list[dict] = []
        self.windows: list[dict] = []
        self.last_sample = -float("inf")
        self.last_batch_end: float | None = None
        self.window = self.new_window(0.0, 0)
        self.validations = 0
        self.load_at_start = os.getloadavg()[0]

    def new_window(self, start: float, step: int) -> dict:
        return {"start_s": start, "start_step": step, "tokens": 0, "train_s": 0.0}

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def sample(self, step: int) -> None:
        now = self.elapsed()
        if now - self.last_sample >= self.sample_seconds:
            self.samples.append({"t_s": round(now, 2), "rss_mb": round(rss_mb(), 2), "step": step})
            self.last_sample = now

    def close_window(self, now: float, step: int) -> None:
        window = self.window
        wall = now - window["start_s"]
        window.update(end_s=round(now, 2), end_step=step, wall_s=round(wall, 2), train_s=round(window["train_s"], 3),
                      train_tokens_per_s=round(window["tokens"] / window["train_s"], 1) if window["train_s"] else None,
                      wall_tokens_per_s=round(window["tokens"] / wall, 1) if wall > 0 else None)
        self.windows.append(window)
        self.window = self.new_window(now, step)

    def on_train_start(self, trainer, pl_module) -> None:
        self.load_at_start = os.getloadavg()[0]
        self.started = time.monotonic()
        self.window = self.new_window(0.0, trainer.global_step)
        self.sample(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = self.elapsed()
        if self.last_batch_end is not None:  # the first batch after a start or a validation has no predecessor
            self.window["train_s"] += now - self.last_batch_end
            self.window["tokens"] += int((batch["labels"] != -100).sum())
        self.last_batch_end = now
        self.sample(trainer.global_step)
        if now - self.window["start_s"] >= self.window_seconds:
            self.close_window(now, trainer.global_step)

    def on_validation_start(self, trainer, pl_module) -> None:
        self.last_batch_end = None

    def on_validation_end(self, trainer, pl_module) -> None:
        self.validations += 1

    def on_train_end(self, trainer, pl_module) -> None:
        now = self.elapsed()
        self.sample(trainer.global_step)
        if now - self.window["start_s"] >= self.window_seconds / 2:  # a last window only if it is long enough
            self.close_window(now, trainer.global_step)


def summarize(monitor: SoakMonitor, minutes: float, seconds: float, steps: int, args: argparse.Namespace) -> dict:
    samples = monitor.samples
    half = [s for s in samples if s["t_s"] >= samples[-1]["t_s"] / 2] if samples else []
    slope = slope_per_hour([s["t_s"] for s in half], [s["rss_mb"] for s in half])
    rates = [w["train_tokens_per_s"] for w in monitor.windows if w["train_tokens_per_s"]]
    first, last = (rates[1], rates[-1]) if len(rates) >= 3 else (None, None)  # window 0 is the warm-up
    return {
        "benchmark": "soak",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                    # other processes on the machine: a busy machine makes the throughput windows noisy
                    "load_average_1min_start_end": [round(monitor.load_at_start, 2), round(os.getloadavg()[0], 2)]},
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "minutes_requested": minutes,
        "seconds": round(seconds, 1),
        "steps": steps,
        "validations": monitor.validations,
        "rss_mb_first": samples[0]["rss_mb"] if samples else None,
        "rss_mb_last": samples[-1]["rss_mb"] if samples else None,
        "rss_mb_max": max(s["rss_mb"] for s in samples) if samples else None,
        "rss_slope_mb_per_hour_second_half": round(slope, 2) if slope is not None else None,
        "rss_samples_second_half": len(half),
        "train_tokens_per_s_first_after_warmup": first,
        "train_tokens_per_s_last": last,
        "throughput_drift_percent": round(100.0 * (last - first) / first, 2) if first else None,
        "windows": monitor.windows,
        "rss_samples": samples,
    }


def print_table(report: dict) -> None:
    print(f"\n{'window':>6} {'from s':>7} {'to s':>7} {'steps':>11} {'train tok/s':>12} {'wall tok/s':>11}")
    for index, window in enumerate(report["windows"]):
        print(f"{index:>6} {window['start_s']:>7.0f} {window['end_s']:>7.0f} "
              f"{window['start_step']:>5}-{window['end_step']:<5} {window['train_tokens_per_s'] or 0:>12.0f} "
              f"{window['wall_tokens_per_s'] or 0:>11.0f}")
    print(f"\n{report['seconds']:.0f} s, {report['steps']} steps, {report['validations']} validations; RSS "
          f"{report['rss_mb_first']:.0f} -> {report['rss_mb_last']:.0f} MB (max {report['rss_mb_max']:.0f}); "
          f"slope over the second half {report['rss_slope_mb_per_hour_second_half']} MB/hour; training tokens/s drift "
          f"{report['throughput_drift_percent']}% (last window vs the first after warm-up)")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="wall-clock duration of the training run")
    parser.add_argument("--output", default="benchmarks/results/soak.json", help="where to write the JSON report")
    parser.add_argument("--workdir", default=None, help="run folder (default: a temporary folder, deleted after)")
    parser.add_argument("--val-every", type=int, default=100, help="steps between validations")
    parser.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints")
    parser.add_argument("--window-seconds", type=float, default=60.0, help="throughput window length")
    parser.add_argument("--sample-seconds", type=float, default=5.0, help="RSS sampling interval")
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=1024, help="tokens per training batch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.val_every < 1 or args.checkpoint_every < 1 or args.window_seconds <= 0:
        parser.error("--minutes and --window-seconds must be > 0, --val-every and --checkpoint-every >= 1")

    with tempfile.TemporaryDirectory(prefix="soak-") as scratch:
        root = Path(args.workdir or scratch)
        L.seed_everything(args.seed, verbose=False)
        data = NumbersDataModule(num_train=30000, num_validation=100, num_test=100, vocab_size=1000,
                                 max_tokens=args.max_tokens, eval_batch_size=100, cache_dir=str(root / "cache"),
                                 seed=args.seed)
        module = TranslationModule(
            model_config=dict(d_model=args.d_model, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                              decoder_attention_heads=4, encoder_ffn_dim=4 * args.d_model,
                              decoder_ffn_dim=4 * args.d_model, dropout=0.1, max_position_embeddings=128),
            tokenizer_fields=data.tokenizer_fields, validation_num_beams=1, optimizer=paper_adam,
            lr_scheduler=lambda optimizer, d_model: InverseSquareRootLR(optimizer, d_model=d_model, warmup_steps=400),
        )
        monitor = SoakMonitor(args.sample_seconds, args.window_seconds)
        callbacks = [
            ModelCheckpoint(dirpath=str(root / "checkpoints"), every_n_train_steps=args.checkpoint_every,
                            save_top_k=2, monitor="step", mode="max", save_last=True, filename="{step}"),
            HFExportCallback(dirpath=str(root / "hf_model"), monitor="val/loss", mode="min"),
            monitor,
        ]
        trainer = L.Trainer(
            default_root_dir=str(root), accelerator="cpu", devices=1, max_time={"seconds": args.minutes * 60},
            max_steps=-1, max_epochs=-1, val_check_interval=args.val_every, check_val_every_n_epoch=None,
            num_sanity_val_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=callbacks, plugins=[AtomicCheckpointIO()], use_distributed_sampler=False,
        )
        started = time.monotonic()
        trainer.fit(module, data)
        report = summarize(monitor, args.minutes, time.monotonic() - started, trainer.global_step, args)
    print_table(report)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {output}")
    return report


if __name__ == "__main__":
    main()
