"""Safe, strict loading: nothing we load can run code, damaged files are named, unknown config fields are reported,
the exported remote code is self-contained and offline, and the Hub token never lands on disk or in the logs.

- Model weights: our code writes only safetensors. transformers 5.23 loads a folder that has only
  `pytorch_model.bin` with `torch.load(weights_only=True)` (modeling_utils.load_state_dict), so a malicious pickle
  there is refused, not run; `use_safetensors=True` refuses the .bin outright.
- Lightning checkpoints: every load in this repository is `weights_only=True` (checked by scanning the source); a
  `.ckpt` whose pickle carries a `__reduce__` payload is refused by every path (our loader, the checkpoint plugin,
  averaging, `Trainer.fit(ckpt_path=...)` with or without the plugin, `load_from_checkpoint`), and the payload's
  marker file is never created (a control load with weights_only=False shows that the payload does run).
- Damaged files: truncated checkpoints and safetensors files, at many offsets, zero-length ones and ones with flipped
  bytes give an error naming the file (or folder); a flipped byte inside tensor data cannot be detected (neither
  format has a checksum) and loads, which the hypothesis tests count separately.
"""

from __future__ import annotations

import ast
import builtins
import json
import logging
import re
from collections import Counter
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForSeq2SeqLM

from helpers import REPO_ROOT, hub_env, json_result, run_python
from hub_server import HubServer
from model_utils import tiny_model
from test_callbacks import TinyDataModule, TinyTranslationModule, make_trainer

import hf_transformer
from hf_transformer import VaswaniConfig
from lightning_modules.callbacks.averaging import average_checkpoints, export_average
from lightning_modules.callbacks import CheckpointAveragingCallback, HFExportCallback
from lightning_modules.checkpointing import AtomicCheckpointIO, CheckpointLoadError, load_checkpoint_file

FLIP_EXAMPLES = 40
HYPOTHESIS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])


class PlantMarker:
    """Pickles to a call that creates `path`: what a malicious checkpoint does when unpickled without restriction."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return builtins.exec, (f"open({self.path!r}, 'w').close()",)


def malicious_copy(checkpoint: dict, marker: Path) -> dict:
    return {**checkpoint, "payload": PlantMarker(marker)}


def assert_payload_runs_without_restriction(path: Path, marker: Path) -> None:
    """The control: an unrestricted load does run the payload (so "no marker" below means "refused")."""
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real 2-step run of the callback stand-ins: its last.ckpt and its HF export."""
    root = tmp_path_factory.mktemp("run")
    trainer = make_trainer(root, [HFExportCallback(), ModelCheckpoint(dirpath=root / "checkpoints", save_last=True)],
                           max_steps=2, val_every=2, checkpointing=True)
    trainer.fit(TinyTranslationModule(), TinyDataModule(batches=2))
    return root


# ----------------------------------------------------------------------------------------------------------------
# Pickles are never run
# ----------------------------------------------------------------------------------------------------------------


def test_every_torch_load_in_the_repository_is_weights_only():
    """A source scan: each torch.load call of the package passes weights_only=True, and nothing calls pickle.load."""
    calls = []
    for folder in ("hf_transformer", "lightning_modules", "recipes"):
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                    continue
                owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
                if (owner, node.func.attr) in (("pickle", "load"), ("pickle", "loads"), ("dill", "load")):
                    pytest.fail(f"{path}:{node.lineno} unpickles without restriction")
                if (owner, node.func.attr) == ("torch", "load"):
                    flag = {k.arg: k.value for k in node.keywords}.get("weights_only")
                    assert isinstance(flag, ast.Constant) and flag.value is True, f"{path}:{node.lineno}"
                    calls.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert calls, "the scan found no torch.load at all: it is not looking at the right files"


