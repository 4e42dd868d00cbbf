"""Bad-input fuzzing shared by benchmarks/fuzz_report.py, tests/lightning_modules/test_fuzz_data.py and
tests/test_fuzz_generation.py.

Each generated case is checked against an oracle that states, from the documented rules alone, what must happen:
either the input is handled (every planted row counted in the cleaning report under the right key, every kept row's
text unchanged; translations returned in order, "" for blank inputs) or it is refused with a ValueError / TypeError
whose message names what is wrong (the file and line, the column, the row, the input index) and how to fix it.
Anything else (another exception type, a message that names nothing, a wrong count) is recorded as a failure.

`Tally` counts what ran: corpora or calls, handled, refused-with-a-clear-error, crashes, unclear errors, wrong results.
The tests assert it ends with no crash, no unclear error and no wrong result; the benchmark runs more examples and
writes the tally as JSON.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import hypothesis.strategies as st

# ----------------------------------------------------------------------------------------------------------------
# Text pieces
# ----------------------------------------------------------------------------------------------------------------

#: Control and format characters (never "\n", which ends a line in the text formats).
CONTROL = ["\x00", "\x01", "\x07", "\x08", "\x0b", "\x0c", "\x1b", "\x7f", "\x85", "\u2028", "\u2029", "\u200b",
           "\u200e", "\u202e", "\ufeff", "\r", "\t", "\x1b[31m"]
#: Whitespace-only strings are built from these (all `str.isspace()`, so `str.strip()` removes them).
WHITESPACE = [" ", "\t", "\u00a0", "\u3000", "\u2009", "\u200a", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\r"]
#: Other scripts, emoji (with skin tones and ZWJ sequences), combining marks, ligatures, private use.
SCRIPTS = ["汉字和平", "العربية", "עברית", "русский язык", "ελληνικά", "हिन्दी", "日本語のテキスト", "한국어",
           "🙂👍🏽", "👨\u200d👩\u200d👧", "🇩🇪🇬🇧", "e\u0301", "ﬁ", "\U000f0000", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "Ⅻ"]
#: Byte strings that are not UTF-8: a stray continuation byte, a cut sequence, an encoded surrogate, overlong "/".
INVALID_UTF8 = [b"\xff", b"\x80", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf", b"caf\xe9"]
LONG_LINE_CHARS = 100_000


@dataclass
class Tally:
    """What a fuzzing run did; `failures` keeps the first few problems verbatim."""

    counts: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def add(self, key: str, amount: int = 1) -> None:
        self.counts[key] += amount

    def fail(self, kind: str, detail: str) -> None:
        self.counts[kind] += 1
        if len(self.failures) < 20:
            self.failures.append(f"{kind}: {detail}")

    @property
    def bad(self) -> int:
        return self.counts["crash"] + self.counts["unclear_error"] + self.counts["wrong_result"]

    def line(self, what: str) -> str:
        return f"{what}: " + ", ".join(f"{key}={value}" for key, value in sorted(self.counts.items()))


# ----------------------------------------------------------------------------------------------------------------
# Corpora
# ----------------------------------------------------------------------------------------------------------------

#: (name, suffix handling) of every input format the data module reads.
FORMATS = ("text", "text.gz", "jsonl", "jsonl-translation", "parquet", "parquet-translation")
#: One fault per corpus at most; "none" corpora must be handled, the others refused with a clear error.
FAULTS = ("none", "invalid_utf8", "misaligned", "misspelled_language", "renamed_columns", "non_text_value")
FAULTS_OF_FORMAT = {
    "text": ("none", "invalid_utf8", "misaligned", "misspelled_language"),
    "text.gz": ("none", "invalid_utf8", "misaligned", "misspelled_language"),
    "jsonl": ("none", "invalid_utf8", "misspelled_language", "renamed_columns", "non_text_value"),
    "jsonl-translation": ("none", "invalid_utf8", "misspelled_language", "renamed_columns", "non_text_value"),
    "parquet": ("none", "misspelled_language", "renamed_columns", "non_text_value"),
    "parquet-translation": ("none", "misspelled_language", "renamed_columns"),
}


@dataclass
class CorpusCase:
    """A generated corpus: its format, its (source, target) rows (None: the value is missing) and at most one fault."""

    format: str
    rows: list[tuple[str | None, str | None]]
    kinds: list[str]  # what was planted in each row: real, empty, blank, control, scripts, long, missing
    fault: str = "none"
    fault_row: int = 0
    invalid_bytes: bytes = b""
    misaligned_by: int = 0
    wrong_language: str = ""
    crlf: bool = False
    bom: bool = False
    final_newline: bool = True

    def summary(self) -> str:
        kinds = dict(Counter(self.kinds))
        return (f"CorpusCase(format={self.format!r}, fault={self.fault!r}, rows={len(self.rows)}, kinds={kinds}, "
                f"fault_row={self.fault_row}, crlf={self.crlf}, bom={self.bom}, final_newline={self.final_newline})")


def _decorated(draw: Callable, text: str, pieces: list[str]) -> str:
    """`text` with 1-3 of `pieces` inserted at drawn positions."""
    for _ in range(draw(st.integers(1, 3))):
        position = draw(st.integers(0, len(text)))
        text = text[:position] + draw(st.sampled_from(pieces)) + text[position:]
    return text


@st.composite
def row_strategy(draw: Callable, real_pairs: list[tuple[str, str]], allow_missing: bool, allow_long: bool):
    kinds = ["real", "empty", "blank", "control", "scripts"] + (["missing"] if allow_missing else []) + (
        ["long"] if allow_long else [])
    kind = draw(st.sampled_from(kinds))
    source, target = real_pairs[draw(st.integers(0, len(real_pairs) - 1))]
    side = draw(st.sampled_from(["source", "target", "both"]))

    def on_side(make: Callable[[str], str | None]) -> tuple[str | None, str | None]:
        return (make(source) if side in ("source", "both") else source,
                make(target) if side in ("target", "both") else target)

    if kind == "empty":
        return kind, on_side(lambda _: "")
    if kind == "blank":
        return kind, on_side(lambda _: "".join(draw(st.lists(st.sampled_from(WHITESPACE), min_size=1, max_size=6))))
    if kind == "control":
        return kind, on_side(lambda text: _decorated(draw, text, CONTROL))
    if kind == "scripts":
        return kind, on_side(lambda text: _decorated(draw, text, SCRIPTS))
    if kind == "missing":
        return kind, on_side(lambda _: None)
    if kind == "long":
        unit = draw(st.sampled_from(["a dog runs ", "Hund ", "🙂", "汉字 ", "x"]))
        long_text = (unit * (LONG_LINE_CHARS // len(unit) + 1))[:LONG_LINE_CHARS]
        return kind, (long_text, target) if draw(st.booleans()) else (source, long_text)
    return kind, (source, target)


@st.composite
def corpus_strategy(draw: Callable, real_pairs: list[tuple[str, str]], formats: tuple[str, ...] = FORMATS,
                    max_rows: int = 24, faults: tuple[str, ...] = FAULTS):
    """A `CorpusCase`: 1..max_rows rows (at most two 100k-character lines), one format, at most one fault (one of
    `faults` that applies to the format)."""
    format_ = draw(st.sampled_from(formats))
    structured = not format_.startswith("text")
    count = draw(st.integers(1, max_rows))
    long_rows = set(draw(st.lists(st.integers(0, count - 1), max_size=2, unique=True)))
    planted = [draw(row_strategy(real_pairs, allow_missing=structured, allow_long=i in long_rows))
               for i in range(count)]
    case = CorpusCase(format=format_, rows=[row for _, row in planted], kinds=[kind for kind, _ in planted])
    case.fault = draw(st.sampled_from([fault for fault in FAULTS_OF_FORMAT[format_] if fault in faults]))
    case.fault_row = draw(st.integers(0, count - 1))
    case.invalid_bytes = draw(st.sampled_from(INVALID_UTF8))
    case.misaligned_by = draw(st.sampled_from([-2, -1, 1, 3]))
    case.wrong_language = draw(st.sampled_from(["dee", "DE", "ger", "deu", "de ", "german"]))
    if not structured:
        case.crlf, case.bom, case.final_newline = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
    return case


def _text_file_bytes(lines: list[str], crlf: bool, bom: bool, final_newline: bool) -> bytes:
    end = "\r\n" if crlf else "\n"
    text = end.join(lines) + (end if final_newline and lines else "")  # no lines: an empty file
    return ("\ufeff" if bom else "").encode() + text.encode("utf-8")


def write_text_corpus(case: CorpusCase, folder: Path) -> list[str]:
    """`case` as a pair of aligned plain-text files (gzipped for "text.gz"); returns their paths."""
    source_lines = [s or "" for s, _ in case.rows]
    target_lines = [t or "" for _, t in case.rows]
    if case.fault == "misaligned":
        extra = ["An extra line.", "Noch eine Zeile.", "Third.", "Vierte."]
        target_lines = (target_lines[: case.misaligned_by] if case.misaligned_by < 0
                        else target_lines + extra[: case.misaligned_by])
    final_newline = case.final_newline
    if not final_newline and (not source_lines or not source_lines[-1] or not target_lines or not target_lines[-1]):
        final_newline = case.final_newline = True  # a last empty line needs its "\n" to exist at all
    source_bytes = _text_file_bytes(source_lines, case.crlf, case.bom, final_newline)
    target_bytes = _text_file_bytes(target_lines, case.crlf, case.bom, final_newline)
    if case.fault == "invalid_utf8":  # planted at the start of line `fault_row` of the source file
        offset = sum(len(line.encode()) + (2 if case.crlf else 1) for line in source_lines[: case.fault_row])
        offset += 3 if case.bom else 0
        source_bytes = source_bytes[:offset] + case.invalid_bytes + source_bytes[offset:]
    suffix = ".gz" if case.format == "text.gz" else ""
    paths = [folder / f"corpus.de{suffix}", folder / f"corpus.en{suffix}"]
    for path, data in zip(paths, (source_bytes, target_bytes)):
        path.write_bytes(gzip.compress(data, mtime=0) if suffix else data)
    return [str(p) for p in paths]


def write_jsonl_corpus(case: CorpusCase, path: Path, source_key: str, target_key: str) -> None:
    lines = []
    for index, (source, target) in enumerate(case.rows):
        pair = {key: value for key, value in ((source_key, source), (target_key, target)) if value is not None}
        if case.fault == "non_text_value" and index == case.fault_row:
            pair[source_key] = 42
        row = {"translation": pair} if case.format == "jsonl-translation" else pair
        lines.append(json.dumps(row, ensure_ascii=False).encode("utf-8"))
    if case.fault == "invalid_utf8":  # inside the row's first string value
        line = lines[case.fault_row]
        quote = line.index(b'": "') + 4 if b'": "' in line else None
        if quote is None:  # a row with no string value: give it one
            line = b'{"de": "", "en": ""}' if case.format == "jsonl" else b'{"translation": {"de": ""}}'
            quote = line.index(b'": "') + 4
        lines[case.fault_row] = line[:quote] + case.invalid_bytes + line[quote:]
    path.write_bytes(b"\n".join(lines) + b"\n")


def write_parquet_corpus(case: CorpusCase, path: Path, source_key: str, target_key: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sources, targets = [s for s, _ in case.rows], [t for _, t in case.rows]
    if case.fault == "non_text_value":
        source_column = pa.array(list(range(len(sources))), pa.int64())
    else:
        source_column = pa.array(sources, pa.string())
    target_column = pa.array(targets, pa.string())
    if case.format == "parquet-translation":
        table = pa.table({"translation": pa.StructArray.from_arrays([source_column, target_column],
                                                                    names=[source_key, target_key])})
    else:
        table = pa.table({source_key: source_column, target_key: target_column})
    pq.write_table(table, path)


def write_corpus(case: CorpusCase, folder: Path) -> dict[str, Any]:
    """Write `case` under `folder`; returns the data module arguments (data_files, languages)."""
    folder.mkdir(parents=True, exist_ok=True)
    arguments: dict[str, Any] = {"source_lang": "de", "target_lang": "en"}
    keys = ("german", "english") if case.fault == "renamed_columns" else ("de", "en")
    if case.format.startswith("text"):
        arguments["data_files"] = {"train": write_text_corpus(case, folder)}
    elif case.format.startswith("jsonl"):
        write_jsonl_corpus(case, folder / "corpus.jsonl", *keys)
        arguments["data_files"] = {"train": str(folder / "corpus.jsonl")}
    else:
        write_parquet_corpus(case, folder / "corpus.parquet", *keys)
        arguments["data_files"] = {"train": str(folder / "corpus.parquet")}
    if case.fault == "misspelled_language":
        arguments["source_lang"] = case.wrong_language
    return arguments


def text_as_read(case: CorpusCase, row: int, value: str | None) -> str:
    """What the data module must read for one planted value: missing values and text-file line handling applied
    (a "\\r" before the "\\n" is dropped, and a byte order mark at the start of a file)."""
    text = value or ""
    if case.format.startswith("text"):
        if case.crlf:
            text += "\r"
        text = text.removesuffix("\r")
        if row == 0:
            text = (("\ufeff" if case.bom else "") + text).removeprefix("\ufeff")
    return text


def expected_report(case: CorpusCase, token_length: Callable[[str], int], max_length: int, max_ratio: float):
    """The training cleaning report and kept rows the documented rules give: pairs with a blank side are "empty";
    pairs over `max_length` tokens on a side are "too_long"; pairs whose longer side has more than `max_ratio` times
    the tokens of the shorter one are "bad_ratio"; training drops all three (overlong="drop")."""
    counts = Counter(total=len(case.rows))
    kept, sources = [], []
    for index, (source, target) in enumerate(case.rows):
        source, target = text_as_read(case, index, source), text_as_read(case, index, target)
        if not source.strip() or not target.strip():
            counts["empty"] += 1
            continue
        source_length, target_length = token_length(source), token_length(target)
        bad_ratio = max(source_length, target_length) > max_ratio * min(source_length, target_length)
        too_long = max(source_length, target_length) > max_length
        counts["bad_ratio"] += bad_ratio
        counts["too_long"] += too_long
        if not bad_ratio and not too_long:
            kept.append(index)
            sources.append(source)
    counts["kept"] = len(kept)
    counts["dropped"] = len(case.rows) - len(kept)
    report = {key: counts[key] for key in ("total", "kept", "dropped", "empty", "too_long", "bad_ratio", "truncated")}
    return report, kept, sources


def expected_error(case: CorpusCase) -> tuple[type, list[str]] | None:
    """(exception type, regexes its message must match) for a corpus that must be refused, None otherwise.

    In the order the data module checks: the files' encoding, the alignment of a text pair, the columns, the values.
    """
    structured = not case.format.startswith("text")
    if case.fault == "invalid_utf8":
        name = "corpus.jsonl" if structured else "corpus.de"
        return ValueError, [re.escape(name), rf"not valid UTF-8: line {case.fault_row + 1} ", "Convert the file"]
    if case.fault == "misaligned":
        target_count = max(0, len(case.rows) + case.misaligned_by)
        return ValueError, ["not aligned", rf"'[^']*corpus\.de[^']*' has {len(case.rows)} lines",
                            rf"'[^']*corpus\.en[^']*' has {target_count}\b"]
    if case.fault == "misspelled_language":  # text files: their suffixes (.de, .en) name other languages
        return ValueError, [re.escape(f"source_lang={case.wrong_language!r}"), "corpus"]
    if not structured:  # a text pair's columns are named after source_lang/target_lang
        return None
    columns = ["source_lang='de'|target_lang='en'", "corpus"]
    if case.fault == "renamed_columns":
        return ValueError, columns
    no_source = all(source is None for source, _ in case.rows)
    no_target = all(target is None for _, target in case.rows)
    if case.format.startswith("jsonl") and (no_source or no_target):
        if case.fault != "non_text_value" or no_target:
            return ValueError, columns  # JSON has no column (or no key) for a language no row has
    if case.fault == "non_text_value":
        if case.format.startswith("parquet"):
            return ValueError, [r"column 'de' has type Value\('int64'\), not text", "corpus.parquet"]
        column = "translation.de" if case.format == "jsonl-translation" else "de"
        # Mixed with strings, the column is typed Json and checked row by row; alone, it is an int column.
        return ValueError, [rf"row {case.fault_row}: column '{column}' holds a value of type int|"
                            rf"column '{column}' has type Value\('int64'\), not text", "corpus.jsonl"]
    return None


def check_corpus(case: CorpusCase, root: Path, tokenizer_path: str, token_length: Callable[[str], int],
                 tally: Tally) -> None:
    """Build a data module on `case`, prepare its training split, and record the outcome in `tally`."""
    from lightning_modules.data import TranslationDataModule

    folder = Path(tempfile.mkdtemp(dir=root))
    try:
        arguments = write_corpus(case, folder / "data")
        tally.add("corpora")
        tally.add(f"format:{case.format}")
        tally.add(f"fault:{case.fault}")
        for kind in case.kinds:
            tally.add(f"planted_rows:{kind}")
        error_spec = expected_error(case)
        report, kept, sources = expected_report(case, token_length, max_length=256, max_ratio=9.0)
        if error_spec is None and not kept:
            error_spec = (ValueError, [r"cleaning dropped all \d+ pairs", "corpus"])
        try:
            dm = TranslationDataModule(
                **arguments, validation_split="train", test_split="train", tokenizer_path=tokenizer_path,
                cache_dir=str(folder / "cache"), max_source_length=256, max_target_length=256,
                max_length_ratio=9.0, max_tokens=4096,
            )
            split = dm.tokenized_split("train")
        except Exception as error:  # noqa: BLE001 - classifying every outcome is the point
            message = f"{type(error).__name__}: {error}"
            if error_spec is None:
                tally.fail("unclear_error" if isinstance(error, (ValueError, TypeError)) else "crash",
                           f"{case.summary()} -> {message[:500]}")
            elif not isinstance(error, error_spec[0]):
                tally.fail("crash", f"{case.summary()} -> {message[:500]}")
            elif not all(re.search(pattern, str(error)) for pattern in error_spec[1]):
                missing = [p for p in error_spec[1] if not re.search(p, str(error))]
                tally.fail("unclear_error", f"{case.summary()} -> {message[:500]} (missing {missing})")
            else:
                tally.add("refused_clearly")
            return
        if error_spec is not None:
            tally.fail("wrong_result", f"{case.summary()} was accepted, expected {error_spec}")
            return
        got = dm.cleaning_report["train"]
        if got != report:
            tally.fail("wrong_result", f"{case.summary()}: report {got} != expected {report}")
            return
        if split["id"] != kept or split["source"] != sources:
            tally.fail("wrong_result", f"{case.summary()}: kept rows {split['id']} != expected {kept}")
            return
        tally.add("handled")
        for key in ("empty", "too_long", "bad_ratio"):
            tally.add(f"reported_{key}", report[key])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# translate(), the pipeline, generate()
# ----------------------------------------------------------------------------------------------------------------


@st.composite
def text_strategy(draw: Callable, real_texts: list[str], overlong: str):
    kind = draw(st.sampled_from(["real", "real", "empty", "blank", "control", "control", "scripts", "scripts",
                                 "surrogate", "overlong"]))
    text = draw(st.sampled_from(real_texts))
    if kind == "empty":
        text = ""
    elif kind == "blank":
        text = "".join(draw(st.lists(st.sampled_from(WHITESPACE), min_size=1, max_size=5)))
    elif kind == "control":
        text = _decorated(draw, text, CONTROL + ["\n"])
    elif kind == "scripts":
        text = _decorated(draw, text, SCRIPTS)
    elif kind == "surrogate":
        text = _decorated(draw, text, ["\ud800", "\udfff", "\udc80"])
    elif kind == "overlong":
        text = overlong
    return kind, text


@dataclass
class TranslateCase:
    texts: list[str]
    kinds: list[str]
    num_beams: Any
    batch_size: Any
    truncation: bool
    use_pipeline: bool

    def summary(self) -> str:
        return (f"TranslateCase(kinds={self.kinds}, num_beams={self.num_beams!r}, batch_size={self.batch_size!r}, "
                f"truncation={self.truncation}, pipeline={self.use_pipeline})")


@st.composite
def translate_strategy(draw: Callable, real_texts: list[str], overlong: str, max_texts: int = 5):
    planted = draw(st.lists(text_strategy(real_texts, overlong), min_size=1, max_size=max_texts))
    return TranslateCase(
        texts=[text for _, text in planted], kinds=[kind for kind, _ in planted],
        num_beams=draw(st.sampled_from([1, 1, 1, 2, 2, 0, -1, 1.5])),
        batch_size=draw(st.sampled_from([1, 2, 3, 1, 2, 0])),
        truncation=draw(st.booleans()),
        use_pipeline=draw(st.booleans()),
    )


def translate_expected_errors(case: TranslateCase, token_counts: list[int], max_positions: int):
    """Every (type, patterns) error that applies to `case`; the call must raise one of them, or succeed if none.

    Which one comes first depends on the path (translate() checks all texts before generating; the pipeline checks
    and generates item by item, a batch at a time), so any applicable one is accepted, never an unrelated one.
    """
    specs = []
    for index, kind in enumerate(case.kinds):
        if kind == "surrogate":
            specs.append((ValueError, [rf"texts\[{0 if case.use_pipeline else index}\] is not valid Unicode",
                                       "lone surrogate", "errors='replace'"]))
        elif not case.truncation and token_counts[index] > max_positions:
            specs.append((ValueError, [rf"Input {0 if case.use_pipeline else index} has {token_counts[index]} tokens",
                                       rf"at most {max_positions}", "truncation=True"]))
    bad_beams = isinstance(case.num_beams, bool) or not isinstance(case.num_beams, int) or case.num_beams < 1
    if bad_beams and (not case.use_pipeline or any(text.strip() for text in case.texts)):
        specs.append((ValueError, [r"`num_beams` must be a positive integer", re.escape(repr(case.num_beams))]))
    if case.batch_size < 1:
        specs.append((ValueError, [r"`?batch_size`? (must|should) be a positive integer"]))
    return specs


def check_translate(case: TranslateCase, model: Any, tokenizer: Any, pipe: Any, reference: Callable[[str, int], str],
                    tally: Tally) -> None:
    """Run `translate()` or the pipeline on `case` and record the outcome in `tally`."""
    from hf_transformer import translate

    tally.add("calls")
    tally.add("pipeline_calls" if case.use_pipeline else "translate_calls")
    for kind in case.kinds:
        tally.add(f"planted_texts:{kind}")
    token_counts = [len(tokenizer(text)["input_ids"]) if "surrogate" not in kind else 0
                    for kind, text in zip(case.kinds, case.texts)]
    specs = translate_expected_errors(case, token_counts, model.config.max_position_embeddings)
    try:
        if case.use_pipeline:
            out = pipe(case.texts, batch_size=case.batch_size, num_beams=case.num_beams, truncation=case.truncation)
            outputs = [item["translation_text"] for item in out]
        else:
            outputs = translate(case.texts, model, tokenizer, batch_size=case.batch_size, num_beams=case.num_beams,
                                truncation=case.truncation)
    except Exception as error:  # noqa: BLE001
        message = f"{type(error).__name__}: {error}"
        if not specs:
            tally.fail("unclear_error" if isinstance(error, (ValueError, TypeError)) else "crash",
                       f"{case.summary()} -> {message[:400]}")
        elif not any(isinstance(error, kind) and all(re.search(p, str(error)) for p in patterns)
                     for kind, patterns in specs):
            tally.fail("unclear_error", f"{case.summary()} -> {message[:400]} (expected one of {specs})")
        else:
            tally.add("refused_clearly")
        return
    if specs:
        tally.fail("wrong_result", f"{case.summary()} succeeded, expected one of {specs}")
        return
    expected = [reference(text, case.num_beams) if text.strip() else "" for text in case.texts]
    if outputs != expected:
        tally.fail("wrong_result", f"{case.summary()}: {outputs!r} != one-by-one {expected!r}")
        return
    tally.add("handled")


@dataclass
class GenerateCase:
    rows: list[list[int]]  # token ids per row (right-padded with 0 into a batch)
    kind: str

    def summary(self) -> str:
        return f"GenerateCase(kind={self.kind!r}, lengths={[len(r) for r in self.rows]})"


@st.composite
def generate_strategy(draw: Callable, vocab_size: int, max_positions: int):
    kind = draw(st.sampled_from(["valid", "valid", "mixed_lengths", "mixed_lengths", "empty", "out_of_vocab",
                                 "negative", "too_long"]))
    batch = draw(st.integers(1, 4))
    lengths = [draw(st.integers(1, 12)) for _ in range(batch)]
    if kind == "valid":
        lengths = [lengths[0]] * batch
    if kind == "empty":
        lengths = [0] * batch
    if kind == "too_long":
        lengths[0] = max_positions + draw(st.integers(1, 20))
    rows = [[draw(st.integers(4, vocab_size - 1)) for _ in range(length)] for length in lengths]
    rows = [row[:-1] + [2] if row else row for row in rows]  # each source ends in </s>
    if kind in ("out_of_vocab", "negative"):
        row = draw(st.integers(0, batch - 1))
        rows[row][0] = vocab_size + draw(st.integers(0, 1000)) if kind == "out_of_vocab" else -draw(st.integers(1, 5))
    return GenerateCase(rows=rows, kind=kind)


def check_generate(case: GenerateCase, model: Any, tally: Tally) -> None:
    """`model.generate` on raw ids: valid batches generate; bad ones raise a ValueError saying what is wrong."""
    import torch

    tally.add("calls")
    tally.add("generate_calls")
    tally.add(f"generate:{case.kind}")
    width = max(len(row) for row in case.rows)
    input_ids = torch.zeros(len(case.rows), width, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for index, row in enumerate(case.rows):
        input_ids[index, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[index, : len(row)] = 1
    spec = {
        "empty": [r"source `input_ids` are empty"],
        "out_of_vocab": [r"ids outside \[0, \d+\]", "vocab_size"],
        "negative": [r"ids outside \[0, \d+\]", "vocab_size"],
        "too_long": [r"source sequence has \d+ positions", "max_position_embeddings"],
    }.get(case.kind)
    try:
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=2, max_length=5)
    except Exception as error:  # noqa: BLE001
        message = f"{type(error).__name__}: {error}"
        if spec is None:
            tally.fail("crash", f"{case.summary()} -> {message[:400]}")
        elif not isinstance(error, ValueError) or not all(re.search(p, str(error)) for p in spec):
            tally.fail("unclear_error", f"{case.summary()} -> {message[:400]}")
        else:
            tally.add("refused_clearly")
        return
    if spec is not None:
        tally.fail("wrong_result", f"{case.summary()} generated instead of refusing")
        return
    if output.shape[0] != len(case.rows) or output.shape[1] > 5 or not bool((output >= 0).all()):
        tally.fail("wrong_result", f"{case.summary()}: output shape {tuple(output.shape)}")
        return
    tally.add("handled")
