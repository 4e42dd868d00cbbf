"""Decoding benchmark: `generate()` of ours vs HF MarianMTModel holding the same weights, on batches of real sentences.

Beam 4 with length penalty 0.6 (§6.1) and greedy decoding, a batch of length-sorted sentences for throughput and
single sentences for latency. Reports generated tokens/s, milliseconds per sentence, the time ratio ours / Marian
(median of interleaved repetitions) and whether both models generated exactly the same tokens.

The weights are random (nothing is trained here): such a model never emits </s>, so every hypothesis runs to
`max_new_tokens`, set per batch to the source length (about a translation's length). This is the worst case for
throughput and the same work for both models.

    python -m benchmarks.decode                       # small and base, beam 4 and greedy
    python -m benchmarks.decode --sizes base --quick
    python -m benchmarks.decode --device cpu --tiny --dtype bf16    # every GPU code path, on CPU
"""

from __future__ import annotations

import argparse

import torch
from transformers import GenerationConfig

from benchmarks import common

STRATEGIES = {
    "beam4": dict(num_beams=4, length_penalty=0.6, early_stopping=True),
    "greedy": dict(num_beams=1),
}


def source_batches(args, device: torch.device, vocab_size: int, batch_size: int, count: int) -> list[dict]:
    """`count` batches of `batch_size` Multi30k test2016 German sentences (length-sorted, as evaluation batches
    are), spread over the length range; WMT-like synthetic lengths when the corpus is absent."""
    tokenizer = common.benchmark_tokenizer(min(vocab_size, 8000))
    if tokenizer is not None:
        pairs = common.multi30k_pairs(tokenizer, "test_2016_flickr", 1000, args.seed)
    else:
        print("Multi30k not found: WMT-like synthetic sources instead (set MULTI30K_DIR)")
        pairs = common.wmt_like_pairs(1000, vocab_size, args.seed)
    pairs.sort(key=lambda pair: len(pair[0]))
    groups = [pairs[i: i + batch_size] for i in range(0, len(pairs) - batch_size + 1, batch_size)]
    step = max(1, len(groups) // count)
    chosen = groups[step // 2:: step][:count]
    return [common.collate(group, device) for group in chosen]


def generation_config(model, strategy: str, max_new_tokens: int) -> GenerationConfig:
    c = model.config
    return GenerationConfig(
        do_sample=False, max_new_tokens=max_new_tokens, bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
        pad_token_id=c.pad_token_id, decoder_start_token_id=c.decoder_start_token_id, **STRATEGIES[strategy],
    )


def generated_tokens(output: torch.Tensor, eos: int, pad: int) -> int:
    """Tokens produced, the decoder start excluded, </s> included, padding after it excluded."""
    body = output[:, 1:]
    return int((body != pad).sum())


def parse_args() -> argparse.Namespace:
    parser = common.base_parser(__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=None, help="comma-separated: tiny, small, base, big (default small,base)")
    parser.add_argument("--strategies", default="beam4,greedy")
    parser.add_argument("--batch-size", type=int, default=None, help="sentences per batch (default 16 CPU, 64 GPU)")
    parser.add_argument("--batches", type=int, default=None, help="batches per repetition (default 2)")
    parser.add_argument("--latency-sentences", type=int, default=None, help="batch-size-1 runs (default 2)")
    parser.add_argument("--vocab-size", type=int, default=8000)
    return parser.parse_args()


def measure(models: dict, batches: list[dict], strategy: str, device: torch.device, dtype: torch.dtype | None,
            repeats: int) -> dict:
    """Both models decode the batches (the outputs kept and compared), then interleaved timed repetitions."""
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in models}

    def run(name: str, keep: bool = False) -> None:
        model = models[name]
        for batch in batches:
            config = generation_config(model, strategy, batch["input_ids"].shape[1])
            with torch.inference_mode(), common.autocast(device, dtype):
                out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                     generation_config=config)
            if keep:
                outputs[name].append(out)

    for name in models:  # warm-up, and the outputs compared below
        run(name, keep=True)
    times = common.interleaved({name: (lambda name=name: run(name)) for name in models}, repeats, device)
    sentences_same = sum(int((a == b).all(-1).sum()) if a.shape == b.shape else 0
                         for a, b in zip(outputs["ours"], outputs["marian"]))
    sentences = sum(b["input_ids"].shape[0] for b in batches)
    config = models["ours"].config
    tokens = {n: sum(generated_tokens(o, config.eos_token_id, config.pad_token_id) for o in outputs[n])
              for n in models}
    median = {n: common.statistics.median(t) for n, t in times.items()}
    ratio = common.median_ratio(times["ours"], times["marian"])
    return {"batch_size": batches[0]["input_ids"].shape[0], "batches": len(batches), "sentences": sentences,
            "generated_tokens": tokens, "seconds": times, "median_seconds": median,
            "time_ratio_ours_over_marian": ratio, "throughput_ratio_ours_over_marian": 1.0 / ratio,
            "tokens_per_s": {n: tokens[n] / median[n] for n in models},
            "ms_per_sentence": {n: 1000 * median[n] / sentences for n in models},
            "outputs_identical": sentences_same == sentences, "sentences_identical": sentences_same}


