"""Training end to end through the command line (`python -m recipes fit ...` in a subprocess, as a user runs it):
BLEU rises on Multi30k read from a local hub mirror, DDP on 2 CPU processes equals one process on the combined
batch, and a run killed mid-epoch resumes to bitwise the same losses."""

import csv
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from data_utils import multi30k_hub_tables, write_hub_layout
from helpers import REPO_ROOT, TESTS_DIR

from lightning_modules.hardware import SLOW_BF16_RATIO, cpu_bf16_slowdown

STEPS = 30


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 600,
            script: bool = False) -> subprocess.CompletedProcess:
    """`python -m recipes ARGS`, or with `script` the installed `hf-transformer ARGS` console script."""
    environment = dict(env or os.environ)
    environment["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), str(REPO_ROOT), environment.get("PYTHONPATH", "")])
    environment.setdefault("HF_HUB_OFFLINE", "1")
    command = [str(Path(sys.executable).parent / "hf-transformer")] if script else [sys.executable, "-m", "recipes"]
    return subprocess.run([*command, *args], cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def check(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"


def metrics(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="") as handle:
        return list(csv.DictReader(handle))


def series(rows: list[dict[str, str]], name: str) -> dict[int, str]:
    """step -> the logged value as written (full float repr: comparing strings is comparing bits)."""
    return {int(row["step"]): row[name] for row in rows if row.get(name)}


def tiny_run_config(run: Path, cache: Path, dropout: float, batch_size: int, extra_callbacks=()) -> dict:
    """A 2-layer d=32 model on the de -> en numbers corpus, a checkpoint every 10 steps, losses logged every step."""
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": STEPS, "val_check_interval": STEPS,
            "check_val_every_n_epoch": None, "num_sanity_val_steps": 0, "log_every_n_steps": 1,
            "enable_progress_bar": False, "enable_model_summary": False,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(run), "name": "csv", "version": 0}},
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"dirpath": str(run / "checkpoints"), "every_n_train_steps": 10,
                                         "save_top_k": -1, "save_last": True, "filename": "{step}"}},
                          *extra_callbacks],
        },
        "model": {"model_config": {"d_model": 32, "encoder_layers": 2, "decoder_layers": 2,
                                   "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 64,
                                   "decoder_ffn_dim": 64, "dropout": dropout, "max_position_embeddings": 64},
                  "validation_num_beams": 1,
                  "lr_scheduler": {"class_path": "lightning_modules.schedules.InverseSquareRootLR",
                                   "init_args": {"warmup_steps": 10, "peak_lr": 3e-3}}},
        "data": {"class_path": "lightning_modules.data.NumbersDataModule",
                 "init_args": {"num_train": 2000, "num_validation": 100, "num_test": 50, "vocab_size": 300,
                               "batch_size": batch_size, "max_tokens": None, "eval_batch_size": 50,
                               "cache_dir": str(cache), "source_lang": "de", "target_lang": "en"}},
    }


def write_config(path: Path, config: dict) -> str:
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_ddp_on_two_processes_equals_one_process_on_the_combined_batch(tmp_path):
    cache = tmp_path / "cache"
    single = tiny_run_config(tmp_path / "single", cache, dropout=0.0, batch_size=16)
    check(run_cli(["fit", "--config", write_config(tmp_path / "single.yaml", single)], tmp_path))
    ddp = tiny_run_config(tmp_path / "ddp", cache, dropout=0.0, batch_size=8)
    ddp["trainer"].update(devices=2, strategy="ddp")
    check(run_cli(["fit", "--config", write_config(tmp_path / "ddp.yaml", ddp)], tmp_path))

    one, two = metrics(tmp_path / "single/csv/version_0/metrics.csv"), metrics(tmp_path / "ddp/csv/version_0/metrics.csv")
    losses_one, losses_two = series(one, "train/loss"), series(two, "train/loss")
    assert len(losses_one) == STEPS and losses_one.keys() == losses_two.keys()
    for step in losses_one:
        assert float(losses_two[step]) == pytest.approx(float(losses_one[step]), abs=1e-5), step
    assert float(losses_one[STEPS - 1]) < float(losses_one[0])  # it learns
    # validation: every sentence once over both ranks, same BLEU as one process
    bleu_one, bleu_two = series(one, "val/bleu"), series(two, "val/bleu")
    assert series(two, "val/sentences") == series(one, "val/sentences") == {STEPS - 1: "100.0"}
    assert bleu_two == bleu_one and float(bleu_one[STEPS - 1]) > 0


