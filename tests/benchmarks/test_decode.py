"""The decoding benchmark in its tiny mode on CPU: every engine runs, the float32 engines decode exactly as Marian, and
benchmarks/gpu.sh runs every GPU figure's command (bf16, CTranslate2 16-bit types where there are any) end to end.
Figures themselves come from the full runs (benchmarks/README.md), never from here."""

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO_ROOT

ENGINES = ["marian", "ours (library loop)", "ours", "ours int8", "ct2", "ct2 int8"]


def run(command: list[str], env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    output = f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, f"{command}\n{output}"
    return proc


def test_decode_benchmark_tiny_float32_every_engine_and_exact_columns(tmp_path):
    output = tmp_path / "decode.json"
    run([sys.executable, "-m", "benchmarks.decode", "--device", "cpu", "--tiny", "--threads", "1", "--strategies",
         "beam4,greedy", "--bleu-sentences", "6", "--output", str(output)])
    report = json.loads(output.read_text())
    assert report["environment"]["ctranslate2_compute_types"] == {"ct2": "float32", "ct2 int8": "int8"}
    assert [(r["strategy"], r["mode"]) for r in report["results"]] == [
        ("beam4", "batch"), ("beam4", "single"), ("greedy", "batch"), ("greedy", "single")]
    for row in report["results"]:
        assert list(row["throughput_over_marian"]) == ENGINES
        assert row["throughput_over_marian"]["marian"] == 1.0 and all(x > 0 for x in row["tokens_per_s"].values())
        for engine in ("ours (library loop)", "ours", "ct2"):  # float32: Marian's tokens, sentence for sentence
            assert row["sentences_identical_to_marian"][engine] == row["sentences"], (row["strategy"], engine)
    quality = report["quality"]
    assert quality["trained"] is False and quality["sentences"] == 6  # random weights, and said so
    assert set(quality["results"]) == {"marian", "ours", "ours int8", "ct2", "ct2 int8"}
    for engine in ("ours", "ct2"):
        assert quality["results"][engine]["identical_to_marian"] == 6


def test_gpu_script_runs_every_command_in_tiny_mode(tmp_path):
    proc = run(["bash", "benchmarks/gpu.sh", "--tiny"], env={"BENCHMARK_OUTPUT_DIR": str(tmp_path)})
    assert "gpu.sh: done" in proc.stdout
    bf16 = json.loads((tmp_path / "decode_tiny_bf16.json").read_text())
    assert bf16["environment"]["dtype"] == "bf16 autocast"
    assert list(bf16["results"][0]["throughput_over_marian"]) == ENGINES
    half = json.loads((tmp_path / "decode_tiny_float16.json").read_text())
    assert list(half["results"][0]["throughput_over_marian"]) == ["marian", "ct2", "ct2 int8"]
    assert half["environment"]["ctranslate2_compute_types"] == {"ct2": "float32", "ct2 int8": "int8"}  # CPU build
    train = json.loads((tmp_path / "train_step_tiny.json").read_text())
    assert train["benchmark"] == "train_step" and train["results"]


@pytest.mark.parametrize("arguments, pair", [([], "de-en"), (["en-de"], "en-de")], ids=["default de-en", "en-de"])
def test_gpu_script_multi30k_part_trains_chooses_on_validation_and_tests_in_tiny_mode(tmp_path, arguments, pair):
    """`gpu.sh multi30k [en-de]` (the GPU Multi30k figures of RESULTS.md) end to end on CPU: the direction's recipe on
    the local corpus, then the choice on validation and the test score, in one JSON."""
    from data_utils import multi30k_lines

    multi30k_lines("train.de.gz", 1)  # fails, naming ../shared/data/multi30k, when the corpus is not there
    name = "multi30k_" + pair.replace("-", "_")  # the recipe and the report
    proc = run(["bash", "benchmarks/gpu.sh", "--tiny", "multi30k", *arguments],
               env={"BENCHMARK_OUTPUT_DIR": str(tmp_path), "HF_TRANSFORMER_CACHE": str(tmp_path / "cache")})
    assert "gpu.sh: done" in proc.stdout
    report = json.loads((tmp_path / f"{name}_tiny.json").read_text())
    assert report["fit"]["seconds"] > 0 and f"--config {name} " in report["fit"]["command"]
    assert report["pair"] == pair
    assert {row["weights"] for row in report["validation"]} >= {"hf_model", "hf_model_last"}
    assert report["test"]["weights"] == report["choice"]["weights"] and report["test"]["sentences"] == 8


def test_gpu_script_multi30k_refuses_an_unknown_direction(tmp_path):
    proc = subprocess.run(["bash", "benchmarks/gpu.sh", "--tiny", "multi30k", "fr-en"], cwd=REPO_ROOT, text=True,
                          capture_output=True, env={**os.environ, "BENCHMARK_OUTPUT_DIR": str(tmp_path)})
    assert proc.returncode == 2 and "de-en or en-de, got 'fr-en'" in proc.stderr
    assert not list(tmp_path.glob("multi30k_*"))  # nothing started
