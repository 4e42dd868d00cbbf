"""Decoding benchmark: our generate() and CTranslate2 against HF MarianMTModel holding the same weights, in one run.

Engines, each decoding the same batches, their repetitions interleaved (so that a busy machine slows all alike):
- `marian`: `MarianMTModel.generate()` with our weights (the reference: every ratio is its time / the engine's);
- `ours (library loop)`: our model through the library's decoding loop (`generate(decoding_loop="library")`);
- `ours`: our `generate()` as it decodes by default (the lean loop of hf_transformer/generation_vaswani.py);
- `ours int8`: the same on a copy with int8 linear layers (hf_transformer/quantization.py; CPU only);
- `ct2` / `ct2 int8`: the model converted by hf_transformer/ctranslate2.py, CTranslate2 float32 and int8 on CPU
  (on a GPU, or with --dtype bf16: bfloat16 or float16 and int8_bfloat16 / int8_float16).
Beam 4 with length penalty 0.6 (§6.1) and greedy decoding; batches of length-sorted sentences for throughput and
single sentences for latency. Reports generated tokens/s of Marian, the throughput of every engine relative to
Marian (median of the per-repetition ratios), and how many sentences the float32 engines decode exactly as Marian.

Speed uses random weights of our small and base sizes: such a model never emits </s>, so every hypothesis runs to
`max_new_tokens` (set per batch to the source length, about a translation's length): the same work for every engine.
Quality (BLEU) needs a trained model: --bleu-model PATH (a de->en folder saved with save_pretrained and its
tokenizer) translates Multi30k test2016 with every engine through translate() (§6.1: beam 4, alpha 0.6, input length
+ 50), each engine twice, interleaved (in one order, then in the opposite). Without it the same pass runs on a
random-weight small model and says so (its BLEU means nothing; its `identical` column still checks exactness on real
sentences).

    python -m benchmarks.decode --threads 1 --bleu-model runs/multi30k/hf_model
    python -m benchmarks.decode --sizes base --quick
    python -m benchmarks.decode --device cpu --tiny --dtype bf16    # every GPU code path, on CPU
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig, PreTrainedTokenizerFast

from benchmarks import common
from hf_transformer import VaswaniForConditionalGeneration, train_tokenizer, translate
from hf_transformer.ctranslate2 import int8_saturates
from hf_transformer.quantization import quantize_int8

STRATEGIES = {
    "beam4": dict(num_beams=4, length_penalty=0.6, early_stopping=True),
    "greedy": dict(num_beams=1, length_penalty=1.0, early_stopping=False),  # as translate() asks for greedy
}
FLOAT_ENGINES = ("ours (library loop)", "ours", "ct2")  # the engines whose outputs must be Marian's


def parse_args() -> argparse.Namespace:
    parser = common.base_parser(__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=None, help="comma-separated: tiny, small, base, big (default small,base)")
    parser.add_argument("--strategies", default="beam4,greedy")
    parser.add_argument("--batch-size", type=int, default=None, help="sentences per batch (default 16 CPU, 64 GPU)")
    parser.add_argument("--batches", type=int, default=None, help="batches per repetition (default 2)")
    parser.add_argument("--latency-sentences", type=int, default=None, help="batch-size-1 runs (default 2)")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--engines", default=None, help="comma-separated subset of the engines (default: all)")
    parser.add_argument("--ct2-compute-types", default=None,
                        help="the two CTranslate2 columns' compute types, e.g. float16,int8_float16 (default: float32,"
                             "int8 on CPU; with --dtype bf16 bfloat16,int8_bfloat16 where the build has them)")
    parser.add_argument("--bleu-model", default=None,
                        help="a trained de->en model folder for the BLEU table (default: a random-weight small model)")
    parser.add_argument("--bleu-sentences", type=int, default=None,
                        help="test2016 sentences for BLEU (default 1000; 0: no BLEU table)")
    parser.add_argument("--bleu-batch-size", type=int, default=16, help="translate()'s batch size for BLEU")
    return parser.parse_args()


# ----------------------------------------------------------------------------------------------------------------
# The engines
# ----------------------------------------------------------------------------------------------------------------


def ct2_compute_types(device: torch.device, dtype: torch.dtype | None, asked: str | None) -> dict[str, str]:
    """CTranslate2 compute types of the two CTranslate2 columns: float32 / int8 on CPU; with --dtype bf16 (on a GPU
    by default) a 16-bit float (bfloat16, else float16) and int8 with those activations, where the build has them
    (CTranslate2's CPU build has neither: float32 / int8 then)."""
    import ctranslate2

    supported = ctranslate2.get_supported_compute_types(device.type)
    if asked:
        unsupported = [t for t in asked.split(",") if t not in supported]
        if unsupported:
            raise ValueError(f"--ct2-compute-types: {unsupported} not supported on {device.type} by this CTranslate2 "
                             f"build (supported: {sorted(supported)})")
        return dict(zip(("ct2", "ct2 int8"), asked.split(",")))
    if dtype is None:
        return {"ct2": "float32", "ct2 int8": "int8"}
    half = next((t for t in ("bfloat16", "float16") if t in supported), "float32")
    return {"ct2": half, "ct2 int8": f"int8_{half}" if f"int8_{half}" in supported else "int8"}


class Engine:
    """One decoder of the table: a PyTorch model (ours, its int8 copy, Marian) or a loaded CTranslate2 folder."""

    def __init__(self, model, backend: str = "pytorch", device: torch.device | None = None,
                 dtype: torch.dtype | None = None, **options):
        self.model, self.backend, self.device, self.dtype, self.options = model, backend, device, dtype, options

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 config: GenerationConfig) -> list[list[int]]:
        """Token ids as HF generate() returns them (decoder start token first)."""
        if self.backend == "ctranslate2":
            sources = [row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask)]
            return self.model.generate(sources, config)
        with torch.inference_mode(), common.autocast(self.device, self.dtype):
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
                                       **self.options).tolist()

    def translate(self, texts: list[str], tokenizer, batch_size: int) -> list[str]:
        """hf_transformer.translate() (§6.1 settings and length limit, batches of one source length)."""
        if self.backend == "ctranslate2":
            return translate(texts, self.model, tokenizer, batch_size=batch_size, backend=self.backend)
        with common.autocast(self.device, self.dtype):
            return translate(texts, self.model, tokenizer, batch_size=batch_size)


