"""Training step benchmark: ours vs HF MarianMTModel of the identical configuration, same batches, same process.

One training step = forward + label-smoothed loss (§5.4) + backward + Adam step (§5.3; the project's fused Adam).
Reported per model size and data kind: target tokens/s, the time ratio ours / Marian (median over interleaved
repetitions), peak memory of one step and MFU (model FLOPs/s over the matmul peak this script measures: bf16 on a
GPU, float32 on CPU).

    python -m benchmarks.train_step                     # small, base, big on Multi30k and WMT-like batches
    python -m benchmarks.train_step --sizes base --quick
    python -m benchmarks.train_step --device cpu --tiny --dtype bf16 --compile   # every GPU code path, on CPU
    python -m benchmarks.train_step --profile --sizes base   # torch.profiler tables of one step of each model
    python -m benchmarks.train_step --device cpu --sizes small --data multi30k --max-tokens 4096 --dtype bf16 \\
        --attn-implementation eager   # the tried bf16 step of the CPU Multi30k model (RESULTS.md)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks import common
from lightning_modules.schedules import paper_adam
from lightning_modules.tasks.metrics import label_smoothed_loss

# Token budget per batch (per side). CPU budgets keep the default run within a few minutes on 2 cores.
MAX_TOKENS = {
    "cpu": {"tiny": 256, "small": 1024, "base": 512, "big": 256},
    "cuda": {"tiny": 1024, "small": 16384, "base": 16384, "big": 16384},
}


def make_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
              dtype: torch.dtype | None, forward: torch.nn.Module | None = None):
    """forward (under autocast) + loss + backward + optimizer step, for one batch."""
    forward = model if forward is None else forward

    def step(batch: dict[str, torch.Tensor]) -> None:
        with common.autocast(device, dtype):
            logits = forward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             decoder_input_ids=batch["decoder_input_ids"], use_cache=False).logits
        loss_sum, _, tokens = label_smoothed_loss(logits, batch["labels"], 0.1)
        (loss_sum / tokens).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def make_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """The project's optimiser for both models: the paper's Adam (§5.3), fused kernel (paper_adam's default)."""
    return paper_adam(model.parameters(), lr=1e-4)


def data_sets(args, device: torch.device, vocab_size: int, tokenizer) -> dict[str, list]:
    """name -> list of (pairs) pools; batches are cut per size (each size has its own token budget)."""
    pools = {}
    count = 600 if args.tiny else 6000
    if "multi30k" in args.data:
        if tokenizer is None:
            print("Multi30k not found: skipping the multi30k data set (set MULTI30K_DIR)")
        else:
            pools["multi30k"] = common.multi30k_pairs(tokenizer, "train", count, args.seed)
    if "wmt" in args.data:
        pools["wmt-like"] = common.wmt_like_pairs(count, vocab_size, args.seed)
    return pools


def profile_step(name: str, step, batch) -> None:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        step(batch)
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    print(f"\n===== {name}: one training step =====")
    print(prof.key_averages().table(sort_by=sort, row_limit=25))


def parse_args() -> argparse.Namespace:
    parser = common.base_parser(__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=None, help="comma-separated: tiny, small, base, big")
    parser.add_argument("--data", default="multi30k,wmt", help="comma-separated: multi30k, wmt")
    parser.add_argument("--batches", type=int, default=None, help="batches per repetition (default 2 CPU, 4 GPU)")
    parser.add_argument("--max-tokens", type=int, default=None, help="token budget per batch (default: per size)")
    parser.add_argument("--vocab-size", type=int, default=8000, help="shared vocabulary (Multi30k BPE: 8000)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models' forward")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory step")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler tables and exit")
    parser.add_argument("--attn-implementation", choices=["sdpa", "eager"], default="sdpa",
                        help="attention backend of both models (on a CPU, bf16 autocast is fast only with eager)")
    return parser.parse_args()


def measure(steps: dict, batches: list[dict], config, device: torch.device, repeats: int, peak: float,
            with_memory: bool) -> dict:
    """Warm-up, then interleaved timed repetitions of both models' steps, MFU and peak memory: the result entry."""
    stats = common.batch_stats(batches)
    for step in steps.values():  # warm-up: allocator, Adam state, compilation
        for batch in batches:
            step(batch)
    runs = {name: (lambda step=step: [step(b) for b in batches]) for name, step in steps.items()}
    times = common.interleaved(runs, repeats, device)
    flops = sum(common.training_flops(config, b) for b in batches)
    memory = {}
    if with_memory:
        largest = max(batches, key=lambda b: b["input_ids"].numel() + b["labels"].numel())
        for name, step in steps.items():
            with common.peak_memory(device) as measured:
                step(largest)
            memory[name] = measured["bytes"]
    median = {name: common.statistics.median(t) for name, t in times.items()}
    return {**stats, "seconds": times, "median_seconds": median,
            "time_ratio_ours_over_marian": common.median_ratio(times["ours"], times["marian"]),
            "target_tokens_per_s": {n: stats["target_tokens"] / s for n, s in median.items()},
            "mfu": {n: flops / s / peak for n, s in median.items()}, "peak_memory_bytes": memory}


