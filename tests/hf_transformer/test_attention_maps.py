"""`hf-transformer-attention` / `python -m hf_transformer.attention_maps`: a saved model + tokenizer folder in, PNG
heatmaps and the cross-attention alignment matrix out."""

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import tomllib
import torch
from helpers import REPO_ROOT, TESTS_DIR
from model_utils import tiny_config

from hf_transformer import (
    VaswaniForConditionalGeneration,
    load_tokenizer,
    train_tokenizer,
)
from hf_transformer.attention_maps import attention_maps, figure_pixels
from lightning_modules.data.synthetic import english_number, german_number

SOURCE = "four hundred twenty-one"


def png_size(path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the 8-byte signature."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert header[12:16] == b"IHDR"
    return struct.unpack(">II", header[16:24])


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A quickstart-like folder: a BPE tokenizer trained on number words and a small (untrained) model."""
    folder = tmp_path_factory.mktemp("model")
    texts = [f(n) for n in range(0, 3000, 7) for f in (english_number, german_number)]
    tokenizer = train_tokenizer(texts, vocab_size=300)
    torch.manual_seed(0)
    model = VaswaniForConditionalGeneration(tiny_config(vocab_size=len(tokenizer), max_position_embeddings=16))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_the_command_writes_heatmaps_and_a_row_stochastic_alignment(model_folder, tmp_path):
    output = tmp_path / "maps"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(TESTS_DIR)]),
                   "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "hf_transformer.attention_maps", str(model_folder), SOURCE, "--output-dir", str(output)],
        capture_output=True, text=True, env=environment, timeout=300, stdin=subprocess.DEVNULL, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    tokenizer = load_tokenizer(model_folder)
    source_length = len(tokenizer(SOURCE)["input_ids"])  # the words + </s>
    alignment = np.load(output / "alignment.npy")
    record = json.loads((output / "alignment.json").read_text(encoding="utf-8"))
    target_length = len(record["target_tokens"])
    assert alignment.shape == (target_length, source_length)
    assert len(record["source_tokens"]) == source_length and record["source_tokens"][-1] == "</s>"
    # generation stops at </s> or at max_position_embeddings (16): the rerun covers every produced token
    assert 1 <= target_length <= 15
    assert np.allclose(alignment.sum(axis=1), 1.0, atol=1e-5)  # a softmax over the source, averaged over heads
    assert np.allclose(np.asarray(record["alignment"]), alignment, atol=1e-5)
    assert record["layer"] == 1 and record["num_heads"] == 4  # the last of 2 layers, 4 heads

    heads = 4
    expected = {
        "cross_attention.png": figure_pixels(target_length, source_length, panels=1),  # heads averaged
        "encoder_self_attention.png": figure_pixels(source_length, source_length, panels=heads),
        "decoder_self_attention.png": figure_pixels(target_length, target_length, panels=heads),
    }
    for name, size in expected.items():
        assert (output / name).stat().st_size > 1000
        assert png_size(output / name) == size, name


def test_console_script_points_at_main():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["hf-transformer-attention"] == "hf_transformer.attention_maps:main"
    optional = " ".join(project["project"]["optional-dependencies"]["plots"])
    assert "matplotlib" in optional


def test_one_panel_per_head_and_clear_errors(model_folder, tmp_path):
    tokenizer = load_tokenizer(model_folder)
    model = VaswaniForConditionalGeneration.from_pretrained(model_folder)
    record = attention_maps(model, tokenizer, SOURCE, tmp_path, layer=0, heads="all")
    rows, columns = len(record["target_tokens"]), len(record["source_tokens"])
    assert png_size(tmp_path / "cross_attention.png") == figure_pixels(rows, columns, panels=4)
    assert record["layer"] == 0
    with pytest.raises(ValueError, match=r"layer must be in \[-2, 1\]"):
        attention_maps(model, tokenizer, SOURCE, tmp_path, layer=2)
    with pytest.raises(ValueError, match="heads must be 'mean'"):
        attention_maps(model, tokenizer, SOURCE, tmp_path, heads="max")
    with pytest.raises(ValueError, match="source is empty"):
        attention_maps(model, tokenizer, "  ", tmp_path)
