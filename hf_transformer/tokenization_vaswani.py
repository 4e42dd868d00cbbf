"""Joint source/target byte-level BPE tokenizer (Vaswani et al. 2017, §3.4 and §5.1: one shared BPE vocabulary).

Why byte-level BPE (as GPT-2 and BART in `transformers`): every string falls back to its UTF-8 bytes, so no input
(any script, emoji, control characters) ever becomes `<unk>`; detokenization is lossless, so sacreBLEU can score
the decoded text directly; and the backend is a plain `tokenizers` BPE that `AutoTokenizer` saves and reloads.
`<unk>` is still declared because the model contract needs the four special tokens, but it is never emitted.

Pipeline: NFC normalization, then a space is always prepended (`Prepend(" ")`, the "add prefix space" of BART
applied even when the text already starts with whitespace), the GPT-2 byte-level split, and a `</s>` appended by
the post-processor. The decoder maps bytes back and strips that single prepended space, so
`decode(encode(text), skip_special_tokens=True) == unicodedata.normalize("NFC", text)` for every string.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sized
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"

#: Fixed ids of the special tokens: the trainer gives them the first ids in this order.
SPECIAL_TOKEN_IDS: dict[str, int] = {PAD_TOKEN: 0, BOS_TOKEN: 1, EOS_TOKEN: 2, UNK_TOKEN: 3}

#: Number of byte symbols of the byte-level alphabet, always part of the vocabulary.
BYTE_ALPHABET_SIZE = 256

#: Smallest accepted `vocab_size`: the byte alphabet and the special tokens plus at least one merge.
MIN_VOCAB_SIZE = BYTE_ALPHABET_SIZE + len(SPECIAL_TOKEN_IDS) + 1

_SPECIAL_TOKEN_ATTRIBUTES: dict[str, str] = {
    PAD_TOKEN: "pad_token",
    BOS_TOKEN: "bos_token",
    EOS_TOKEN: "eos_token",
    UNK_TOKEN: "unk_token",
}


def _check_positive_int(name: str, value: object, minimum: int) -> None:
    """Raise a ValueError naming `name` unless `value` is an int (not a bool) of at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _validated_texts(texts: Iterable[str], counter: list[int]) -> Iterator[str]:
    """Yield `texts` unchanged, rejecting None or non-str items and counting the non-blank ones in `counter[0]`."""
    for index, text in enumerate(texts):
        if text is None:
            raise ValueError(f"texts[{index}] is None: every text of the corpus must be a str")
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] must be a str, got {type(text).__name__}")
        if text.strip():
            counter[0] += 1
        yield text


def _build_backend() -> Tokenizer:
    """An untrained byte-level BPE `tokenizers.Tokenizer` with the normalizer, pre-tokenizer and decoder set."""
    backend = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    backend.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Prepend(" ")])
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    # ByteLevel joins all tokens into one string, so Strip removes only the one space the normalizer prepended.
    backend.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Strip(content=" ", left=1, right=0)])
    return backend


def append_eos(backend: Tokenizer) -> None:
    """Check the special tokens' ids and make the tokenizer append `</s>` to every sequence (pairs too)."""
    for token, expected_id in SPECIAL_TOKEN_IDS.items():
        actual_id = backend.token_to_id(token)
        if actual_id != expected_id:  # would be a bug of this module or of `tokenizers`, never of the input
            raise RuntimeError(f"special token {token} got id {actual_id}, expected {expected_id}")
    eos_id = SPECIAL_TOKEN_IDS[EOS_TOKEN]
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A:0 {EOS_TOKEN}:0",
        pair=f"$A:0 {EOS_TOKEN}:0 $B:1 {EOS_TOKEN}:1",
        special_tokens=[(EOS_TOKEN, eos_id)],
    )


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 37000,
    min_frequency: int = 2,
    model_max_length: int = 1024,
    show_progress: bool = False,
) -> PreTrainedTokenizerFast:
    """Train a joint byte-level BPE tokenizer on `texts` (source and target sentences together).

    Args:
        texts: Any iterable of str, lists and generators alike (use `iter_parallel_texts` for sentence pairs).
        vocab_size: Target vocabulary size, special tokens included (the paper uses about 37000). The result has
            exactly this size unless the corpus runs out of pairs seen `min_frequency` times, then fewer.
        min_frequency: A pair of symbols must occur at least this often to be merged.
        model_max_length: Longest sequence the model accepts; stored on the returned tokenizer.
        show_progress: Show the `tokenizers` progress bar.

    Returns:
        A `PreTrainedTokenizerFast` with `<pad>`=0, `<s>`=1, `</s>`=2, `<unk>`=3 that appends `</s>` to every
        sequence and pads on the right.
    """
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be an iterable of str (e.g. a list of sentences), not a single string")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size must be an int >= {MIN_VOCAB_SIZE} ({BYTE_ALPHABET_SIZE} byte symbols + "
            f"{len(SPECIAL_TOKEN_IDS)} special tokens + at least one merge), got {vocab_size!r}"
        )
    _check_positive_int("min_frequency", min_frequency, 1)
    _check_positive_int("model_max_length", model_max_length, 1)

    backend = _build_backend()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKEN_IDS),  # in id order: the trainer numbers them 0..3
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    non_blank = [0]
    length = len(texts) if isinstance(texts, Sized) else None
    backend.train_from_iterator(_validated_texts(texts, non_blank), trainer=trainer, length=length)
    if non_blank[0] == 0:
        raise ValueError(
            "texts: the corpus is empty (no non-blank text); pass the source and target sentences, "
            "e.g. train_tokenizer(iter_parallel_texts(zip(sources, targets)))"
        )

    append_eos(backend)

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def iter_parallel_texts(pairs: Iterable[tuple[str, str]]) -> Iterator[str]:
    """Yield the source then the target of each (source, target) pair, lazily: one stream for a joint vocabulary."""
    for source, target in pairs:
        yield source
        yield target


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Load a tokenizer folder written by `save_pretrained` and check its special token ids.

    Raises:
        FileNotFoundError: `path` is not a folder.
        ValueError: The tokenizer is not a fast one, or a special token is missing or has another id than
            `SPECIAL_TOKEN_IDS` says.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder {str(folder)!r} does not exist or is not a folder")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise ValueError(f"tokenizer in {str(folder)!r} is a {type(tokenizer).__name__}, not a fast tokenizer")
    for token, expected_id in SPECIAL_TOKEN_IDS.items():
        attribute = _SPECIAL_TOKEN_ATTRIBUTES[token]
        declared = getattr(tokenizer, attribute)
        actual_id = tokenizer.convert_tokens_to_ids(token)
        if declared != token or actual_id != expected_id:
            raise ValueError(
                f"tokenizer in {str(folder)!r}: special token {token} must be its {attribute} with id "
                f"{expected_id}, found {attribute}={declared!r} and id {actual_id!r}"
            )
    return tokenizer


__all__ = [
    "PAD_TOKEN",
    "BOS_TOKEN",
    "EOS_TOKEN",
    "UNK_TOKEN",
    "SPECIAL_TOKEN_IDS",
    "MIN_VOCAB_SIZE",
    "train_tokenizer",
    "iter_parallel_texts",
    "load_tokenizer",
]
