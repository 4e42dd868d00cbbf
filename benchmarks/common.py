"""What the benchmarks share: model sizes, the Marian twin, realistic batches, timing, FLOPs, device peaks, output.

Every benchmark runs ours (`VaswaniForConditionalGeneration`) and an HF `MarianMTModel` of the identical
configuration with our weights copied into it, in one process, on the same batches, interleaving the two models'
repetitions, and reports medians and the median of the per-repetition ratios (ours / Marian), so that a busy
machine slows both sides alike.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import MarianConfig, MarianMTModel, PreTrainedTokenizerFast

from hf_transformer import VaswaniConfig, VaswaniForConditionalGeneration, train_tokenizer
from hf_transformer.modeling_vaswani import sinusoidal_table
from hf_transformer.tokenization_vaswani import iter_parallel_texts
from lightning_modules.data.sampler import TokenBudgetBatchSampler

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MULTI30K_DIR = Path(os.environ.get("MULTI30K_DIR", Path(__file__).resolve().parents[2] / "shared/data/multi30k"))

# Sizes: "tiny" is the smoke-test mode (--tiny), "small" the Multi30k recipe, "base" and "big" Table 3 of the paper.
SIZES = {
    "tiny": dict(d_model=32, layers=2, heads=4, ffn=64),
    "small": dict(d_model=256, layers=3, heads=8, ffn=512),
    "base": dict(d_model=512, layers=6, heads=8, ffn=2048),
    "big": dict(d_model=1024, layers=6, heads=16, ffn=4096),
}
DROPOUT = {"tiny": 0.1, "small": 0.1, "base": 0.1, "big": 0.3}  # Table 3 P_drop (the recipes' 0.1 for small)


# ----------------------------------------------------------------------------------------------------------------
# Command line and device
# ----------------------------------------------------------------------------------------------------------------


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", choices=["float32", "bf16"], default=None,
                        help="float32, or bf16 autocast (default: bf16 on CUDA, float32 on CPU)")
    parser.add_argument("--tiny", action="store_true",
                        help="smoke-test mode: tiny models and a few small batches (every code path, seconds)")
    parser.add_argument("--quick", action="store_true", help="fewer batches and repetitions (noisier)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions per model (default: 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--output", default=None, help="JSON file to write (default: benchmarks/results/<name>.json)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def resolve_device(args: argparse.Namespace) -> tuple[torch.device, torch.dtype | None]:
    """The device and the autocast dtype (None: plain float32)."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was given but torch.cuda.is_available() is False: use --device cpu.")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = args.dtype or ("bf16" if device.type == "cuda" else "float32")
    return device, (torch.bfloat16 if dtype == "bf16" else None)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """bf16 autocast (the Lightning `bf16-mixed` precision) or nothing."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Wall time of a block: CUDA events on a GPU (no host sync inside the block), perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = 0.0

    def __enter__(self) -> "Stopwatch":
        if self.device.type == "cuda":
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.end.record()
            self.end.synchronize()
            self.seconds = self.start.elapsed_time(self.end) / 1000.0
        else:
            self.seconds = time.perf_counter() - self.started


def environment(device: torch.device, dtype: torch.dtype | None) -> dict:
    """Device, versions and date written next to every result."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = f"{line.split(':', 1)[1].strip()}, {torch.get_num_threads()} torch threads"
                    break
        except OSError:
            pass
    return {
        "device": name,
        "device_type": device.type,
        "dtype": "bf16 autocast" if dtype is not None else "float32",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


# ----------------------------------------------------------------------------------------------------------------
# The two models
# ----------------------------------------------------------------------------------------------------------------


def size_fields(size: str) -> dict[str, int | float]:
    """The `VaswaniConfig` fields of a benchmark size (a task module's `model_config`)."""
    s = SIZES[size]
    return dict(d_model=s["d_model"], encoder_layers=s["layers"], decoder_layers=s["layers"],
                encoder_attention_heads=s["heads"], decoder_attention_heads=s["heads"], encoder_ffn_dim=s["ffn"],
                decoder_ffn_dim=s["ffn"], dropout=DROPOUT[size])


def vaswani_config(size: str, vocab_size: int, max_positions: int = 512,
                   tie_word_embeddings: bool = True) -> VaswaniConfig:
    return VaswaniConfig(vocab_size=vocab_size, max_position_embeddings=max_positions,
                         tie_word_embeddings=tie_word_embeddings, **size_fields(size))


def marian_twin(model: VaswaniForConditionalGeneration) -> MarianMTModel:
    """An HF MarianMTModel of the identical configuration holding our weights: the mapping of the Marian parity test
    (tests/test_modeling.py). Same parameter names; our interleaved sinusoid table replaces Marian's sin | cos one."""
    c = model.config
    marian = MarianMTModel(MarianConfig(
        vocab_size=c.vocab_size, d_model=c.d_model, encoder_layers=c.encoder_layers, decoder_layers=c.decoder_layers,
        encoder_attention_heads=c.encoder_attention_heads, decoder_attention_heads=c.decoder_attention_heads,
        encoder_ffn_dim=c.encoder_ffn_dim, decoder_ffn_dim=c.decoder_ffn_dim, activation_function="relu",
        max_position_embeddings=c.max_position_embeddings, scale_embedding=True, dropout=c.dropout,
        attention_dropout=c.attention_dropout, activation_dropout=c.activation_dropout,
        pad_token_id=c.pad_token_id, eos_token_id=c.eos_token_id, decoder_start_token_id=c.decoder_start_token_id,
        forced_eos_token_id=None, share_encoder_decoder_embeddings=True, tie_word_embeddings=True,
    ))
    marian.set_attn_implementation(model.config._attn_implementation)
    marian.to(device=next(model.parameters()).device)
    missing, unexpected = marian.load_state_dict(model.state_dict(), strict=False)
    if unexpected or not set(missing) <= {"final_logits_bias", "model.encoder.embed_positions.weight",
                                          "model.decoder.embed_positions.weight"}:
        raise RuntimeError(f"weights do not map onto Marian: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        table = sinusoidal_table(c.max_position_embeddings, c.d_model)
        marian.model.encoder.embed_positions.weight.copy_(table)
        marian.model.decoder.embed_positions.weight.copy_(table)
        marian.final_logits_bias.zero_()
    return marian.train(model.training)


def model_pair(size: str, vocab_size: int, device: torch.device, seed: int = 0, max_positions: int = 512,
               attn_implementation: str = "sdpa") -> tuple[VaswaniForConditionalGeneration, MarianMTModel]:
    """Ours and its Marian twin holding the same weights, both on the attention backend named."""
    torch.manual_seed(seed)
    ours = VaswaniForConditionalGeneration(vaswani_config(size, vocab_size, max_positions))
    ours.set_attn_implementation(attn_implementation)
    ours.to(device)
    return ours, marian_twin(ours)


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------------
# Data: real Multi30k sentences, and WMT-like synthetic lengths
# ----------------------------------------------------------------------------------------------------------------


def multi30k_lines(name: str, limit: int | None = None) -> list[str]:
    """The first `limit` lines of a Multi30k file, e.g. "train.de.gz" (without their line ends); FileNotFoundError
    naming the folder when the corpus is not there."""
    path = MULTI30K_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"the Multi30k corpus is not in {MULTI30K_DIR} (missing: {path}); set MULTI30K_DIR to "
                                "the folder holding train.de.gz")
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in itertools.islice(handle, limit)]


