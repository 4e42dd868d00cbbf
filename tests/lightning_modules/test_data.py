"""Tests of `TranslationDataModule` (`lightning_modules/data/translation.py`, on `corpus.py`) and `NumbersDataModule`
(`synthetic.py`).

Real text: the first few thousand Multi30k pairs, written in three layouts that must give the same examples: a local
copy of the hub dataset `bentrevett/multi30k` (a folder with a README `configs:` block and parquet files with flat
`en`/`de` columns), jsonl files with a `translation` column, and pairs of gzipped plain-text files.

Expected behaviour: wrong languages/columns, missing splits and misaligned files raise errors naming what exists;
cleaning drops empty/overlong/badly proportioned training pairs and reports every count; the tokenizer is trained
once and then loaded from the cache; batches have the documented keys with -100 on label padding; a checkpointed
state makes the train loader skip the batches already trained (checked against a real `Trainer` resume);
streaming yields token-budget batches covering the split once.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import datasets
import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from data_utils import multi30k_lines, write_hub_layout
from helpers import REPO_ROOT

import lightning_modules.data.translation as data_module
from lightning_modules.data import LABEL_PAD_ID, REPORT_KEYS, TranslationDataModule
from lightning_modules.data.synthetic import NumbersDataModule, english_number, german_number, number_splits

SIZES = {"train": 2000, "validation": 300, "test": 300}
FILES = {"train": "train", "validation": "val", "test": "test_2016_flickr"}
VOCAB_SIZE = 1000
BATCH_KEYS = {"input_ids", "attention_mask", "labels", "ids", "sources", "references"}


@pytest.fixture(scope="module", autouse=True)
def datasets_cache(tmp_path_factory):
    """Keep `datasets`' own cache (raw local datasets) inside the test's temporary folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_datasets_cache")))
        yield


@pytest.fixture(scope="module")
def pairs() -> dict[str, tuple[list[str], list[str]]]:
    """(German, English) lines per split."""
    return {
        split: (multi30k_lines(f"{name}.de.gz", SIZES[split]), multi30k_lines(f"{name}.en.gz", SIZES[split]))
        for split, name in FILES.items()
    }


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def _write_gz(path: Path, lines: list[str]) -> str:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))
    return str(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, pairs) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("corpus")
    hub = write_hub_layout(root / "multi30k", {s: {"en": en, "de": de} for s, (de, en) in pairs.items()})
    jsonl = {
        split: _write_jsonl(root / f"{split}.jsonl", [{"translation": {"de": d, "en": e}} for d, e in zip(de, en)])
        for split, (de, en) in pairs.items()
    }
    text = {
        split: [_write_gz(root / f"{split}.de.gz", de), _write_gz(root / f"{split}.en.gz", en)]
        for split, (de, en) in pairs.items()
    }
    return SimpleNamespace(root=root, hub=str(hub), jsonl=jsonl, text=text)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def hub_module(corpus, cache_dir) -> TranslationDataModule:
    """The hub-layout data module, prepared for fit and test (its tokenizer is trained here)."""
    dm = TranslationDataModule(dataset=corpus.hub, vocab_size=VOCAB_SIZE, cache_dir=cache_dir, max_tokens=1024)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    return dm