def main() -> None:
    args = parse_args()
    device, dtype = common.resolve_device(args)
    sizes = (args.sizes or ("tiny" if args.tiny else "small,base")).split(",")
    repeats = args.repeats or (2 if args.tiny else 3 if args.quick else 5)
    batch_size = args.batch_size or (4 if args.tiny else 16 if device.type == "cpu" else 64)
    n_batches = args.batches or (1 if args.tiny or args.quick else 2)
    n_latency = args.latency_sentences if args.latency_sentences is not None else (1 if args.tiny else 2)
    env = common.environment(device, dtype)
    print(f"{env['device']} | {env['dtype']} | torch {env['torch']} | transformers {env['transformers']}")
    throughput_batches = source_batches(args, device, args.vocab_size, batch_size, n_batches)
    latency_batches = source_batches(args, device, args.vocab_size, 1, n_latency) if n_latency else []
    rows, results = [], []
    for size in sizes:
        ours, marian = common.model_pair(size, args.vocab_size, device, seed=args.seed)
        models = {"ours": ours.eval(), "marian": marian.eval()}
        for strategy in args.strategies.split(","):
            for mode, batches in (("batch", throughput_batches), ("single", latency_batches)):
                if not batches:
                    continue
                entry = {"size": size, "strategy": strategy, "mode": mode,
                         **measure(models, batches, strategy, device, dtype, repeats)}
                results.append(entry)
                speedup, same = entry["throughput_ratio_ours_over_marian"], entry["sentences_identical"]
                rows.append([size, strategy, f"{mode} x{entry['batch_size']}", round(entry["tokens_per_s"]["ours"]),
                             round(entry["tokens_per_s"]["marian"]), f"{speedup:.2f}x",
                             f"{entry['ms_per_sentence']['ours']:.1f}", f"{entry['ms_per_sentence']['marian']:.1f}",
                             f"{same}/{entry['sentences']}"])
                print(f"{size} {strategy} {mode}: throughput ours/marian {speedup:.2f}x, identical outputs "
                      f"{same}/{entry['sentences']}", flush=True)
        del ours, marian, models
    common.print_table(
        f"generate() ({env['dtype']}, {env['device']}; median of {repeats} interleaved repetitions)",
        ["size", "strategy", "batch", "ours tok/s", "marian tok/s", "throughput ours/marian", "ms/sent ours",
         "ms/sent marian", "identical"], rows)
    payload = {"benchmark": "decode", "environment": env, "repeats": repeats, "results": results}
    common.write_json("decode", args, payload)


if __name__ == "__main__":
    main()
