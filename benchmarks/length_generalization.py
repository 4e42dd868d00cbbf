"""Length generalisation of a decoder-only Transformer: relative attention vs sinusoidal positions.

The Music Transformer (Huang et al. 2018) reports that relative self-attention lets a model continue sequences
longer than those it was trained on. This benchmark checks that claim at a CPU scale:

1. text: Multi30k English captions (train split for training; validation + test held out), one byte-level BPE
   vocabulary, every caption followed by `</s>`, all concatenated;
2. two `VaswaniForCausalLM` of the same size, the same initial seed and the same batches, trained on sequences of
   `L` tokens: one with `position_embedding_type="relative"` (`max_relative_position` <= L, no absolute
   positions), one with the paper's sinusoidal positions (§3.5);
3. evaluated on held-out sequences of `2 L` tokens: the mean next-token loss (nats) of the targets at positions
   0..L-1 (lengths seen in training) and at positions L..2L-1 (never seen).

The claim holds when the relative model's loss on L..2L stays within 10% of its loss on 0..L
(ratio = loss[L:2L] / loss[0:L] <= 1.10); the sinusoidal model is shown beside it: positions it never saw get
sinusoid values it was never trained on.

    python -m benchmarks.length_generalization            # L = 64, 600 steps per model: a few minutes on 2 cores
    python -m benchmarks.length_generalization --quick    # a smoke run: a small model, fewer steps

Prints a table and writes benchmarks/results/length_generalization.json (`--output` to change it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import transformers

from benchmarks.common import RESULTS_DIR, multi30k_lines
from hf_transformer import VaswaniConfig, VaswaniForCausalLM, train_tokenizer

TARGET_RATIO = 1.10  # the target: loss on L..2L within 10% of the loss on 0..L


def read_lines(name: str) -> list[str]:
    """The non-blank lines of a Multi30k file."""
    return [line for line in multi30k_lines(name) if line.strip()]


def token_stream(tokenizer, lines: list[str]) -> np.ndarray:
    """All lines tokenized (each ends with </s>) and concatenated: (N,) int64."""
    ids = tokenizer(lines, add_special_tokens=True, return_attention_mask=False)["input_ids"]
    return np.fromiter((token for row in ids for token in row), dtype=np.int64)


def chunks(stream: np.ndarray, length: int) -> torch.Tensor:
    """Consecutive non-overlapping windows of `length` tokens: (N // length, length)."""
    count = stream.size // length
    return torch.from_numpy(stream[: count * length].reshape(count, length))


def build_model(position_embedding_type: str, vocab_size: int, args: argparse.Namespace) -> VaswaniForCausalLM:
    torch.manual_seed(args.seed)  # the same initial weights for the shared parts of both models
    config = VaswaniConfig(
        is_encoder_decoder=False,
        vocab_size=vocab_size,
        d_model=args.d_model,
        decoder_layers=args.layers,
        decoder_attention_heads=args.heads,
        decoder_ffn_dim=4 * args.d_model,
        dropout=0.1,
        normalize_before=True,
        position_embedding_type=position_embedding_type,
        max_relative_position=args.max_relative_position,
        max_position_embeddings=4 * args.train_length,
    )
    return VaswaniForCausalLM(config)


def train(model: VaswaniForCausalLM, train_blocks: torch.Tensor, args: argparse.Namespace) -> dict:
    """Adam(0.9, 0.98, 1e-9), linear warmup then inverse-square-root decay (§5.3), batches drawn with a fixed seed
    (the same for both models). Returns the last losses and the throughput."""
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.98), eps=1e-9)
    warmup = max(1, args.steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, (warmup / (step + 1)) ** 0.5)
    )
    generator = torch.Generator().manual_seed(args.seed)
    model.train()
    losses = []
    started = time.perf_counter()
    for step in range(args.steps):
        rows = torch.randint(0, len(train_blocks), (args.batch_size,), generator=generator)
        batch = train_blocks[rows]  # (B, L)
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if args.verbose and (step + 1) % 100 == 0:
            print(f"  step {step + 1}: loss {np.mean(losses[-100:]):.3f}", flush=True)
    seconds = time.perf_counter() - started
    return {"final_train_loss": float(np.mean(losses[-50:])), "train_seconds": round(seconds, 1),
            "train_tokens_per_s": round(args.steps * args.batch_size * args.train_length / seconds, 1)}