def table_row(entry: dict) -> list:
    memory, ratio = entry["peak_memory_bytes"], entry["time_ratio_ours_over_marian"]
    return [entry["size"], entry["data"], f"{entry['batches']}x{entry['max_tokens']}", f"{entry['padding']:.1%}",
            round(entry["target_tokens_per_s"]["ours"]), round(entry["target_tokens_per_s"]["marian"]),
            f"{ratio:.3f}", f"{entry['mfu']['ours']:.1%}", f"{entry['mfu']['marian']:.1%}",
            *(f"{memory[n] / 2**20:.0f}" if n in memory else "-" for n in ("ours", "marian"))]


def main() -> None:
    args = parse_args()
    device, dtype = common.resolve_device(args)
    sizes = (args.sizes or ("tiny" if args.tiny else "small,base,big")).split(",")
    repeats = args.repeats or (2 if args.tiny else 3 if args.quick else 5)
    n_batches = args.batches or (2 if args.tiny or args.quick or device.type == "cpu" else 4)
    env = common.environment(device, dtype)
    print(f"{env['device']} | {env['dtype']} | torch {env['torch']} | transformers {env['transformers']}")
    peak_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = common.matmul_peak(device, peak_dtype, quick=args.tiny)
    peak_label = f"{'bf16' if device.type == 'cuda' else 'float32'} matmul peak"
    print(f"measured {peak_label}: {peak / 1e12:.2f} TFLOP/s")
    tokenizer = common.benchmark_tokenizer(min(args.vocab_size, 8000)) if "multi30k" in args.data else None
    pools = data_sets(args, device, args.vocab_size, tokenizer)
    results = []
    for size in sizes:
        ours, marian = common.model_pair(size, args.vocab_size, device, seed=args.seed,
                                         attn_implementation=args.attn_implementation)
        ours.train()
        marian.train()
        forward = {"ours": ours, "marian": marian}
        if args.compile:
            forward = {name: torch.compile(model) for name, model in forward.items()}
        steps = {name: make_step(model, make_optimizer(model), device, dtype, forward[name])
                 for name, model in (("ours", ours), ("marian", marian))}
        for data_name, pairs in pools.items():
            budget = args.max_tokens or MAX_TOKENS[device.type][size]
            batches = common.token_budget_batches(pairs, budget, n_batches, args.seed, device)
            if args.profile:
                for name, step in steps.items():
                    step(batches[0])
                    profile_step(f"{name} {size} {data_name}", step, batches[0])
                continue
            entry = {"size": size, "data": data_name, "max_tokens": budget, "parameters": common.parameter_count(ours),
                     **measure(steps, batches, ours.config, device, repeats, peak, not args.no_memory)}
            results.append(entry)
            times = entry["seconds"]
            print(f"{size} {data_name}: time ours/marian {entry['time_ratio_ours_over_marian']:.3f} (per repetition: "
                  f"{[round(a / b, 3) for a, b in zip(times['ours'], times['marian'])]})", flush=True)
        del ours, marian, steps, forward
    if args.profile:
        return
    peak = max(peak, common.matmul_peak(device, peak_dtype, quick=args.tiny))  # a busy moment at start
    common.print_table(
        f"Training step ({env['dtype']}, {args.attn_implementation} attention, {env['device']}; MFU over the measured "
        f"{peak_label}, {peak / 1e12:.2f} TFLOP/s; median of {repeats} interleaved repetitions)",
        ["size", "data", "batches", "padding", "ours tok/s", "marian tok/s", "time ours/marian", "MFU ours",
         "MFU marian", "peak MiB ours", "peak MiB marian"], [table_row(entry) for entry in results])
    payload = {"benchmark": "train_step", "environment": env, "compile": args.compile,
               "attn_implementation": args.attn_implementation,
               "matmul_peak_flops": peak, "matmul_peak_kind": peak_label, "repeats": repeats, "results": results}
    path = common.write_json("train_step", args, payload)
    plot(results, path.with_suffix(".png"), env)


def plot(results: list[dict], path: Path, env: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    labels = [f"{r['size']}\n{r['data']}" for r in results]
    x = range(len(results))
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(results)), 3.5))
    ax.bar([i - 0.2 for i in x], [r["target_tokens_per_s"]["ours"] for r in results], 0.4, label="ours")
    ax.bar([i + 0.2 for i in x], [r["target_tokens_per_s"]["marian"] for r in results], 0.4, label="Marian")
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("target tokens / s")
    ax.set_title(f"Training step, {env['dtype']}, {env['device'][:40]}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
