"""The practitioner's workflow through the command line, as a user runs it (issue 12): one run directory set by
`--trainer.default_root_dir`, two runs side by side, `test` / `predict` from the checkpoint or the exported folder
alone, best and last exports, the learning curves, the console and the model card.

One tiny run of the quickstart recipe (the generated numbers corpus: no download) is trained once for the module."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO_ROOT, TESTS_DIR

QUICKSTART = str(REPO_ROOT / "recipes" / "configs" / "quickstart.yaml")
STEPS = 40
TINY = ["--trainer.max_steps", str(STEPS), "--trainer.val_check_interval", "20", "--trainer.log_every_n_steps", "5",
        "--data.init_args.num_train", "500", "--data.init_args.num_validation", "50", "--data.init_args.num_test",
        "50", "--data.init_args.vocab_size", "300", "--model.model_config.d_model", "32",
        "--model.model_config.encoder_ffn_dim", "64", "--model.model_config.decoder_ffn_dim", "64",
        "--model.model_config.encoder_layers", "1", "--model.model_config.decoder_layers", "1"]


def hf_transformer(args: list[str], cwd: Path, cache: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """The installed `hf-transformer` command, in `cwd`, with the per-user cache at `cache`."""
    env = {**os.environ, "HF_TRANSFORMER_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(TESTS_DIR)]), "COLUMNS": "200"}
    command = [str(Path(sys.executable).parent / "hf-transformer"), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def check(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(work folder, cache, run directory, fit result): a tiny quickstart run trained into work/runA."""
    base = tmp_path_factory.mktemp("workflow")
    work, cache = base / "work", base / "cache"
    work.mkdir()
    fit = check(hf_transformer(["fit", "--config", QUICKSTART, "--trainer.default_root_dir", "runA", *TINY], work,
                               cache))
    return work, cache, work / "runA", fit


def test_two_runs_in_two_directories_write_only_there(run):
    work, cache, run_a, _ = run
    before = tree(run_a)
    check(hf_transformer(["fit", "--config", QUICKSTART, "--trainer.default_root_dir", "runB", *TINY,
                          "--seed_everything", "1"], work, cache))
    assert sorted(os.listdir(work)) == ["runA", "runB"]  # no runs/, cache/ or lightning_logs/ in the working folder
    assert tree(run_a) == before  # the second run left the first one's files alone
    for folder in (run_a, work / "runB"):
        assert {"checkpoints", "csv", "tensorboard", "hf_model", "hf_model_last"} <= set(os.listdir(folder))
        assert (folder / "checkpoints" / "best.ckpt").is_file() and (folder / "checkpoints" / "last.ckpt").is_file()
        assert list((folder / "csv").glob("version_*/config.yaml"))  # the saved config is in the run too
    assert list((cache / "tokenizers").iterdir())  # caches in the per-user cache ($HF_TRANSFORMER_CACHE)


def test_test_needs_only_the_checkpoint(run, tmp_path):
    work, cache, run_a, _ = run
    result = check(hf_transformer(["test", "--ckpt_path", str(run_a / "checkpoints" / "best.ckpt")], tmp_path, cache))
    assert "training a" not in result.stderr  # the checkpoint's own tokenizer, not a new one
    assert os.listdir(tmp_path) == []  # everything went to the checkpoint's run directory
    hypotheses = (run_a / "test" / "best-test.txt").read_text(encoding="utf-8").splitlines()
    scores = json.loads((run_a / "test" / "best-test.json").read_text())
    assert len(hypotheses) == 50 == scores["sentences"] and scores["set"]["split"] == "test"
    assert {"bleu", "chrf", "exact_match"} <= set(scores["metrics"])
    assert scores["decoding"] == {"num_beams": 4, "length_penalty": 0.6}
    card = (run_a / "hf_model" / "README.md").read_text()
    assert f"- Test at step {scores['step']}: BLEU **{scores['metrics']['bleu']:.2f}**" in card  # best = hf_model
    assert "pairs of split `test`" in card and "beam search (4 beams, length penalty 0.6)" in card


def test_predict_needs_only_the_checkpoint_and_a_file(run, tmp_path):
    _, cache, run_a, _ = run
    (tmp_path / "new.txt").write_text("twenty-one\n\nfour hundred five\n", encoding="utf-8")
    check(hf_transformer(["predict", "--ckpt_path", str(run_a / "checkpoints" / "last.ckpt"),
                          "--data.init_args.predict_file", "new.txt"], tmp_path, cache))
    lines = (run_a / "predictions" / "last-new.txt").read_text(encoding="utf-8").split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[3] == ""  # three translations, the blank line kept
    assert os.listdir(tmp_path) == ["new.txt"]


def test_an_exported_folder_is_tested_like_its_checkpoint(run, tmp_path):
    _, cache, run_a, _ = run
    check(hf_transformer(["test", "--ckpt_path", str(run_a / "checkpoints" / "last.ckpt")], tmp_path, cache))
    check(hf_transformer(["test", "--ckpt_path", str(run_a / "hf_model_last")], tmp_path, cache))
    from_folder = (run_a / "test" / "hf_model_last-test.txt").read_text(encoding="utf-8")
    assert from_folder == (run_a / "test" / "last-test.txt").read_text(encoding="utf-8")  # the same weights
    assert "- Test" in (run_a / "hf_model_last" / "README.md").read_text()


