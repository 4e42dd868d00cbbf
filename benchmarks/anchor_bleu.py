"""BLEU in the en->de anchor's own form, beside the lowercased BLEU of RESULTS.md (issue 15).

The en->de anchor (the Transformer-tiny baseline of Wu et al. 2021, "Revisit-MMT") is scored by fairseq against
Multi30k's tokenized files: every line lowercased, its punctuation normalized, then tokenized by the Moses scripts (the
`task1-tokenize.sh` of the Multi30k repository), and BLEU counted on those tokens. RESULTS.md's lowercased column is
sacreBLEU with `lowercase=True` and its own 13a tokenizer on detokenized text. This script puts a hypothesis file and
its references through the Moses pipeline (sacremoses, the Python port of those scripts) and prints the anchor's form
beside sacreBLEU and the 13a lowercased BLEU, on the same output:

    python -m benchmarks.anchor_bleu runs/multi30k_en_de_cpu/test/hf_model-test.txt --language de

The hypotheses are detokenized text, one sentence per line, as `hf-transformer test` writes them; the references
default to test_2016_flickr.<language>.gz of $MULTI30K_DIR.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sacrebleu.metrics import BLEU

from lightning_modules.data.parallel_text import read_lines

from .common import MULTI30K_DIR, RESULTS_DIR, print_table
from .multi30k import score
from .recipe_runs import write_report


def moses_form(lines: list[str], language: str) -> list[str]:
    """Each line as in Multi30k's tokenized files: lowercased, punctuation normalized, then Moses-tokenized with the
    Moses escapes (`"` -> `&quot;`, `'` -> `&apos;`, ...), in the order of `task1-tokenize.sh`."""
    try:
        from sacremoses import MosesPunctNormalizer, MosesTokenizer
    except ImportError:
        raise ImportError("the anchor's form of BLEU needs sacremoses: pip install sacremoses (or "
                          "hf-transformer[test])") from None
    normalizer, tokenizer = MosesPunctNormalizer(lang=language), MosesTokenizer(lang=language)
    return [tokenizer.tokenize(normalizer.normalize(line.lower()), return_str=True, escape=True) for line in lines]


def anchor_scores(hypotheses: list[str], references: list[str], language: str) -> dict:
    """sacreBLEU, the 13a lowercased BLEU and chrF (what `hf-transformer test` reports), and `bleu_lc_moses`: BLEU
    on the Moses-tokenized lowercased lines, the anchor's form; each with its sacreBLEU signature."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses against {len(references)} references: give the hypothesis "
                         "file of the same test set, one line per sentence")
    if not hypotheses:
        raise ValueError("no hypotheses to score: the hypothesis file is empty")
    scores = score(hypotheses, references)  # what benchmarks/multi30k.py and `hf-transformer test` report
    bleu = BLEU(tokenize="none", force=True)  # the lines are tokenized already; `force` silences the check for that
    moses = bleu.corpus_score(moses_form(hypotheses, language), [moses_form(references, language)])
    scores["bleu_lc_moses"] = round(moses.score, 2)
    scores["signatures"]["bleu_lc_moses"] = (f"{bleu.get_signature()} (lines: lowercased, sacremoses "
                                             "punctuation-normalized and tokenized)")
    return scores


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("hypotheses", type=Path, help="detokenized translations, one per line")
    parser.add_argument("--language", default="de", help="the target language (Moses' rules differ by language)")
    parser.add_argument("--references", type=Path, default=None,
                        help="default: test_2016_flickr.<language>.gz of $MULTI30K_DIR")
    parser.add_argument("--output", type=Path, default=None,
                        help="the JSON report (default: benchmarks/results/anchor_bleu_<language>.json)")
    args = parser.parse_args(argv)
    args.references = args.references or MULTI30K_DIR / f"test_2016_flickr.{args.language}.gz"
    args.output = args.output or RESULTS_DIR / f"anchor_bleu_{args.language}.json"
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_arguments(argv)
    scores = anchor_scores(read_lines(args.hypotheses), read_lines(args.references), args.language)
    print_table(f"{args.hypotheses} against {args.references}", ["BLEU", "BLEU lc (13a)", "BLEU lc (Moses)", "chrF"],
                [[f"{scores[key]:.2f}" for key in ("bleu", "bleu_lc", "bleu_lc_moses", "chrf")]])
    report = {"hypotheses": str(args.hypotheses), "references": str(args.references), "language": args.language,
              **scores}
    write_report(report, args.output)
    return report


if __name__ == "__main__":
    main()