@torch.no_grad()
def position_losses(model: VaswaniForCausalLM, blocks: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    """Mean next-token loss (nats) by target position 1..T-1 over the held-out blocks (T = 2 L): (T - 1,)."""
    model.eval()
    total = torch.zeros(blocks.shape[1] - 1, dtype=torch.float64)
    for start in range(0, len(blocks), batch_size):
        batch = blocks[start : start + batch_size]  # (b, T)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()  # (b, T - 1, V)
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")  # (b, T - 1)
        total += nll.sum(0).double()
    return (total / len(blocks)).numpy()


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    train_lines = read_lines("train.en.gz")
    held_out_lines = read_lines("val.en.gz") + read_lines("test_2016_flickr.en.gz")
    tokenizer = train_tokenizer(train_lines, vocab_size=args.vocab_size)
    length = args.train_length
    train_blocks = chunks(token_stream(tokenizer, train_lines), length)  # (N, L)
    eval_blocks = chunks(token_stream(tokenizer, held_out_lines), 2 * length)  # (M, 2 L)
    print(f"{len(tokenizer)}-token BPE; {len(train_blocks)} training sequences of L={length} tokens, "
          f"{len(eval_blocks)} held-out sequences of 2L={2 * length}; {args.steps} steps of {args.batch_size} "
          f"sequences per model", flush=True)

    results = []
    for kind in ("relative", "sinusoidal"):
        model = build_model(kind, len(tokenizer), args)
        print(f"training {kind} ({model.num_parameters():,} parameters) ...", flush=True)
        training = train(model, train_blocks, args)
        by_position = position_losses(model, eval_blocks)  # index i: the target at position i + 1
        seen = float(by_position[: length - 1].mean())  # targets at positions 1..L-1
        unseen = float(by_position[length - 1 :].mean())  # targets at positions L..2L-1
        results.append({
            "position_embedding_type": kind,
            "max_relative_position": args.max_relative_position if kind == "relative" else None,
            "parameters": model.num_parameters(),
            "loss_positions_0_to_L": round(seen, 4),
            "loss_positions_L_to_2L": round(unseen, 4),
            "ratio": round(unseen / seen, 4),
            "within_10_percent": bool(unseen <= TARGET_RATIO * seen),
            "loss_by_position_bucket": [round(float(chunk.mean()), 4)
                                        for chunk in np.array_split(by_position, 2 * length // 16)],
            **training,
        })
    return {
        "benchmark": "length_generalization",
        "claim": "relative attention: loss on positions L..2L within 10% of the loss on 0..L (Music Transformer)",
        "train_length": length,
        "eval_length": 2 * length,
        "corpus": "Multi30k English (train: train.en; held out: val.en + test_2016_flickr.en), captions + </s>, "
                  "concatenated",
        "vocab_size": len(tokenizer),
        "train_sequences": len(train_blocks),
        "eval_sequences": len(eval_blocks),
        "model": {"d_model": args.d_model, "layers": args.layers, "heads": args.heads, "ffn": 4 * args.d_model,
                  "dropout": 0.1, "normalize_before": True},
        "training": {"steps": args.steps, "batch_size": args.batch_size, "peak_lr": args.lr, "seed": args.seed},
        "results": results,
        "command": "python -m benchmarks.length_generalization" + (" --quick" if args.quick else ""),
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "transformers": transformers.__version__, "threads": torch.get_num_threads(),
                    "cpu_count": os.cpu_count()},
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def print_table(report: dict) -> None:
    length = report["train_length"]
    print(f"\nTrained on L={length} tokens, evaluated on 2L={2 * length} (mean next-token loss, nats)")
    header = f"{'positions':<26}{'loss 0..L':>11}{'loss L..2L':>12}{'ratio':>8}{'<= 1.10':>9}{'train tok/s':>13}"
    print(header)
    print("-" * len(header))
    for row in report["results"]:
        name = row["position_embedding_type"]
        if row["max_relative_position"] is not None:
            name += f" (max distance {row['max_relative_position']})"
        print(f"{name:<26}{row['loss_positions_0_to_L']:>11.3f}{row['loss_positions_L_to_2L']:>12.3f}"
              f"{row['ratio']:>8.3f}{'yes' if row['within_10_percent'] else 'no':>9}"
              f"{row['train_tokens_per_s']:>13.0f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-length", type=int, default=64, help="L: tokens per training sequence")
    parser.add_argument("--max-relative-position", type=int, default=32, help="clip distance of relative attention")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (after warmup)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run: d_model 64, 200 steps")
    parser.add_argument("--verbose", action="store_true", help="print the training loss every 100 steps")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "length_generalization.json")
    args = parser.parse_args(argv)
    if args.max_relative_position > args.train_length:
        parser.error("--max-relative-position must be <= --train-length (the claim is about distances seen)")
    if args.quick:
        args.d_model, args.steps = 64, 200
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    report = run(args)
    print_table(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"\nwrote {args.output}")
    return report


if __name__ == "__main__":
    main()
