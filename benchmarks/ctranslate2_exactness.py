"""Exactness of the CTranslate2 export on real text: our beam-4 `generate()` (float32, PyTorch) against the converted
model in CTranslate2 float32 and int8, on the 1,000 German sentences of Multi30k test2016 (de -> en).

Every sentence is decoded as translate() decodes it (§6.1: beam 4, alpha 0.6, at most input length + 50 tokens;
batches of sources of one token length) by both engines, and the token ids are compared. For each sentence whose
outputs differ the script says where they part, the length-normalised scores sum(log p) / length ** alpha that both
engines give both outputs (teacher forced), and why (see `explain`): decoded again alone, and by our model in float64.
BLEU (sacreBLEU, detokenised, against the English references) is reported for every engine.

    hf-transformer fit --config <config> ...             # a trained Multi30k de->en model (see the report)
    python -m benchmarks.ctranslate2_exactness --model runs/multi30k/hf_model --threads 1
    python -m benchmarks.ctranslate2_exactness --model runs/multi30k/hf_model --limit 50    # quick look

Writes benchmarks/results/ctranslate2_exactness.json (or --output).
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

import ctranslate2
import sacrebleu
import torch
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from benchmarks import common
from hf_transformer.ctranslate2 import CTranslate2Model, convert_to_ctranslate2, int8_saturates
from hf_transformer.translation import paper_generation_config


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a trained de->en model folder (save_pretrained + tokenizer)")
    parser.add_argument("--limit", type=int, default=None, help="first N sentences only (default: all 1,000)")
    parser.add_argument("--batch-size", type=int, default=32, help="translate()'s batch size (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of torch and CTranslate2 (default 1)")
    parser.add_argument("--output", default=None,
                        help="JSON file (default: benchmarks/results/ctranslate2_exactness.json)")
    return parser.parse_args()


def batches(encoded: list[list[int]], batch_size: int) -> list[list[int]]:
    """translate()'s batches: indices of sources of one token length, at most `batch_size` each."""
    by_length: dict[int, list[int]] = {}
    for index, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(index)
    return [indices[i: i + batch_size] for _, indices in sorted(by_length.items())
            for i in range(0, len(indices), batch_size)]


def strip(output: list[int], eos: int, pad: int) -> list[int]:
    """Generated ids without the decoder start token, </s> kept, padding after it dropped."""
    body = output[1:]
    return body[: body.index(eos) + 1] if eos in body else [t for t in body if t != pad]


def decode_all(generate, model, encoded, batch_size) -> tuple[list[list[int]], float]:
    outputs: list[list[int] | None] = [None] * len(encoded)
    start = time.perf_counter()
    for chunk in batches(encoded, batch_size):
        config = paper_generation_config(model, len(encoded[chunk[0]]), None, None)
        for index, output in zip(chunk, generate([encoded[i] for i in chunk], config)):
            outputs[index] = strip(output, config.eos_token_id, config.pad_token_id)
    return outputs, time.perf_counter() - start


@torch.no_grad()
def torch_log_probs(model, source: list[int], hypothesis: list[int]) -> list[float]:
    """log p(token) of each hypothesis token under our model, teacher forced."""
    start = model.config.decoder_start_token_id
    logits = model(input_ids=torch.tensor([source]), decoder_input_ids=torch.tensor([[start] + hypothesis[:-1]])).logits
    log_probs = torch.log_softmax(logits[0].float(), dim=-1)  # (T, V)
    return log_probs[torch.arange(len(hypothesis)), torch.tensor(hypothesis)].tolist()


def ct2_log_probs(engine: CTranslate2Model, source: list[int], hypothesis: list[int], eos: int) -> list[float]:
    """The same under CTranslate2 (score_batch appends </s> itself: drop it when the hypothesis has none)."""
    tokens = engine.tokens
    ended = hypothesis[-1:] == [eos]
    target = [tokens[t] for t in (hypothesis[:-1] if ended else hypothesis)]
    result = engine.translator.score_batch([[tokens[t] for t in source]], [target], max_input_length=0)[0]
    return list(result.log_probs) if ended else list(result.log_probs)[:-1]


JITTER = 1e-5  # on log-probabilities of -1 to -30: well above float32 rounding (1e-7 relative), far below a real gap


