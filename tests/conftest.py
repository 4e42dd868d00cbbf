"""Session-wide test settings and the fixtures for Hub tests.

Nothing in the test session may reach the real Hugging Face Hub: ``HF_HUB_OFFLINE=1`` (and its
``datasets`` / ``transformers`` twins) are set here, before any test module imports
``huggingface_hub``. Tests that exercise real Hub code paths run the client in a subprocess
(:func:`helpers.run_python`) pointed by :func:`helpers.hub_env` at a server on 127.0.0.1:

- ``hub_server``: our upload-capable fake Hub (:mod:`hub_server`), in this process;
- ``hub_mirror``: the real ``olah`` mirror (from PyPI) in offline mode, serving git repos.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_name, "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from helpers import TEST_TOKEN, hub_env  # noqa: E402  (tests/ and the repository are on sys.path: pyproject.toml)
from hub_server import HubServer  # noqa: E402

OLAH_START_TIMEOUT_S = 60.0


@pytest.fixture
def hub_server(tmp_path):
    """A started :class:`hub_server.HubServer` storing its repos under ``tmp_path / "hub"``.

    Its ``.url`` is ``http://127.0.0.1:{port}``; it is stopped after the test. Point a client at it
    with ``hub_env(hub_server.url, tmp_path / "hf_home", token=TEST_TOKEN)`` or use ``hub_client_env``.
    """
    server = HubServer(tmp_path / "hub")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def hub_client_env(hub_server, tmp_path):
    """A subprocess environment talking to ``hub_server`` with ``HF_TOKEN=TEST_TOKEN`` and a fresh HF_HOME."""
    return hub_env(hub_server.url, tmp_path / "hf_home", token=TEST_TOKEN)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _git(args: list[str], cwd: Path) -> str:
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "tester",
        "GIT_AUTHOR_EMAIL": "tester@example.invalid",
        "GIT_COMMITTER_NAME": "tester",
        "GIT_COMMITTER_EMAIL": "tester@example.invalid",
        "GIT_TERMINAL_PROMPT": "0",
    }
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout.strip()


class OlahMirror:
    """The ``olah`` server (``python -m olah.server``) in offline mode on a free 127.0.0.1 port.

    It serves the git repositories under ``mirrors_path / <models|datasets> / <org> / <name>`` the
    way the Hub would; nothing is proxied (offline, and its upstream points at a closed local port).
    """

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.mirrors_path = self.workdir / "mirrors"
        self.repos_path = self.workdir / "cache"
        self.log_path = self.workdir / "logs"
        self.config_path = self.workdir / "olah.toml"
        self.stdout_path = self.workdir / "olah.stdout"
        self.stderr_path = self.workdir / "olah.stderr"
        self.port: int | None = None
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        """olah's stdout and stderr so far (its request log is in stderr)."""
        parts = []
        for path in (self.stdout_path, self.stderr_path):
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def _write_config(self, port: int) -> None:
        # olah takes its mirror paths only from a TOML config (no CLI flag); its keys are kebab-case
        # under [basic], the offline switch under [accessibility].
        self.config_path.write_text(
            "[basic]\n"
            'host = "127.0.0.1"\n'
            f"port = {port}\n"
            f'repos-path = "{self.repos_path.as_posix()}"\n'
            f'mirrors-path = ["{self.mirrors_path.as_posix()}"]\n'
            'hf-scheme = "http"\n'
            'hf-netloc = "127.0.0.1:9"\n'
            'hf-lfs-netloc = "127.0.0.1:9"\n'
            'mirror-scheme = "http"\n'
            f'mirror-netloc = "127.0.0.1:{port}"\n'
            f'mirror-lfs-netloc = "127.0.0.1:{port}"\n'
            "\n[accessibility]\n"
            "offline = true\n"
        )

    def start(self, timeout: float = OLAH_START_TIMEOUT_S) -> str:
        for sub in (self.mirrors_path / "models", self.mirrors_path / "datasets", self.repos_path, self.log_path):
            sub.mkdir(parents=True, exist_ok=True)
        last_error = ""
        for _attempt in range(3):  # the free port may be taken between probing and olah binding it
            port = _free_port()
            self._write_config(port)
            env = {k: v for k, v in os.environ.items() if not k.startswith("OLAH_")}
            env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
            with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "olah.server", "--config", str(self.config_path),
                     "--log-path", str(self.log_path)],
                    cwd=self.workdir, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                )
            self.port = port
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    last_error = f"olah exited with {self.process.returncode}:\n{self.output()[-6000:]}"
                    break
                if self._answers():
                    return self.url
                time.sleep(0.1)
            else:
                self.stop()
                pytest.fail(f"olah did not answer on {self.url} within {timeout}s\n{self.output()[-6000:]}",
                            pytrace=False)
            if "address already in use" not in last_error.lower():
                break
        self.process = None
        pytest.fail(f"could not start the olah mirror: {last_error}", pytrace=False)

    def _answers(self) -> bool:
        probe = f"{self.url}/api/models/olah-probe/none/revision/main"
        try:
            with urllib.request.urlopen(urllib.request.Request(probe, method="GET"), timeout=2):
                return True
        except urllib.error.HTTPError:
            return True  # any HTTP answer means uvicorn is serving
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def add_repo(self, kind: str, repo_id: str, folder: Path | str | dict, message: str = "Upload files") -> str:
        """Serve ``folder`` (a directory, or a ``{relative path: bytes | str}`` dict) as ``repo_id``.

        ``kind`` is "model" or "dataset" (plural accepted). The repo becomes a git repository with
        branch ``main`` at ``mirrors/<kind>s/<org>/<name>``; adding to an existing repo replaces its
        files in a new commit. Returns the commit sha that ``main`` now points at.
        """
        plural = {"model": "models", "models": "models", "dataset": "datasets", "datasets": "datasets"}[kind]
        org, name = repo_id.split("/")
        repo_dir = self.mirrors_path / plural / org / name
        if (repo_dir / ".git").is_dir():
            for child in repo_dir.iterdir():
                if child.name != ".git":
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        else:
            repo_dir.mkdir(parents=True, exist_ok=True)
            _git(["init", "-q", "-b", "main"], repo_dir)
        if isinstance(folder, dict):
            for rel, content in folder.items():
                target = repo_dir / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content.encode() if isinstance(content, str) else content)
        else:
            shutil.copytree(folder, repo_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git"))
        _git(["add", "-A"], repo_dir)
        _git(["commit", "-q", "--allow-empty", "-m", message], repo_dir)
        return _git(["rev-parse", "HEAD"], repo_dir)

    def env(self, hf_home: Path | str, token: str | None = None, **extra: str) -> dict[str, str]:
        """A subprocess environment whose client talks to this mirror (see :func:`helpers.hub_env`)."""
        return hub_env(self.url, hf_home, token=token, **extra)


@pytest.fixture
def hub_mirror(tmp_path):
    """A running :class:`OlahMirror` (offline, serving git repos added with ``add_repo``); killed after the test."""
    mirror = OlahMirror(tmp_path / "olah")
    mirror.start()
    try:
        yield mirror
    finally:
        mirror.stop()
