"""End-to-end Lightning loop: target tokens/s of `Trainer.fit` vs the bare training step on the same batches.

`Trainer.fit` runs `TranslationModule` + `TranslationDataModule` on the local Multi30k files (de -> en, joint BPE,
token-budget batches): data loading, the loss normalisation, logging (CSV logger, every 50 steps as the recipes),
the non-finite check, gradient clipping, the LR schedule. The bare step runs `TranslationModule.forward_loss`,
backward and the same Adam on the very batches the fit trained on, in a plain loop. The difference is the loop's
overhead. Both are measured in steady state (the first steps of each fit are warm-up and not timed), in alternating
repetitions; medians are reported. Ours only: Marian has no Lightning module here.

    python -m benchmarks.lightning_loop                     # small model, CPU or CUDA
    python -m benchmarks.lightning_loop --size base --quick
    python -m benchmarks.lightning_loop --device cpu --tiny --dtype bf16 --compile    # the GPU code paths, on CPU
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import CSVLogger

from benchmarks import common
from lightning_modules.data import TranslationDataModule
from lightning_modules.schedules import paper_adam
from lightning_modules.tasks import TranslationModule


class StepClock(Callback):
    """Wall time at the end of every training batch, the target tokens of each batch, and the batches themselves."""

    def __init__(self):
        self.ends: list[float] = []
        self.tokens: list[int] = []
        self.batches: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        common.synchronize(pl_module.device)
        self.ends.append(time.perf_counter())
        self.tokens.append(int((batch["labels"] != -100).sum()))
        self.batches.append({k: v for k, v in batch.items() if isinstance(v, torch.Tensor)})


def parse_args() -> argparse.Namespace:
    parser = common.base_parser(__doc__.split("\n")[0])
    parser.add_argument("--size", default=None, help="tiny, small, base or big (default small; tiny with --tiny)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per fit (default 10, quick 5)")
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=None, help="token budget (default 2048 CPU, 16384 GPU)")
    parser.add_argument("--compile", action="store_true", help="TranslationModule(compile=True)")
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "hf_transformer_benchmark_cache"))
    return parser.parse_args()


def multi30k_data(budget: int, cache_dir: str, seed: int) -> TranslationDataModule:
    """The local Multi30k files, de -> en, as token-budget batches of `budget` tokens."""
    folder = common.MULTI30K_DIR
    if not (folder / "train.de.gz").exists():
        raise SystemExit(f"Multi30k not found in {folder}: set MULTI30K_DIR to the folder with train.de.gz")
    files = {split: [str(folder / f"{name}.de.gz"), str(folder / f"{name}.en.gz")]
             for split, name in (("train", "train"), ("validation", "val"), ("test", "test_2016_flickr"))}
    return TranslationDataModule(data_files=files, source_lang="de", target_lang="en", vocab_size=8000,
                                 max_tokens=budget, cache_dir=cache_dir, seed=seed)


def fit(module: TranslationModule, data: TranslationDataModule, device: torch.device, precision: str,
        warmup_steps: int, steps: int, log_dir: str) -> tuple[float, float, list[dict]]:
    """One fit: steady-state seconds and target tokens of the timed steps, and those steps' batches."""
    clock = StepClock()
    trainer = Trainer(
        accelerator=device.type, devices=1, precision=precision, max_steps=warmup_steps + steps,
        limit_val_batches=0, num_sanity_val_steps=0, gradient_clip_val=1.0, log_every_n_steps=50,
        logger=CSVLogger(log_dir), enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, use_distributed_sampler=False, callbacks=[clock],
    )
    trainer.fit(module, datamodule=data)
    first = warmup_steps - 1  # time from the end of the last warm-up step to the end of the last step
    return clock.ends[-1] - clock.ends[first], float(sum(clock.tokens[first + 1:])), clock.batches[first + 1:]


def bare_steps(module: TranslationModule, optimizer: torch.optim.Optimizer, batches: list[dict],
               device: torch.device, dtype: torch.dtype | None) -> float:
    """forward_loss + backward + Adam step on the given batches, in a plain loop; returns seconds."""
    module.train()
    common.synchronize(device)
    started = time.perf_counter()
    for batch in batches:
        with common.autocast(device, dtype):
            loss_sum, _, tokens = module.forward_loss(batch)
        (loss_sum / tokens.clamp(min=1)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    common.synchronize(device)
    return time.perf_counter() - started


def main() -> None:
    args = parse_args()
    device, dtype = common.resolve_device(args)
    size = args.size or ("tiny" if args.tiny else "small")
    repeats = args.repeats or (2 if args.tiny else 3)
    steps = args.steps or (3 if args.tiny else 5 if args.quick else 10)
    budget = args.max_tokens or (256 if args.tiny else 2048 if device.type == "cpu" else 16384)
    env = common.environment(device, dtype)
    print(f"{env['device']} | {env['dtype']} | torch {env['torch']} | transformers {env['transformers']}")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    data = multi30k_data(budget, args.cache_dir, args.seed)
    torch.manual_seed(args.seed)
    module = TranslationModule(model_config={**common.size_fields(size), "max_position_embeddings": 256},
                               tokenizer_fields=data.tokenizer_fields, compile=args.compile or None)
    precision, log_dir = "bf16-mixed" if dtype is not None else "32-true", tempfile.mkdtemp(prefix="lightning_loop_")
    optimizer = None
    fit_seconds, bare_seconds, tokens = [], [], 0.0
    for repeat in range(repeats):
        seconds, tokens, batches = fit(module, data, device, precision, args.warmup_steps, steps, log_dir)
        batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
        optimizer = optimizer or paper_adam(module.parameters(), lr=1e-5)
        bare_steps(module, optimizer, batches[:1], device, dtype)  # warm-up of the bare loop (optimizer state)
        fit_seconds.append(seconds)
        bare_seconds.append(bare_steps(module, optimizer, batches, device, dtype))
        print(f"repetition {repeat}: fit {tokens / seconds:.0f} tok/s, bare step {tokens / bare_seconds[-1]:.0f} "
              f"tok/s", flush=True)
    ratio = common.median_ratio(fit_seconds, bare_seconds)
    fit_rate = tokens / common.statistics.median(fit_seconds)
    bare_rate = tokens / common.statistics.median(bare_seconds)
    common.print_table(
        f"Lightning loop, {size} model, {budget}-token batches, {steps} timed steps ({env['dtype']}, {env['device']}; "
        f"median of {repeats})",
        ["loop", "target tok/s", "time / bare"],
        [["bare step", round(bare_rate), "1.000"], ["Trainer.fit", round(fit_rate), f"{ratio:.3f}"]],
    )
    print(f"Lightning overhead: {ratio - 1:+.1%} time per step (data loading, logging, checks, clipping, schedule)")
    payload = {"benchmark": "lightning_loop", "environment": env, "size": size, "max_tokens": budget,
               "timed_steps": steps, "compile": args.compile, "repeats": repeats,
               "fit_seconds": fit_seconds, "bare_seconds": bare_seconds, "target_tokens": tokens,
               "fit_tokens_per_s": fit_rate, "bare_tokens_per_s": bare_rate, "time_ratio_fit_over_bare": ratio}
    common.write_json("lightning_loop", args, payload)


if __name__ == "__main__":
    main()