def test_a_malicious_checkpoint_is_refused_by_every_loading_path(trained, tmp_path):
    checkpoint = load_checkpoint_file(trained / "checkpoints" / "last.ckpt")
    marker = tmp_path / "PWNED"
    path = tmp_path / "malicious.ckpt"
    torch.save(malicious_copy(checkpoint, marker), path)
    assert_payload_runs_without_restriction(path, marker)

    with pytest.raises(CheckpointLoadError, match=rf"{re.escape(str(path))} cannot be loaded with weights_only=True"):
        load_checkpoint_file(path)
    with pytest.raises(CheckpointLoadError, match=re.escape(str(path))):
        AtomicCheckpointIO().load_checkpoint(path)
    with pytest.raises(ValueError, match="weights_only=True only"):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)
    with pytest.raises(CheckpointLoadError, match=re.escape(str(path))):
        average_checkpoints([trained / "checkpoints" / "last.ckpt", path])
    with pytest.raises(CheckpointLoadError, match=re.escape(str(path))):  # resume through our plugin
        make_trainer(tmp_path / "resume", [], max_steps=4).fit(TinyTranslationModule(), TinyDataModule(),
                                                               ckpt_path=str(path))
    plain = L.Trainer(default_root_dir=tmp_path / "plain", max_steps=4, logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, accelerator="cpu", devices=1)
    with pytest.raises(Exception, match="Weights only load failed"):  # Lightning's own CheckpointIO, torch's default
        plain.fit(TinyTranslationModule(), TinyDataModule(), ckpt_path=str(path))
    with pytest.raises(Exception, match="Weights only load failed"):
        TinyTranslationModule.load_from_checkpoint(path)
    assert not marker.exists()


def test_a_folder_with_only_pytorch_model_bin_is_loaded_weights_only(tmp_path, monkeypatch):
    model = tiny_model()
    model.config.save_pretrained(tmp_path / "bin")
    marker = tmp_path / "PWNED"
    weights = tmp_path / "bin" / "pytorch_model.bin"
    torch.save(malicious_copy(dict(model.state_dict()), marker), weights)
    assert_payload_runs_without_restriction(weights, marker)
    with pytest.raises(Exception, match="Weights only load failed"):
        AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "bin")
    assert not marker.exists()

    # A clean .bin loads, through torch.load(weights_only=True); use_safetensors=True refuses it.
    torch.save(dict(model.state_dict()), weights)
    flags = []
    real_load = torch.load

    def spy(*args, **kwargs):
        flags.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "bin")
    assert flags and all(flag is True for flag in flags), flags  # a meta-device pass, then the real one
    assert torch.equal(loaded.model.shared.weight, model.model.shared.weight)
    with pytest.raises(OSError, match="no file named model.safetensors"):
        AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "bin", use_safetensors=True)


def test_export_averaging_and_resume_write_safetensors_and_read_weights_only(trained, tmp_path, monkeypatch):
    """A run with export, step checkpoints, averaging and a resume, under a torch.load spy: every load is
    weights_only=True and every HF folder holds safetensors weights and no pickle."""
    flags = []
    real_load = torch.load

    def spy(*args, **kwargs):
        flags.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    root = tmp_path / "run"
    callbacks = [HFExportCallback(), CheckpointAveragingCallback(last_n=2),
                 ModelCheckpoint(dirpath=root / "checkpoints", every_n_train_steps=1, save_top_k=-1, save_last=True)]
    make_trainer(root, callbacks, max_steps=3, val_every=3, checkpointing=True).fit(
        TinyTranslationModule(), TinyDataModule(batches=3))
    make_trainer(root / "resumed", [HFExportCallback()], max_steps=4, val_every=4).fit(
        TinyTranslationModule(), TinyDataModule(batches=4), ckpt_path=str(root / "checkpoints" / "last.ckpt"))
    steps = sorted((root / "checkpoints").glob("epoch=*.ckpt"))
    assert len(steps) == 3
    export_average(steps, tmp_path / "averaged", tokenizer=root / "hf_model")
    assert flags and all(flag is True for flag in flags), flags

    folders = [root / "hf_model", root / "hf_model_averaged", root / "resumed" / "hf_model", tmp_path / "averaged"]
    for folder in folders:
        names = {p.name for p in folder.iterdir()}
        assert "model.safetensors" in names, folder
        for path in folder.iterdir():
            head = path.read_bytes()[:4]
            assert path.suffix not in (".bin", ".pt", ".pth", ".pkl", ".ckpt"), path
            assert not head.startswith((b"\x80", b"PK\x03\x04")), path  # a pickle, or torch.save's zip
        with safe_open(folder / "model.safetensors", framework="pt") as handle:
            assert any(key.endswith("shared.weight") for key in handle.keys())


