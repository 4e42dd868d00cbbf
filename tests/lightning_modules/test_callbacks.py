"""Lightning callbacks and checkpoint plumbing: the HF export, checkpoint averaging, the background Hub push and the
atomic checkpoint plugin, with real `Trainer.fit` runs of a tiny stand-in module on CPU.

The stand-ins follow the interface of `TranslationModule` / `TranslationDataModule` that the callbacks rely on:
`module.model` (the HF model), `module.bleu_signature`, logged `val/bleu`, the model's class and configuration in
every checkpoint (`describe_model`), and `datamodule.tokenizer` / `dataset_name` / `source_lang` / `target_lang`.
Hub runs happen in a subprocess (see helpers.py): they import this file to get the stand-ins.
"""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from helpers import REPO_ROOT, TEST_TOKEN, TESTS_DIR, hub_env, json_result, run_python
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

import hf_transformer  # noqa: F401  (registers the Auto classes)
from hf_transformer import VaswaniConfig, VaswaniForConditionalGeneration, train_tokenizer
from lightning_modules.average import main as average_main
from lightning_modules.callbacks import CheckpointAveragingCallback, HFExportCallback, HubPushCallback
from lightning_modules.callbacks.averaging import average_checkpoints, export_average, find_checkpoints
from lightning_modules.checkpointing import (
    MODEL_KEY,
    AtomicCheckpointIO,
    CheckpointLoadError,
    describe_model,
    load_checkpoint_file,
    recover_directory,
)
from lightning_modules.redaction import redact_command

SIGNATURE = "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"
TEXTS = [
    "a dog runs in the park", "ein Hund läuft im Park", "two men are playing football on the grass",
    "zwei Männer spielen Fußball auf dem Rasen", "a woman reads a book", "eine Frau liest ein Buch",
] * 20
HF_FILES = {"config.json", "generation_config.json", "model.safetensors", "configuration_vaswani.py",
            "modeling_vaswani.py", "tokenizer.json", "tokenizer_config.json", "README.md"}


# ----------------------------------------------------------------------------------------------------------------
# Stand-ins (also imported by the Hub subprocesses and the averaging command line)
# ----------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    return train_tokenizer(TEXTS, vocab_size=300)


class TinyDataModule(L.LightningDataModule):
    """Copy task on random token ids; the attributes the callbacks read."""

    def __init__(self, batches: int = 8, batch_size: int = 4, length: int = 6, seed: int = 0) -> None:
        super().__init__()
        self.tokenizer = tiny_tokenizer()
        self.dataset_name = "tiny/copy-task"
        self.source_lang = "en"
        self.target_lang = "de"
        self.batches, self.batch_size, self.length, self.seed = batches, batch_size, length, seed

    def make_batches(self, count: int, seed: int) -> list[dict]:
        generator = torch.Generator().manual_seed(seed)
        out = []
        for _ in range(count):
            ids = torch.randint(4, len(self.tokenizer), (self.batch_size, self.length), generator=generator)
            out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
        return out

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.make_batches(self.batches, self.seed), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.make_batches(2, self.seed + 1), batch_size=None)