def _make(corpus_or_files, cache_dir, **kwargs) -> TranslationDataModule:
    kwargs.setdefault("vocab_size", VOCAB_SIZE)
    kwargs.setdefault("max_tokens", 1024)
    if isinstance(corpus_or_files, str):
        return TranslationDataModule(dataset=corpus_or_files, cache_dir=cache_dir, **kwargs)
    return TranslationDataModule(data_files=corpus_or_files, cache_dir=cache_dir, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Layouts and errors
# ----------------------------------------------------------------------------------------------------------------


def test_three_layouts_give_the_same_examples(corpus, cache_dir, pairs, hub_module):
    tokenizer_path = str(hub_module.tokenizer_cache_path())
    modules = {
        "hub": hub_module,
        "jsonl": _make(corpus.jsonl, cache_dir, tokenizer_path=tokenizer_path),
        "text": _make(corpus.text, cache_dir, tokenizer_path=tokenizer_path),
    }
    for role in ("train", "validation", "test"):
        german, english = pairs[role]
        columns = {}
        for name, dm in modules.items():
            split = dm.tokenized_split(role)
            columns[name] = split.select_columns(["id", "source", "target", "input_ids", "labels"]).to_dict()
        assert columns["hub"] == columns["jsonl"] == columns["text"], role
        hub = columns["hub"]
        kept = hub["id"]
        assert hub["source"] == [german[i] for i in kept] and hub["target"] == [english[i] for i in kept]
        assert len(kept) >= 0.97 * SIZES[role]  # Multi30k is clean: almost nothing dropped
    assert modules["hub"].cleaning_report == modules["text"].cleaning_report


def test_properties_for_the_model(hub_module, corpus):
    dm = hub_module
    assert (dm.pad_token_id, dm.bos_token_id, dm.eos_token_id, dm.decoder_start_token_id) == (0, 1, 2, 1)
    assert dm.vocab_size == len(dm.tokenizer) <= VOCAB_SIZE
    assert (dm.source_lang, dm.target_lang) == ("de", "en")
    assert dm.dataset_name == corpus.hub


def test_missing_language_lists_what_the_dataset_has(corpus, cache_dir, tmp_path):
    with pytest.raises(ValueError, match=r"split 'train' of dataset .*no columns for source_lang='fr'.*'en', 'de'"):
        _make(corpus.hub, cache_dir, source_lang="fr").tokenizer
    with pytest.raises(ValueError, match=r"split 'train' .*'translation' column has languages \['de', 'en'\].*'cs'"):
        _make(corpus.jsonl, cache_dir, target_lang="cs").tokenizer
    misspelled = write_hub_layout(tmp_path / "misspelled", {"train": {"en": ["a b"], "german": ["c d"]}})
    with pytest.raises(ValueError, match=r"no columns for source_lang='de'.*columns \['en', 'german'\]"):
        _make(str(misspelled), cache_dir).tokenizer


def test_misaligned_plain_text_files(tmp_path, cache_dir, pairs):
    german, english = pairs["validation"]
    files = [_write_gz(tmp_path / "a.de.gz", german[:10]), _write_gz(tmp_path / "a.en.gz", english[:9])]
    with pytest.raises(ValueError, match=r"not aligned: '.*a\.de\.gz' has 10 lines but '.*a\.en\.gz' has 9"):
        _make({"train": files}, cache_dir).tokenizer
    with pytest.raises(ValueError, match=r"plain-text data must be a pair of aligned files"):
        _make({"train": files[:1]}, cache_dir)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        _make({"train": str(tmp_path / "nope.jsonl")}, cache_dir)


def test_missing_splits_and_split_slices(corpus, cache_dir, hub_module):
    tokenizer_path = str(hub_module.tokenizer_cache_path())
    dm = _make(corpus.hub, cache_dir, validation_split="dev", tokenizer_path=tokenizer_path)
    with pytest.raises(ValueError, match=r"split 'dev' of dataset .* does not exist .*'train', 'validation', 'test'"
                                         r".*validation_split: 'train\[:1000\]'"):
        dm.setup("validate")
    only_train = {"train": corpus.jsonl["train"]}
    dm = _make(only_train, cache_dir, tokenizer_path=tokenizer_path)
    with pytest.raises(ValueError, match=r"data_files has no entry for split 'validation': it has \['train'\]"):
        dm.setup("fit")
    # A corpus with a train split only (like opus_books): carve validation out of it.
    dm = _make(only_train, cache_dir, tokenizer_path=tokenizer_path, train_split="train[200:]",
               validation_split="train[:200]", test_split="train[-5%:]")
    dm.setup("fit")
    dm.setup("test")
    assert dm.cleaning_report["validation"]["total"] == 200
    assert dm.cleaning_report["train"]["total"] == SIZES["train"] - 200
    assert dm.cleaning_report["test"]["total"] == SIZES["train"] // 20
    validation_sources = set(dm.tokenized_split("validation")["source"])
    assert not validation_sources & set(dm.tokenized_split("train")["source"][:50])
    with pytest.raises(ValueError, match="train_split: split 'train\\[:10' is not a split name"):
        _make(only_train, cache_dir, train_split="train[:10")


def test_bad_arguments_are_explained(corpus, cache_dir):
    with pytest.raises(ValueError, match="give one of dataset .* and data_files .*, not both"):
        TranslationDataModule(dataset=corpus.hub, data_files=corpus.jsonl)
    with pytest.raises(ValueError, match="split 'train' needs a corpus: give dataset .* or data_files"):
        _ = TranslationDataModule(cache_dir=cache_dir).tokenizer  # a source is needed once a split is read
    with pytest.raises(ValueError, match="exactly one of max_tokens and batch_size.*set the other to null"):
        _make(corpus.hub, cache_dir, batch_size=32)
    with pytest.raises(ValueError, match=r"max_tokens=100 is smaller than the longest allowed example"):
        _make(corpus.hub, cache_dir, max_tokens=100)
    with pytest.raises(ValueError, match="overlong must be 'drop' or 'truncate'"):
        _make(corpus.hub, cache_dir, overlong="cut")
    with pytest.raises(ValueError, match="source_lang and target_lang must differ"):
        _make(corpus.hub, cache_dir, source_lang="en")


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer cache and cleaning
# ----------------------------------------------------------------------------------------------------------------


def test_tokenizer_is_trained_once_then_loaded(corpus, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="lightning_modules.data")
    first = _make(corpus.text, str(tmp_path), vocab_size=600)
    vocabulary = first.tokenizer.get_vocab()
    folder = first.tokenizer_cache_path()
    assert (folder / "tokenizer.json").is_file() and "training a 600-token joint BPE tokenizer" in caplog.text
    stamp = (folder / "tokenizer.json").stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("the tokenizer was trained again instead of loaded from the cache")

    monkeypatch.setattr(data_module, "train_tokenizer", no_training)
    caplog.clear()
    second = _make(corpus.text, str(tmp_path), vocab_size=600)
    assert second.tokenizer.get_vocab() == vocabulary
    assert "loading the cached tokenizer" in caplog.text
    assert (folder / "tokenizer.json").stat().st_mtime_ns == stamp
    # Other settings, other cache entry.
    assert _make(corpus.text, str(tmp_path), vocab_size=700).tokenizer_cache_path() != folder
    assert _make(corpus.jsonl, str(tmp_path), vocab_size=600).tokenizer_cache_path() != folder


def test_cleaning_report_counts_every_dropped_pair(tmp_path, cache_dir, pairs, hub_module, caplog):
    german, english = pairs["train"]
    german, english = german[:300], english[:300]
    long_german = " ".join(german[100:112])  # far over 64 tokens
    injected = [
        ("", "An empty source."),  # empty
        ("Ein leeres Ziel.", "   "),  # whitespace-only
        ("\t", ""),  # both
        (long_german, " ".join(english[100:112])),  # too long, ratio fine
        ("Ein Hund.", " ".join(english[200:212])),  # too long and bad ratio
        ("Ja.", " ".join(english[20:23])),  # bad ratio only
        ("Nein.", " ".join(english[30:33])),  # bad ratio only
    ]
    real_rows = [{"de": d, "en": e} for d, e in zip(german, english)]
    clean_path = _write_jsonl(tmp_path / "clean.jsonl", real_rows)
    dirty_path = _write_jsonl(tmp_path / "dirty.jsonl", real_rows + [{"de": d, "en": e} for d, e in injected])
    settings = dict(tokenizer_path=str(hub_module.tokenizer_cache_path()), max_source_length=64,
                    max_target_length=64, max_length_ratio=4.0)
    clean = _make({"train": clean_path, "validation": clean_path}, cache_dir, **settings)
    clean.setup("fit")
    tokenizer = clean.tokenizer
    lengths = [(len(tokenizer(d)["input_ids"]), len(tokenizer(e)["input_ids"])) for d, e in injected[3:]]
    assert [max(s, t) > 64 for s, t in lengths] == [True, True, False, False]
    assert [max(s, t) > 4 * min(s, t) for s, t in lengths] == [False, True, True, True]

    def added(report: dict[str, int], baseline: dict[str, int]) -> dict[str, int]:
        return {key: report[key] - baseline[key] for key in REPORT_KEYS}

    caplog.set_level(logging.INFO, logger="lightning_modules.data")
    dropping = _make({"train": dirty_path, "validation": dirty_path}, cache_dir, **settings)
    dropping.setup("fit")
    train = dropping.cleaning_report["train"]
    assert set(train) == set(REPORT_KEYS) and train["kept"] + train["dropped"] == train["total"]
    assert added(train, clean.cleaning_report["train"]) == {
        "total": 7, "kept": 0, "dropped": 7, "empty": 3, "too_long": 2, "bad_ratio": 3, "truncated": 0}
    kept_sources = set(dropping.tokenized_split("train")["source"])
    assert not kept_sources & {d for d, _ in injected}
    assert "train (split 'train'" in caplog.text and "cleaning report" in caplog.text

    # Validation: empty pairs cannot be scored (dropped), bad ratios are only reported, overlong ones truncated.
    validation = dropping.cleaning_report["validation"]
    assert added(validation, clean.cleaning_report["validation"]) == {
        "total": 7, "kept": 4, "dropped": 3, "empty": 3, "too_long": 2, "bad_ratio": 3, "truncated": 2}
    split = dropping.tokenized_split("validation")
    assert {"Ja.", "Nein.", "Ein Hund.", long_german} <= set(split["source"])
    assert max(split["source_length"]) <= 64 and max(split["target_length"]) <= 64
    row = split["source"].index(long_german)
    assert split["input_ids"][row][-1] == tokenizer.eos_token_id and len(split["input_ids"][row]) == 64
    assert split["target"][row] == " ".join(english[100:112])  # the reference stays whole

    truncating = _make({"train": dirty_path, "validation": dirty_path}, cache_dir, overlong="truncate", **settings)
    truncating.setup("fit")
    baseline = _make({"train": clean_path, "validation": clean_path}, cache_dir, overlong="truncate", **settings)
    baseline.setup("fit")
    # The too-long pair with a fine ratio is kept, truncated; the one with a bad ratio is still dropped.
    assert added(truncating.cleaning_report["train"], baseline.cleaning_report["train"]) == {
        "total": 7, "kept": 1, "dropped": 6, "empty": 3, "too_long": 2, "bad_ratio": 3, "truncated": 1}
    split = truncating.tokenized_split("train")
    row = split["source"].index(long_german)
    assert len(split["input_ids"][row]) == 64 and split["input_ids"][row][-1] == tokenizer.eos_token_id
    assert "Ein Hund." not in split["source"]


# ----------------------------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------------------------


def test_train_batches(hub_module, pairs):
    dm = hub_module
    torch_state = torch.get_rng_state()
    loader = dm.train_dataloader()
    batches = list(loader)
    assert torch.equal(torch.get_rng_state(), torch_state)  # the loader has its own generator
    assert len(batches) == len(loader)
    assert 0 < dm.train_padding_fraction < 0.1
    german, english = pairs["train"]
    seen = []
    for batch in batches:
        assert set(batch) == BATCH_KEYS
        input_ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        assert input_ids.dtype == mask.dtype == labels.dtype == batch["ids"].dtype == torch.long
        assert input_ids.shape == mask.shape and labels.shape[0] == input_ids.shape[0] == len(batch["ids"])
        assert torch.equal(mask, (input_ids != dm.pad_token_id).long())
        assert max(input_ids.shape[1], labels.shape[1]) * input_ids.shape[0] <= 1024
        label_lengths = (labels != LABEL_PAD_ID).sum(dim=1)
        assert torch.all(labels[torch.arange(len(labels)), label_lengths - 1] == dm.eos_token_id)
        assert (labels[labels < 0] == LABEL_PAD_ID).all() and (labels != dm.pad_token_id).all()
        assert label_lengths.max() == labels.shape[1] and mask.sum(dim=1).max() == input_ids.shape[1]
        ids = batch["ids"].tolist()
        assert batch["sources"] == [german[i] for i in ids] and batch["references"] == [english[i] for i in ids]
        decoded = dm.tokenizer.batch_decode(input_ids, skip_special_tokens=True)
        assert decoded == [unicodedata.normalize("NFC", text) for text in batch["sources"]]
        seen.extend(ids)
    assert sorted(seen) == sorted(dm.tokenized_split("train")["id"])


def test_eval_batches_are_sorted_and_sharded(hub_module):
    dm = hub_module
    split = dm.tokenized_split("validation")
    batches = list(dm.test_dataloader())
    assert all(set(batch) == BATCH_KEYS for batch in batches)
    ids = [i for batch in batches for i in batch["ids"].tolist()]
    assert sorted(ids) == sorted(dm.tokenized_split("test")["id"])
    assert [len(batch["ids"]) for batch in batches][:-1] == [64] * (len(batches) - 1)
    longest = [max(batch["input_ids"].shape[1], batch["labels"].shape[1]) for batch in batches]
    assert longest == sorted(longest)
    # validation: the same kind of batches in a fixed random order (a limit on batches keeps every length)
    validation = [batch["ids"].tolist() for batch in dm.val_dataloader()]
    assert sorted(i for ids in validation for i in ids) == sorted(split["id"])
    assert validation == [batch["ids"].tolist() for batch in dm.val_dataloader()]
    # Two ranks: disjoint, together everything, uneven allowed.
    shards = []
    for rank in (0, 1):
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank, is_global_zero=rank == 0)
        try:
            shards.append([i for batch in dm.test_dataloader() for i in batch["ids"].tolist()])
        finally:
            dm.trainer = None
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == sorted(dm.tokenized_split("test")["id"])


