"""Bad-input fuzzing, longer than the tests: the strategies and oracles of benchmarks/fuzz_cases.py, more examples.

    python -m benchmarks.fuzz_report [--corpora-per-cell 6] [--translate-calls 40] [--generate-calls 100] \\
        [--output benchmarks/results/fuzz_report.json]

Runs (1) generated corpora through `TranslationDataModule`, `--corpora-per-cell` for every (input format, fault)
that applies to it, (2) `translate()` and the
"vaswani-translation" pipeline on generated texts, (3) `generate()` on generated id batches, with derandomized
hypothesis (the same examples every run). Prints one table row per part and writes the counts as JSON: how many
corpora / calls, how many were handled correctly, refused with a clear error, and how many crashed, gave an unclear
error or a wrong result (the last three must be 0), with the first failures verbatim.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import datasets  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from transformers import logging as transformers_logging  # noqa: E402
from transformers import pipeline  # noqa: E402

from benchmarks.common import RESULTS_DIR, multi30k_lines, vaswani_config  # noqa: E402
from benchmarks.fuzz_cases import (  # noqa: E402
    FAULTS_OF_FORMAT,
    FORMATS,
    Tally,
    check_corpus,
    check_generate,
    check_translate,
    corpus_strategy,
    generate_strategy,
    translate_strategy,
)
from hf_transformer import VaswaniForConditionalGeneration, iter_parallel_texts, train_tokenizer, translate  # noqa: E402

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MAX_POSITIONS = 24


def fuzz_corpora(per_cell: int, scratch: Path) -> Tally:
    datasets.config.HF_DATASETS_CACHE = str(scratch / "hf_datasets_cache")
    datasets.disable_progress_bars()
    pairs = list(zip(multi30k_lines("train.de.gz", 400), multi30k_lines("train.en.gz", 400)))
    tokenizer = train_tokenizer(iter_parallel_texts(pairs), vocab_size=400)
    tokenizer.save_pretrained(str(scratch / "tokenizer"))
    tokenizer.model_max_length = 10**9  # the oracle measures 100k-character lines: no warning about them

    def token_length(text: str) -> int:
        return len(tokenizer(text)["input_ids"])

    tally = Tally()
    for format_ in FORMATS:
        for fault in FAULTS_OF_FORMAT[format_]:
            @settings(max_examples=per_cell, **SETTINGS)
            @given(corpus_strategy(pairs[:100], formats=(format_,), faults=(fault,)))
            def run(case):
                check_corpus(case, scratch, str(scratch / "tokenizer"), token_length, tally)

            run()
    return tally


def fuzz_generation(translate_calls: int, generate_calls: int) -> tuple[Tally, float, Tally, float]:
    pairs = list(zip(multi30k_lines("train.de.gz", 1000), multi30k_lines("train.en.gz", 1000)))
    tokenizer = train_tokenizer(iter_parallel_texts(pairs), vocab_size=400)
    torch.manual_seed(5)
    model = VaswaniForConditionalGeneration(vaswani_config("tiny", len(tokenizer), MAX_POSITIONS,
                                                           tie_word_embeddings=False)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(6.0)
    lines = multi30k_lines("val.de.gz", 30)
    texts = [" ".join(line.split()[:4]) for line in lines[:12]]
    overlong = " ".join(lines)
    pipe = pipeline("vaswani-translation", model=model, tokenizer=tokenizer)

    @functools.lru_cache(maxsize=None)
    def alone(text: str, num_beams: int) -> str:
        return translate([text], model, tokenizer, num_beams=num_beams, truncation=True)[0]

    translating = Tally()
    start = time.perf_counter()

    @settings(max_examples=translate_calls, **SETTINGS)
    @given(translate_strategy(texts, overlong, max_texts=4))
    def run_translate(case):
        check_translate(case, model, tokenizer, pipe, alone, translating)

    run_translate()
    translate_seconds = time.perf_counter() - start
    generating = Tally()
    start = time.perf_counter()

    @settings(max_examples=generate_calls, **SETTINGS)
    @given(generate_strategy(len(tokenizer), MAX_POSITIONS))
    def run_generate(case):
        check_generate(case, model, generating)

    run_generate()
    return translating, translate_seconds, generating, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora-per-cell", type=int, default=6)
    parser.add_argument("--translate-calls", type=int, default=40)
    parser.add_argument("--generate-calls", type=int, default=100)
    parser.add_argument("--output", default=str(RESULTS_DIR / "fuzz_report.json"))
    args = parser.parse_args()
    transformers_logging.set_verbosity_error()
    parts = {}
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        parts["data module"] = (fuzz_corpora(args.corpora_per_cell, Path(scratch)), time.perf_counter() - start)
    translating, translate_seconds, generating, generate_seconds = fuzz_generation(args.translate_calls,
                                                                                  args.generate_calls)
    parts["translate() / pipeline"] = (translating, translate_seconds)
    parts["generate()"] = (generating, generate_seconds)

    print(f"{'part':24} {'inputs':>7} {'handled':>8} {'refused clearly':>16} {'crash':>6} {'unclear':>8} "
          f"{'wrong':>6} {'seconds':>8}")
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "python": platform.python_version(),
              "torch": torch.__version__, "parts": {}}
    for name, (tally, part_seconds) in parts.items():
        counts = tally.counts
        inputs = counts["corpora"] or counts["calls"]
        print(f"{name:24} {inputs:7d} {counts['handled']:8d} {counts['refused_clearly']:16d} {counts['crash']:6d} "
              f"{counts['unclear_error']:8d} {counts['wrong_result']:6d} {part_seconds:8.1f}")
        report["parts"][name] = {"inputs": inputs, "counts": dict(sorted(counts.items())),
                                 "failures": tally.failures, "seconds": round(part_seconds, 1)}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {output}")
    return 1 if any(tally.bad for tally, _ in parts.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