class TinyTranslationModule(L.LightningModule):
    """One layer each side, width 32. `val/bleu` follows `bleu_schedule` (one value per validation)."""

    def __init__(self, vocab_size: int = 300, d_model: int = 32, lr: float = 3e-3,
                 bleu_schedule: list[float] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = VaswaniForConditionalGeneration(VaswaniConfig(
            vocab_size=vocab_size, d_model=d_model, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64, dropout=0.0,
        ))
        self.bleu_signature: str | None = None
        self.validations = 0

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[MODEL_KEY] = describe_model(self.model)  # what checkpoint averaging rebuilds the model from

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.model(**batch).loss
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log("val/loss", self.model(**batch).loss)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        schedule = self.hparams.bleu_schedule or [10.0 + i for i in range(100)]
        self.log("val/bleu", float(schedule[min(self.validations, len(schedule) - 1)]))
        self.bleu_signature = SIGNATURE
        self.validations += 1

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class LoopTimer(L.Callback):
    """The training loop's duration (on_train_start to on_train_end, without the end-of-fit teardown) and its
    longest stall: the most time between the end of one training batch and the end of the next one (or the end of
    training), which includes the validations, exports and push requests in between."""

    def __init__(self) -> None:
        self.started = self.seconds = self.last_batch_end = None
        self.longest_gap = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.started = time.monotonic()

    def mark(self) -> None:
        now = time.monotonic()
        if self.last_batch_end is not None:
            self.longest_gap = max(self.longest_gap, now - self.last_batch_end)
        self.last_batch_end = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.mark()

    def on_train_end(self, trainer, pl_module) -> None:
        self.mark()
        self.seconds = time.monotonic() - self.started


def make_trainer(root, callbacks, max_steps: int = 6, val_every: int = 2, checkpointing: bool = False) -> L.Trainer:
    torch.manual_seed(0)
    return L.Trainer(
        default_root_dir=str(root), max_steps=max_steps, val_check_interval=val_every, check_val_every_n_epoch=None,
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, enable_checkpointing=checkpointing, callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
    )


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def logits(model, seed: int = 3) -> torch.Tensor:
    ids = torch.randint(4, 250, (2, 5), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(input_ids=ids, decoder_input_ids=ids).logits


# ----------------------------------------------------------------------------------------------------------------
# HFExportCallback
# ----------------------------------------------------------------------------------------------------------------


def test_export_after_fit_loads_with_auto_classes_and_has_a_model_card(tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    export = HFExportCallback()
    module, data = TinyTranslationModule(bleu_schedule=[10.0, 20.0, 30.0]), TinyDataModule()
    make_trainer(tmp_path, [export], max_steps=6).fit(module, data)

    folder = tmp_path / "hf_model"  # default: <log_dir or default_root_dir>/hf_model
    assert HF_FILES <= {p.name for p in folder.iterdir()}
    assert [e["step"] for e in export.exports] == [2, 4, 6, 6]  # each rising BLEU, then the end of fit
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    loaded = AutoModelForSeq2SeqLM.from_pretrained(folder)
    assert type(loaded) is VaswaniForConditionalGeneration
    assert torch.equal(logits(loaded), logits(module.model))
    assert loaded.lm_head.weight.data_ptr() == loaded.model.shared.weight.data_ptr()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer("a dog runs").input_ids == data.tokenizer("a dog runs").input_ids

    card = (folder / "README.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert "library_name: transformers" in front and "- translation" in front
    assert "language:\n- en\n- de" in front and "datasets:\n- tiny/copy-task" in front
    assert "value: 30.0" in front and SIGNATURE in front
    assert "en → de" in body and "`tiny/copy-task`" in body
    assert "**30.00**" in body and f"`{SIGNATURE}`" in body
    assert "Global step: 6" in body and "d_model | 32" in body
    assert "Training time (wall clock since fit start): " in body
    assert shlex.join(sys.argv) in body


def test_hf_model_keeps_the_best_weights_after_a_resume(tmp_path):
    """hf_model is the best validation score's weights, hf_model_last the last ones, also when a resumed run ends on
    worse scores (the end-of-fit export used to replace the best one)."""
    from safetensors.torch import load_file

    checkpoints = ModelCheckpoint(dirpath=str(tmp_path / "checkpoints"), every_n_train_steps=2, save_top_k=-1,
                                  save_last=True, filename="{step}")
    make_trainer(tmp_path, [HFExportCallback(), checkpoints], max_steps=6, checkpointing=True).fit(
        TinyTranslationModule(bleu_schedule=[10.0, 30.0, 20.0]), TinyDataModule())
    resumed = ModelCheckpoint(dirpath=str(tmp_path / "checkpoints"), every_n_train_steps=2, save_top_k=-1,
                              save_last=True, filename="{step}")
    make_trainer(tmp_path, [HFExportCallback(), resumed], max_steps=10, checkpointing=True).fit(
        TinyTranslationModule(bleu_schedule=[25.0, 15.0]), TinyDataModule(),
        ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"))

    best = torch.load(tmp_path / "checkpoints" / "step=4.ckpt", weights_only=True)["state_dict"]
    exported = load_file(tmp_path / "hf_model" / "model.safetensors")
    assert torch.equal(exported["model.shared.weight"], best["model.model.shared.weight"])  # step 4: BLEU 30
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 10
    exported_last = load_file(tmp_path / "hf_model_last" / "model.safetensors")
    assert torch.equal(exported_last["model.shared.weight"], last["state_dict"]["model.model.shared.weight"])
    card, last_card = ((tmp_path / name / "README.md").read_text() for name in ("hf_model", "hf_model_last"))
    assert "These are the weights of the best validation score (val/bleu 30), step 4." in card
    assert "**30.00**" in card and "`hf_model_last` next to this folder" in card
    assert "These are the last weights of the run, step 10." in last_card and "**15.00**" in last_card


def test_export_only_when_the_metric_improves(tmp_path):
    export = HFExportCallback(export_on_train_end=False)
    make_trainer(tmp_path, [export], max_steps=6).fit(TinyTranslationModule(bleu_schedule=[30.0, 20.0, 25.0]),
                                                      TinyDataModule())
    assert [e["step"] for e in export.exports] == [2]
    assert export.best_score == 30.0
    card = (tmp_path / "hf_model" / "README.md").read_text()
    assert "**30.00**" in card and "Global step: 2" in card


def test_a_failed_or_interrupted_export_leaves_the_previous_folder_intact(tmp_path, monkeypatch):
    export = HFExportCallback(dirpath=str(tmp_path / "out" / "hf_model"), export_on_train_end=False)
    module, data = TinyTranslationModule(), TinyDataModule()
    trainer = make_trainer(tmp_path, [export], max_steps=2)
    trainer.fit(module, data)
    folder = tmp_path / "out" / "hf_model"
    before = tree_bytes(folder)
    with torch.no_grad():
        module.model.model.shared.weight.add_(1.0)  # the next export would differ

    def broken_save(directory, *args, **kwargs):  # writes part of the tokenizer, then fails
        Path(directory, "tokenizer.json").write_text("{ half")
        raise OSError("disk full")

    monkeypatch.setattr(data.tokenizer, "save_pretrained", broken_save)
    assert export.export(trainer, module, kind="best", reason="test") is None  # logged, not raised: training goes on
    assert export.failed_exports == 1
    assert tree_bytes(folder) == before
    assert sorted(p.name for p in folder.parent.iterdir()) == ["hf_model"]

    def interrupted_save(directory, *args, **kwargs):  # e.g. Ctrl-C in the middle of the export
        Path(directory, "tokenizer.json").write_text("{ half")
        raise KeyboardInterrupt

    monkeypatch.setattr(data.tokenizer, "save_pretrained", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        export.export(trainer, module, kind="best", reason="test")
    assert tree_bytes(folder) == before
    assert sorted(p.name for p in folder.parent.iterdir()) == ["hf_model"]

    # A process killed between the two renames: the old folder is parked as .hf_model.old-*, a partial
    # .hf_model.tmp-* exists. The next export (or recover_directory) puts the old folder back and cleans up.
    os.rename(folder, folder.parent / ".hf_model.old-dead")
    (folder.parent / ".hf_model.tmp-dead").mkdir()
    (folder.parent / ".hf_model.tmp-dead" / "config.json").write_text("{")
    recover_directory(folder)
    assert tree_bytes(folder) == before
    assert sorted(p.name for p in folder.parent.iterdir()) == ["hf_model"]


def test_the_command_line_in_the_card_and_the_push_callback_repr_hide_tokens():
    argv = ["hf-transformer", "fit", "--trainer.callbacks.init_args.token", "hf_secret", "--hub_token=abc",
            "--data.vocab_size", "8000", "--note", "hf_" + "A" * 34]
    command = redact_command(argv, secrets=["hf_secret"])
    assert "hf_secret" not in command and "abc" not in command and "A" * 34 not in command
    assert "--data.vocab_size 8000" in command and command.startswith("hf-transformer fit")
    assert "hf_secret" not in repr(HubPushCallback("org/name", token="hf_secret"))


def test_the_model_index_names_the_data_each_split_was_scored_on():
    """A run on local files: the test score's model-index entry names the test files, not the training ones."""
    from lightning_modules.callbacks.model_card import eval_results

    test_set = {"dataset": "local files: test.de.gz, test.en.gz", "split": "test", "pairs": 3, "total": 3}
    summary = {"metrics": {"bleu": 41.78146, "chrf": 60.98}, "set": test_set, "signatures": {"bleu": "nrefs:1|x"}}
    results = eval_results("translation", "de-en", {"test": summary, "validation": None},
                           "local files: train.de.gz, train.en.gz")
    assert [(r.metric_type, r.metric_value, r.dataset_split) for r in results] == [("bleu", 41.7815, "test"),
                                                                                   ("chrf", 60.98, "test")]
    assert {(r.dataset_type, r.dataset_name) for r in results} == {
        ("local files: test.de.gz, test.en.gz", "local files: test.de.gz, test.en.gz (test)")}
    assert results[0].metric_config == "nrefs:1|x"
    # a summary without its set's name (a record written before the set was recorded) falls back to the corpus
    older = eval_results("translation", "de-en", {"test": {"metrics": {"bleu": 1.0}}}, "org/corpus")
    assert (older[0].dataset_type, older[0].dataset_name, older[0].dataset_split) == ("org/corpus", "org/corpus (test)",
                                                                                      "test")


# ----------------------------------------------------------------------------------------------------------------
# Checkpoint averaging
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def averaged_run(tmp_path_factory):
    """A run with checkpoints at steps 2, 4, 6 (+ last.ckpt), an HF export and the averaging callback."""
    root = tmp_path_factory.mktemp("avg_run")
    averaging = CheckpointAveragingCallback(last_n=3)
    checkpoints = ModelCheckpoint(dirpath=str(root / "checkpoints"), every_n_train_steps=2, save_top_k=-1,
                                  save_last=True, filename="{step}")
    module = TinyTranslationModule()
    make_trainer(root, [HFExportCallback(), checkpoints, averaging], max_steps=6, checkpointing=True).fit(
        module, TinyDataModule())
    return root, averaging, module


def manual_mean(paths: list[Path]) -> dict[str, torch.Tensor]:
    """The exact (float64) mean of the checkpoints' floating-point tensors."""
    states = [torch.load(p, map_location="cpu", weights_only=True)["state_dict"] for p in paths]
    return {k: torch.stack([s[k].double() for s in states]).mean(0) for k in states[0]
            if states[0][k].is_floating_point()}


def test_averaging_callback_writes_the_mean_of_the_last_checkpoints(averaged_run):
    from transformers import AutoModelForSeq2SeqLM

    root, averaging, _ = averaged_run
    names = [p.name for p in averaging.averaged_paths]
    assert names == ["step=2.ckpt", "step=4.ckpt", "step=6.ckpt"]  # last.ckpt (step 6 again) counted once
    assert (root / "checkpoints" / "last.ckpt").is_file() and not (root / "checkpoints" / "last.ckpt").is_symlink()

    expected = manual_mean(averaging.averaged_paths)
    averaged = average_checkpoints(averaging.averaged_paths)
    assert set(expected) <= set(averaged)
    for key, value in expected.items():
        torch.testing.assert_close(averaged[key].double(), value, rtol=0, atol=1e-7)
    assert averaged["model.lm_head.weight"] is averaged["model.model.shared.weight"]  # tie kept

    folder = root / "hf_model_averaged"
    assert HF_FILES <= {p.name for p in folder.iterdir()}
    loaded = AutoModelForSeq2SeqLM.from_pretrained(folder)
    for key, value in loaded.state_dict().items():
        if "model." + key in expected:
            torch.testing.assert_close(value.double(), expected["model." + key], rtol=0, atol=1e-7)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.shared.weight.data_ptr()
    card = (folder / "README.md").read_text()
    assert "These are the average of the last checkpoints (§6.1): 3 checkpoints (steps 2, 4, 6)" in card
    assert "language:\n- en\n- de" in card and "`tiny/copy-task`" in card


def test_find_checkpoints_orders_by_stored_step(averaged_run):
    root, _, _ = averaged_run
    assert [p.name for p in find_checkpoints([root / "checkpoints"])] == ["step=2.ckpt", "step=4.ckpt", "step=6.ckpt"]
    assert [p.name for p in find_checkpoints([root / "checkpoints"], last=2)] == ["step=4.ckpt", "step=6.ckpt"]


def test_averaging_refuses_mismatched_corrupt_and_unsafe_checkpoints(averaged_run, tmp_path):
    root, averaging, _ = averaged_run
    good = averaging.averaged_paths[0]
    checkpoint = torch.load(good, map_location="cpu", weights_only=True)

    missing = tmp_path / "missing_key.ckpt"
    state = dict(checkpoint["state_dict"])
    state.pop("model.model.encoder.layers.0.fc1.weight")
    torch.save({**checkpoint, "state_dict": state}, missing)
    with pytest.raises(ValueError, match=rf"{missing}.*'model\.model\.encoder\.layers\.0\.fc1\.weight'"):
        average_checkpoints([good, missing])

    reshaped = tmp_path / "other_shape.ckpt"
    state = dict(checkpoint["state_dict"])
    state["model.model.encoder.layers.0.fc1.bias"] = torch.zeros(3)
    torch.save({**checkpoint, "state_dict": state}, reshaped)
    with pytest.raises(ValueError, match=rf"{reshaped}.*fc1\.bias"):
        average_checkpoints([good, reshaped])

    truncated = tmp_path / "truncated.ckpt"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointLoadError, match=rf"{truncated}.*truncated or corrupt"):
        average_checkpoints([good, truncated])

    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({**checkpoint, "hyper_parameters": {"data_dir": Path("/data")}}, unsafe)
    with pytest.raises(CheckpointLoadError, match=rf"{unsafe}.*weights_only=True.*PosixPath.*weights_only-safe"):
        average_checkpoints([unsafe])


def test_average_command_line(averaged_run, tmp_path):
    root, averaging, _ = averaged_run
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(TESTS_DIR)])}
    out = tmp_path / "cli_avg"
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_modules.average", "--checkpoint-dir", str(root / "checkpoints"),
         "--last", "3", "--output", str(out)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "averaged 3 checkpoints" in proc.stdout and "step=6.ckpt (step 6)" in proc.stdout
    assert "last.ckpt" not in proc.stdout
    # the tokenizer was found in <run>/hf_model; same weights as the callback's average
    assert tree_bytes(out)["model.safetensors"] == tree_bytes(root / "hf_model_averaged")["model.safetensors"]
    assert (out / "tokenizer.json").read_bytes() == (root / "hf_model" / "tokenizer.json").read_bytes()

    # in-process, explicit files and tokenizer; a corrupt file is a clean error (exit code 1), not a traceback
    explicit = tmp_path / "explicit"
    code = average_main(["--checkpoints", *map(str, averaging.averaged_paths[1:]), "--output", str(explicit),
                         "--tokenizer", str(root / "hf_model")])
    assert code == 0 and (explicit / "model.safetensors").is_file()
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"")
    assert average_main(["--checkpoints", str(broken), "--output", str(tmp_path / "x"),
                         "--tokenizer", str(root / "hf_model")]) == 1
    assert not (tmp_path / "x").exists()


def test_a_step_saved_twice_is_averaged_once(averaged_run, tmp_path):
    root, _, _ = averaged_run
    paths = [root / "checkpoints" / name for name in ("step=4.ckpt", "step=6.ckpt", "last.ckpt")]
    with pytest.warns(UserWarning, match="last.ckpt holds step 6, as step=6.ckpt does: averaged once"):
        folder = export_average(paths, tmp_path / "avg")
    assert "2 checkpoints (steps 4, 6): step=4.ckpt, step=6.ckpt" in (folder / "README.md").read_text()


def test_export_average_needs_a_tokenizer(averaged_run, tmp_path):
    root, averaging, _ = averaged_run
    lonely = tmp_path / "ckpts" / "a.ckpt"
    lonely.parent.mkdir()
    lonely.write_bytes(averaging.averaged_paths[0].read_bytes())
    with pytest.raises(FileNotFoundError, match="--tokenizer"):
        export_average([lonely], tmp_path / "out")


# ----------------------------------------------------------------------------------------------------------------
# AtomicCheckpointIO
# ----------------------------------------------------------------------------------------------------------------


def test_checkpoint_io_save_is_atomic(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    first = {"state_dict": {"w": torch.arange(1000.0)}, "global_step": 1}
    io.save_checkpoint(first, path)
    real_save = torch.save

    def half_save(obj, f, *args, **kwargs):  # a crash (disk full, kill) half-way through the write
        import io as stdlib_io

        buffer = stdlib_io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}, "global_step": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)

    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt", "last.ckpt.sha256"]  # no partial file
    loaded = io.load_checkpoint(path)
    assert loaded["global_step"] == 1 and torch.equal(loaded["state_dict"]["w"], first["state_dict"]["w"])