def build_engines(model, marian, tokenizer, folder: Path, args, device: torch.device,
                  dtype: torch.dtype | None) -> dict[str, Engine]:
    """Every engine asked for (--engines), Marian always."""
    from hf_transformer.ctranslate2 import CTranslate2Model, convert_to_ctranslate2

    wanted = set(args.engines.split(",")) | {"marian"} if args.engines else None
    engines = {
        "marian": Engine(marian, device=device, dtype=dtype),
        "ours (library loop)": Engine(model, device=device, dtype=dtype, decoding_loop="library"),
        "ours": Engine(model, device=device, dtype=dtype),
    }
    if device.type == "cpu" and (wanted is None or "ours int8" in wanted):
        engines["ours int8"] = Engine(quantize_int8(model), device=device)
    if wanted is None or wanted & {"ct2", "ct2 int8"}:
        path = convert_to_ctranslate2(model, folder / "ct2", tokenizer=tokenizer, force=True)
        for name, compute_type in ct2_compute_types(device, dtype, args.ct2_compute_types).items():
            engines[name] = Engine(CTranslate2Model(path, device=device.type, compute_type=compute_type,
                                                    intra_threads=torch.get_num_threads()), backend="ctranslate2")
    return {name: engine for name, engine in engines.items() if wanted is None or name in wanted}