def read_multi30k(split: str, language: str, limit: int | None = None) -> list[str] | None:
    path = MULTI30K_DIR / f"{split}.{language}.gz"
    if not path.exists():
        return None
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        lines = [line.strip() for line in handle]
    return lines[:limit] if limit else lines


def benchmark_tokenizer(vocab_size: int = 8000) -> PreTrainedTokenizerFast | None:
    """Our joint BPE trained on Multi30k train de+en (about 2 s), or None when the corpus is not there."""
    de, en = read_multi30k("train", "de"), read_multi30k("train", "en")
    if de is None or en is None:
        return None
    return train_tokenizer(iter_parallel_texts(zip(de, en)), vocab_size=vocab_size)


def multi30k_pairs(tokenizer: PreTrainedTokenizerFast, split: str, count: int,
                   seed: int) -> list[tuple[list[int], list[int]]]:
    """`count` random de -> en pairs of a Multi30k split as token ids, each ending with </s> (the tokenizer adds it)."""
    de, en = read_multi30k(split, "de"), read_multi30k(split, "en")
    order = np.random.default_rng(seed).permutation(len(de))[:count]
    sources = tokenizer([de[i] for i in order])["input_ids"]
    targets = tokenizer([en[i] for i in order])["input_ids"]
    return list(zip(sources, targets))