def test_a_run_killed_mid_epoch_resumes_to_the_same_losses(tmp_path):
    cache = tmp_path / "cache"
    full = tiny_run_config(tmp_path / "full", cache, dropout=0.1, batch_size=16)  # 125 batches an epoch
    check(run_cli(["fit", "--config", write_config(tmp_path / "full.yaml", full)], tmp_path, script=True))

    kill = {"class_path": "killer.KillAtStep", "init_args": {"step": 17}}
    crashed = tiny_run_config(tmp_path / "crashed", cache, dropout=0.1, batch_size=16, extra_callbacks=[kill])
    result = run_cli(["fit", "--config", write_config(tmp_path / "crashed.yaml", crashed)], tmp_path)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    last = tmp_path / "crashed/checkpoints/last.ckpt"
    assert last.is_file() and not list(last.parent.glob(".*tmp*"))  # complete, no half-written leftovers

    resumed = tiny_run_config(tmp_path / "resumed", cache, dropout=0.1, batch_size=16)
    check(run_cli(["fit", "--config", write_config(tmp_path / "resumed.yaml", resumed), "--ckpt_path", str(last)],
                  tmp_path))
    expected = series(metrics(tmp_path / "full/csv/version_0/metrics.csv"), "train/loss")
    after = series(metrics(tmp_path / "resumed/csv/version_0/metrics.csv"), "train/loss")
    assert sorted(after) == list(range(10, STEPS))  # resumed after the step-10 checkpoint (steps count from 0)
    assert {step: expected[step] for step in after} == after  # bitwise

    # the finished run translates a file; decoding settings given now win over the checkpoint's
    (tmp_path / "sources.txt").write_text("einundzwanzig\nvierhundert\n\nsieben\n")
    check(run_cli(["predict", "--config", str(tmp_path / "resumed.yaml"), "--ckpt_path",
                   str(tmp_path / "resumed/checkpoints/last.ckpt"), "--data.init_args.predict_file",
                   str(tmp_path / "sources.txt"), "--model.predictions_path", str(tmp_path / "predictions.txt"),
                   "--model.num_beams", "2"], tmp_path))
    assert len((tmp_path / "predictions.txt").read_text().splitlines()) == 4  # one line per source line


@pytest.mark.parametrize("variant", [{"position_embedding_type": "relative", "max_relative_position": 8},
                                     {"attention_type": "local", "local_block_length": 4, "local_memory_length": 4}],
                         ids=["relative", "local"])
def test_a_translation_run_trains_with_either_attention_variant(tmp_path_factory, variant):
    """The variants are `VaswaniConfig` fields, so a translation recipe takes them under model_config like any other
    field: the run learns, validates (beam search with the variant's cache) and exports a model that has them."""
    from transformers import AutoConfig

    import hf_transformer  # noqa: F401  (registers the Auto classes)

    tmp_path = tmp_path_factory.mktemp("variant")
    config = tiny_run_config(tmp_path / "run", tmp_path_factory.getbasetemp() / "variant-cache", dropout=0.0,
                             batch_size=16)
    config["model"]["model_config"].update(variant)
    config["trainer"].update(max_steps=12, val_check_interval=12)
    config["trainer"]["callbacks"] = [{"class_path": "lightning_modules.callbacks.HFExportCallback",
                                       "init_args": {"dirpath": str(tmp_path / "run/hf_model")}}]
    check(run_cli(["fit", "--config", write_config(tmp_path / "variant.yaml", config)], tmp_path))
    rows = metrics(tmp_path / "run/csv/version_0/metrics.csv")
    losses = {step: float(value) for step, value in series(rows, "train/loss").items()}
    assert len(losses) == 12 and losses[11] < losses[0]  # it learns
    assert 0.0 <= float(series(rows, "val/bleu")[11]) <= 100.0 and series(rows, "val/sentences")[11] == "100.0"
    exported = AutoConfig.from_pretrained(tmp_path / "run/hf_model")
    assert {key: getattr(exported, key) for key in variant} == variant


