"""Reliability, round two (RELIABILITY.md "Secrets, resumes, preemption, run directories, paths, caches,
integrity"): each test drives the real command line (`python -m recipes ...` in a subprocess) or the real loaders
and checks what a user would see."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO_ROOT, TESTS_DIR

PLANTED = "hf_PLANTEDsecret0123456789abcdefghijABCDEF"


def run_bytes(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m recipes ARGS` with stdout and stderr as bytes (every byte is checked)."""
    environment = dict(env or os.environ)
    environment["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), str(REPO_ROOT), environment.get("PYTHONPATH", "")])
    environment.setdefault("HF_HUB_OFFLINE", "1")
    environment.setdefault("HF_TRANSFORMER_CACHE", str(cwd / "user-cache"))  # never the user's own cache
    return subprocess.run([sys.executable, "-m", "recipes", *args], cwd=cwd, env=environment, capture_output=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


# ----------------------------------------------------------------------------------------------------------------
# 1. Secrets never reach the console
# ----------------------------------------------------------------------------------------------------------------

PUSH = ["--trainer.callbacks+=lightning_modules.callbacks.HubPushCallback", "--trainer.callbacks.repo_id", "me/x"]


def test_a_planted_token_never_reaches_stdout_or_stderr(tmp_path):
    """--print_config and a failing parse, with the token as an argument (refused, status 2, naming the argument),
    in a config file (refused, naming the file and the key) and in HF_TOKEN (used, never printed)."""
    config = tmp_path / "push.yaml"
    config.write_text(yaml.safe_dump({"trainer": {"callbacks": [{
        "class_path": "lightning_modules.callbacks.HubPushCallback",
        "init_args": {"repo_id": "me/x", "token": PLANTED}}]}}))
    cases = {
        "argument, --print_config": (["--trainer.callbacks.token", PLANTED, "--print_config"], 2),
        "argument=, failing parse": ([f"--trainer.callbacks.token={PLANTED}",
                                      "--trainer.callbacks.every_n_validations", "0"], 2),
        "config file, --print_config": (["--config", str(config), "--print_config"], 2),
    }
    for name, (extra, status) in cases.items():
        result = run_bytes(["fit", "--config", "quickstart", *PUSH, *extra], tmp_path)
        output = result.stdout + result.stderr
        assert PLANTED.encode() not in output, name
        assert result.returncode == status, (name, result.returncode, result.stderr[-2000:])
        assert b"Tokens are never taken from the command line or from config files" in result.stderr, name
        assert b"HF_TOKEN" in result.stderr, name
    refused = run_bytes(["fit", "--config", "quickstart", "--config", str(config)], tmp_path).stderr.decode()
    assert f"config file {config}: key trainer.callbacks[0].init_args.token" in refused

    # the environment's token: --print_config and a failing parse print neither it nor anything shaped like it
    env = {**os.environ, "HF_TOKEN": PLANTED}
    for extra in (["--print_config"], ["--trainer.callbacks.every_n_validations", "0"]):
        result = run_bytes(["fit", "--config", "quickstart", *PUSH, *extra], tmp_path, env=env)
        assert PLANTED.encode() not in result.stdout + result.stderr, extra
        if extra == ["--print_config"]:
            assert result.returncode == 0 and b"token: null" in result.stdout
        else:
            assert result.returncode != 0 and b"every_n_validations" in result.stderr


# ----------------------------------------------------------------------------------------------------------------
# 2. A resume is the same run: the same tokenizer, the same model
# ----------------------------------------------------------------------------------------------------------------


def tiny_run(tmp_path: Path, name: str, steps: int = 10, **data: int) -> tuple[dict, Path]:
    """test_training's tiny run (2-layer d=32, numbers corpus), `steps` steps, a checkpoint every 10 steps."""
    from test_training import tiny_run_config

    config = tiny_run_config(tmp_path / name, tmp_path / "cache", dropout=0.1, batch_size=16)
    config["trainer"].update(max_steps=steps, val_check_interval=steps)
    config["data"]["init_args"].update(num_validation=20, eval_batch_size=20, **data)
    return config, tmp_path / name


def write(tmp_path: Path, name: str, config: dict) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_a_resume_with_another_corpus_or_model_is_refused_naming_what_differs(tmp_path):
    config, run = tiny_run(tmp_path, "run")
    first = run_bytes(["fit", "--config", write(tmp_path, "run", config)], tmp_path)
    assert first.returncode == 0, first.stderr.decode()[-3000:]
    last = run / "checkpoints" / "last.ckpt"

    # a slightly larger corpus: the data module trains another 300-token tokenizer; its ids mean other tokens
    bigger, _ = tiny_run(tmp_path, "run", steps=20, num_train=3000)
    result = run_bytes(["fit", "--config", write(tmp_path, "bigger", bigger), "--ckpt_path", str(last)], tmp_path)
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr[-3000:]
    assert f"ResumeMismatchError: Checkpoint {last} was trained with another tokenizer than the data module has " \
           "now:" in stderr
    print(stderr.strip().splitlines()[-1])  # shown with -s (RELIABILITY.md quotes it)
    assert "token ids stand for other tokens now (e.g. id" in stderr and "--data.tokenizer_path" in stderr
    assert "leave out --ckpt_path" in stderr and "--model.pretrained" in stderr
    assert not (run / "checkpoints" / "step=19.ckpt").exists()  # not one step trained

    # another d_model: Lightning used to replace it silently with the checkpoint's 32
    wider, _ = tiny_run(tmp_path, "run", steps=20)
    wider["model"]["model_config"]["d_model"] = 48
    result = run_bytes(["fit", "--config", write(tmp_path, "wider", wider), "--ckpt_path", str(last)], tmp_path)
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr[-3000:]
    print(stderr.strip().splitlines()[-1])
    assert f"--ckpt_path {last} resumes a run whose model was configured otherwise: model_config.d_model: 32 in " \
           "the checkpoint, 48 now." in stderr

    # `--ckpt_path last` (Lightning finds the file): compared when the checkpoint is loaded, before any step
    result = run_bytes(["fit", "--config", write(tmp_path, "wider", wider), "--ckpt_path", "last"], tmp_path)
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr[-3000:]
    assert f"ResumeMismatchError: Checkpoint {last} holds another model than the one configured now: d_model: 32 " \
           "in the checkpoint, 48 now." in stderr

    # the same configuration resumes
    same, _ = tiny_run(tmp_path, "run", steps=12)
    result = run_bytes(["fit", "--config", write(tmp_path, "same", same), "--ckpt_path", str(last)], tmp_path)
    assert result.returncode == 0, result.stderr.decode()[-3000:]


# ----------------------------------------------------------------------------------------------------------------
# 3. Preemption: SIGTERM writes a resumable checkpoint where the run stops, exports nothing, exits non-zero
# ----------------------------------------------------------------------------------------------------------------


def environment(cwd: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env.update(HF_HUB_OFFLINE="1", HF_TRANSFORMER_CACHE=str(cwd / "user-cache"), OMP_NUM_THREADS="1")
    return env


def start_fit(config_path: str, cwd: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "recipes", "fit", "--config", config_path, *extra], cwd=cwd,
                            env=environment(cwd), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"exited {proc.returncode} before {path.name}\n{proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.05)


def exporting_run(tmp_path: Path, name: str, version: str, steps: int = 30, pause: dict | None = None) -> dict:
    config, run = tiny_run(tmp_path, name, steps=steps)
    config["trainer"]["callbacks"].append({"class_path": "lightning_modules.callbacks.HFExportCallback",
                                           "init_args": {"monitor": "val/loss", "mode": "min",
                                                         "dirpath": str(run / "hf_model")}})
    if pause is not None:
        config["trainer"]["callbacks"].append({"class_path": "killer.PauseAtStep", "init_args": pause})
    config["trainer"]["logger"]["init_args"]["version"] = version
    return config


def test_sigterm_mid_epoch_writes_a_resumable_checkpoint_exports_nothing_and_resumes_bitwise(tmp_path):
    from test_training import metrics, series

    reference = exporting_run(tmp_path, "reference", "reference")
    proc = start_fit(write(tmp_path, "reference", reference), tmp_path)
    assert proc.wait(600) == 0, proc.communicate()[1][-3000:]
    expected = series(metrics(tmp_path / "reference/csv/reference/metrics.csv"), "train/loss")
    assert sorted(expected) == list(range(30))

    run, marker = tmp_path / "run", tmp_path / "at-step-12"
    interrupted = exporting_run(tmp_path, "run", "interrupted", pause={"step": 12, "marker": str(marker)})
    proc = start_fit(write(tmp_path, "interrupted", interrupted), tmp_path)
    wait_for(marker, proc)
    proc.send_signal(signal.SIGTERM)  # as SLURM or Kubernetes do
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    last = run / "checkpoints" / "last.ckpt"
    message = (f"hf-transformer: Training interrupted by SIGTERM at step 12: wrote the resumable checkpoint {last}; "
               f"nothing was exported. Resume with the same command and --ckpt_path {last}.")
    assert stderr.strip().splitlines()[-1] == message
    from lightning_modules.checkpointing import load_checkpoint_file

    assert load_checkpoint_file(last)["global_step"] == 12
    assert not list((run / "checkpoints").glob(".*"))  # no temporary file
    assert not (run / "hf_model").exists() and not (run / "hf_model_last").exists()  # nothing exported
    before = series(metrics(run / "csv/interrupted/metrics.csv"), "train/loss")
    assert before == {step: expected[step] for step in range(12)}

    resumed = exporting_run(tmp_path, "run", "resumed")
    proc = start_fit(write(tmp_path, "resumed", resumed), tmp_path, "--ckpt_path", str(last))
    assert proc.wait(600) == 0, proc.communicate()[1][-3000:]
    after = series(metrics(run / "csv/resumed/metrics.csv"), "train/loss")
    assert after == {step: expected[step] for step in range(12, 30)}  # bit for bit
    assert (run / "hf_model_last" / "model.safetensors").is_file()


# ----------------------------------------------------------------------------------------------------------------
# 4. One writer per run directory
# ----------------------------------------------------------------------------------------------------------------


def files_under(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file()}


def test_a_second_fit_into_a_run_directory_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path):
    import json

    from lightning_modules.checkpointing import load_checkpoint_file

    config, run = tiny_run(tmp_path, "run")
    config["trainer"]["default_root_dir"] = str(run)
    marker = tmp_path / "first-at-step-5"
    first_config = {**config, "trainer": {**config["trainer"], "callbacks": [
        *config["trainer"]["callbacks"],
        {"class_path": "killer.PauseAtStep", "init_args": {"step": 5, "marker": str(marker), "seconds": 20}}]}}
    first = start_fit(write(tmp_path, "first", first_config), tmp_path)
    wait_for(marker, first)
    before = files_under(run)
    holder = json.loads((run / "fit.lock").read_text())
    assert holder["pid"] == first.pid and "fit --config" in holder["command"]

    second = run_bytes(["fit", "--config", write(tmp_path, "second", config)], tmp_path, timeout=120)
    stderr = second.stderr.decode()
    assert second.returncode == 1, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith(
        f"hf-transformer fit: The run directory {run} is in use by another fit (pid {first.pid} on host ")
    assert f"--trainer.default_root_dir {run}-2" in stderr
    assert files_under(run) == before  # the second fit wrote nothing

    assert first.wait(300) == 0, first.communicate()[1][-3000:]
    assert load_checkpoint_file(run / "checkpoints" / "last.ckpt")["global_step"] == 10
    from test_training import metrics, series

    assert sorted(series(metrics(run / "csv/version_0/metrics.csv"), "train/loss")) == list(range(10))

    # the first fit is gone, its lock file stays: free, taken over by the next fit of the run (a resume here)
    resumed, _ = tiny_run(tmp_path, "run", steps=12)
    resumed["trainer"]["default_root_dir"] = str(run)
    resumed["trainer"]["logger"]["init_args"]["version"] = 1
    third = run_bytes(["fit", "--config", write(tmp_path, "third", resumed), "--ckpt_path", "last"], tmp_path)
    assert third.returncode == 0, third.stderr.decode()[-3000:]
    assert json.loads((run / "fit.lock").read_text())["pid"] not in (first.pid, os.getpid())
    assert load_checkpoint_file(run / "checkpoints" / "last.ckpt")["global_step"] == 12


# ----------------------------------------------------------------------------------------------------------------
# 5. Paths are paths
# ----------------------------------------------------------------------------------------------------------------


def test_file_names_with_spaces_and_brackets_are_read_as_they_are_and_bad_names_name_the_argument(tmp_path):
    import json

    from lightning_modules.data import TranslationDataModule

    folder = tmp_path / "my docs"
    folder.mkdir()
    # structured data_files: `datasets` expands them as glob patterns ("in[1]" would mean "in1")
    rows = [{"de": f"satz {i}", "en": f"sentence {i}"} for i in range(30)]
    for name in ("train[1].jsonl", "valid [*].jsonl"):
        (folder / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    data = TranslationDataModule(data_files={"train": str(folder / "train[1].jsonl"),
                                             "validation": str(folder / "valid [*].jsonl")},
                                 vocab_size=300, cache_dir=str(tmp_path / "cache"), batch_size=4, max_tokens=None)
    data.setup("fit")
    assert data.cleaning_report["train"]["total"] == 30 and data.cleaning_report["validation"]["total"] == 30

    # predict_file: translated, the report names the file (it used to be parsed as a split: "not a split name")
    config, run = tiny_run(tmp_path, "run")
    assert run_bytes(["fit", "--config", write(tmp_path, "run", config)], tmp_path).returncode == 0
    sources = folder / "in[1].txt"
    sources.write_text("einundzwanzig\nsieben\n\nvierhundert\n")
    result = run_bytes(["predict", "--ckpt_path", str(run / "checkpoints/last.ckpt"),
                        "--data.init_args.predict_file", str(sources)], tmp_path)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    assert f"predict (predict_file {str(sources)!r}) cleaning report" in result.stderr.decode()
    assert len((run / "predictions" / "last-in[1].txt").read_text().splitlines()) == 4

    # a file name that is not UTF-8: refused naming the argument (it used to be `Parser key "data": 'utf-8' codec
    # can't encode character '\udcff'`)
    bad = os.fsdecode(bytes(tmp_path) + b"/in\xff.txt")
    result = run_bytes(["predict", "--ckpt_path", str(run / "checkpoints/last.ckpt"),
                        "--data.init_args.predict_file", bad], tmp_path)
    stderr = result.stderr.decode()
    assert result.returncode == 2
    assert stderr.strip().splitlines()[-1].startswith(
        "hf-transformer: --data.init_args.predict_file: the value b'") and "is not valid UTF-8 (byte b'\\xff')" in stderr


# ----------------------------------------------------------------------------------------------------------------
# 6. Cached artefacts are checked when loaded
# ----------------------------------------------------------------------------------------------------------------


def test_a_truncated_cached_tokenizer_or_tokenized_split_is_named_and_rebuilt(tmp_path, caplog, monkeypatch):
    import json
    import logging

    from lightning_modules.data import TranslationDataModule
    from lightning_modules.runs import materialize_tokenizer, tokenizer_files, tokenizer_fingerprint

    corpus = tmp_path / "train.jsonl"
    corpus.write_text("".join(json.dumps({"de": f"ein satz nummer {i}", "en": f"sentence number {i}"}) + "\n"
                              for i in range(200)))

    def data() -> TranslationDataModule:
        return TranslationDataModule(data_files={"train": str(corpus)}, vocab_size=300, batch_size=4,
                                     max_tokens=None, cache_dir=str(tmp_path / "cache"))

    original = data().tokenizer
    folder = data().tokenizer_cache_path()
    for damage in ("truncated", "emptied"):
        cached = folder / "tokenizer.json"
        text = cached.read_bytes()
        cached.write_bytes(text[: len(text) // 2] if damage == "truncated" else b"")
        with caplog.at_level(logging.WARNING, logger="lightning_modules"):
            caplog.clear()
            rebuilt = data().tokenizer
        assert tokenizer_fingerprint(rebuilt) == tokenizer_fingerprint(original), damage
        warning = " ".join(record.getMessage() for record in caplog.records)
        assert f"the cached tokenizer {folder} is damaged and cannot be loaded" in warning, damage
        assert "training it again" in warning
        assert (folder / "tokenizer.json").read_bytes() == text

    # a truncated tokenized split (datasets' cache file): named, removed, tokenized again
    module = TranslationDataModule(data_files={"train": str(corpus), "validation": str(corpus)}, vocab_size=300,
                                   batch_size=4, max_tokens=None, cache_dir=str(tmp_path / "cache"))
    module.setup("fit")
    expected = module.tokenized_split("train")["input_ids"]
    arrow = min((tmp_path / "cache" / "tokenized").glob("train.jsonl-train-*.arrow"))
    half = arrow.with_name("half")  # a new file, renamed over: this process still maps the old one
    half.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
    os.replace(half, arrow)
    module = TranslationDataModule(data_files={"train": str(corpus), "validation": str(corpus)}, vocab_size=300,
                                   batch_size=4, max_tokens=None, cache_dir=str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING, logger="lightning_modules"):
        caplog.clear()
        module.setup("fit")
    assert module.tokenized_split("train")["input_ids"] == expected
    assert f"the cached file {arrow} is damaged and cannot be read" in caplog.text

    # the copy of a checkpoint's tokenizer in the cache: damaged, it is written again from the checkpoint
    monkeypatch.setenv("HF_TRANSFORMER_CACHE", str(tmp_path / "user-cache"))
    files = tokenizer_files(original)
    copy = materialize_tokenizer(files)
    (copy / "tokenizer.json").write_text((copy / "tokenizer.json").read_text()[:100])
    assert materialize_tokenizer(files) == copy
    assert (copy / "tokenizer.json").read_text() == files["tokenizer.json"]


# ----------------------------------------------------------------------------------------------------------------
# 7. Integrity: checksums written with every checkpoint and export, checked by the project's loaders
# ----------------------------------------------------------------------------------------------------------------


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_one_flipped_byte_in_a_checkpoint_or_an_exported_safetensors_is_caught(tmp_path):
    import shutil

    import torch
    from safetensors import safe_open
    from test_callbacks import TinyDataModule, TinyTranslationModule, make_trainer
    from transformers import AutoModelForSeq2SeqLM

    import hf_transformer  # noqa: F401  (registers the Auto classes)
    from hf_transformer.integrity import MANIFEST, ChecksumMismatchError, verify_manifest
    from hf_transformer.translation import load_translator
    from lightning_modules.callbacks import HFExportCallback
    from lightning_modules.checkpointing import AtomicCheckpointIO, CheckpointLoadError, load_checkpoint_file
    from lightning_modules.tasks import TranslationModule

    export = HFExportCallback(dirpath=str(tmp_path / "hf_model"), monitor="val/loss", mode="min")
    trainer = make_trainer(tmp_path, [export], max_steps=2, checkpointing=False)
    trainer.fit(TinyTranslationModule(), TinyDataModule())
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(checkpoint)  # through AtomicCheckpointIO: with last.ckpt.sha256
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert (checkpoint.parent / "last.ckpt.sha256").read_text().split() == [
        __import__("hashlib").sha256(checkpoint.read_bytes()).hexdigest(), "last.ckpt"]
    reference = load_checkpoint_file(checkpoint)

    # a byte inside a tensor's data: torch loads it as another weight; the checksum refuses it
    name, tensor = next((k, v) for k, v in reference["state_dict"].items() if v.numel() > 100)
    data = checkpoint.read_bytes()
    offset = data.find(tensor.numpy().tobytes()[:64]) + 40
    assert offset > 40
    flip_byte(checkpoint, offset)
    changed = torch.load(checkpoint, weights_only=True)["state_dict"][name]
    assert not torch.equal(changed, tensor)  # what the manifest is for
    for load in (load_checkpoint_file, AtomicCheckpointIO().load_checkpoint):
        with pytest.raises(CheckpointLoadError, match=f"Checkpoint {checkpoint} does not match its checksum: its "
                           r"sha256 is [0-9a-f]{16}\.\.\., but last.ckpt.sha256 recorded"):
            load(checkpoint)

    # exports: checksums.sha256 lists every file; from_pretrained still loads the folder
    folder = tmp_path / "hf_model_last"
    listed = (folder / MANIFEST).read_text().splitlines()
    assert {line.split("  ")[1] for line in listed} == {p.name for p in folder.iterdir()} - {MANIFEST}
    assert verify_manifest(folder)
    AutoModelForSeq2SeqLM.from_pretrained(folder)
    damaged = tmp_path / "damaged"
    shutil.copytree(folder, damaged)
    with safe_open(str(damaged / "model.safetensors"), "pt") as weights:
        first = weights.get_tensor(min(weights.keys()))
    data = (damaged / "model.safetensors").read_bytes()
    flip_byte(damaged / "model.safetensors", data.find(first.numpy().tobytes()[:64]) + 40)
    AutoModelForSeq2SeqLM.from_pretrained(damaged)  # plain from_pretrained: loads, silently other weights
    message = (f"The folder {str(damaged)!r} is damaged: model.safetensors has sha256 [0-9a-f]{{16}}\\.\\.\\., but "
               f"{MANIFEST} recorded")
    for load in (lambda: TranslationModule(pretrained=str(damaged)),
                 lambda: load_translator(str(damaged), "pytorch", "default", "cpu")):
        with pytest.raises(ChecksumMismatchError, match=message):
            load()
    TranslationModule(pretrained=str(folder))  # the undamaged folder loads


def test_ctrl_c_stops_like_sigterm_and_a_second_one_interrupts_at_once(tmp_path):
    """SIGINT (Ctrl+C) in the middle of a step (a plain LightningModule with the callback given: every task module
    has it by default): the step finishes, last.ckpt holds it, `TrainingInterrupted` with
    exit code 130; a second SIGINT before the stop raises KeyboardInterrupt (Lightning's own shutdown)."""
    import lightning.pytorch as L
    from test_callbacks import TinyDataModule, TinyTranslationModule, make_trainer

    from lightning_modules.callbacks import PreemptionCheckpoint, TrainingInterrupted
    from lightning_modules.checkpointing import load_checkpoint_file

    class CtrlC(L.Callback):
        def __init__(self, times: int) -> None:
            self.times = times

        def on_after_backward(self, trainer, pl_module) -> None:
            if trainer.global_step == 2:
                for _ in range(self.times):
                    os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)  # Python's default_int_handler; SIG_IGN under `nohup` or a shell's `&`
    trainer = make_trainer(tmp_path / "once", [CtrlC(1), PreemptionCheckpoint()], max_steps=6, val_every=100)
    with pytest.raises(TrainingInterrupted, match="Training interrupted by SIGINT at step 3: wrote the resumable "
                       "checkpoint") as raised:
        trainer.fit(TinyTranslationModule(), TinyDataModule())
    assert raised.value.exit_code == 130 and load_checkpoint_file(raised.value.checkpoint)["global_step"] == 3
    assert signal.getsignal(signal.SIGINT) is before  # given back

    trainer = make_trainer(tmp_path / "twice", [CtrlC(2), PreemptionCheckpoint()], max_steps=6, val_every=100)
    try:
        with pytest.raises(SystemExit):  # Lightning: "Detected KeyboardInterrupt, attempting graceful shutdown"
            trainer.fit(TinyTranslationModule(), TinyDataModule())
    finally:
        signal.signal(signal.SIGINT, before)  # Lightning ignores SIGINT after its shutdown
    assert not (tmp_path / "twice" / "checkpoints" / "last.ckpt").exists()
