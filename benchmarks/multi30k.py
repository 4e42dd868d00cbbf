"""Choose the weights and the length penalty of a Multi30k run on the validation set, then score that one choice on
test2016 (issue 15; RESULTS.md).

A translation run exports up to three sets of weights: `hf_model` (best validation score of the run's greedy
sample), `hf_model_last` and `hf_model_averaged` (the last periodic checkpoints, §6.1). Each is decoded on the whole
validation set with beam 4 (§6.1) and every length penalty asked for; the pair with the best sacreBLEU on validation
is the choice, and only it is scored on the test set. The table gives sacreBLEU, the tokenized (13a) lowercased BLEU
that the published Multi30k figures report, and chrF, with their signatures in the JSON.

    python -m benchmarks.multi30k runs/multi30k_de_en_cpu --source-lang de --target-lang en
    python -m benchmarks.multi30k RUN --validation val.de.gz val.en.gz --test test.de.gz test.en.gz

Then `hf-transformer test --ckpt_path RUN/<chosen> --model.length_penalty <chosen>` (the command is printed) scores
it through the project's CLI and adds the test score to that folder's model card.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import AutoModelForSeq2SeqLM

import hf_transformer  # noqa: F401  (registers the Auto classes)
from hf_transformer import load_tokenizer, translate
from lightning_modules.data.parallel_text import read_lines
from lightning_modules.tasks.metrics import translation_scores

from .common import MULTI30K_DIR, RESULTS_DIR, environment, print_table
from .recipe_runs import write_report

WEIGHTS = ("hf_model", "hf_model_last", "hf_model_averaged")


def score(hypotheses: list[str], references: list[str]) -> dict:
    scores, signatures = translation_scores(hypotheses, references)  # what `hf-transformer test` reports
    return {**{key: round(value, 2) for key, value in scores.items()}, "signatures": signatures}


def decode_and_score(folder: Path, sources: list[str], references: list[str], length_penalties: list[float],
                     num_beams: int) -> list[dict]:
    """One row per length penalty: the scores and seconds of `folder`'s weights on (sources, references)."""
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    tokenizer = load_tokenizer(folder)
    rows = []
    for length_penalty in length_penalties:
        started = time.perf_counter()
        hypotheses = translate(sources, model, tokenizer, batch_size=64, num_beams=num_beams,
                               length_penalty=length_penalty)
        rows.append({"weights": folder.name, "length_penalty": length_penalty, **score(hypotheses, references),
                     "seconds": round(time.perf_counter() - started, 1), "sentences": len(sources)})
    return rows


def table_row(row: dict) -> list[str]:
    return [row["weights"], str(row["length_penalty"]), *(f"{row[key]:.2f}" for key in ("bleu", "bleu_lc", "chrf")),
            f"{row['seconds']:.1f}"]


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the run directory (holding hf_model, hf_model_last, ...)")
    parser.add_argument("--source-lang", default="de")
    parser.add_argument("--target-lang", default="en")
    parser.add_argument("--validation", type=Path, nargs=2, metavar=("SOURCE", "REFERENCE"),
                        help="default: val.<lang>.gz of $MULTI30K_DIR")
    parser.add_argument("--test", type=Path, nargs=2, metavar=("SOURCE", "REFERENCE"),
                        help="default: test_2016_flickr.<lang>.gz of $MULTI30K_DIR")
    parser.add_argument("--length-penalties", default="0.6,1.0,1.4,2.0",
                        help="comma-separated alphas (§6.1: 0.6)")
    parser.add_argument("--num-beams", type=int, default=4)
    parser.add_argument("--limit", type=int, default=None, help="only the first N lines of each file (smoke tests)")
    parser.add_argument("--fit-seconds", type=float, default=None, help="the run's fit wall time, for the report")
    parser.add_argument("--fit-command", default=None, help="the run's fit command, for the report")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--output", type=Path, default=None,
                        help="the JSON report (default: benchmarks/results/multi30k_<src>_<tgt>.json)")
    args = parser.parse_args(argv)
    languages = (args.source_lang, args.target_lang)
    args.validation = args.validation or [MULTI30K_DIR / f"val.{lang}.gz" for lang in languages]
    args.test = args.test or [MULTI30K_DIR / f"test_2016_flickr.{lang}.gz" for lang in languages]
    args.output = args.output or RESULTS_DIR / f"multi30k_{args.source_lang}_{args.target_lang}.json"
    args.length_penalties = [float(value) for value in args.length_penalties.split(",")]
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_arguments(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    folders = [args.run / name for name in WEIGHTS if (args.run / name / "config.json").is_file()]
    if not folders:
        raise SystemExit(f"no exported weights in {args.run} (looked for {', '.join(WEIGHTS)})")
    sources, references = (read_lines(path)[:args.limit] for path in args.validation)
    grid = [row for folder in folders
            for row in decode_and_score(folder, sources, references, args.length_penalties, args.num_beams)]
    header = ["weights", "length penalty", "BLEU", "BLEU lc", "chrF", "s"]
    print_table(f"validation ({len(sources)} sentences, beam {args.num_beams})", header, [table_row(r) for r in grid])
    chosen = max(grid, key=lambda row: (row["bleu"], row["chrf"]))
    test_sources, test_references = (read_lines(path)[:args.limit] for path in args.test)
    test = decode_and_score(args.run / chosen["weights"], test_sources, test_references, [chosen["length_penalty"]],
                            args.num_beams)[0]
    print_table(f"test, the validation's choice ({len(test_sources)} sentences)", header, [table_row(test)])
    command = (f"hf-transformer test --ckpt_path {args.run / chosen['weights']} "
               f"--model.length_penalty {chosen['length_penalty']}")
    print(f"\nthe same through the CLI (adds the score to the folder's model card):\n  {command}")
    report = {"run": str(args.run), "pair": f"{args.source_lang}-{args.target_lang}", "num_beams": args.num_beams,
              "validation_files": [str(p) for p in args.validation], "test_files": [str(p) for p in args.test],
              "validation": grid, "choice": {"weights": chosen["weights"], "length_penalty": chosen["length_penalty"]},
              "test": test, "cli_command": command,
              "fit": {"seconds": args.fit_seconds, "command": args.fit_command},
              "environment": environment(torch.device("cpu"), None)}
    write_report(report, args.output)
    return report


if __name__ == "__main__":
    main()