def test_the_cooldown_ends_at_the_trainers_max_steps_and_lowercased_bleu_is_logged(tmp_path):
    """A recipe names only `cooldown_steps`: the task reads the run's length from `trainer.max_steps`, so a shorter
    try (`--trainer.max_steps`) still cools down to its own end."""
    config = tiny_run_config(tmp_path / "run", tmp_path / "cache", dropout=0.0, batch_size=16)
    config["trainer"].update(max_steps=16, val_check_interval=16, callbacks=[])
    config["model"]["lr_scheduler"]["init_args"].update(warmup_steps=4, cooldown_steps=8)
    check(run_cli(["fit", "--config", write_config(tmp_path / "cooldown.yaml", config)], tmp_path))
    rows = metrics(tmp_path / "run/csv/version_0/metrics.csv")
    rates = {step: float(value) for step, value in series(rows, "lr").items()}
    rate = {step: 3e-3 * min(step / 4, (4 / step) ** 0.5) for step in range(1, 17)}  # without the cooldown
    # the row of global step s is the (s + 1)-th update; the cooldown scales it by (16 - s) / 8 once below 1
    for step in (3, 7, 8, 11, 15):
        assert rates[step] == pytest.approx(rate[step + 1] * min(1.0, (16 - step) / 8)), step
    assert rates[15] == pytest.approx(rate[16] / 8)  # the last update: one eighth of the uncooled rate
    bleu, bleu_lc = float(series(rows, "val/bleu")[15]), float(series(rows, "val/bleu_lc")[15])
    assert 0.0 <= bleu <= bleu_lc <= 100.0
    config["model"]["lr_scheduler"]["init_args"]["cooldown_steps"] = 14
    result = run_cli(["fit", "--config", write_config(tmp_path / "too_long.yaml", config)], tmp_path)
    assert result.returncode != 0 and "does not fit in a run of 16 steps" in result.stderr


def test_bf16_mixed_with_gradient_clipping_trains_with_the_fused_adam(tmp_path):
    """The GPU recipes' setting (bf16-mixed, gradient_clip_val 1.0, paper_adam's fused Adam), on CPU: Lightning's
    plugin alone refuses to clip for a fused optimiser; the task clips the unscaled bf16 gradients itself. A CPU
    without native bf16 gets a warning at the fit's start."""
    config = tiny_run_config(tmp_path / "run", tmp_path / "cache", dropout=0.0, batch_size=16)
    config["trainer"].update(max_steps=6, val_check_interval=6, callbacks=[], precision="bf16-mixed",
                             gradient_clip_val=1e-3)
    result = run_cli(["fit", "--config", write_config(tmp_path / "bf16.yaml", config)], tmp_path)
    check(result)
    losses = [float(value) for value in series(metrics(tmp_path / "run/csv/version_0/metrics.csv"),
                                               "train/loss").values()]
    assert len(losses) == 6 and all(math.isfinite(loss) for loss in losses)
    # on a CPU that emulates bf16 the fit says so at its start, with the fix; with native bf16 it says nothing
    warned = "on a CPU without native bf16" in result.stderr and "--trainer.precision 32-true" in result.stderr
    assert warned == (cpu_bf16_slowdown() > SLOW_BF16_RATIO), result.stderr[-3000:]