def wmt_like_pairs(count: int, vocab_size: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """Synthetic pairs with WMT-like lengths (BPE tokens, </s> included): source lengths log-normal with median 25 and
    sigma 0.6, clipped to [3, 200] (a long tail of 100+ token sentences, mean about 30), target = source times a
    log-normal ratio (sigma 0.15). Token ids are random (>= 4: no special tokens inside)."""
    rng = np.random.default_rng(seed)
    source_lengths = np.clip(np.round(rng.lognormal(math.log(25), 0.6, count)), 3, 200).astype(int)
    target_lengths = np.clip(np.round(source_lengths * rng.lognormal(0.0, 0.15, count)), 3, 200).astype(int)
    pairs = []
    for s, t in zip(source_lengths, target_lengths):
        source, target = rng.integers(4, vocab_size, s - 1).tolist(), rng.integers(4, vocab_size, t - 1).tolist()
        pairs.append((source + [2], target + [2]))
    return pairs


def collate(pairs: list[tuple[list[int], list[int]]], device: torch.device, pad: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / attention_mask, labels with -100 on padding, decoder_input_ids shifted right."""
    source_length = max(len(s) for s, _ in pairs)
    target_length = max(len(t) for _, t in pairs)
    input_ids = torch.full((len(pairs), source_length), pad, dtype=torch.long)
    labels = torch.full((len(pairs), target_length), -100, dtype=torch.long)
    for row, (s, t) in enumerate(pairs):
        input_ids[row, : len(s)] = torch.tensor(s)
        labels[row, : len(t)] = torch.tensor(t)
    decoder_input_ids = torch.cat([torch.ones(len(pairs), 1, dtype=torch.long), labels[:, :-1]], 1)
    decoder_input_ids = decoder_input_ids.masked_fill(decoder_input_ids == -100, pad)
    batch = {"input_ids": input_ids, "attention_mask": (input_ids != pad).long(), "labels": labels,
             "decoder_input_ids": decoder_input_ids}
    return {k: v.to(device) for k, v in batch.items()}


def token_budget_batches(pairs: list[tuple[list[int], list[int]]], max_tokens: int, count: int, seed: int,
                         device: torch.device) -> list[dict[str, torch.Tensor]]:
    """`count` length-bucketed batches of at most `max_tokens` padded tokens per side, cut by the project's own
    `TokenBudgetBatchSampler` (as in training), drawn at random from all the batches of `pairs`."""
    sampler = TokenBudgetBatchSampler([(len(s), len(t)) for s, t in pairs], max_tokens=max_tokens, seed=seed)
    batches = list(sampler)
    picked = np.random.default_rng(seed).choice(len(batches), size=min(count, len(batches)), replace=False)
    return [collate([pairs[i] for i in batches[b]], device) for b in sorted(picked)]


def batch_stats(batches: list[dict[str, torch.Tensor]]) -> dict:
    source = sum(int(b["attention_mask"].sum()) for b in batches)
    target = sum(int((b["labels"] != -100).sum()) for b in batches)
    slots = sum(b["input_ids"].numel() + b["labels"].numel() for b in batches)
    return {"batches": len(batches), "source_tokens": source, "target_tokens": target,
            "sentences": sum(b["input_ids"].shape[0] for b in batches),
            "padding": round(1 - (source + target) / slots, 4),
            "mean_source_length": round(source / sum(b["input_ids"].shape[0] for b in batches), 1)}


# ----------------------------------------------------------------------------------------------------------------
# FLOPs and peaks
# ----------------------------------------------------------------------------------------------------------------


def forward_flops(config: VaswaniConfig, batch: dict[str, torch.Tensor]) -> float:
    """Model FLOPs of one forward pass over the batch's real tokens (2 per multiply-add; padding excluded).

    Per source token and encoder layer: projections 4 D^2 and FFN 2 D F multiply-adds, attention 2 S D (scores and
    weighted sum over the S keys of its sentence). Per target token and decoder layer: self-attention 4 D^2 + 2 T D
    (full T x T, the usual convention), cross-attention 2 D^2 for Q and O + 2 S D, FFN 2 D F; the cross-attention
    K and V cost 2 D^2 per source token and layer; the output projection D V per target token.
    """
    d, f, v = config.d_model, config.encoder_ffn_dim, config.vocab_size
    source = batch["attention_mask"].sum(1).double()  # (B,)
    target = (batch["labels"] != -100).sum(1).double()  # (B,)
    encoder = config.encoder_layers * (source * (4 * d * d + 2 * d * f) + 2 * source * source * d)
    decoder = config.decoder_layers * (
        target * (4 * d * d + 2 * d * d + 2 * d * config.decoder_ffn_dim) + 2 * target * target * d
        + 2 * target * source * d + source * 2 * d * d
    )
    head = target * d * v
    return float(2 * (encoder + decoder + head).sum())


def training_flops(config: VaswaniConfig, batch: dict[str, torch.Tensor]) -> float:
    """Forward + backward: three times the forward (the backward computes gradients for inputs and weights)."""
    return 3.0 * forward_flops(config, batch)


def matmul_peak(device: torch.device, dtype: torch.dtype, quick: bool = False) -> float:
    """Measured dense matmul peak in FLOP/s: the best of several square matmuls (bf16 on a GPU, float32 on CPU);
    `quick` (the tiny mode) uses a small CPU matmul, which underestimates the peak."""
    n = 8192 if device.type == "cuda" else (512 if quick else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    repeats = 20 if device.type == "cuda" else 5
    for _ in range(2):
        a @ b
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        with Stopwatch(device) as watch:
            a @ b
        best = min(best, watch.seconds)
    return 2 * n**3 / best


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict]:
    """Peak bytes allocated above what was live when the block started: the CUDA allocator's counter on a GPU; on
    CPU (no allocator statistics) the profiler's per-operator memory records, accumulated in time order (it misses
    peaks inside a single operator). Fills result["bytes"]."""
    result: dict = {}
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        yield result
        synchronize(device)
        result["bytes"] = torch.cuda.max_memory_allocated(device) - before
        return
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        yield result
    events = sorted((e for e in prof.events() if e.cpu_parent is None), key=lambda e: e.time_range.start)
    live = peak = 0
    for event in events:
        live += event.cpu_memory_usage
        peak = max(peak, live)
    result["bytes"] = peak


# ----------------------------------------------------------------------------------------------------------------
# Interleaved timing and output
# ----------------------------------------------------------------------------------------------------------------


def interleaved(runs: dict[str, Callable[[], None]], repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per repetition of each callable, alternating the order every repetition (A B, B A, ...)."""
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            synchronize(device)
            with Stopwatch(device) as watch:
                runs[name]()
            times[name].append(watch.seconds)
    return times


def median_ratio(numerator: list[float], denominator: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    cells = [[str(c) for c in header]] + [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for index, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
        if index == 0:
            print("  ".join("-" * w for w in widths))


def write_json(name: str, args: argparse.Namespace, payload: dict) -> Path:
    path = Path(args.output) if args.output else RESULTS_DIR / f"{name}{'_tiny' if args.tiny else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {path}")
    return path
