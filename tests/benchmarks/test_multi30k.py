"""The Multi30k choice benchmark on a tiny model: every exported folder and length penalty is scored on validation,
the best sacreBLEU is the choice, and only that choice is decoded on the test files. Figures come from real runs
(RESULTS.md), never from here."""

import gzip
import json

import pytest
import torch

from benchmarks import multi30k
from hf_transformer import VaswaniConfig, VaswaniForConditionalGeneration, train_tokenizer

SOURCES = ["ein hund läuft", "zwei männer sitzen", "eine frau singt", "ein kind spielt im park"]
TARGETS = ["a dog runs", "two men sit", "a woman sings", "a child plays in the park"]


def write_lines(path, lines):
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("".join(f"{line}\n" for line in lines))
    return path


@pytest.fixture
def run_dir(tmp_path):
    tokenizer = train_tokenizer(SOURCES + TARGETS, vocab_size=300, min_frequency=1)
    for seed, name in enumerate(["hf_model", "hf_model_last"]):  # no hf_model_averaged: a run may lack one
        torch.manual_seed(seed)
        config = VaswaniConfig(vocab_size=len(tokenizer), d_model=16, encoder_layers=1, decoder_layers=1,
                               encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                               decoder_ffn_dim=32, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                               decoder_start_token_id=tokenizer.bos_token_id)
        folder = tmp_path / "run" / name
        VaswaniForConditionalGeneration(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return tmp_path / "run"


def test_the_choice_is_made_on_validation_and_only_it_is_tested(run_dir, tmp_path):
    validation = [write_lines(tmp_path / "val.de.gz", SOURCES), write_lines(tmp_path / "val.en.gz", TARGETS)]
    test = [write_lines(tmp_path / "test.de.gz", SOURCES[:3]), write_lines(tmp_path / "test.en.gz", TARGETS[:3])]
    output = tmp_path / "report.json"
    report = multi30k.main([str(run_dir), "--validation", *map(str, validation), "--test", *map(str, test),
                            "--length-penalties", "0.6,1.2", "--num-beams", "2", "--output", str(output)])
    # (no --threads: torch.set_num_threads in this process would change the bits of later tests' reference logits)
    assert json.loads(output.read_text()) == report
    grid = report["validation"]
    assert [(row["weights"], row["length_penalty"]) for row in grid] == [
        ("hf_model", 0.6), ("hf_model", 1.2), ("hf_model_last", 0.6), ("hf_model_last", 1.2)]
    best = max(grid, key=lambda row: (row["bleu"], row["chrf"]))
    assert report["choice"] == {"weights": best["weights"], "length_penalty": best["length_penalty"]}
    assert report["test"]["weights"] == best["weights"] and report["test"]["sentences"] == 3
    for row in grid + [report["test"]]:
        assert 0.0 <= row["bleu"] <= row["bleu_lc"] <= 100.0 and "case:lc" in row["signatures"]["bleu_lc"]
    assert report["cli_command"].endswith(f"{best['weights']} --model.length_penalty {best['length_penalty']}")


def test_a_run_without_exported_weights_is_named(tmp_path):
    with pytest.raises(SystemExit, match="no exported weights in .*hf_model_last"):
        multi30k.main([str(tmp_path), "--validation", "a", "b", "--test", "c", "d"])
