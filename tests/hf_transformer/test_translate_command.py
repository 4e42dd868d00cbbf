"""`hf-transformer translate MODEL [-i FILE] [-o FILE]` (hf_transformer/translation.py, fairseq-interactive style):
a file or stdin as it streams, batched by tokens and sorted by length, output in input order, with an exported
folder, a Hub model (from the local test hub) or CTranslate2; the same translations as `translate()`."""

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from data_utils import multi30k_lines
from helpers import REPO_ROOT, hub_env, run_python

from hf_transformer import VaswaniConfig, VaswaniForConditionalGeneration, iter_parallel_texts, train_tokenizer
from hf_transformer import translate
from hf_transformer.translation import main

LINES = 12


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A small random model (a sharpened output layer: different sources, different outputs) and its tokenizer."""
    german, english = multi30k_lines("val.de.gz", 400), multi30k_lines("val.en.gz", 400)
    tokenizer = train_tokenizer(iter_parallel_texts(zip(german, english)), vocab_size=600)
    torch.manual_seed(0)
    model = VaswaniForConditionalGeneration(VaswaniConfig(
        vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
        tie_word_embeddings=False)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(6.0)
    path = tmp_path_factory.mktemp("model") / "model"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sources() -> list[str]:
    lines = [" ".join(line.split()[:6]) for line in multi30k_lines("test_2016_flickr.de.gz", LINES)]
    lines[4] = ""  # a blank line translates to a blank line
    return lines


@pytest.fixture(scope="module")
def expected(folder, sources) -> list[str]:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    return translate(sources, AutoModelForSeq2SeqLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder))


def test_a_file_is_translated_in_order(folder, sources, expected, tmp_path):
    (tmp_path / "in.de").write_bytes("".join(f"{line}\r\n" for line in sources).encode())  # Windows line ends too
    # small batches and chunks: many batches of one length each, sorted, and the output still in input order
    assert main([str(folder), "-i", str(tmp_path / "in.de"), "-o", str(tmp_path / "out.en"), "--max-tokens", "20",
                 "--buffer-lines", "5"]) == 0
    assert (tmp_path / "out.en").read_text(encoding="utf-8").split("\n") == [*expected, ""]


def test_stdin_is_translated_as_it_streams(folder, sources, expected):
    """A line written to the command's stdin comes back translated while stdin is still open (the `hf-transformer`
    script dispatches `translate` to hf_transformer.translation)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen([str(Path(sys.executable).parent / "hf-transformer"), "translate", str(folder)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        process.stdin.write(f"{sources[0]}\n".encode())
        process.stdin.flush()
        deadline = time.monotonic() + 180
        while not select.select([process.stdout], [], [], 1)[0]:
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read().decode()[-3000:]
        assert process.stdout.readline().decode().rstrip("\n") == expected[0]  # before stdin was closed
        process.stdin.write("".join(f"{line}\n" for line in sources[1:]).encode())
        process.stdin.close()
        rest = process.stdout.read().decode().split("\n")
        assert process.wait(timeout=180) == 0, process.stderr.read().decode()[-3000:]
    finally:
        process.kill()
    assert rest == [*expected[1:], ""]


def test_ctranslate2_backend_translates_the_same(folder, sources, expected, tmp_path):
    (tmp_path / "in.de").write_text("".join(f"{line}\n" for line in sources), encoding="utf-8")
    assert main([str(folder), "-i", str(tmp_path / "in.de"), "-o", str(tmp_path / "out.en"), "--backend",
                 "ctranslate2", "--compute-type", "float32"]) == 0
    assert (tmp_path / "out.en").read_text(encoding="utf-8").split("\n") == [*expected, ""]


def test_a_hub_model_is_translated(folder, sources, expected, hub_server, tmp_path):
    """By its Hub id, downloaded from the local test hub into a fresh cache."""
    hub_server.add_files("tester/tiny-translator", {path.name: path.read_bytes() for path in folder.iterdir()})
    (tmp_path / "in.de").write_text("".join(f"{line}\n" for line in sources), encoding="utf-8")
    env = hub_env(hub_server.url, tmp_path / "hf_home")
    proc = run_python(f"""
import sys
from hf_transformer.translation import main
sys.exit(main(["tester/tiny-translator", "-i", {str(tmp_path / 'in.de')!r}]))
""", env, timeout=300)
    assert proc.stdout.split("\n") == [*expected, ""]


def test_bad_input_is_named(folder, tmp_path, capsys):
    (tmp_path / "bad.de").write_bytes("Ein Hund\nein Caf\xe9\n".encode("latin-1"))
    assert main([str(folder), "-i", str(tmp_path / "bad.de"), "-o", str(tmp_path / "out.en")]) == 1
    message = capsys.readouterr().err
    assert f"{tmp_path / 'bad.de'}: line 2 is not valid UTF-8" in message and "iconv" in message
    assert main([str(folder), "--compute-type", "int8", "-i", str(tmp_path / "bad.de")]) == 1
    assert "--compute-type is a CTranslate2 setting: add --backend ctranslate2" in capsys.readouterr().err

