"""The Lightning side of the decoder-only model: `LanguageModelingDataModule` (text in, token sequences out) and
`CausalLanguageModule` (next-token loss, perplexity, export)."""

import gzip
import json
import math

import datasets
import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer

from hf_transformer import train_tokenizer
from lightning_modules.callbacks import HFExportCallback
from lightning_modules.data import LanguageModelingDataModule
from lightning_modules.tasks import CausalLanguageModule

WORDS = ["a dog runs in the park", "two men play football on the grass", "a woman rides a red bicycle",
         "children swim in a blue lake", "a cat sleeps on the sofa"]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm_tokenizer")
    train_tokenizer(WORDS * 10, vocab_size=300).save_pretrained(folder)
    return str(folder)


def write_text(path, lines):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return str(path)


def data_module(tmp_path, tokenizer_dir, **overrides):
    train = write_text(tmp_path / "train.txt.gz", [*WORDS * 20, "", "   "])  # two blank lines among 100 documents
    valid = write_text(tmp_path / "valid.txt", WORDS * 4)
    arguments = dict(data_files={"train": train, "validation": valid, "test": valid}, tokenizer_path=tokenizer_dir,
                     sequence_length=16, batch_size=4, eval_batch_size=8, cache_dir=str(tmp_path / "cache"))
    arguments.update(overrides)
    return LanguageModelingDataModule(**arguments)


def test_chunks_are_the_concatenated_documents_cut_into_full_sequences(tmp_path, tokenizer_dir):
    module = data_module(tmp_path, tokenizer_dir)
    module.setup("fit")
    tokenizer = module.tokenizer
    stream = [token for line in WORDS * 20 for token in tokenizer(line)["input_ids"]]  # each ends with </s>
    report = module.corpus_report["train"]
    assert report == {"rows": 102, "blank": 2, "tokens": len(stream), "sequences": len(stream) // 16}
    batch = next(iter(module.train_dataloader()))
    assert batch["input_ids"].shape == (4, 16) and bool(batch["attention_mask"].all())
    assert torch.equal(batch["labels"], batch["input_ids"])  # nothing padded: every position is scored
    for row, index in zip(batch["input_ids"].tolist(), batch["ids"].tolist()):
        assert row == stream[16 * index : 16 * index + 16]


def test_lines_start_with_bos_and_pad_with_ignored_labels(tmp_path, tokenizer_dir):
    module = data_module(tmp_path, tokenizer_dir, packing="lines", sequence_length=6)
    module.setup("fit")
    tokenizer = module.tokenizer
    assert module.corpus_report["train"]["sequences"] == 100  # the blank lines are not examples
    batch = next(iter(module.val_dataloader()))
    for row, labels, mask, index in zip(batch["input_ids"].tolist(), batch["labels"].tolist(),
                                        batch["attention_mask"].tolist(), batch["ids"].tolist()):
        expected = [tokenizer.bos_token_id, *tokenizer(WORDS[index % 5])["input_ids"]][:6]
        assert row[: len(expected)] == expected and sum(mask) == len(expected)
        assert labels == [token if keep else -100 for token, keep in zip(row, mask)]


def test_structured_files_use_the_text_column_and_errors_name_the_problem(tmp_path, tokenizer_dir):
    table = tmp_path / "train.parquet"
    datasets.Dataset.from_dict({"caption": WORDS * 10, "id": list(range(50))}).to_parquet(str(table))
    jsonl = tmp_path / "valid.jsonl"
    jsonl.write_text("".join(json.dumps({"caption": line}) + "\n" for line in WORDS), encoding="utf-8")
    files = {"train": str(table), "validation": str(jsonl)}
    module = data_module(tmp_path, tokenizer_dir, data_files=files, text_column="caption")
    module.setup("fit")
    assert module.corpus_report["validation"]["rows"] == 5

    with pytest.raises(ValueError, match=r"has no column 'text'; it has columns \['caption', 'id'\]"):
        data_module(tmp_path, tokenizer_dir, data_files=files).setup("fit")
    empty = write_text(tmp_path / "empty.txt", ["", " ", ""])
    with pytest.raises(ValueError, match="the corpus is empty"):
        data_module(tmp_path, tokenizer_dir, data_files={"train": empty}).tokenized_split("train")
    with pytest.raises(ValueError, match="fewer than one sequence of sequence_length=4096"):
        data_module(tmp_path, tokenizer_dir, sequence_length=4096).tokenized_split("validation")
    with pytest.raises(ValueError, match="packing must be one of"):
        data_module(tmp_path, tokenizer_dir, packing="documents")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        data_module(tmp_path, tokenizer_dir, data_files={"train": str(tmp_path / "missing.txt")})


def test_the_train_loader_resumes_after_the_batches_done(tmp_path, tokenizer_dir):
    module = data_module(tmp_path, tokenizer_dir)
    full = [batch["ids"].tolist() for batch in module.train_dataloader()]
    state = {**module.state_dict(), "epoch": 0, "batches_done": 3}
    resumed = data_module(tmp_path, tokenizer_dir)
    resumed.load_state_dict(state)
    assert [batch["ids"].tolist() for batch in resumed.train_dataloader()] == full[3:]
    assert [batch["ids"].tolist() for batch in resumed.train_dataloader()] == full  # the next epoch is whole


def test_the_module_learns_reports_perplexity_and_exports(tmp_path, tokenizer_dir):
    data = data_module(tmp_path, tokenizer_dir)
    torch.manual_seed(0)
    module = CausalLanguageModule(
        model_config=dict(d_model=32, decoder_layers=2, decoder_attention_heads=4, decoder_ffn_dim=64, dropout=0.0,
                          max_position_embeddings=64, position_embedding_type="relative", max_relative_position=8),
        tokenizer_fields=data.tokenizer_fields, optimizer=lambda params: torch.optim.Adam(params, lr=5e-3),
        lr_scheduler=lambda optimizer, d_model: torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0),
    )
    assert module.model.config.is_encoder_decoder is False
    trainer = Trainer(accelerator="cpu", max_steps=30, val_check_interval=30, check_val_every_n_epoch=None,
                      max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, use_distributed_sampler=False,
                      default_root_dir=str(tmp_path), callbacks=[HFExportCallback(monitor="val/loss", mode="min")])
    before = trainer.validate(module, datamodule=data, verbose=False)[0]
    assert before["val/loss"] == pytest.approx(math.log(data.vocab_size), rel=0.15)  # near uniform at init
    trainer.fit(module, datamodule=data)
    after = trainer.callback_metrics
    assert float(after["val/loss"]) < 0.5 * before["val/loss"]  # five sentences repeated: easy to learn
    assert float(after["val/ppl"]) == pytest.approx(math.exp(float(after["val/loss"])), rel=1e-4)
    assert float(after["train/tokens_per_s"]) > 0

    from transformers import AutoModelForCausalLM

    folder = tmp_path / "hf_model"
    exported = AutoModelForCausalLM.from_pretrained(folder)
    assert type(exported).__name__ == "VaswaniForCausalLM" and exported.config.position_embedding_type == "relative"
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert "pipeline_tag: text-generation" in card and "AutoModelForCausalLM.from_pretrained" in card
    ids = torch.tensor([data.tokenizer("a dog runs")["input_ids"][:-1]])  # a prefix without its </s>
    continued = exported.generate(input_ids=ids, max_new_tokens=5, do_sample=False)
    assert continued.shape == (1, ids.shape[1] + 5) or continued[0, -1].item() == data.eos_token_id
    np.testing.assert_array_equal(continued[0, : ids.shape[1]].numpy(), ids[0].numpy())
