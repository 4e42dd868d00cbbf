"""`FixedVocabularyDataModule`: what the music and pixel data modules share. Their vocabulary is fixed by the kind of
data (MIDI pitches, pixel intensities), not trained: a word-level tokenizer with the project's four special tokens
first (`<pad>`=0, `<s>`=1, `</s>`=2, `<unk>`=3), then one token per symbol. It is written once under
`cache_dir/tokenizers/` (the per-user cache unless `cache_dir` is given) and read like any tokenizer folder, so the
corpus layer (`corpus.py`: sources, splits, shuffled resumable batches, DDP sharding), the exported model folder
(`HFExportCallback` saves it beside the weights) and the run record (`hf-transformer test --ckpt_path CKPT` hands
the checkpoint's copy back as `tokenizer_path`, checked to be the same vocabulary) treat it as a trained one.

Every example is `<s>` followed by the symbols' ids; batches are those of `LanguageModelingDataModule`
(`input_ids`, `attention_mask`, `labels` = the inputs with -100 on padding, `ids`), so `CausalLanguageModule` trains
on them unchanged: position t predicts token t + 1, and the loss per token is the NLL per symbol.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerFast

from hf_transformer.tokenization_vaswani import (
    BOS_TOKEN,
    EOS_TOKEN,
    PAD_TOKEN,
    SPECIAL_TOKEN_IDS,
    UNK_TOKEN,
    load_tokenizer,
)

from ..runs import cache_dir as user_cache_dir
from .corpus import CorpusDataModule, cached_tokenizer, check_int, digest
from .language_modeling import LanguageModelingCollator

#: The id of the first symbol: the special tokens come first.
FIRST_SYMBOL_ID = len(SPECIAL_TOKEN_IDS)


def word_level_tokenizer(symbols: list[str], model_max_length: int) -> PreTrainedTokenizerFast:
    """A tokenizer whose vocabulary is the special tokens (ids 0..3) then `symbols` (ids 4, 5, ...), one token per
    whitespace-separated word: `decode` gives the symbols' names, `tokenizer("60 64 rest")` their ids."""
    vocabulary = {**SPECIAL_TOKEN_IDS, **{symbol: FIRST_SYMBOL_ID + index for index, symbol in enumerate(symbols)}}
    if len(vocabulary) != FIRST_SYMBOL_ID + len(symbols):
        raise ValueError(f"the symbols must be distinct and differ from the special tokens, got {symbols!r}")
    backend = Tokenizer(models.WordLevel(vocabulary, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN,
                                   pad_token=PAD_TOKEN, unk_token=UNK_TOKEN, model_max_length=model_max_length)


class FixedVocabularyDataModule(CorpusDataModule):
    """A corpus of symbol sequences with a fixed vocabulary (see the module docstring). A subclass names its symbols
    (`symbols`), reads its rows (`check_rows`) and builds the examples of a role (`build_examples`: a Dataset of
    `{"input_ids": ids starting with <s>, "id": index}` and the lengths of its examples)."""

    #: Names the cached tokenizer folder (with a digest of the symbols).
    tokenizer_kind = "symbols"

    def __init__(
        self,
        dataset: str,
        dataset_config: str | None,
        revision: str | None,
        splits: dict[str, str],
        symbols: list[str],
        batch_size: int,
        eval_batch_size: int,
        cache_dir: str | None,
        num_workers: int,
        seed: int,
        tokenizer_path: str | None = None,
    ) -> None:
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            check_int(name, value, 1)
        cache_dir = str(user_cache_dir()) if cache_dir is None else cache_dir
        if tokenizer_path is None:
            folder = Path(cache_dir) / "tokenizers" / f"{self.tokenizer_kind}-{digest(symbols, 12)}"
            tokenizer = cached_tokenizer(folder, lambda: word_level_tokenizer(symbols, model_max_length=1 << 20))
        else:  # the one a checkpoint or an exported folder brings: it must be this fixed vocabulary
            folder = Path(tokenizer_path)
            tokenizer = load_tokenizer(folder)
            expected = word_level_tokenizer(symbols, model_max_length=1 << 20).get_vocab()
            if tokenizer.get_vocab() != expected:
                raise ValueError(
                    f"tokenizer_path {tokenizer_path!r} is not the fixed vocabulary of {type(self).__name__} "
                    f"({len(expected)} tokens: the special tokens, then {symbols[0]!r} ... {symbols[-1]!r}); leave "
                    "tokenizer_path unset (None) and the data module writes its own"
                )
        super().__init__(dataset, dataset_config, revision, None, splits, str(folder), len(tokenizer), cache_dir,
                         num_workers, seed)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self._examples: dict[str, tuple[Dataset, np.ndarray]] = {}

    def build_examples(self, role: str) -> tuple[Dataset, np.ndarray]:
        """The examples of `role` ("train", "validation", "test") and their lengths in tokens."""
        raise NotImplementedError

    def examples(self, role: str) -> tuple[Dataset, np.ndarray]:
        if role not in self._examples:
            self._examples[role] = self.build_examples(role)
        return self._examples[role]

    def prepare_role(self, role: str) -> None:
        if role == "predict":
            raise ValueError(f"{type(self).__name__} has no predict stage: use fit, validate or test (and the "
                             "model's generate() to sample)")
        self.examples(role)

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches of `batch_size` examples (a function of seed and epoch), sharded, resumable mid-epoch."""
        examples, lengths = self.examples("train")
        return self.train_loader(examples, lengths, LanguageModelingCollator(self.pad_token_id), None, self.batch_size)

    def evaluation_loader(self, role: str) -> DataLoader:
        examples, lengths = self.examples(role)
        return self.eval_loader(examples, lengths, LanguageModelingCollator(self.pad_token_id), None,
                                self.eval_batch_size)

    def val_dataloader(self) -> DataLoader:
        return self.evaluation_loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self.evaluation_loader("test")


__all__ = ["FIRST_SYMBOL_ID", "FixedVocabularyDataModule", "word_level_tokenizer"]