def test_hf_model_is_the_best_and_hf_model_last_the_last(run):
    import torch

    _, _, run_a, _ = run
    best = json.loads((run_a / "hf_model" / "hf_transformer_run.json").read_text())["weights"]
    last = json.loads((run_a / "hf_model_last" / "hf_transformer_run.json").read_text())["weights"]
    best_step = torch.load(run_a / "checkpoints" / "best.ckpt", weights_only=True, mmap=True)["global_step"]
    assert (best["kind"], best["step"], best["sibling"]) == ("best", best_step, "hf_model_last")
    assert (last["kind"], last["step"], last["sibling"]) == ("last", STEPS, "hf_model")
    assert "These are the weights of the best validation score" in (run_a / "hf_model" / "README.md").read_text()
    assert "These are the last weights of the run" in (run_a / "hf_model_last" / "README.md").read_text()


def test_the_console_shows_the_step_and_the_training_loss(run):
    *_, fit = run
    assert f"step: {STEPS}/{STEPS}" in fit.stdout and "loss:" in fit.stdout and "tok/s" in fit.stdout
    assert "/-2" not in fit.stdout
    assert "Writing model shards" not in fit.stdout + fit.stderr
    assert "on 50 pairs of split `validation`" in fit.stdout and "greedy decoding" in fit.stdout


def test_learning_curves_at_the_end_of_fit_and_on_demand(run, tmp_path):
    work, cache, run_a, _ = run
    assert (run_a / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = check(hf_transformer(["plot", str(run_a), "-o", str(tmp_path / "curves.png")], work, cache))
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "wrote" in result.stdout


def test_the_card_says_what_was_measured_on_what(run):
    _, _, run_a, _ = run
    card = (run_a / "hf_model" / "README.md").read_text()
    front = card.split("---\n")[1]
    assert "license: apache-2.0" in front and "- chrf" in front and "split: validation" in front
    assert "on 50 pairs of split `validation` of `synthetic English-German number words`" in card
    assert "greedy decoding, at most input length + 50 tokens" in card
    assert "BLEU signature: `nrefs:1|" in card and "chrF signature: `nrefs:1|" in card


def test_the_export_is_a_pipeline_and_a_tokenizer_where_only_transformers_is(run, tmp_path):
    """The card's usage, run where our packages cannot be imported: the pipeline comes from the folder's own code
    (`custom_pipelines`), a text gives a list, and AutoTokenizer loads without the "model of type" warning."""
    _, _, run_a, _ = run
    from helpers import json_result, run_python

    folder = run_a / "hf_model"
    snippet = f"""
import json, sys
sys.modules["hf_transformer"] = None
sys.modules["lightning_modules"] = None
from transformers import AutoTokenizer, pipeline
translator = pipeline(model={str(folder)!r}, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained({str(folder)!r}, trust_remote_code=True)
print("RESULT-JSON: " + json.dumps({{"one": translator("twenty-one"), "many": translator(["one", "two"]),
                                     "module": type(translator).__module__, "ids": tokenizer("one")["input_ids"]}}))
"""
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PATH": os.environ.get("PATH", "")}
    proc = run_python(snippet, env, timeout=300, cwd=tmp_path)
    result = json_result(proc)
    import hf_transformer
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model, tokenizer = AutoModelForSeq2SeqLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    expected = hf_transformer.translate(["twenty-one", "one", "two"], model, tokenizer)
    assert result["one"] == [{"translation_text": expected[0]}]
    assert result["many"] == [{"translation_text": text} for text in expected[1:]]
    assert result["module"].startswith("transformers_modules.") and result["ids"] == tokenizer("one")["input_ids"]
    assert "to instantiate a model of type" not in proc.stderr


def test_averaging_a_run_needs_only_its_checkpoints(run, tmp_path):
    """The averaged folder's card names the languages, the dataset and the command, as the run's others do."""
    work, cache, run_a, _ = run
    env = {**os.environ, "HF_TRANSFORMER_CACHE": str(cache), "PYTHONPATH": str(REPO_ROOT)}
    checkpoints = [str(run_a / "checkpoints" / name) for name in ("best.ckpt", "last.ckpt")]
    proc = subprocess.run([sys.executable, "-m", "lightning_modules.average", "--checkpoints", *checkpoints,
                           "--output", str(tmp_path / "averaged")], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    card = (tmp_path / "averaged" / "README.md").read_text()
    assert "- Languages: en, de" in card and "`synthetic English-German number words`" in card
    assert "fit --config" in card.split("Command:")[1] and "- Global step: 40" in card
    assert "hf-transformer test --ckpt_path <this folder>" in card


def test_comet_is_an_optional_extra(monkeypatch):
    """COMET scores the test set when asked and installed (here a stand-in `comet` package that records what it is
    given); without the package the message says how to get it."""
    import types

    from lightning_modules.tasks.metrics import comet_score

    monkeypatch.setitem(sys.modules, "comet", None)
    with pytest.raises(ImportError, match="pip install unbabel-comet"):
        comet_score("Unbabel/wmt22-comet-da", ["a"], ["b"], ["c"])
    seen = {}

    class Scorer:
        def predict(self, rows, batch_size, gpus, progress_bar):
            seen.update(rows=rows, gpus=gpus)
            return types.SimpleNamespace(system_score=0.8125)

    fake = types.ModuleType("comet")
    fake.download_model = lambda name: seen.setdefault("downloaded", name)
    fake.load_from_checkpoint = lambda path: Scorer()
    monkeypatch.setitem(sys.modules, "comet", fake)
    assert comet_score("Unbabel/wmt22-comet-da", ["ein Hund"], ["a dog"], ["a dog runs"]) == 81.25
    assert seen["rows"] == [{"src": "ein Hund", "mt": "a dog", "ref": "a dog runs"}]
    assert seen["downloaded"] == "Unbabel/wmt22-comet-da"