def stripped(output: list[int], eos: int, pad: int) -> list[int]:
    """Generated ids without the start token, up to and including </s> (HF pads finished rows with pad or </s>)."""
    body = output[1:]
    return body[: body.index(eos) + 1] if eos in body else [t for t in body if t != pad]


@functools.cache
def benchmark_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """Our BPE of Multi30k (its strings become CTranslate2's vocabulary), or, without the corpus, one trained on a few
    synthetic words (the ids beyond it get placeholder strings: the converter needs unique strings, not words)."""
    tokenizer = common.benchmark_tokenizer(min(vocab_size, 8000))
    if tokenizer is None:  # trained once per run (functools.cache): it takes seconds
        tokenizer = train_tokenizer(iter([("ein hund rennt", "a dog runs")] * 10), vocab_size=64)
    return tokenizer


# ----------------------------------------------------------------------------------------------------------------
# Speed: random weights, interleaved repetitions
# ----------------------------------------------------------------------------------------------------------------


def source_batches(args, device: torch.device, vocab_size: int, batch_size: int, count: int) -> list[dict]:
    """`count` batches of `batch_size` Multi30k test2016 German sentences (length-sorted, as evaluation batches
    are), spread over the length range; WMT-like synthetic lengths when the corpus is absent."""
    if common.read_multi30k("test_2016_flickr", "de", 1) is not None:
        tokenizer = benchmark_tokenizer(vocab_size)
        pairs = common.multi30k_pairs(tokenizer, "test_2016_flickr", 1000, args.seed)
    else:
        print("Multi30k not found: WMT-like synthetic sources instead (set MULTI30K_DIR)")
        pairs = common.wmt_like_pairs(1000, vocab_size, args.seed)
    pairs.sort(key=lambda pair: len(pair[0]))
    groups = [pairs[i: i + batch_size] for i in range(0, len(pairs) - batch_size + 1, batch_size)]
    step = max(1, len(groups) // count)
    chosen = groups[step // 2:: step][:count]
    return [common.collate(group, device) for group in chosen]


def measure(engines: dict[str, Engine], config, batches: list[dict], strategy: str, device: torch.device,
            repeats: int) -> dict:
    """Every engine decodes the batches (outputs kept and compared with Marian's), then interleaved repetitions."""
    outputs: dict[str, list[list[int]]] = {name: [] for name in engines}

    def run(name: str, keep: bool = False) -> None:
        for batch in batches:
            settings = generation_config_for(config, strategy, batch["input_ids"].shape[1])
            out = engines[name].generate(batch["input_ids"], batch["attention_mask"], settings)
            if keep:
                outputs[name].extend(stripped(row, config.eos_token_id, config.pad_token_id) for row in out)

    for name in engines:  # warm-up, and the outputs compared below
        run(name, keep=True)
    times = common.interleaved({name: (lambda name=name: run(name)) for name in engines}, repeats, device)
    sentences = len(outputs["marian"])
    median = {n: common.statistics.median(t) for n, t in times.items()}
    tokens = {n: sum(len(o) for o in outputs[n]) for n in engines}
    return {
        "batch_size": batches[0]["input_ids"].shape[0], "batches": len(batches), "sentences": sentences,
        "generated_tokens": tokens, "seconds": times, "median_seconds": median,
        "throughput_over_marian": {n: 1.0 / common.median_ratio(times[n], times["marian"]) for n in engines},
        "tokens_per_s": {n: tokens[n] / median[n] for n in engines},
        "ms_per_sentence": {n: 1000 * median[n] / sentences for n in engines},
        "sentences_identical_to_marian": {n: sum(a == b for a, b in zip(outputs[n], outputs["marian"]))
                                          for n in engines},
    }


def generation_config_for(config, strategy: str, max_new_tokens: int) -> GenerationConfig:
    """The request of a speed row: `max_new_tokens` tokens after the decoder start token, as `max_length` (which
    every engine reads, and which leaves the model's own `max_length` out of the merge generate() does)."""
    return GenerationConfig(
        do_sample=False, max_length=1 + max_new_tokens, bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
        decoder_start_token_id=config.decoder_start_token_id, **STRATEGIES[strategy],
    )


def speed_table(args, device: torch.device, dtype: torch.dtype | None, folder: Path, repeats: int) -> list[dict]:
    sizes = (args.sizes or ("tiny" if args.tiny else "small,base")).split(",")
    batch_size = args.batch_size or (4 if args.tiny else 16 if device.type == "cpu" else 64)
    n_batches = args.batches or (1 if args.tiny or args.quick else 2)
    n_latency = args.latency_sentences if args.latency_sentences is not None else (1 if args.tiny else 2)
    tokenizer = benchmark_tokenizer(args.vocab_size)
    throughput_batches = source_batches(args, device, args.vocab_size, batch_size, n_batches)
    latency_batches = source_batches(args, device, args.vocab_size, 1, n_latency) if n_latency else []
    results = []
    for size in sizes:
        ours, marian = common.model_pair(size, args.vocab_size, device, seed=args.seed)
        engines = build_engines(ours.eval(), marian.eval(), tokenizer, folder, args, device, dtype)
        for strategy in args.strategies.split(","):
            for mode, batches in (("batch", throughput_batches), ("single", latency_batches)):
                if batches:
                    entry = {"size": size, "strategy": strategy, "mode": mode,
                             **measure(engines, ours.config, batches, strategy, device, repeats)}
                    results.append(entry)
                    print(f"{size} {strategy} {mode}: " + ", ".join(
                        f"{n} {x:.2f}x" for n, x in entry["throughput_over_marian"].items()), flush=True)
        del ours, marian, engines
    return results


# ----------------------------------------------------------------------------------------------------------------
# Quality: BLEU of every engine on Multi30k test2016, through translate()
# ----------------------------------------------------------------------------------------------------------------


def bleu_model(args, device: torch.device) -> tuple[VaswaniForConditionalGeneration, PreTrainedTokenizerFast, bool]:
    """The trained model of --bleu-model and its tokenizer, or a random-weight small model (said so)."""
    if args.bleu_model:
        model = AutoModelForSeq2SeqLM.from_pretrained(args.bleu_model).eval().to(device)
        return model, AutoTokenizer.from_pretrained(args.bleu_model), True
    print("No --bleu-model: the BLEU table decodes with a random-weight small model, whose BLEU means nothing "
          "(its `identical` column still compares the engines on real sentences). Pass a trained de->en model.")
    model, _ = common.model_pair("tiny" if args.tiny else "small", args.vocab_size, device, seed=args.seed)
    return model.eval(), benchmark_tokenizer(args.vocab_size), False


def quality_table(args, device: torch.device, dtype: torch.dtype | None, folder: Path) -> dict | None:
    """Every engine translates test2016 once (interleaved with the others, then again in the opposite order): BLEU,
    translations identical to Marian's, and the time of a translate() pass relative to Marian's."""
    import sacrebleu

    if args.bleu_sentences == 0:
        return None
    limit = args.bleu_sentences or (16 if args.tiny else None)
    sources = common.read_multi30k("test_2016_flickr", "de", limit)
    references = common.read_multi30k("test_2016_flickr", "en", limit)
    if sources is None or references is None:
        print(f"Multi30k test2016 not found in {common.MULTI30K_DIR}: no BLEU table (set MULTI30K_DIR)")
        return None
    model, tokenizer, trained = bleu_model(args, device)
    marian = common.marian_twin(model).eval()
    marian.generation_config = copy.deepcopy(model.generation_config)
    engines = build_engines(model, marian, tokenizer, folder, args, device, dtype)
    engines.pop("ours (library loop)", None)  # decodes as `ours` (the speed table shows both)
    outputs: dict[str, list[str]] = {}

    def run(name: str) -> None:
        outputs.setdefault(name, engines[name].translate(sources, tokenizer, args.bleu_batch_size))

    times = common.interleaved({name: (lambda name=name: run(name)) for name in engines}, 2, device)
    results = {}
    for name in engines:
        results[name] = {
            "bleu": sacrebleu.corpus_bleu(outputs[name], [references]).score,
            "identical_to_marian": sum(a == b for a, b in zip(outputs[name], outputs["marian"])),
            "seconds": times[name],
            "throughput_over_marian": 1.0 / common.median_ratio(times[name], times["marian"]),
        }
    return {"model": args.bleu_model or "random weights (BLEU meaningless)", "trained": trained,
            "sentences": len(sources), "batch_size": args.bleu_batch_size, "results": results}


# ----------------------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------------------


def print_speed(results: list[dict], title: str) -> None:
    engines = list(results[0]["throughput_over_marian"])
    header = ["size", "strategy", "batch", "marian tok/s"] + [f"{n} / marian" for n in engines[1:]]
    header += [f"identical {n}" for n in FLOAT_ENGINES if n in engines]
    rows = []
    for entry in results:
        row = [entry["size"], entry["strategy"], f"{entry['mode']} x{entry['batch_size']}",
               round(entry["tokens_per_s"]["marian"])]
        row += [f"{entry['throughput_over_marian'][n]:.2f}x" for n in engines[1:]]
        row += [f"{entry['sentences_identical_to_marian'][n]}/{entry['sentences']}" for n in FLOAT_ENGINES
                if n in engines]
        rows.append(row)
    common.print_table(title, header, rows)


def print_quality(quality: dict) -> None:
    rows = [[name, f"{r['bleu']:.2f}", f"{r['identical_to_marian']}/{quality['sentences']}",
             f"{r['throughput_over_marian']:.2f}x", f"{common.statistics.median(r['seconds']):.1f}"]
            for name, r in quality["results"].items()]
    common.print_table(f"Multi30k test2016 de->en through translate() ({quality['model']}; {quality['sentences']} "
                       f"sentences, batches of {quality['batch_size']})",
                       ["engine", "BLEU", "identical to marian", "throughput / marian", "seconds"], rows)


def main() -> None:
    import ctranslate2

    args = parse_args()
    device, dtype = common.resolve_device(args)
    repeats = args.repeats or (2 if args.tiny else 3 if args.quick else 5)
    env = {**common.environment(device, dtype), "ctranslate2": ctranslate2.__version__,
           "ctranslate2_compute_types": ct2_compute_types(device, dtype, args.ct2_compute_types),
           # oneDNN's int8 on an x86 CPU without VNNI, not Intel's: fast and wrong (hf_transformer.ctranslate2)
           "ct2_use_mkl": os.environ.get("CT2_USE_MKL"), "ct2_int8_saturates": int8_saturates(),
           "load_average_before": list(os.getloadavg())}
    print(f"{env['device']} | {env['dtype']} | torch {env['torch']} | transformers {env['transformers']} | "
          f"ctranslate2 {env['ctranslate2']} {env['ctranslate2_compute_types']} | load average "
          f"{env['load_average_before'][0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="decode_benchmark_") as folder:
        speed = speed_table(args, device, dtype, Path(folder), repeats)
        quality = quality_table(args, device, dtype, Path(folder))
    env["load_average_after"] = list(os.getloadavg())
    print_speed(speed, f"generate() throughput relative to MarianMTModel ({env['dtype']}, {env['device']}; median of "
                       f"{repeats} interleaved repetitions, random weights)")
    if quality is not None:
        print_quality(quality)
    payload = {"benchmark": "decode", "environment": env, "repeats": repeats, "results": speed, "quality": quality}
    common.write_json("decode", args, payload)


if __name__ == "__main__":
    main()
