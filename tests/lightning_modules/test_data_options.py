"""What a practitioner sets on the data side and reads in `--help` (issue 12): aligned text files matched to their
languages by suffix (or given by their prefix), a fixed representative validation sample instead of the shortest
sentences, validation batches in a fixed random order, the per-user cache, and a help text for every argument."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from data_utils import multi30k_lines
from jsonargparse import ArgumentParser

from hf_transformer import train_tokenizer
from lightning_modules.callbacks import (
    CheckpointAveragingCallback,
    HFExportCallback,
    HubPushCallback,
    PeriodicCheckpoint,
)
from lightning_modules.cli import build_cli
from lightning_modules.data import (
    CaptioningDataModule,
    LanguageModelingDataModule,
    NumbersDataModule,
    ShapesCaptioningDataModule,
    TranslationDataModule,
)
from lightning_modules.data.sampler import EvalBatchSampler
from lightning_modules.tasks import CaptioningModule, CausalLanguageModule, TranslationModule

CLI_CLASSES = [TranslationModule, CausalLanguageModule, CaptioningModule, TranslationDataModule, NumbersDataModule,
               LanguageModelingDataModule, CaptioningDataModule, ShapesCaptioningDataModule, HFExportCallback,
               CheckpointAveragingCallback, HubPushCallback, PeriodicCheckpoint]


def write_gz(path: Path, lines: list[str]) -> str:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, object]:
    """train / val file pairs of 300 Multi30k sentences, and a tokenizer trained on them."""
    root = tmp_path_factory.mktemp("files")
    german, english = multi30k_lines("val.de.gz", 300), multi30k_lines("val.en.gz", 300)
    tokenizer = root / "tokenizer"
    train_tokenizer([*german, *english], vocab_size=500).save_pretrained(tokenizer)
    for split in ("train", "val"):
        write_gz(root / f"{split}.de.gz", german)
        write_gz(root / f"{split}.en.gz", english)
    return {"root": root, "german": german, "english": english, "tokenizer": str(tokenizer)}


def module(files, tmp_path, **kwargs) -> TranslationDataModule:
    root = files["root"]
    kwargs.setdefault("data_files", {"train": [str(root / "train.de.gz"), str(root / "train.en.gz")],
                                     "validation": [str(root / "val.de.gz"), str(root / "val.en.gz")]})
    return TranslationDataModule(source_lang="de", target_lang="en", tokenizer_path=files["tokenizer"],
                                 cache_dir=str(tmp_path / "cache"), eval_batch_size=16, **kwargs)


def test_text_files_are_matched_to_their_languages_by_suffix(files, tmp_path):
    root = files["root"]
    listed_backwards = {"train": [str(root / "train.en.gz"), str(root / "train.de.gz")]}
    first = module(files, tmp_path, data_files=listed_backwards).load_split("train")[0]
    assert first == {"de": files["german"][0], "en": files["english"][0]}  # the suffix decides, not the order
    by_prefix = module(files, tmp_path, data_files={"train": str(root / "train")}).load_split("train")[0]
    assert by_prefix == first  # fairseq style: the prefix of train.de.gz and train.en.gz
    (tmp_path / "a.fr").write_text("Bonjour\n", encoding="utf-8")
    (tmp_path / "a.en").write_text("Hello\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"the file names say languages \['fr', 'en'\], not source_lang='de' and "
                                         r"target_lang='en': name the files \*.de and \*.en"):
        module(files, tmp_path, data_files={"train": [str(tmp_path / "a.fr"), str(tmp_path / "a.en")]})


def test_limited_validation_is_a_fixed_representative_sample(files, tmp_path):
    sampled = module(files, tmp_path, validation_sample=60)
    split = sampled.tokenized_split("validation")
    lengths = np.asarray(module(files, tmp_path).tokenized_split("validation")["source_length"])
    ids = sorted(split["id"])
    assert len(ids) == 60 and ids != sorted(np.argsort(lengths, kind="stable")[:60].tolist())  # not the shortest
    assert abs(np.mean(lengths[ids]) - lengths.mean()) < 0.2 * lengths.mean()  # as long as the whole split, roughly
    assert sorted(module(files, tmp_path, validation_sample=60).tokenized_split("validation")["id"]) == ids  # fixed
    assert sampled.evaluation_set("validation") == {
        "dataset": "local files: val.de.gz, val.en.gz", "split": "validation", "pairs": 60, "total": 300,
        "sample": "a fixed random sample (seed 0)"}


def test_validation_batches_come_in_a_fixed_random_order(files, tmp_path):
    """`limit_val_batches` keeps the first batches: they must not be the shortest sentences."""
    lengths = list(range(1, 201))
    shortest_first = EvalBatchSampler(lengths, batch_size=20).batches
    shuffled = EvalBatchSampler(lengths, batch_size=20, order_seed=0).batches
    assert sorted(map(tuple, shuffled)) == sorted(map(tuple, shortest_first))  # the same batches
    assert shuffled[:4] != shortest_first[:4] and shuffled == EvalBatchSampler(lengths, batch_size=20,
                                                                                order_seed=0).batches
    data = module(files, tmp_path)
    split = data.tokenized_split("validation")
    first = next(iter(data.val_dataloader().batch_sampler))
    lengths = np.stack([split["source_length"], split["target_length"]], axis=1)
    assert sorted(first) != sorted(EvalBatchSampler(lengths, batch_size=16).batches[0])  # not the shortest batch


def test_caches_go_to_the_per_user_cache(files, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TRANSFORMER_CACHE", str(tmp_path / "user-cache"))
    data = TranslationDataModule(data_files={"train": str(files["root"] / "train")}, vocab_size=400)
    assert data.cache_dir == str(tmp_path / "user-cache")
    assert data.tokenizer_cache_path().is_relative_to(tmp_path / "user-cache")
    numbers = NumbersDataModule(num_train=20, num_validation=5, num_test=5)
    assert Path(numbers.data_files["train"][0]).is_relative_to(tmp_path / "user-cache")


@pytest.mark.parametrize("cls", CLI_CLASSES, ids=[cls.__name__ for cls in CLI_CLASSES])
def test_every_argument_has_a_help_text(cls):
    parser = ArgumentParser()
    parser.add_class_arguments(cls, "x")
    text = parser.format_help()
    undocumented = []
    for name in [n for n in cls.__init__.__code__.co_varnames[1:cls.__init__.__code__.co_argcount]]:
        start = text.find(f"\n  --x.{name} ")  # its entry in the options, not the usage line
        entry = text[start + 1:text.find("\n  --", start + 1)] if start >= 0 else ""
        parts = entry.split(None, 2)  # "--x.name", "NAME", then the help text and "(type: ..., default: ...)"
        if len(parts) < 3 or not parts[2].split("(type:")[0].strip():
            undocumented.append(name)
    assert not undocumented, f"{cls.__name__}: no help text for {undocumented}"


def test_short_class_names_and_a_bare_command_are_understood(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", "--data.help", "TranslationDataModule"])
    assert exit_info.value.code == 0 and "--data.validation_sample" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "no data module given" in message and "--config quickstart" in message