def test_resume_state_skips_the_trained_batches(corpus, cache_dir, hub_module):
    full = [batch["ids"].tolist() for batch in hub_module.train_dataloader()]
    state = hub_module.state_dict()  # no trainer: the sampler's own count (a whole epoch was iterated)
    assert state["epoch"] == 0 and state["batches_done"] == len(full)
    assert {"seed", "num_replicas", "max_tokens", "num_batches"} <= set(state)

    resumed = _make(corpus.hub, cache_dir)
    resumed.load_state_dict({**state, "batches_done": 5, "epoch_finished": False})
    resumed.setup("fit")
    rest = [batch["ids"].tolist() for batch in resumed.train_dataloader()]
    assert rest == full[5:]
    resumed._train_sampler.set_epoch(1)
    assert len(list(resumed._train_sampler)) == len(full)  # the next epoch is complete


class _TinyModule(pl.LightningModule):
    """Records the ids of every batch it sees; one embedding so there is something to optimize."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab_size, 4)
        self.train_ids: list[tuple[int, list[int]]] = []
        self.eval_ids: list[int] = []

    def training_step(self, batch, batch_idx):
        self.train_ids.append((self.current_epoch, batch["ids"].tolist()))
        return self.embedding(batch["input_ids"]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.eval_ids.extend(batch["ids"].tolist())

    def predict_step(self, batch, batch_idx):
        assert set(batch) == {"input_ids", "attention_mask", "ids", "sources"}
        return batch["ids"].tolist()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(tmp_path: Path, **kwargs) -> pl.Trainer:
    kwargs.setdefault("enable_checkpointing", "callbacks" in kwargs)
    return pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=2, use_distributed_sampler=False, logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        default_root_dir=tmp_path, **kwargs,
    )


# Lightning warns on any mid-epoch resume unless the DataLoader object itself is stateful; here the data module is.
@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before the epoch ended")
@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_lightning_fit_resumes_mid_epoch_exactly(corpus, cache_dir, hub_module, tmp_path):
    """A real Trainer: checkpoints saved mid-epoch resume onto exactly the batches the full run trained next."""
    per_epoch = len(hub_module.train_dataloader())  # same settings as `dm` below
    callbacks = [
        pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1,
                                     filename="{epoch}-{step}"),
        # In on_train_batch_end of the epoch's last batch, and in on_train_epoch_end.
        pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "last_batch", every_n_train_steps=per_epoch, save_top_k=-1,
                                     filename="{epoch}-{step}"),
        pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "epoch_end", every_n_epochs=1, save_top_k=-1,
                                     filename="{epoch}-{step}"),
    ]
    model = _TinyModule(hub_module.vocab_size)
    dm = _make(corpus.hub, cache_dir)
    _trainer(tmp_path, callbacks=callbacks).fit(model, datamodule=dm)
    full = model.train_ids
    assert len(full) == 2 * per_epoch
    epochs = [[ids for epoch, ids in full if epoch == e] for e in (0, 1)]
    # Lightning advanced the sampler's epoch: each epoch is the sampler's order for that epoch.
    assert epochs[0] != epochs[1]
    for epoch in (0, 1):
        dm._train_sampler.set_epoch(epoch)
        order = dm._train_sampler.epoch_batches()
        split_ids = dm.tokenized_split("train")["id"]
        assert epochs[epoch] == [[split_ids[i] for i in batch] for batch in order]

    mid_epoch1 = (per_epoch // 4 + 1) * 4
    assert 8 < per_epoch < mid_epoch1 < 2 * per_epoch
    for step in (8, mid_epoch1):  # checkpoints saved every 4 steps, in on_train_batch_end
        path = next((tmp_path / "ckpt").glob(f"*-step={step}.ckpt"))
        state = torch.load(path, weights_only=False)["TranslationDataModule"]
        assert state["batches_done"] == step % per_epoch and state["epoch"] == step // per_epoch
        resumed_model = _TinyModule(hub_module.vocab_size)
        _trainer(tmp_path).fit(resumed_model, datamodule=_make(corpus.hub, cache_dir), ckpt_path=path)
        assert resumed_model.train_ids == full[step:]

    # Checkpoints at the end of epoch 0: the state says the epoch is finished; epoch 1 is then trained in full.
    for folder in ("last_batch", "epoch_end"):
        path = next((tmp_path / folder).glob(f"epoch=0-step={per_epoch}.ckpt"))
        state = torch.load(path, weights_only=False)["TranslationDataModule"]
        assert (state["epoch"], state["batches_done"], state["epoch_finished"]) == (0, per_epoch, True)
        resumed_model = _TinyModule(hub_module.vocab_size)
        _trainer(tmp_path).fit(resumed_model, datamodule=_make(corpus.hub, cache_dir), ckpt_path=path)
        assert resumed_model.train_ids == full[per_epoch:], folder


# Lightning warns for any batch sampler it cannot re-create with drop_last=False; EvalBatchSampler drops nothing.
@pytest.mark.filterwarnings("ignore:You are using a custom batch sampler `EvalBatchSampler` for prediction")
def test_lightning_validate_and_predict(hub_module, corpus, cache_dir, tmp_path, pairs):
    german = pairs["test"][0][:50] + ["", "Ein Satz, der sehr lang ist. " * 30]
    predict_file = tmp_path / "sources.de.txt"
    predict_file.write_text("\n".join(german) + "\n", encoding="utf-8")
    dm = _make(corpus.hub, cache_dir, predict_file=str(predict_file), eval_batch_size=16)
    model = _TinyModule(dm.vocab_size)
    trainer = pl.Trainer(accelerator="cpu", devices=1, use_distributed_sampler=False, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         default_root_dir=tmp_path)
    trainer.validate(model, datamodule=dm)
    assert sorted(model.eval_ids) == sorted(dm.tokenized_split("validation")["id"])
    predictions = trainer.predict(model, datamodule=dm)
    assert sorted(i for batch in predictions for i in batch) == list(range(len(german)))
    assert dm.cleaning_report["predict"]["truncated"] == 1 and dm.cleaning_report["predict"]["dropped"] == 0


DDP_SCRIPT = """
import json, sys
import lightning.pytorch as pl
import torch
from lightning_modules.data import TranslationDataModule