class Jitter(LogitsProcessor):
    """Adds uniform noise in [-JITTER, JITTER] to every score: a change of the size of float32 rounding."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        noise = torch.rand(scores.shape, generator=self.generator, dtype=scores.dtype) * 2 - 1
        return scores + JITTER * noise


def reproduced_under_jitter(model: PreTrainedModel, source: list[int], config: GenerationConfig,
                            target: list[int], seeds: int = 16) -> bool:
    """Whether our generate() returns `target` (decoder start token first, as generate() returns) for `source` when
    every score moves by at most JITTER, for one of `seeds` perturbations. Then another engine's `target` is a
    near-tie that float32 rounding decided otherwise (its matrix kernels round differently), not a difference of
    the algorithm, which such a perturbation would not reproduce."""
    with torch.no_grad():
        return any(model.generate(input_ids=torch.tensor([source]), generation_config=config,
                                  logits_processor=LogitsProcessorList([Jitter(seed)]))[0].tolist() == target
                   for seed in range(seeds))


def explain(model, model64, engine, source: list[int], ours: list[int], theirs: list[int], config, eos: int) -> dict:
    """Why one sentence decodes differently: the scores both engines give both outputs, where they part, and the same
    sentence decoded again alone (a batch of one, no neighbours in the matrix products) and by our model in float64
    (the search without float32 rounding). When float64 or decoding alone gives one engine's output to the other,
    the difference is float32 rounding deciding a near-tie inside beam search, not a difference of the algorithm."""
    alpha = config.length_penalty
    position = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    entry = {"first_difference": position, "ours_length": len(ours), "theirs_length": len(theirs)}
    for name, score in (("pytorch", lambda h: torch_log_probs(model, source, h)),
                        ("ctranslate2", lambda h: ct2_log_probs(engine, source, h, eos))):
        entry[f"scores_{name}"] = {"ours": sum(score(ours)) / len(ours) ** alpha,
                                   "theirs": sum(score(theirs)) / len(theirs) ** alpha}

    def alone(generate) -> list[int]:
        return strip(generate([source], config)[0], eos, config.pad_token_id)

    with torch.no_grad():
        ours_alone = alone(lambda ids, c: model.generate(input_ids=torch.tensor(ids), generation_config=c).tolist())
        exact = alone(lambda ids, c: model64.generate(input_ids=torch.tensor(ids), generation_config=c).tolist())
    theirs_alone = alone(engine.generate)
    entry["alone_identical"] = ours_alone == theirs_alone
    entry["float64_gives"] = "pytorch" if exact == ours else "ctranslate2" if exact == theirs else "neither"
    reasons = []
    if entry["alone_identical"]:
        reasons.append("decoded alone (batch of 1) both engines give the same output: the batch's matrix products "
                       "round differently")
    if entry["float64_gives"] != "neither":
        reasons.append(f"our model in float64 gives the {entry['float64_gives']} output: float32 rounding decides a "
                       "near-tie of beam candidates")
    entry["reproduced_under_jitter"] = reproduced_under_jitter(model, source, config,
                                                               [config.decoder_start_token_id] + theirs)
    if entry["reproduced_under_jitter"]:
        reasons.append(f"our generate() gives the CTranslate2 output when the scores move by {JITTER:g}: a near-tie "
                       "that float32 rounding decides")
    entry["explained"] = bool(reasons)
    entry["explanation"] = "; ".join(reasons) if reasons else "not explained by rounding (investigate)"
    return entry


def report(args: argparse.Namespace, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, sources: list[str],
           references: list[str], outputs: dict[str, list[list[int]]], seconds: dict[str, float],
           differences: list[dict]) -> None:
    """Print the table (identical outputs, BLEU, time per engine) and the float32 differences; write the JSON."""
    alpha = model.generation_config.length_penalty
    rows, results = [], {}
    for name, decoded in outputs.items():
        texts = tokenizer.batch_decode(decoded, skip_special_tokens=True)
        bleu = sacrebleu.corpus_bleu(texts, [references]).score
        identical = sum(a == b for a, b in zip(decoded, outputs["pytorch float32"]))
        results[name] = {"bleu": bleu, "identical_to_pytorch": identical, "seconds": seconds[name]}
        rows.append([name, f"{identical}/{len(sources)}", f"{bleu:.2f}", f"{seconds[name]:.1f}"])
    common.print_table(f"Multi30k test2016 de->en, beam 4, alpha {alpha}, {args.threads} thread(s)",
                       ["engine", "identical to ours", "BLEU", "seconds"], rows)
    for entry in differences:
        scores = " / ".join(f"{entry[f'scores_{e}']['ours']:.4f} vs {entry[f'scores_{e}']['theirs']:.4f} ({e})"
                            for e in ("pytorch", "ctranslate2"))
        print(f"\n#{entry['index']}: {entry['source']}\n  pytorch:     {entry['pytorch']}\n"
              f"  ctranslate2: {entry['ctranslate2']}\n  scores (pytorch's output vs CTranslate2's): {scores}\n"
              f"  {entry['explanation']}")
    payload = {
        "benchmark": "ctranslate2_exactness", "model": args.model, "sentences": len(sources),
        "num_beams": model.generation_config.num_beams, "length_penalty": alpha, "batch_size": args.batch_size,
        "environment": common.environment(torch.device("cpu"), None),
        "ctranslate2": ctranslate2.__version__,
        # CTranslate2's CPU backend: MKL on Intel CPUs or with CT2_USE_MKL=1, else oneDNN, whose int8 products
        # saturate on an x86 CPU without VNNI (hf_transformer.ctranslate2.int8_saturates)
        "ct2_use_mkl": os.environ.get("CT2_USE_MKL"),
        "int8_saturates": int8_saturates(),
        "results": results,
        "int8_bleu_minus_float32": results["ctranslate2 int8"]["bleu"] - results["ctranslate2 float32"]["bleu"],
        "differences_float32": differences,
        "unexplained_differences_float32": sum(not entry["explained"] for entry in differences),
    }
    args.tiny = False
    common.write_json("ctranslate2_exactness", args, payload)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    sources = common.read_multi30k("test_2016_flickr", "de", args.limit)
    references = common.read_multi30k("test_2016_flickr", "en", args.limit)
    if sources is None or references is None:
        raise SystemExit(f"Multi30k test2016 not found in {common.MULTI30K_DIR} (set MULTI30K_DIR)")
    model = AutoModelForSeq2SeqLM.from_pretrained(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    encoded = tokenizer(sources)["input_ids"]
    eos = model.generation_config.eos_token_id
    model64 = copy.deepcopy(model).double()  # the reference without float32 rounding, for the explanations

    def torch_generate(chunk, config):
        input_ids = torch.tensor(chunk)
        with torch.no_grad():
            return model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                  generation_config=config).tolist()

    outputs, seconds = {}, {}
    outputs["pytorch float32"], seconds["pytorch float32"] = decode_all(torch_generate, model, encoded, args.batch_size)
    with tempfile.TemporaryDirectory() as folder:
        engines = {
            "ctranslate2 float32": CTranslate2Model(
                convert_to_ctranslate2(model, Path(folder) / "float32", tokenizer=tokenizer),
                compute_type="float32", intra_threads=args.threads),
            "ctranslate2 int8": CTranslate2Model(
                convert_to_ctranslate2(model, Path(folder) / "int8", quantization="int8", tokenizer=tokenizer),
                compute_type="int8", intra_threads=args.threads),
        }
        for name, engine in engines.items():
            outputs[name], seconds[name] = decode_all(engine.generate, model, encoded, args.batch_size)

        reference = outputs["pytorch float32"]
        float32 = engines["ctranslate2 float32"]
        differences = []
        for index, (ours, theirs) in enumerate(zip(reference, outputs["ctranslate2 float32"])):
            if ours != theirs:
                entry = {"index": index, "source": sources[index],
                         "pytorch": tokenizer.decode(ours, skip_special_tokens=True),
                         "ctranslate2": tokenizer.decode(theirs, skip_special_tokens=True)}
                config = paper_generation_config(model, len(encoded[index]), None, None)
                entry.update(explain(model, model64, float32, encoded[index], ours, theirs, config, eos))
                differences.append(entry)

    report(args, model, tokenizer, sources, references, outputs, seconds, differences)


if __name__ == "__main__":
    main()
