"""The pixel table: the Image Transformer's decoder over pixel intensities at CPU scale, local 1D, local 2D and full
self-attention of the same size, and the memory of one attention layer as the pictures grow to 64 x 64.

1. trains `recipes/configs/pixels_shapes.yaml` three times through the project's CLI (16 x 16 RGB shapes pictures,
   768 sub-pixels each, a categorical over 256 intensities): as it is (attention_type "local_2d": query blocks of
   2 rows x 12 positions, memory 2 rows above and 12 positions on each side, 144 keys per block), with
   attention_type "local" (blocks of 48 positions, 96 positions of memory: 144 keys too) and "full"; the same seed,
   pictures, batches, optimiser and steps. Each variant runs in its own folder under runs/pixels_benchmark/;
2. scores each best checkpoint on the held-out pictures (scenes never seen in training): bits per dimension =
   NLL per sub-pixel / ln 2, beside the floor set by the generator's background noise (uniform over 30 intensities:
   log2(30) bits for every background sub-pixel, whatever the model);
3. measures the peak memory of one causal self-attention layer of the recipe's width (eager kernel, batch 1, the
   tensors allocated during the call) at 16 x 16, 32 x 32, 48 x 48 and 64 x 64 RGB pictures for the three kinds, the
   block shapes fixed: the local forms grow linearly with the number of pixels, full attention quadratically (its
   64 x 64 figure is analytic, 2 H L^2 float32 logits and weights, unless --measure-full-up-to 64);
4. samples 8 pictures from each model (temperature 1) and writes docs/pixels_samples.png: a row of held-out test
   pictures, then one row per model (local 1D, local 2D, full).

    python -m benchmarks.pixels --threads 1   # about 12 minutes a model on 2 busy cores; the table, JSON, docs/
    python -m benchmarks.pixels --quick --docs /tmp/x   # a smoke run: 20 steps per model, small memory table

Prints the tables and writes benchmarks/results/pixels.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from benchmarks.attention_variants import PeakMemory
from benchmarks.common import RESULTS_DIR
from benchmarks.recipe_runs import (
    REPO_ROOT,
    fit_and_evaluate,
    parse_arguments,
    run_record,
    shown,
    write_report,
)
from hf_transformer import VaswaniConfig
from hf_transformer.attention_vaswani import VaswaniAttention
from lightning_modules.data.pixels import FIRST_INTENSITY_ID, ids_to_image, write_image_grid

RECIPE = REPO_ROOT / "recipes" / "configs" / "pixels_shapes.yaml"
VARIANTS = {"local": "local 1D", "local_2d": "local 2D", "full": "full"}
BACKGROUND_LEVELS = 30  # shapes.render: background intensities uniform over 0..29, objects have a channel >= 200
PAPER_CIFAR10 = {"model": "paper: Image Transformer, CIFAR-10 test (Parmar et al. 2018)", "bits_per_dim": 2.90}


def recipe_model_config() -> dict:
    return yaml.safe_load(RECIPE.read_text())["model"]["init_args"]["model_config"]


def train_and_score(variant: str, args: argparse.Namespace) -> tuple[dict, object]:
    """Fit the recipe with `attention_type=variant` in its own folder, then validate and test its best checkpoint."""
    model_config = {**recipe_model_config(), "attention_type": variant}
    overrides = [f"--model.init_args.model_config={json.dumps(model_config)}"]
    if args.quick:
        overrides += ["--trainer.max_steps", "20", "--trainer.val_check_interval", "10"]
    cli, validation, test, seconds = fit_and_evaluate(RECIPE, overrides, args.workdir / variant)
    row = {
        "model": f"ours: {VARIANTS[variant]}",
        "attention_type": variant,
        "parameters": cli.model.model.num_parameters(),
        "validation_bits_per_dim": round(float(validation["val/loss"]) / math.log(2), 4),
        "test_bits_per_dim": round(float(test["test/loss"]) / math.log(2), 4),
        "test_sub_pixels": int(test["test/tokens"]),
        "steps": cli.trainer.global_step,
        "train_seconds": round(seconds, 1),
        "run": shown(args.workdir / variant),
    }
    return row, cli


def background_floor(datamodule) -> dict:
    """The bits/dim that the background noise of the test pictures costs any model: log2(30) per background
    sub-pixel (a pixel whose channels are all below 30), averaged over all sub-pixels."""
    examples, _ = datamodule.examples("test")
    pictures = np.stack([ids_to_image(examples[i]["input_ids"][1:], datamodule.image_size, 3)
                         for i in range(len(examples))])  # (N, H, W, 3)
    background = pictures.max(axis=-1) < BACKGROUND_LEVELS  # (N, H, W)
    fraction = float(background.mean())
    return {"background_fraction": round(fraction, 4),
            "bits_per_dim_floor": round(fraction * math.log2(BACKGROUND_LEVELS), 4)}


@torch.no_grad()
def sample_pictures(cli, count: int, seed: int) -> list[np.ndarray]:
    """`count` pictures sampled from the model at temperature 1 (special tokens suppressed), with the KV cache."""
    model, datamodule = cli.model.model.eval(), cli.datamodule
    torch.manual_seed(seed)
    start = torch.full((count, 1), datamodule.bos_token_id)
    output = model.generate(input_ids=start, do_sample=True, top_k=0, temperature=1.0,
                            max_length=1 + datamodule.sequence_length, suppress_tokens=list(range(FIRST_INTENSITY_ID)))
    return [ids_to_image(row[1:], datamodule.image_size, 3) for row in output]


def layer_memory(variant: str, image_size: int, measure: bool) -> dict:
    """Peak bytes of one causal self-attention layer (the recipe's width and block shapes, eager kernel, batch 1) on
    one image_size x image_size RGB picture after <s>; analytic for full attention when not `measure`d."""
    fields = recipe_model_config()
    length = image_size * image_size * 3 + 1
    heads = fields["decoder_attention_heads"]
    if not measure:
        return {"attention_type": variant, "image_size": image_size, "length": length,
                "peak_bytes": 2 * heads * length * length * 4, "analytic": True}
    config = VaswaniConfig(is_encoder_decoder=False, vocab_size=300, d_model=fields["d_model"],
                           decoder_layers=1, decoder_attention_heads=heads, attention_type=variant,
                           local_grid_width=image_size * 3, local_block_rows=fields["local_block_rows"],
                           local_block_columns=fields["local_block_columns"],
                           local_memory_rows=fields["local_memory_rows"],
                           local_memory_columns=fields["local_memory_columns"],
                           local_block_length=fields["local_block_length"],
                           local_memory_length=fields["local_memory_length"],
                           max_position_embeddings=length, attn_implementation="eager")
    layer = VaswaniAttention(config, heads, layer_idx=0, is_causal=True).eval()
    hidden = torch.randn(1, length, fields["d_model"])
    with torch.no_grad():
        layer(hidden)  # warm-up
        started = time.perf_counter()
        with PeakMemory() as memory:
            layer(hidden)
        seconds = time.perf_counter() - started
    return {"attention_type": variant, "image_size": image_size, "length": length, "peak_bytes": memory.peak,
            "seconds": round(seconds, 4), "analytic": False}


def memory_rows(args: argparse.Namespace) -> list[dict]:
    sizes = (16, 32) if args.quick else (16, 32, 48, 64)
    return [layer_memory(variant, size, variant != "full" or size <= args.measure_full_up_to)
            for variant in VARIANTS for size in sizes]


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    started = time.perf_counter()
    rows, clis = [], {}
    for variant in VARIANTS:
        print(f"training {RECIPE.name} with attention_type={variant} ...", flush=True)
        row, clis[variant] = train_and_score(variant, args)
        rows.append(row)
        print(f"  test {row['test_bits_per_dim']:.3f} bits/dim ({row['train_seconds']:.0f} s)", flush=True)
    table_seconds = time.perf_counter() - started
    floor = background_floor(clis["local_2d"].datamodule)
    examples, _ = clis["local_2d"].datamodule.examples("test")
    side = clis["local_2d"].datamodule.image_size
    grid = [ids_to_image(examples[i]["input_ids"][1:], side, 3) for i in range(args.samples)]
    for number, variant in enumerate(VARIANTS):
        grid += sample_pictures(clis[variant], args.samples, args.seed + number)
    samples = write_image_grid(grid, args.docs / "pixels_samples.png", columns=args.samples)
    memory = memory_rows(args)
    return {
        "benchmark": "pixels",
        "results": rows,
        "floor": floor,
        "paper": PAPER_CIFAR10,
        "memory": memory,
        "samples": {"png": shown(samples), "rows": ["held-out test pictures", *(VARIANTS[v] for v in VARIANTS)]},
        "wall_seconds_table": round(table_seconds, 1),
        **run_record(" ".join(["python -m benchmarks.pixels", *args.arguments]), started, load_before),
    }


def print_tables(report: dict) -> None:
    print("\nShapes pictures 16 x 16 RGB: bits per dimension on held-out pictures (unseen scenes)")
    header = f"{'model':<44}{'validation':>12}{'test':>8}{'params':>10}{'steps':>7}{'train s':>9}"
    print(header)
    print("-" * len(header))
    for row in report["results"]:
        print(f"{row['model']:<44}{row['validation_bits_per_dim']:>12.3f}{row['test_bits_per_dim']:>8.3f}"
              f"{row['parameters']:>10,}{row['steps']:>7}{row['train_seconds']:>9.0f}")
    floor = report["floor"]
    print(f"{'floor of the background noise alone':<44}{'':>12}{floor['bits_per_dim_floor']:>8.3f}   "
          f"({floor['background_fraction']:.0%} of the sub-pixels x log2(30))")
    print(f"{report['paper']['model']:<44}{'':>12}{report['paper']['bits_per_dim']:>8.2f}   (another data set)")
    print("\nOne causal self-attention layer, eager kernel, batch 1: peak MiB (x growth from the previous size)")
    sizes = sorted({row["image_size"] for row in report["memory"]})
    print(f"{'attention':<12}" + "".join(f"{f'{s}x{s} (L={s * s * 3 + 1})':>22}" for s in sizes))
    for variant, name in VARIANTS.items():
        cells, previous = [], None
        for row in (r for r in report["memory"] if r["attention_type"] == variant):
            mib = row["peak_bytes"] / 2**20
            growth = f" x{mib / previous:.1f}" if previous else ""
            cells.append(f"{mib:.1f}{'*' if row['analytic'] else ''}{growth}")
            previous = mib
        print(f"{name:<12}" + "".join(f"{cell:>22}" for cell in cells))
    print("(* analytic: 2 H L^2 float32 logits and weights; pixels grow x4, x2.25, x1.8 from size to size)")
    print(f"wall time {report['wall_seconds_table'] / 60:.1f} min for the table, load average before/after "
          f"{report['load_average_before'][0]:.2f} / {report['load_average_after'][0]:.2f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 steps per model, sizes 16 and 32 only")
    parser.add_argument("--samples", type=int, default=8, help="pictures per row of the sample grid")
    parser.add_argument("--measure-full-up-to", type=int, default=48,
                        help="largest picture side at which full attention's memory is measured, not computed")
    return parse_arguments(parser, argv, Path("runs") / "pixels_benchmark", RESULTS_DIR / "pixels.json",
                           "the sample grid")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    report = run(args)
    print_tables(report)
    write_report(report, args.output)
    return report


if __name__ == "__main__":
    main()