class Recorder(pl.LightningModule):
    def __init__(self, vocab_size):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab_size, 4)
        self.train_ids, self.val_ids = [], []
    def training_step(self, batch, batch_idx):
        self.train_ids.append([self.current_epoch, batch["ids"].tolist()])
        return self.embedding(batch["input_ids"]).pow(2).mean()
    def validation_step(self, batch, batch_idx):
        self.val_ids.extend(batch["ids"].tolist())
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

dataset, cache_dir, out = sys.argv[1:4]
dm = TranslationDataModule(dataset=dataset, vocab_size=1000, cache_dir=cache_dir, max_tokens=1024)
model = Recorder(dm.vocab_size)
trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, use_distributed_sampler=False,
                     logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                     num_sanity_val_steps=0, limit_val_batches=1.0, check_val_every_n_epoch=2)
trainer.fit(model, datamodule=dm)
with open(f"{out}/rank{trainer.global_rank}.json", "w") as handle:
    json.dump({"train": model.train_ids, "val": model.val_ids, "batches": len(dm._train_sampler)}, handle)
"""


def test_ddp_two_processes(corpus, cache_dir, hub_module, tmp_path):
    """Two CPU ranks (gloo), as `Trainer(strategy="ddp", devices=2)` launches them: equal, disjoint shards."""
    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_DATASETS_CACHE": str(tmp_path / "hf_datasets_cache"), "TOKENIZERS_PARALLELISM": "false"}
    # The cache_dir holds the tokenizer trained by `hub_module`: ranks load it.
    result = subprocess.run([sys.executable, str(script), corpus.hub, cache_dir, str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    train_ids = set(hub_module.tokenized_split("train")["id"])
    assert ranks[0]["batches"] == ranks[1]["batches"] == len(hub_module.train_dataloader()) // 2
    for epoch in (0, 1):
        seen = [[i for e, ids in rank["train"] if e == epoch for i in ids] for rank in ranks]
        steps = [sum(1 for e, _ in rank["train"] if e == epoch) for rank in ranks]
        assert steps == [ranks[0]["batches"]] * 2
        assert not set(seen[0]) & set(seen[1]) and len(seen[0]) == len(set(seen[0]))
        assert set(seen[0]) | set(seen[1]) <= train_ids
        assert len(set(seen[0]) | set(seen[1])) >= len(train_ids) - 64  # at most the one odd batch is left out
    validation = [set(rank["val"]) for rank in ranks]
    assert not validation[0] & validation[1]
    assert validation[0] | validation[1] == set(hub_module.tokenized_split("validation")["id"])


# ----------------------------------------------------------------------------------------------------------------
# Streaming
# ----------------------------------------------------------------------------------------------------------------


def test_streaming_training_batches(corpus, cache_dir, hub_module):
    tokenizer_path = str(hub_module.tokenizer_cache_path())
    dm = _make(corpus.hub, cache_dir, streaming=True, tokenizer_path=tokenizer_path, streaming_buffer_size=500)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.cleaning_report["validation"] == hub_module.cleaning_report["validation"]
    loader = dm.train_dataloader()
    epoch0 = [batch["ids"].tolist() for batch in loader]
    expected = sorted(hub_module.tokenized_split("train")["id"])
    assert sorted(i for ids in epoch0 for i in ids) == expected
    batches = list(loader)
    assert all(set(batch) == BATCH_KEYS for batch in batches)
    assert all(batch["input_ids"].numel() <= 1024 and batch["labels"].numel() <= 1024 for batch in batches)
    assert [batch["ids"].tolist() for batch in batches] == epoch0  # same epoch, same order
    # Batches never mix buffers: each batch's ids lie within one block of 500 stream rows.
    assert all(len({i // 500 for i in ids}) == 1 for ids in epoch0)
    dm.trainer = SimpleNamespace(world_size=1, global_rank=0, is_global_zero=True,
                                 fit_loop=SimpleNamespace(epoch_progress=SimpleNamespace(
                                     current=SimpleNamespace(processed=1))))
    try:
        epoch1 = [batch["ids"].tolist() for batch in dm.train_dataloader()]
    finally:
        dm.trainer = None
    assert epoch1 != epoch0 and sorted(i for ids in epoch1 for i in ids) == expected
    with pytest.raises(ValueError, match="cannot resume mid-epoch with streaming=True"):
        dm.load_state_dict({"epoch": 0, "batches_done": 3, "epoch_finished": False})
    dm.load_state_dict({"epoch": 0, "batches_done": len(epoch0), "epoch_finished": True})  # end of epoch: fine


def test_streaming_shards_by_rank(corpus, cache_dir, hub_module):
    tokenizer_path = str(hub_module.tokenizer_cache_path())
    dm = _make(corpus.hub, cache_dir, streaming=True, tokenizer_path=tokenizer_path)
    shards = []
    for rank in (0, 1):
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank, is_global_zero=rank == 0,
                                     fit_loop=SimpleNamespace(epoch_progress=SimpleNamespace(
                                         current=SimpleNamespace(processed=0))))
        try:
            shards.append({i for batch in dm.train_dataloader() for i in batch["ids"].tolist()})
        finally:
            dm.trainer = None
    assert not shards[0] & shards[1]
    assert len(shards[0] | shards[1]) == len(hub_module.tokenized_split("train"))


# ----------------------------------------------------------------------------------------------------------------
# The synthetic numbers corpus
# ----------------------------------------------------------------------------------------------------------------

GERMAN = {
    0: "null", 1: "eins", 7: "sieben", 11: "elf", 16: "sechzehn", 17: "siebzehn", 21: "einundzwanzig",
    30: "dreißig", 101: "einhunderteins", 1000: "eintausend", 1001: "eintausendeins",
    999999: "neunhundertneunundneunzigtausendneunhundertneunundneunzig",
    432105: "vierhundertzweiunddreißigtausendeinhundertfünf", 101000: "einhunderteintausend",
    21000: "einundzwanzigtausend", 71: "einundsiebzig", 60: "sechzig", 12: "zwölf", 200: "zweihundert",
    1100: "eintausendeinhundert", 16016: "sechzehntausendsechzehn", 700007: "siebenhunderttausendsieben",
}
ENGLISH = {
    0: "zero", 21: "twenty-one", 40213: "forty thousand two hundred thirteen", 100: "one hundred",
    432105: "four hundred thirty-two thousand one hundred five", 1000: "one thousand", 90: "ninety",
    999999: "nine hundred ninety-nine thousand nine hundred ninety-nine", 101000: "one hundred one thousand",
}


@pytest.mark.parametrize("number", sorted(GERMAN))
def test_german_number_words(number):
    assert german_number(number) == GERMAN[number]


@pytest.mark.parametrize("number", sorted(ENGLISH))
def test_english_number_words(number):
    assert english_number(number) == ENGLISH[number]


def test_number_words_reject_out_of_range():
    for bad in (-1, 1_000_000, 2.0, True):
        with pytest.raises(ValueError, match=r"number must be an int in \[0, 999999\]"):
            german_number(bad)


def test_number_splits_are_disjoint_seeded_and_log_uniform():
    splits = number_splits(20000, 500, 1000, seed=0)
    assert {name: len(set(numbers)) for name, numbers in splits.items()} == {
        "train": 20000, "validation": 500, "test": 1000}
    train, validation, test = (set(splits[name]) for name in ("train", "validation", "test"))
    assert not train & validation and not train & test and not validation & test
    assert number_splits(20000, 500, 1000, seed=0) == splits and number_splits(20000, 500, 1000, seed=1) != splits
    numbers = np.array(splits["train"])
    assert set(range(100)) <= train  # small numbers appear (each once: the numbers are distinct)
    # Spread over the magnitudes: uniform draws would put 1% below 10,000, log-uniform ones (before removing
    # repeats) two thirds.
    assert 0.2 < np.mean(numbers < 10_000) < 0.7 and np.mean(numbers >= 100_000) > 0.1


def test_numbers_data_module(tmp_path):
    dm = NumbersDataModule(num_train=3000, num_validation=100, num_test=100, cache_dir=str(tmp_path), max_tokens=512)
    assert (dm.source_lang, dm.target_lang) == ("en", "de") and dm.vocab_size <= 500
    assert (dm.tokenizer_cache_path() / "tokenizer.json").is_file()
    dm.prepare_data()
    dm.setup("fit")
    assert dm.cleaning_report["train"]["kept"] == 3000
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == BATCH_KEYS
    for source, reference in zip(batch["sources"], batch["references"]):
        assert " " not in reference and reference[0].islower()
    validation = next(iter(dm.val_dataloader()))
    assert set(validation["references"]) <= {german_number(n) for n in number_splits(3000, 100, 100, 0)["validation"]}
    # A second module with the same arguments reuses the files and the tokenizer.
    again = NumbersDataModule(num_train=3000, num_validation=100, num_test=100, cache_dir=str(tmp_path), max_tokens=512)
    assert again.tokenizer_cache_path() == dm.tokenizer_cache_path()
