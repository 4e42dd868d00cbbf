"""The quickstart corpus, generated locally: English number words -> German number words (0 to 999,999).

The task needs real reordering and composition, not copying: German puts the ones before the tens
("twenty-one" -> "einundzwanzig") and writes a number as one word
("four hundred thirty-two thousand one hundred five" -> "vierhundertzweiunddreißigtausendeinhundertfünf").
Numbers are drawn log-uniformly (so small ones appear), training numbers are distinct, and the validation and test
numbers are held out: disjoint from the training numbers and from each other.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from ..runs import cache_dir as user_cache_dir
from .translation import TranslationDataModule

LARGEST = 999_999

#: Most numbers drawn over all splits (half of [0, LARGEST]).
MAX_DRAWN = 500_000

_EN_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
            "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_EN_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]

_DE_ONES = ["null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun", "zehn", "elf",
            "zwölf", "dreizehn", "vierzehn", "fünfzehn", "sechzehn", "siebzehn", "achtzehn", "neunzehn"]
_DE_TENS = ["", "", "zwanzig", "dreißig", "vierzig", "fünfzig", "sechzig", "siebzig", "achtzig", "neunzig"]


def _check_number(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= LARGEST:
        raise ValueError(f"number must be an int in [0, {LARGEST}], got {n!r}")


def _english_below_1000(n: int) -> str:
    """1..999 in English words ("two hundred thirteen", "forty-two")."""
    hundreds, rest = divmod(n, 100)
    words = [f"{_EN_ONES[hundreds]} hundred"] if hundreds else []
    if rest >= 20:
        tens, ones = divmod(rest, 10)
        words.append(_EN_TENS[tens] + (f"-{_EN_ONES[ones]}" if ones else ""))
    elif rest:
        words.append(_EN_ONES[rest])
    return " ".join(words)


def english_number(n: int) -> str:
    """`n` in English words, tens and ones hyphenated, no "and": 40213 -> "forty thousand two hundred thirteen"."""
    _check_number(n)
    if n == 0:
        return "zero"
    thousands, rest = divmod(n, 1000)
    words = [f"{_english_below_1000(thousands)} thousand"] if thousands else []
    if rest:
        words.append(_english_below_1000(rest))
    return " ".join(words)


def _german_below_100(n: int, final: bool) -> str:
    """1..99 in German; a lone 1 is "eins" at the end of a number, "ein" before "hundert"/"tausend"."""
    if n == 1:
        return "eins" if final else "ein"
    if n < 20:
        return _DE_ONES[n]
    tens, ones = divmod(n, 10)
    if not ones:
        return _DE_TENS[tens]
    return ("ein" if ones == 1 else _DE_ONES[ones]) + "und" + _DE_TENS[tens]


def _german_below_1000(n: int, final: bool) -> str:
    """1..999 in German ("einhundertfünf"); `final` says whether nothing follows (see `_german_below_100`)."""
    hundreds, rest = divmod(n, 100)
    word = _german_below_100(hundreds, final=False) + "hundert" if hundreds else ""
    return word + (_german_below_100(rest, final) if rest else "")


def german_number(n: int) -> str:
    """`n` as one German word: 21 -> "einundzwanzig", 101 -> "einhunderteins", 1000 -> "eintausend"."""
    _check_number(n)
    if n == 0:
        return "null"
    thousands, rest = divmod(n, 1000)
    word = _german_below_1000(thousands, final=False) + "tausend" if thousands else ""
    return word + (_german_below_1000(rest, final=True) if rest else "")


def draw_numbers(count: int, rng: np.random.Generator, exclude: set[int]) -> list[int]:
    """`count` distinct numbers in [0, LARGEST], log-uniform (n + 1 is log-uniform in [1, LARGEST + 1]), none of
    them in `exclude`."""
    if count + len(exclude) > MAX_DRAWN:
        raise ValueError(
            f"at most {MAX_DRAWN} distinct numbers can be drawn in all (rejection sampling slows down beyond), asked "
            f"for {count} besides {len(exclude)} already drawn"
        )
    drawn: list[int] = []
    seen = set(exclude)
    log_top = math.log(LARGEST + 1)
    while len(drawn) < count:
        for value in np.floor(np.exp(rng.uniform(0.0, log_top, size=2 * (count - len(drawn)) + 16))).astype(int) - 1:
            value = int(min(max(value, 0), LARGEST))
            if value not in seen:
                seen.add(value)
                drawn.append(value)
                if len(drawn) == count:
                    break
    return drawn


def number_splits(num_train: int, num_validation: int, num_test: int, seed: int) -> dict[str, list[int]]:
    """Distinct log-uniform numbers per split; validation and test are disjoint from train and each other."""
    rng = np.random.default_rng(seed)
    train = draw_numbers(num_train, rng, exclude=set())
    validation = draw_numbers(num_validation, rng, exclude=set(train))
    test = draw_numbers(num_test, rng, exclude=set(train) | set(validation))
    return {"train": train, "validation": validation, "test": test}


def write_numbers_corpus(folder: str | os.PathLike, num_train: int, num_validation: int, num_test: int,
                         seed: int) -> dict[str, str]:
    """Write `{split}.jsonl` files of `{"en": ..., "de": ...}` lines into `folder` (kept if already there);
    returns the data_files dict."""
    folder = Path(folder)
    files = {split: str(folder / f"{split}.jsonl") for split in ("train", "validation", "test")}
    if all(Path(path).is_file() for path in files.values()):
        return files  # same arguments, same folder: written by an earlier run (keeps mtimes, so caches stay valid)
    folder.mkdir(parents=True, exist_ok=True)
    for split, numbers in number_splits(num_train, num_validation, num_test, seed).items():
        partial = Path(f"{files[split]}.partial-{os.getpid()}")
        with open(partial, "w", encoding="utf-8") as handle:
            for n in numbers:
                handle.write(json.dumps({"en": english_number(n), "de": german_number(n)}, ensure_ascii=False) + "\n")
        os.replace(partial, files[split])
    return files


class NumbersDataModule(TranslationDataModule):
    """`TranslationDataModule` on the generated English -> German number-words corpus (no download).

    The corpus is written as jsonl under `cache_dir/numbers-...` (named by its arguments) and read through the same
    local-file path as any corpus. Other arguments: see `TranslationDataModule`.

    Args:
        num_train: Training pairs (distinct numbers).
        num_validation: Held-out validation pairs.
        num_test: Held-out test pairs.
        seed: Seed of the corpus and of the batch order.
        source_lang: "en" (the quickstart: the German compound reorders ones and tens) or "de" (multi-word English
            outputs, so BLEU is informative too).
        target_lang: The other one.
    """

    def __init__(
        self,
        num_train: int = 30000,
        num_validation: int = 500,
        num_test: int = 1000,
        seed: int = 0,
        cache_dir: str | None = None,
        tokenizer_path: str | None = None,
        vocab_size: int = 500,
        max_source_length: int = 64,
        max_target_length: int = 64,
        max_tokens: int | None = 4096,
        batch_size: int | None = None,
        eval_max_tokens: int | None = None,
        eval_batch_size: int | None = 250,
        predict_file: str | None = None,
        num_workers: int = 0,
        num_proc: int = 1,
        source_lang: str = "en",
        target_lang: str = "de",
    ) -> None:
        if {source_lang, target_lang} != {"en", "de"}:
            raise ValueError(
                f"the numbers corpus has languages 'en' and 'de': use source_lang/target_lang 'en'/'de' or 'de'/'en', "
                f"got {source_lang!r}/{target_lang!r}"
            )
        for name, value, minimum in (("num_train", num_train, 1), ("num_validation", num_validation, 1),
                                     ("num_test", num_test, 1), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        self.num_train = num_train
        self.num_validation = num_validation
        self.num_test = num_test
        root = Path(cache_dir) if cache_dir is not None else user_cache_dir()
        folder = root / f"numbers-en-de-{num_train}-{num_validation}-{num_test}-seed{seed}"
        data_files = write_numbers_corpus(folder, num_train, num_validation, num_test, seed)
        super().__init__(
            data_files=data_files,
            source_lang=source_lang,
            target_lang=target_lang,
            tokenizer_path=tokenizer_path,
            vocab_size=vocab_size,
            cache_dir=cache_dir,
            max_source_length=max_source_length,
            max_target_length=max_target_length,
            max_tokens=max_tokens,
            batch_size=batch_size,
            eval_max_tokens=eval_max_tokens,
            eval_batch_size=eval_batch_size,
            predict_file=predict_file,
            num_workers=num_workers,
            num_proc=num_proc,
            seed=seed,
        )

    @property
    def dataset_name(self) -> str:
        return "synthetic English-German number words"

    def split_dataset_name(self, split: str) -> str:
        return self.dataset_name  # every split is of the generated corpus, whatever files it was written to


__all__ = ["NumbersDataModule", "english_number", "german_number", "number_splits", "write_numbers_corpus"]