# ----------------------------------------------------------------------------------------------------------------
# Damaged files are named
# ----------------------------------------------------------------------------------------------------------------


def test_truncated_checkpoints_name_the_file(trained, tmp_path):
    data = (trained / "checkpoints" / "last.ckpt").read_bytes()
    path = tmp_path / "cut.ckpt"
    offsets = [0, 1, 22, 512, len(data) // 4, len(data) // 2, len(data) - 4096, len(data) - 22, len(data) - 1]
    for offset in offsets:
        path.write_bytes(data[:offset])
        with pytest.raises(CheckpointLoadError, match=rf"{re.escape(str(path))} \({offset} bytes\) is truncated "
                                                      "or corrupt"):
            load_checkpoint_file(path)


def test_checkpoints_with_flipped_bytes_load_or_name_the_file(trained, tmp_path):
    """Without its checksum file (copied alone) a flip inside tensor data or a stored number loads; with it (as
    AtomicCheckpointIO writes them, test_reliability.py) every flip is refused naming the file."""
    source = trained / "checkpoints" / "last.ckpt"
    data = source.read_bytes()
    path = tmp_path / "flipped.ckpt"
    checksums = tmp_path / "flipped.ckpt.sha256"
    recorded = (source.parent / "last.ckpt.sha256").read_text().replace("last.ckpt", "flipped.ckpt")
    outcomes = Counter()
    with_checksum = Counter()

    @settings(max_examples=FLIP_EXAMPLES, **HYPOTHESIS)
    @given(st.integers(0, len(data) - 1), st.integers(1, 255))
    def run(position, mask):
        corrupt = bytearray(data)
        corrupt[position] ^= mask
        path.write_bytes(bytes(corrupt))
        try:
            checkpoint = load_checkpoint_file(path)
        except CheckpointLoadError as error:
            assert str(path) in str(error)
            outcomes["refused, file named"] += 1
            return
        assert isinstance(checkpoint, dict)  # a flip inside tensor data: no checksum to catch it
        outcomes["loaded"] += 1
        checksums.write_text(recorded)
        try:
            with pytest.raises(CheckpointLoadError, match=f"Checkpoint {path} does not match its checksum"):
                load_checkpoint_file(path)
            with_checksum["refused, file named"] += 1
        finally:
            checksums.unlink()

    run()
    print(f"checkpoint byte flips: {dict(outcomes)}; the loaded ones with their checksum file: {dict(with_checksum)}")
    assert sum(outcomes.values()) == FLIP_EXAMPLES and outcomes["refused, file named"] > 0
    assert with_checksum["refused, file named"] == outcomes["loaded"] > 0


@pytest.fixture(scope="module")
def safetensors_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("safetensors")
    tiny_model(seed=3).save_pretrained(folder)
    return folder


def test_truncated_safetensors_name_the_folder(safetensors_folder, tmp_path):
    data = (safetensors_folder / "model.safetensors").read_bytes()
    header = int.from_bytes(data[:8], "little")
    folder = tmp_path / "cut"
    folder.mkdir()
    (folder / "config.json").write_bytes((safetensors_folder / "config.json").read_bytes())
    offsets = [0, 4, 8, 8 + header // 2, 8 + header, 8 + header + 100, len(data) // 2, len(data) - 1]
    for offset in offsets:
        (folder / "model.safetensors").write_bytes(data[:offset])
        with pytest.raises(OSError, match=rf"weights of '{re.escape(str(folder))}' are truncated or corrupt"):
            AutoModelForSeq2SeqLM.from_pretrained(folder)


def test_safetensors_headers_with_flipped_bytes_load_or_name_the_folder(safetensors_folder, tmp_path):
    """Flips inside the JSON header (names, dtypes, shapes, offsets): refused with the folder named, or loaded."""
    data = (safetensors_folder / "model.safetensors").read_bytes()
    header = int.from_bytes(data[:8], "little")
    reference = AutoModelForSeq2SeqLM.from_pretrained(safetensors_folder).state_dict()
    folder = tmp_path / "flipped"
    folder.mkdir()
    (folder / "config.json").write_bytes((safetensors_folder / "config.json").read_bytes())
    outcomes = Counter()

    @settings(max_examples=FLIP_EXAMPLES, **HYPOTHESIS)
    @given(st.integers(0, 8 + header - 1), st.integers(1, 255))
    def run(position, mask):
        corrupt = bytearray(data)
        corrupt[position] ^= mask
        (folder / "model.safetensors").write_bytes(bytes(corrupt))
        try:
            model = AutoModelForSeq2SeqLM.from_pretrained(folder)
        except OSError as error:
            assert f"'{folder}'" in str(error) and "truncated or corrupt" in str(error), str(error)
            outcomes["refused, folder named"] += 1
            return
        same = all(torch.equal(value, reference[key]) for key, value in model.state_dict().items())
        outcomes["loaded, same weights" if same else "loaded, other weights (e.g. a renamed key re-initialised)"] += 1

    run()
    print(f"safetensors header byte flips: {dict(outcomes)}")
    assert sum(outcomes.values()) == FLIP_EXAMPLES and outcomes["refused, folder named"] > 0


# ----------------------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------------------


def test_unknown_config_fields_load_with_a_warning_naming_them(tmp_path, caplog):
    config = VaswaniConfig(vocab_size=120, d_model=32, encoder_attention_heads=4, decoder_attention_heads=4)
    config.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        AutoConfig.from_pretrained(tmp_path)
    assert "unknown fields" not in caplog.text  # a plain round trip is quiet

    saved = json.loads((tmp_path / "config.json").read_text())
    saved.update(rotary_scaling_v9={"factor": 2.0}, moe_experts=8)
    (tmp_path / "config.json").write_text(json.dumps(saved))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, VaswaniConfig) and loaded.moe_experts == 8 and loaded.d_model == 32
    assert "unknown fields ['moe_experts', 'rotary_scaling_v9']" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        VaswaniConfig(d_modle=256)  # a typo is caught the same way
    assert "unknown fields ['d_modle']" in caplog.text

    (tmp_path / "config.json").write_text("{\"d_model\": 32,")
    with pytest.raises(OSError, match=rf"config file at '{re.escape(str(tmp_path / 'config.json'))}' is not a valid"):
        AutoConfig.from_pretrained(tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# The exported remote code
# ----------------------------------------------------------------------------------------------------------------

#: Standard-library modules that only compute (no files, processes or sockets); numpy is a dependency of transformers,
#: PIL (pillow, a dependency) converts images in the image processor.
PURE_MODULES = {"math", "collections", "typing", "__future__", "dataclasses", "functools", "itertools", "enum", "copy",
                "warnings", "numpy", "PIL"}
NETWORK_NAMES = {"socket", "http", "urllib", "urllib3", "requests", "httpx", "aiohttp", "huggingface_hub", "ftplib",
                 "smtplib", "subprocess", "os", "sys", "importlib", "ctypes", "pickle", "shutil", "pathlib"}
FORBIDDEN_CALLS = {"__import__", "eval", "exec", "compile", "open", "hf_hub_download", "snapshot_download",
                   "cached_file", "urlopen"}


def test_exported_remote_code_imports_only_torch_and_transformers_and_never_the_network(tmp_path):
    tiny_model().save_pretrained(tmp_path / "seq2seq")
    folders = [tmp_path / "seq2seq"]
    if hasattr(hf_transformer, "VaswaniImageProcessor"):
        hf_transformer.VaswaniImageProcessor().save_pretrained(tmp_path / "images")
        folders.append(tmp_path / "images")
    files = sorted(path for folder in folders for path in folder.glob("*.py"))
    assert {"configuration_vaswani.py", "modeling_vaswani.py"} <= {path.name for path in files}
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # a sibling file: it must be exported too
                    assert (path.parent / f"{node.module}.py").is_file(), (path.name, node.module)
                    continue
                roots = {node.module.split(".")[0]}
                assert node.module not in ("transformers.utils.hub", "transformers.file_utils"), path.name
                assert not {alias.name for alias in node.names} & FORBIDDEN_CALLS, (path.name, node.lineno)
            else:
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                    assert node.func.id not in FORBIDDEN_CALLS, (path.name, node.lineno, node.func.id)
                if isinstance(node, ast.Name):
                    assert node.id not in NETWORK_NAMES, (path.name, node.lineno, node.id)
                continue
            assert not roots & NETWORK_NAMES, (path.name, node.lineno, roots)
            assert roots <= {"torch", "transformers"} | PURE_MODULES, (path.name, node.lineno, roots)


# ----------------------------------------------------------------------------------------------------------------
# The Hub token
# ----------------------------------------------------------------------------------------------------------------

# Not shaped like Hub tokens ("hf_" + 34 alphanumerics), so that the redaction has to know them as secrets.
ENV_TOKEN = "planted-env-token-5f0c1e"
ARGUMENT_TOKEN = "planted-callback-token-9b27d4"
TOKEN_RUN = """
import json, logging, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)  # every logger, huggingface_hub's and httpx's too
sys.argv = ["hf-transformer", "fit", "--trainer.callbacks.init_args.token", {token!r}, "--token={token}"]
import lightning.pytorch as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning_modules.callbacks import CheckpointAveragingCallback, HFExportCallback, HubPushCallback
from lightning_modules.checkpointing import AtomicCheckpointIO
from test_callbacks import TinyDataModule, TinyTranslationModule

root = {root!r}
push = HubPushCallback(repo_id="tester/token-check", token={token!r}, max_retries=1, backoff_seconds=0.1,
                       timeout_seconds=60)
trainer = L.Trainer(
    default_root_dir=root, max_steps=4, val_check_interval=2, check_val_every_n_epoch=None, accelerator="cpu",
    devices=1, logger=CSVLogger(root), enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    callbacks=[HFExportCallback(), push, CheckpointAveragingCallback(last_n=2),
               ModelCheckpoint(dirpath=root + "/checkpoints", every_n_train_steps=2, save_top_k=-1, save_last=True)],
    plugins=[AtomicCheckpointIO()],
)
trainer.fit(TinyTranslationModule(), TinyDataModule())
print(repr(push), trainer.callbacks, dict(trainer.callback_metrics))
print("RESULT-JSON: " + json.dumps({{"history": push.push_history, "log_dir": trainer.log_dir}}))
"""


def test_the_hub_token_is_never_written_or_logged(tmp_path):
    server = HubServer(tmp_path / "hub")
    server.start()
    try:
        root = tmp_path / "run"
        env = hub_env(server.url, tmp_path / "hf_home", token=ENV_TOKEN)
        proc = run_python(TOKEN_RUN.format(root=str(root), token=ARGUMENT_TOKEN), env, timeout=300)
        result = json_result(proc)
        uploaded = server.files("tester/token-check", "model", "main")
        writes = [r for r in server.requests if r.method in ("POST", "PUT")]
    finally:
        server.stop()
    assert result["history"][-1]["status"] == "ok", result["history"]
    assert writes and all(r.authorization == f"Bearer {ARGUMENT_TOKEN}" for r in writes)  # the token was in use
    assert "model.safetensors" in uploaded and "README.md" in uploaded
    files = [path for path in root.rglob("*") if path.is_file()]
    names = {path.name for path in files}
    assert {"hparams.yaml", "metrics.csv", "last.ckpt", "config.json", "README.md", "model.safetensors"} <= names
    card = (root / "hf_model" / "README.md").read_text()  # the run directory: default_root_dir
    assert "fit --trainer.callbacks.init_args.token '***' '--token=***'" in card  # the command line, redacted
    for token in (ENV_TOKEN, ARGUMENT_TOKEN):
        assert token not in proc.stdout and token not in proc.stderr, token
        for path in files:
            assert token.encode() not in path.read_bytes(), (token, path)
        for name, content in uploaded.items():
            assert token.encode() not in content, (token, name)
    assert "Pushed step" in proc.stderr and "DEBUG" in proc.stderr  # the logs were on, and they were searched
