"""Bad corpora, generated with hypothesis, in every input format `TranslationDataModule` reads.

Formats: a pair of aligned text files (plain and gzipped, LF or CRLF, with or without a byte order mark and a final
newline), jsonl with flat language keys or a `translation` dict, parquet with flat string columns or a `translation`
struct. Rows mix real Multi30k pairs with empty and whitespace-only sides, control and format characters, other
scripts and emoji, missing values and 100,000-character lines. At most one fault per corpus: invalid UTF-8 bytes,
misaligned text files, a misspelled language, renamed columns, a non-text value.

What must happen (the oracle is in fuzz_cases.py): a corpus without a fault is tokenized with exactly the cleaning
report the documented rules give for what was planted (empty / too_long / bad_ratio counts) and keeps exactly the
other rows, text unchanged; a faulty one is refused with a ValueError naming the file and line, the column or the
row. A summary line per test says how many corpora ran and how each ended (`pytest -s` shows it);
benchmarks/fuzz_report.py runs the same strategies longer and writes the counts as JSON.
"""

from __future__ import annotations

import datasets
import pytest
from hypothesis import HealthCheck, given, settings

from data_utils import multi30k_lines

from benchmarks.fuzz_cases import FORMATS, Tally, check_corpus, corpus_strategy
from hf_transformer import iter_parallel_texts, train_tokenizer

EXAMPLES_PER_FORMAT = 10


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory):
    """Real pairs, a tokenizer trained on them (saved, so every corpus loads it instead of training), a scratch dir."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_datasets_cache")))
        datasets.disable_progress_bars()
        pairs = list(zip(multi30k_lines("train.de.gz", 400), multi30k_lines("train.en.gz", 400)))
        tokenizer = train_tokenizer(iter_parallel_texts(pairs), vocab_size=400)
        tokenizer_path = tmp_path_factory.mktemp("tokenizer")
        tokenizer.save_pretrained(str(tokenizer_path))

        def token_length(text: str) -> int:
            return len(tokenizer(text)["input_ids"])

        yield {"pairs": pairs[:100], "tokenizer_path": str(tokenizer_path), "token_length": token_length,
               "root": tmp_path_factory.mktemp("corpora")}


@pytest.mark.parametrize("format_", FORMATS)
def test_bad_corpora_are_counted_or_refused_clearly(fuzz_env, format_):
    tally = Tally()

    @settings(max_examples=EXAMPLES_PER_FORMAT, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(corpus_strategy(fuzz_env["pairs"], formats=(format_,)))
    def run(case):
        before = tally.bad
        check_corpus(case, fuzz_env["root"], fuzz_env["tokenizer_path"], fuzz_env["token_length"], tally)
        assert tally.bad == before, tally.failures[-1]

    run()
    print(tally.line(f"data fuzz [{format_}]"))
    assert tally.counts["corpora"] == EXAMPLES_PER_FORMAT
    assert tally.counts["handled"] + tally.counts["refused_clearly"] == EXAMPLES_PER_FORMAT


def test_planted_rows_of_every_kind_are_counted(fuzz_env):
    """One hand-written corpus per format with every row kind planted at a known place: a fixed point next to the
    generated ones, so that each kind is certainly exercised in every format."""
    from benchmarks.fuzz_cases import LONG_LINE_CHARS, CorpusCase

    real = fuzz_env["pairs"]
    rows = [real[0], ("", real[1][1]), (real[2][0], " \u3000\t"), ("\x00\x1b[31m" + real[3][0], real[3][1] + "\u202e"),
            (real[4][0] + " 🙂👨\u200d👩\u200d👧 汉字", "العربية " + real[4][1]), ("a" * LONG_LINE_CHARS, real[5][1]),
            ("Ja.", " ".join(pair[1] for pair in real[6:9])), real[9]]
    kinds = ["real", "empty", "blank", "control", "scripts", "long", "bad_ratio", "real"]
    for format_ in FORMATS:
        tally = Tally()
        planted = list(rows)
        if not format_.startswith("text"):
            planted.append((real[10][0], None))
        case = CorpusCase(format=format_, rows=planted, kinds=kinds + ["missing"] * (len(planted) - len(rows)),
                          crlf=format_ == "text", bom=format_ == "text")
        check_corpus(case, fuzz_env["root"], fuzz_env["tokenizer_path"], fuzz_env["token_length"], tally)
        assert tally.counts["handled"] == 1, tally.failures
        missing = 0 if format_.startswith("text") else 1
        assert (tally.counts["reported_empty"], tally.counts["reported_too_long"]) == (2 + missing, 1), format_
        assert tally.counts["reported_bad_ratio"] >= 2, format_  # "Ja." and the 100k-character line