def test_checkpoint_io_load_errors_name_the_file(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "step=1.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2000)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointLoadError, match=rf"{path} \(\d+ bytes\) is truncated or corrupt"):
        io.load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        io.load_checkpoint(tmp_path / "nope.ckpt")
    with pytest.raises(ValueError, match="weights_only=True only"):
        io.load_checkpoint(path, weights_only=False)
    unsafe = tmp_path / "unsafe.ckpt"
    io.save_checkpoint({"hyper_parameters": {"optimizer": torch.optim.Adam}}, unsafe)
    with pytest.raises(CheckpointLoadError, match=rf"{unsafe} cannot be loaded with weights_only=True.*Adam"):
        io.load_checkpoint(unsafe)


def test_real_checkpoints_are_weights_only_safe_and_resume(averaged_run, tmp_path):
    """Everything Lightning and the callbacks put in a checkpoint (loops, Adam, ModelCheckpoint and callback states,
    hparams with a list) loads with weights_only=True, and training resumes from last.ckpt through the plugin."""
    root, _, _ = averaged_run
    last = root / "checkpoints" / "last.ckpt"
    checkpoint = load_checkpoint_file(last)
    assert checkpoint["global_step"] == 6 and checkpoint["optimizer_states"]
    assert any(key.startswith("HFExportCallback") for key in checkpoint["callbacks"])
    export = HFExportCallback()  # same state key as the run's export callback
    trainer = make_trainer(tmp_path, [export], max_steps=8)
    trainer.fit(TinyTranslationModule(), TinyDataModule(), ckpt_path=str(last))
    assert trainer.global_step == 8
    # best_score came back with the checkpoint: 11.0, from step 4's validation (ModelCheckpoint's step-6 save runs
    # at the end of the training batch, before step 6's validation); step 8's BLEU (10.0) did not beat it
    assert export.best_score == 11.0
    assert [e["reason"] for e in export.exports] == ["end of fit"]


# ----------------------------------------------------------------------------------------------------------------
# HubPushCallback (subprocess runs against the fake Hub in tests/hub_server.py)
# ----------------------------------------------------------------------------------------------------------------

HUB_RUN = """
import json, time
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning_modules.callbacks import HFExportCallback, HubPushCallback
from test_callbacks import LoopTimer, TinyDataModule, TinyTranslationModule, make_trainer

root = {root!r}
push = HubPushCallback(repo_id="tester/tiny-vaswani", max_retries={max_retries}, backoff_seconds={backoff},
                       timeout_seconds=60)
timer = LoopTimer()
checkpoints = ModelCheckpoint(dirpath=root + "/checkpoints", save_last=True)
# the push callback is registered before the export on purpose: it must still push the newest export
trainer = make_trainer(root, [push, HFExportCallback(), checkpoints, timer], max_steps={max_steps},
                       checkpointing=True)
started = time.monotonic()
trainer.fit(TinyTranslationModule(), TinyDataModule())
print("RESULT-JSON: " + json.dumps({{"history": push.push_history, "loop_seconds": timer.seconds,
                                    "longest_gap": timer.longest_gap,
                                    "fit_seconds": time.monotonic() - started, "repr": repr(push)}}))
"""


def run_hub_training(tmp_path, hub_server, max_steps=4, max_retries=3, backoff=0.1):
    root = tmp_path / "run"
    env = hub_env(hub_server.url, tmp_path / "hf_home", token=TEST_TOKEN)
    proc = run_python(HUB_RUN.format(root=str(root), max_retries=max_retries, backoff=backoff, max_steps=max_steps),
                      env, timeout=180)
    assert TEST_TOKEN not in proc.stdout and TEST_TOKEN not in proc.stderr
    for path in root.rglob("*"):
        if path.is_file():
            assert TEST_TOKEN.encode() not in path.read_bytes(), path
    assert (root / "checkpoints" / "last.ckpt").is_file() and (root / "hf_model" / "config.json").is_file()
    return root, proc, json_result(proc)


def test_hub_push_retries_and_uploads_the_final_export(tmp_path, hub_server):
    hub_server.fail_next(2, route="commit", status=500)
    root, proc, result = run_hub_training(tmp_path, hub_server, max_steps=4)

    history = result["history"]
    statuses = [(h["status"], h.get("attempt")) for h in history]
    errors = [h for h in history if h["status"] == "error"]
    assert [e["attempt"] for e in errors] == [1, 2], statuses
    assert "HfHubHTTPError" in errors[0]["error"] and "500" in errors[0]["error"]
    assert ("ok", 3) in statuses, statuses  # the first push went through on its third attempt
    assert statuses[-1][0] == "ok" and history[-1]["commit_url"]
    assert "failed (attempt 1 of 4, HfHubHTTPError); retrying" in proc.stderr

    files = hub_server.files("tester/tiny-vaswani", "model", "main")
    assert HF_FILES <= set(files), sorted(files)
    assert hub_server.is_private("tester/tiny-vaswani", "model")
    # the last commit is the end-of-fit export, byte for byte
    assert files["model.safetensors"] == (root / "hf_model" / "model.safetensors").read_bytes()
    assert files["README.md"] == (root / "hf_model" / "README.md").read_bytes()
    assert b"Global step: 4" in files["README.md"]
    writes = [r for r in hub_server.requests if r.method in ("POST", "PUT")]
    assert writes and all(r.authorization == f"Bearer {TEST_TOKEN}" for r in writes)
    assert TEST_TOKEN not in result["repr"]
    assert not any(p.name.endswith("hub-staging") for p in root.iterdir())  # staging cleaned up


def test_training_completes_when_the_hub_is_down(tmp_path, hub_server):
    hub_server.stop()
    _, proc, result = run_hub_training(tmp_path, hub_server, max_steps=4, max_retries=2, backoff=0.05)
    assert proc.returncode == 0
    assert result["history"][-1]["status"] == "failed"
    assert any(h["status"] == "error" and "Connect" in h["error"] for h in result["history"])
    assert "failed after 3 attempts; training goes on without it" in proc.stderr


def test_a_slow_hub_does_not_slow_training(tmp_path, hub_server):
    delay = 6.0
    hub_server.set_delay(delay, route="commit", count=1)
    _, _, result = run_hub_training(tmp_path, hub_server, max_steps=4, max_retries=1)
    # Two validations, each followed by an export and a push request: a synchronous push would stall the loop
    # for >= 6 s at one of them. The CPU may be shared, so compare stalls, not the loop's total time.
    assert result["longest_gap"] < delay / 2, result
    assert result["fit_seconds"] > delay * 0.9, result  # ...while the end of fit waited for the slow commit
    assert result["history"][-1]["status"] == "ok"
