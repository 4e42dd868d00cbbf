"""Run Hub client code in a fresh interpreter against a local server.

``huggingface_hub`` reads ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` once, at import, and the test
session itself runs with ``HF_HUB_OFFLINE=1`` (set in conftest) so that nothing in it can reach
the real Hub. Code that must talk to a test server therefore runs in a subprocess whose
environment comes from :func:`hub_env`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTS_DIR = Path(__file__).resolve().parent
LIGHTNING_TESTS_DIR = TESTS_DIR / "lightning_modules"  # the tests of lightning_modules/ (their stand-ins too)
RESULT_PREFIX = "RESULT-JSON: "
TEST_TOKEN = "hf_test_token"  # what the hub fixtures' clients send as HF_TOKEN

# Variables of the parent environment that would change where or how the client talks to a hub.
_CLEARED = (
    "HF_ENDPOINT", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HOME", "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE", "HF_XET_CACHE", "HF_ASSETS_CACHE", "TRANSFORMERS_CACHE",
    "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_XET",
)


def hub_env(endpoint: str, hf_home: Path | str, token: str | None = None, **extra: str) -> dict[str, str]:
    """The environment for a client subprocess that talks to ``endpoint`` (e.g. ``hub_server.url``).

    Online (``HF_HUB_OFFLINE=0``) but only towards ``endpoint``; caches and any token file under
    ``hf_home``; ``HF_TOKEN`` set when ``token`` is given; Xet disabled (the test servers speak
    plain HTTP and git-LFS only); telemetry and progress bars off; proxies bypassed for loopback.
    ``extra`` overrides or adds variables.
    """
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    hf_home = Path(hf_home)
    hf_home.mkdir(parents=True, exist_ok=True)
    env.update(
        HF_ENDPOINT=endpoint.rstrip("/"),
        HF_HOME=str(hf_home),
        HF_HUB_OFFLINE="0",
        HF_DATASETS_OFFLINE="0",
        TRANSFORMERS_OFFLINE="0",
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_DATASETS_DISABLE_PROGRESS_BARS="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        NO_PROXY=",".join(filter(None, ["127.0.0.1,localhost", env.get("NO_PROXY")])),
        no_proxy=",".join(filter(None, ["127.0.0.1,localhost", env.get("no_proxy")])),
    )
    # the project and the tests dirs importable, whatever the subprocess's cwd
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), str(TESTS_DIR), str(LIGHTNING_TESTS_DIR),
                                                      env.get("PYTHONPATH")]))
    if token is not None:
        env["HF_TOKEN"] = token
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_python(code: str, env: dict[str, str], timeout: float = 120.0, *, check: bool = True,
               cwd: Path | str | None = None, python: str | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` (dedented) in a fresh ``python -c`` with exactly ``env`` (``python``: another interpreter than
    this one, e.g. of an environment with another transformers release).

    ``check=True`` (default) fails the test, showing stdout and stderr, on a non-zero exit; a
    timeout always fails the test with whatever output there was. To hand structured results
    back, the snippet can ``print(RESULT_PREFIX + json.dumps(obj))`` and the test read them with
    :func:`json_result`.
    """
    code = textwrap.dedent(code)
    try:
        proc = subprocess.run(
            [python or sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        errout = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else (err.stderr or "")
        pytest.fail(f"python snippet timed out after {timeout}s\n--- stdout ---\n{out[-6000:]}\n"
                    f"--- stderr ---\n{errout[-6000:]}", pytrace=False)
    if check and proc.returncode != 0:
        pytest.fail(f"python snippet exited with {proc.returncode}\n--- code ---\n{code}\n--- stdout ---\n"
                    f"{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-8000:]}", pytrace=False)
    return proc


def json_result(proc: subprocess.CompletedProcess):
    """The object of the last ``RESULT_PREFIX`` line a :func:`run_python` snippet printed."""
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise AssertionError(f"the snippet printed no {RESULT_PREFIX!r} line\n--- stdout ---\n{proc.stdout[-4000:]}"
                         f"\n--- stderr ---\n{proc.stderr[-4000:]}")
