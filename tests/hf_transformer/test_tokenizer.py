"""Tests of the joint byte-level BPE tokenizer (`hf_transformer/tokenization_vaswani.py`) on real Multi30k text.

Expected behaviour checked here: `decode(encode(s), skip_special_tokens=True) == unicodedata.normalize("NFC", s)`
for every string (byte-level BPE is lossless; NFC is the only change, and leading/trailing/double spaces are kept),
`<unk>` (id 3) is never produced, and every sequence ends with `</s>` (id 2).
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from data_utils import multi30k_lines

from hf_transformer.tokenization_vaswani import (
    BOS_TOKEN,
    EOS_TOKEN,
    MIN_VOCAB_SIZE,
    PAD_TOKEN,
    SPECIAL_TOKEN_IDS,
    UNK_TOKEN,
    iter_parallel_texts,
    load_tokenizer,
    train_tokenizer,
)

NUM_PAIRS = 5000
VOCAB_SIZE = 2000


@pytest.fixture(scope="module")
def pairs() -> list[tuple[str, str]]:
    english = multi30k_lines("train.en.gz", NUM_PAIRS)
    german = multi30k_lines("train.de.gz", NUM_PAIRS)
    assert len(english) == len(german) == NUM_PAIRS
    return list(zip(english, german))


@pytest.fixture(scope="module")
def tokenizer(pairs: list[tuple[str, str]]) -> PreTrainedTokenizerFast:
    # A generator (no len), as a streaming corpus would be.
    return train_tokenizer(iter_parallel_texts(iter(pairs)), vocab_size=VOCAB_SIZE)


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _round_trip(tokenizer: PreTrainedTokenizerFast, text: str) -> str:
    return tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True)


def test_special_tokens_have_fixed_ids(tokenizer: PreTrainedTokenizerFast) -> None:
    assert SPECIAL_TOKEN_IDS == {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token) == (
        PAD_TOKEN,
        BOS_TOKEN,
        EOS_TOKEN,
        UNK_TOKEN,
    )
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (
        0,
        1,
        2,
        3,
    )
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKEN_IDS} == SPECIAL_TOKEN_IDS
    assert sorted(tokenizer.all_special_ids) == [0, 1, 2, 3]
    assert tokenizer.padding_side == "right"
    assert tokenizer.model_max_length == 1024


def test_every_sequence_ends_with_eos_and_has_no_bos(tokenizer: PreTrainedTokenizerFast) -> None:
    ids = tokenizer("Ein Hund.")["input_ids"]
    assert ids[-1] == 2
    assert ids.count(2) == 1 and 1 not in ids and 0 not in ids
    assert tokenizer("")["input_ids"] == [2]
    pair = tokenizer("A dog.", "Ein Hund.")["input_ids"]
    assert pair.count(2) == 2 and pair[-1] == 2
    assert tokenizer("A dog.", add_special_tokens=False)["input_ids"][-1] != 2
    assert tokenizer(text_target="Ein Hund.")["input_ids"] == ids


def test_vocab_size_is_exactly_the_requested_one_on_a_real_corpus(tokenizer: PreTrainedTokenizerFast) -> None:
    # The special tokens live in the BPE vocabulary itself, so nothing is added on top of `vocab_size`.
    assert tokenizer.vocab_size == VOCAB_SIZE
    assert len(tokenizer) == VOCAB_SIZE
    assert len(tokenizer.get_vocab()) == VOCAB_SIZE
    assert max(tokenizer.get_vocab().values()) == VOCAB_SIZE - 1


def test_vocab_size_is_smaller_when_the_corpus_runs_out_of_merges() -> None:
    # " aaa" -> byte symbols Ġ a a a: three merges make it one token, then no pair is left to merge.
    tiny = train_tokenizer(["aaa"] * 3, vocab_size=1000)
    assert tiny.vocab_size == 256 + len(SPECIAL_TOKEN_IDS) + 3
    assert tiny.tokenize("aaa") == ["Ġaaa"]


def test_generator_and_list_inputs_train_the_same_vocabulary(
    pairs: list[tuple[str, str]], tokenizer: PreTrainedTokenizerFast
) -> None:
    as_list = [text for pair in pairs for text in pair]
    assert train_tokenizer(as_list, vocab_size=VOCAB_SIZE).get_vocab() == tokenizer.get_vocab()


def test_iter_parallel_texts_yields_source_then_target_lazily() -> None:
    def endless() -> Iterator[tuple[str, str]]:
        index = 0
        while True:
            yield f"src {index}", f"tgt {index}"
            index += 1

    assert list(iter_parallel_texts([("a", "b"), ("c", "d")])) == ["a", "b", "c", "d"]
    assert list(islice(iter_parallel_texts(endless()), 3)) == ["src 0", "tgt 0", "src 1"]


def test_round_trip_is_exact_on_real_sentences(
    pairs: list[tuple[str, str]], tokenizer: PreTrainedTokenizerFast
) -> None:
    held_out = multi30k_lines("val.en.gz", 200) + multi30k_lines("val.de.gz", 200)
    texts = [text for pair in pairs[:200] for text in pair] + held_out
    ids = tokenizer(texts)["input_ids"]
    decoded = tokenizer.batch_decode(ids, skip_special_tokens=True)
    assert decoded == [_nfc(text) for text in texts]
    assert all(row[-1] == 2 and 3 not in row for row in ids)


@pytest.mark.parametrize(
    "text",
    [
        "Ein Hund läuft über die Straße.",
        "A dog 🐕 runs; 犬が走る; собака бежит; كلب يجري",
        "emoji with modifiers: 👩🏽‍💻 🇩🇪 ❤️",
        "control\tcharacters\x00\x01\x1b[0m\r\nand\u200bzero width",
        "double  spaces   and    more",
        " leading space",
        "   three leading spaces",
        "trailing space ",
        "\ttab first and newline last\n",
        " ",
        "",
        "spaces before punctuation , like this .",
        "Ein Hund .",
    ],
)
def test_round_trip_is_exact_on_hard_strings(tokenizer: PreTrainedTokenizerFast, text: str) -> None:
    assert _nfc(text) == text  # these are already NFC: the round trip must give them back unchanged
    ids = tokenizer(text)["input_ids"]
    assert UNK_TOKEN not in tokenizer.convert_ids_to_tokens(ids)
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.decode(ids) == text + EOS_TOKEN


def test_leading_space_is_kept_apart_from_no_space(tokenizer: PreTrainedTokenizerFast) -> None:
    # The prepended space is always added (also before existing whitespace) and always stripped on decode.
    with_space = tokenizer(" Hund")["input_ids"]
    without = tokenizer("Hund")["input_ids"]
    assert with_space != without
    assert with_space[1:] == without
    assert tokenizer.convert_ids_to_tokens(without) == ["ĠHund", EOS_TOKEN]


def test_round_trip_applies_nfc_only(tokenizer: PreTrainedTokenizerFast) -> None:
    decomposed = "Stra\u0073\u0073e mu\u0308de Cafe\u0301 \u212b"  # combining marks and the Angstrom sign
    assert _nfc(decomposed) != decomposed
    assert _round_trip(tokenizer, decomposed) == _nfc(decomposed) == "Strasse müde Café Å"
    assert tokenizer(decomposed)["input_ids"] == tokenizer(_nfc(decomposed))["input_ids"]


def test_no_unk_for_arbitrary_unicode(tokenizer: PreTrainedTokenizerFast) -> None:
    rng = random.Random(0)
    planes = [(0x0, 0x7F), (0x80, 0x7FF), (0x800, 0xD7FF), (0xE000, 0xFFFF), (0x10000, 0x10FFFF)]
    texts = []
    for _ in range(200):
        chars = []
        for _ in range(rng.randint(1, 30)):
            low, high = rng.choice(planes)
            chars.append(chr(rng.randint(low, high)))
        texts.append("".join(chars))
    ids = tokenizer(texts)["input_ids"]
    assert all(SPECIAL_TOKEN_IDS[UNK_TOKEN] not in row for row in ids)
    assert tokenizer.batch_decode(ids, skip_special_tokens=True) == [_nfc(text) for text in texts]


def test_vocabulary_is_joint_for_german_and_english(tokenizer: PreTrainedTokenizerFast) -> None:
    vocab = tokenizer.get_vocab()
    german_only = ["Straße", "ein", "und", "Hund", "Männer"]
    english_only = ["the", "and", "dog", "men", "street"]
    for word in german_only + english_only:
        # Each frequent word of either language is a single token ("Ġ" + the byte-level spelling).
        assert len(tokenizer.tokenize(word)) == 1, (word, tokenizer.tokenize(word))
    assert "ĠStraÃŁe" in vocab  # "ß" is stored as its two UTF-8 bytes
    assert len(tokenizer.tokenize("Zwei junge Männer spielen auf der Straße Fußball.")) <= 12
    assert len(tokenizer.tokenize("Two young men play soccer in the street.")) <= 10


def test_save_and_reload_gives_identical_ids(tmp_path: Path, tokenizer: PreTrainedTokenizerFast) -> None:
    batch = ["Ein Hund.", " A dog  runs ", "Straße 🐕 \x00", ""]
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()

    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(reloaded, PreTrainedTokenizerFast)
    assert reloaded(batch)["input_ids"] == tokenizer(batch)["input_ids"]
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    assert reloaded.pad_token_id == 0 and reloaded.eos_token_id == 2 and reloaded.model_max_length == 1024
    assert reloaded.batch_decode(reloaded(batch)["input_ids"], skip_special_tokens=True) == batch

    loaded = load_tokenizer(tmp_path)
    assert loaded(batch)["input_ids"] == tokenizer(batch)["input_ids"]
    assert load_tokenizer(str(tmp_path)).eos_token_id == 2


def _save_word_level(folder: Path, vocab: dict[str, int], declare_pad: bool) -> None:
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if declare_pad:
        other = PreTrainedTokenizerFast(
            tokenizer_object=backend, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, unk_token=UNK_TOKEN
        )
    else:
        other = PreTrainedTokenizerFast(
            tokenizer_object=backend, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, unk_token=UNK_TOKEN
        )
    other.save_pretrained(folder)


def test_load_tokenizer_rejects_wrong_special_ids(tmp_path: Path) -> None:
    folder = tmp_path / "unk_first"
    _save_word_level(folder, {"<unk>": 0, "<pad>": 1, "<s>": 2, "</s>": 3, "hund": 4}, declare_pad=True)
    with pytest.raises(ValueError, match=r"unk_first.*<pad>.*id 0.*id 1"):
        load_tokenizer(folder)


def test_load_tokenizer_rejects_undeclared_pad_token(tmp_path: Path) -> None:
    folder = tmp_path / "no_pad"
    _save_word_level(folder, {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "hund": 4}, declare_pad=False)
    with pytest.raises(ValueError, match=r"no_pad.*<pad>.*pad_token=None"):
        load_tokenizer(folder)


def test_load_tokenizer_rejects_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_tokenizer(tmp_path / "nowhere")


@pytest.mark.parametrize("vocab_size", [MIN_VOCAB_SIZE - 1, 100, 0, -5, 3000.0, True])
def test_too_small_or_wrong_vocab_size_is_rejected(vocab_size: object) -> None:
    with pytest.raises(ValueError, match=rf"vocab_size must be an int >= {MIN_VOCAB_SIZE}.*got {vocab_size!r}"):
        train_tokenizer(["Ein Hund.", "A dog."], vocab_size=vocab_size)  # type: ignore[arg-type]


def test_smallest_vocab_size_is_accepted() -> None:
    assert MIN_VOCAB_SIZE == 261
    assert train_tokenizer(["Ein Hund.", "Ein Hund."], vocab_size=MIN_VOCAB_SIZE).vocab_size == MIN_VOCAB_SIZE


@pytest.mark.parametrize("texts", [[], ["", "   ", "\n"], iter([])])
def test_empty_corpus_is_rejected(texts: object) -> None:
    with pytest.raises(ValueError, match=r"texts: the corpus is empty.*iter_parallel_texts"):
        train_tokenizer(texts, vocab_size=500)  # type: ignore[arg-type]


def test_none_in_corpus_is_rejected_with_its_index() -> None:
    with pytest.raises(ValueError, match=r"texts\[2\] is None"):
        train_tokenizer(["Ein Hund.", "A dog.", None, "x"], vocab_size=500)  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"texts\[1\] is None"):
        train_tokenizer(iter_parallel_texts([("A dog.", None)]), vocab_size=500)  # type: ignore[list-item]


def test_wrong_text_types_are_rejected() -> None:
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str, got bytes"):
        train_tokenizer(["Ein Hund.", b"A dog."], vocab_size=500)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="not a single string"):
        train_tokenizer("Ein Hund.", vocab_size=500)


@pytest.mark.parametrize(("name", "value"), [("min_frequency", 0), ("model_max_length", 0)])
def test_other_bad_arguments_name_the_field(name: str, value: int) -> None:
    with pytest.raises(ValueError, match=rf"{name} must be an int >= 1, got {value}"):
        train_tokenizer(["Ein Hund."], **{name: value})


def test_batch_padding_is_right_with_pad_id_zero(tokenizer: PreTrainedTokenizerFast) -> None:
    batch = ["Ein Hund.", "Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche.", "A dog."]
    unpadded = tokenizer(batch)["input_ids"]
    encoded = tokenizer(batch, padding=True, return_tensors="pt")
    input_ids, mask = encoded["input_ids"], encoded["attention_mask"]
    longest = max(len(row) for row in unpadded)
    assert input_ids.shape == mask.shape == (3, longest)
    assert input_ids.dtype == torch.long
    for row, ids in enumerate(unpadded):
        length = len(ids)
        assert input_ids[row, :length].tolist() == ids
        assert input_ids[row, length:].eq(0).all()
        assert mask[row].tolist() == [1] * length + [0] * (longest - length)
        assert input_ids[row, length - 1].item() == 2
    assert tokenizer.batch_decode(input_ids, skip_special_tokens=True) == batch
