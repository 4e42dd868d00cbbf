"""Reliability, round two (RELIABILITY.md "Secrets, resumes, preemption, run directories, paths, caches,
integrity"): each test drives the real command line (`python -m recipes ...` in a subprocess) or the real loaders
and checks what a user would see."""

from __future__ import annotations

import os
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
