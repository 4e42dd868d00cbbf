"""The README's main job, run exactly as written (minus the install) from an empty folder: the quickstart recipe
trains into runs/quickstart, tests at least 95% exact match on 1000 held-out numbers from the checkpoint alone, and
leaves a Hugging Face folder that translates, the test hypotheses and the learning curves. Minutes: `slow`."""

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest
from test_readme import readme_commands
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

import hf_transformer  # noqa: F401  (registers the model)
from hf_transformer import translate


@pytest.mark.slow
def test_readme_main_job(tmp_path):
    steps = [step for step in readme_commands()[0].split(" && ") if not step.startswith("pip install")]
    assert steps[0].startswith("hf-transformer fit") and steps[1].startswith("hf-transformer test")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_TRANSFORMER_CACHE": str(tmp_path / "cache")}
    for step in steps:  # from an empty folder: the recipe is found by its name
        result = subprocess.run(step, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
        assert result.returncode == 0, f"{step}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    assert "exact match" in result.stdout  # the test run prints its score and a few translations
    assert sorted(os.listdir(tmp_path)) == ["cache", "runs"] and os.listdir(tmp_path / "runs") == ["quickstart"]
    hypotheses = (tmp_path / "runs/quickstart/test/best-test.txt").read_text(encoding="utf-8").splitlines()
    assert len(hypotheses) == 1000 and (tmp_path / "runs/quickstart/learning_curves.png").is_file()

    rows = []
    for path in sorted((tmp_path / "runs/quickstart/csv").glob("version_*/metrics.csv")):
        with open(path, newline="") as handle:
            rows += list(csv.DictReader(handle))
    exact = [float(row["test/exact_match"]) for row in rows if row.get("test/exact_match")]
    print(f"\nquickstart: test exact match {exact}")
    assert exact and exact[-1] >= 0.95

    folder = Path(tmp_path / "runs/quickstart/hf_model")
    model = AutoModelForSeq2SeqLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    test_file = next((tmp_path / "cache").glob("numbers-en-de-*/test.jsonl"))
    pairs = [json.loads(line) for line in test_file.read_text().splitlines()[:100]]
    outputs = translate([pair["en"] for pair in pairs], model, tokenizer)
    assert sum(out == pair["de"] for out, pair in zip(outputs, pairs)) >= 95  # the folder translates as well