@pytest.mark.slow  # about 3 minutes on 2 cores: .ci/run runs it with the other slow tests
def test_multi30k_recipe_from_a_local_hub_mirror_learns(tmp_path, hub_mirror):
    """The multi30k_de_en recipe unchanged but for its size and length: `bentrevett/multi30k` is served by an olah
    mirror of a hub-layout copy of ../shared/data/multi30k, and the run reads it through HF_ENDPOINT."""
    write_hub_layout(tmp_path / "multi30k", multi30k_hub_tables({"validation": 500}))
    hub_mirror.add_repo("dataset", "bentrevett/multi30k", tmp_path / "multi30k")
    recipe = REPO_ROOT / "recipes/configs/multi30k_de_en.yaml"
    args = ["fit", "--config", str(recipe), "--trainer.accelerator", "cpu", "--trainer.precision", "32-true",
            "--trainer.max_steps", "400", "--trainer.val_check_interval", "200", "--model.model_config.d_model", "128",
            "--model.model_config.encoder_layers", "2", "--model.model_config.decoder_layers", "2",
            "--model.model_config.encoder_attention_heads", "4", "--model.model_config.decoder_attention_heads", "4",
            "--model.model_config.encoder_ffn_dim", "256", "--model.model_config.decoder_ffn_dim", "256",
            "--model.lr_scheduler.init_args.warmup_steps", "100",
            "--model.lr_scheduler.init_args.peak_lr", "0.002", "--data.init_args.vocab_size", "4000",
            "--data.init_args.max_tokens", "4096"]
    result = run_cli(args, tmp_path, env=hub_mirror.env(tmp_path / "hf_home"), timeout=900)
    check(result)
    rows = metrics(next((tmp_path / "runs/multi30k_de_en/csv").glob("version_*/metrics.csv")))
    bleu = {step: float(value) for step, value in series(rows, "val/bleu").items()}
    print(f"\nMulti30k de->en, 500 validation sentences, greedy: BLEU by step {bleu}")
    assert len(bleu) == 2 and bleu[399] > bleu[199] and bleu[399] > 5.0
    assert (tmp_path / "runs/multi30k_de_en/hf_model/model.safetensors").is_file()


def test_fsdp2_shards_train_like_ddp_and_export_a_complete_folder(tmp_path):
    """ModelParallelStrategy with FSDP2 `fully_shard` per layer, 2 CPU processes (gloo): the same losses and BLEU as
    DDP, and the HF export gathers the shards into one loadable folder."""
    cache = tmp_path / "cache"
    export = {"class_path": "lightning_modules.callbacks.HFExportCallback",
              "init_args": {"dirpath": str(tmp_path / "fsdp/hf_model")}}
    runs = {}
    for name, strategy in (("ddp", "ddp"),
                           ("fsdp", {"class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
                                     "init_args": {"data_parallel_size": 2, "tensor_parallel_size": 1}})):
        config = tiny_run_config(tmp_path / name, cache, dropout=0.0, batch_size=8,
                                 extra_callbacks=[export] if name == "fsdp" else [])
        config["trainer"].update(devices=2, strategy=strategy, max_steps=12, val_check_interval=12)
        config["trainer"]["callbacks"] = config["trainer"]["callbacks"][1:]  # no step checkpoints: not the point here
        check(run_cli(["fit", "--config", write_config(tmp_path / f"{name}.yaml", config)], tmp_path))
        runs[name] = metrics(tmp_path / name / "csv/version_0/metrics.csv")
    ddp_losses, fsdp_losses = series(runs["ddp"], "train/loss"), series(runs["fsdp"], "train/loss")
    assert len(fsdp_losses) == 12 and fsdp_losses.keys() == ddp_losses.keys()
    for step in ddp_losses:  # reduce-scatter and all-reduce sum in different orders: equal to float rounding
        assert float(fsdp_losses[step]) == pytest.approx(float(ddp_losses[step]), rel=1e-4), step
    assert float(series(runs["fsdp"], "val/bleu")[11]) == pytest.approx(float(series(runs["ddp"], "val/bleu")[11]),
                                                                        abs=0.5)

    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForSeq2SeqLM

    import hf_transformer  # noqa: F401

    folder = tmp_path / "fsdp/hf_model"
    model = AutoModelForSeq2SeqLM.from_pretrained(folder)
    stored = load_file(folder / "model.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in stored.values())
    assert model.lm_head.weight is model.model.shared.weight  # still three-way tied
