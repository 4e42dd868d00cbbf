"""A small, upload-capable fake Hugging Face Hub for tests.

It speaks just enough of the Hub's HTTP API for the real ``huggingface_hub`` client (and so
``transformers``' ``push_to_hub`` / ``from_pretrained`` and ``datasets``' ``push_to_hub`` /
``load_dataset``) to create repos, commit files and download them again. Nothing in the client is
patched: point the client at :attr:`HubServer.url` with ``HF_ENDPOINT`` (in a fresh interpreter,
since ``huggingface_hub`` reads it at import) and it talks HTTP to this server on 127.0.0.1.

Storage lives on disk under ``root`` so that a stopped server (or a new ``HubServer`` on the same
root) serves the same repos::

    root/blobs/<git blob sha1>                       regular file contents, content-addressed
    root/lfs/<sha256>                                LFS file contents
    root/repos/<model|dataset|space>s/<ns>/<name>/repo.json
        {"id", "type", "private", "createdAt", "branches": {"main": sha},
         "commits": {sha: {"parent", "title", "description", "date",
                           "files": {path: {"oid", "size"[, "lfs": {"sha256", "size", "pointerSize"}]}}}}}

Most files are uploaded as "regular" files (``preupload`` answers ``uploadMode: "regular"``), so
their content travels base64 inside the commit's NDJSON. Files matching :attr:`HubServer.lfs_patterns`
(``*.parquet``, ``*.arrow``: ``datasets`` deletes its shard files right after the pre-upload, so they
must really be uploaded then) or bigger than :attr:`HubServer.lfs_threshold` get ``uploadMode: "lfs"``
and go through the legacy git-LFS "basic" transfer (batch API, then a PUT to this server). The client
must run with ``HF_HUB_DISABLE_XET=1``: the Xet protocol (hf_xet) is not implemented, and
``xet-write-token`` answers 501 saying so.

Routes (``{t}`` is ``models``, ``datasets`` or ``spaces``; ``{repo}`` is ``ns/name`` or ``name``)::

    GET       /api/whoami-v2, /api/agent-harnesses (an empty registry)
    POST      /api/repos/create, /api/repos/delete, /api/validate-yaml
    PUT       /api/{t}/{repo}/settings                     {"private": bool} or {"visibility": ...}
    GET|HEAD  /api/{t}/{repo}, /api/{t}/{repo}/revision/{rev}
    GET       /api/{t}/{repo}/tree/{rev}[/{path}]          ?recursive=&expand=
    POST      /api/{t}/{repo}/paths-info/{rev}             form: paths=..., expand=...
    GET       /api/{t}/{repo}/refs, /api/{t}/{repo}/commits/{rev}
    POST      /api/{t}/{repo}/preupload/{rev}, /api/{t}/{repo}/commit/{rev}
    GET|HEAD  /{repo}/resolve/{rev}/{path}, /datasets/{repo}/resolve/..., /spaces/{repo}/resolve/...
    POST      /[datasets/]{repo}.git/info/lfs/objects/batch  (git-LFS batch API, "basic" transfer)
    PUT       /lfs-upload/{sha256}; POST /lfs-verify/{sha256}

Test knobs: :attr:`HubServer.requests` records every request; :meth:`HubServer.fail_next` makes the
next N matching requests fail with an HTTP status; :meth:`HubServer.drop_next` closes their
connections unanswered; :meth:`HubServer.set_delay` slows matching requests down;
:meth:`HubServer.stop` / :meth:`HubServer.start` restart on the same port.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
PLURAL = {singular: plural for plural, singular in REPO_TYPES.items()}
DEFAULT_USER = "tester"
MAX_BODY_BYTES = 256 * 1024 * 1024  # refuse anything bigger: tests push tiny models
MAX_DELAY_S = 60.0  # a delay knob can never stall a test for longer than this
RECORDED_BODY_BYTES = 1024 * 1024  # request bodies up to this size are kept in the request log
GITATTRIBUTES = (
    b"*.bin filter=lfs diff=lfs merge=lfs -text\n"
    b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
)


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob, which is what the Hub reports as a regular file's oid / ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class HubError(Exception):
    """An HTTP error answer, with the Hub's ``X-Error-Code`` where the client branches on it."""

    def __init__(self, status: int, message: str, error_code: str | None = None, *,
                 headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code
        self.headers = dict(headers or {})  # more response headers
        self.extra = extra  # more keys of the JSON error body


@dataclass
class RecordedRequest:
    """One request as the server received it."""

    method: str
    path: str  # raw path, without the query string
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes  # truncated to RECORDED_BODY_BYTES
    route: str | None = None  # e.g. "create", "preupload", "commit", "info", "tree", "resolve"; None: unknown
    repo_id: str | None = None
    repo_type: str | None = None  # "model" / "dataset" / "space"
    status: int | None = None  # the status answered
    injected: bool = False  # True when a fault knob produced the answer

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


@dataclass
class _Fault:
    kind: str  # "fail" (answer `status`), "drop" (close the connection unanswered) or "delay"
    route: str  # a route name or "*"
    remaining: int | None  # matching requests it still applies to; None = until clear_faults()
    status: int = 500
    delay_s: float = 0.0


@dataclass
class _Route:
    name: str
    repo_type: str | None = None
    repo_id: str | None = None
    rest: list[str] = field(default_factory=list)


class _Store:
    """Repos on disk. All access goes through one lock: tests are small, correctness beats speed."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.lock = threading.RLock()
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "repos").mkdir(parents=True, exist_ok=True)
        (self.root / "lfs").mkdir(parents=True, exist_ok=True)

    # -- paths ---------------------------------------------------------------------------------
    def _repo_file(self, repo_type: str, repo_id: str) -> Path:
        parts = repo_id.split("/")
        if len(parts) > 2 or any(p in ("", ".", "..") for p in parts):
            raise HubError(400, f"Invalid repo id {repo_id!r}")
        return self.root / "repos" / PLURAL[repo_type] / Path(*parts) / "repo.json"

    # -- repos ---------------------------------------------------------------------------------
    def load(self, repo_type: str, repo_id: str) -> dict | None:
        path = self._repo_file(repo_type, repo_id)
        with self.lock:
            if not path.is_file():
                return None
            return json.loads(path.read_text())

    def save(self, repo: dict) -> None:
        path = self._repo_file(repo["type"], repo["id"])
        with self.lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(repo, indent=1))
            os.replace(tmp, path)

    def delete(self, repo_type: str, repo_id: str) -> bool:
        path = self._repo_file(repo_type, repo_id)
        with self.lock:
            if not path.is_file():
                return False
            path.unlink()
            return True

    def list_repos(self) -> list[tuple[str, str]]:
        out = []
        for path in sorted((self.root / "repos").glob("*/**/repo.json")):
            repo = json.loads(path.read_text())
            out.append((repo["type"], repo["id"]))
        return out

    # -- blobs ---------------------------------------------------------------------------------
    def put_blob(self, data: bytes) -> str:
        oid = git_blob_sha1(data)
        path = self.root / "blobs" / oid
        if not path.exists():
            tmp = path.with_name(oid + f".tmp{threading.get_ident()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return oid

    def get_blob(self, oid: str) -> bytes:
        return (self.root / "blobs" / oid).read_bytes()

    def lfs_path(self, sha256: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise HubError(400, f"Invalid LFS oid {sha256!r}")
        return self.root / "lfs" / sha256

    def put_lfs(self, sha256: str, data: bytes) -> None:
        if hashlib.sha256(data).hexdigest() != sha256:
            raise HubError(400, "LFS upload does not match its sha256")
        path = self.lfs_path(sha256)
        tmp = path.with_name(sha256 + f".tmp{threading.get_ident()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def has_lfs(self, sha256: str, size: int | None = None) -> bool:
        path = self.lfs_path(sha256)
        return path.is_file() and (size is None or path.stat().st_size == size)

    def read_file(self, info: dict) -> bytes:
        """Content of a tree entry (regular or LFS)."""
        if "lfs" in info:
            return self.lfs_path(info["lfs"]["sha256"]).read_bytes()
        return self.get_blob(info["oid"])

    # -- commits -------------------------------------------------------------------------------
    @staticmethod
    def resolve(repo: dict, revision: str) -> str:
        """Branch name, full sha or an unambiguous sha prefix (>= 7 chars) -> commit sha."""
        revision = unquote(revision)
        if revision in repo["branches"]:
            return repo["branches"][revision]
        if revision in repo["commits"]:
            return revision
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            matches = [sha for sha in repo["commits"] if sha.startswith(revision)]
            if len(matches) == 1:
                return matches[0]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def new_commit(self, repo: dict, branch: str, files: dict, title: str, description: str = "") -> str:
        parent = repo["branches"].get(branch)
        date = _now_iso()
        counter = len(repo["commits"]) + 1
        payload = json.dumps([repo["type"], repo["id"], parent, title, files, counter, date], sort_keys=True)
        sha = hashlib.sha1(payload.encode()).hexdigest()
        repo["commits"][sha] = {
            "parent": parent,
            "title": title,
            "description": description,
            "date": date,
            "counter": counter,
            "files": files,
        }
        repo["branches"][branch] = sha
        return sha


class HubServer:
    """The fake Hub, served by a ``ThreadingHTTPServer`` in a background thread.

    ``start()`` returns the base URL ``http://127.0.0.1:{port}`` (a free port on the first start,
    the same port on every restart). Use as a context manager or call ``stop()``.

    ``valid_tokens``: ``None`` accepts any ``Bearer`` token; otherwise only these. Writes need a
    valid token (401 otherwise); private repos are invisible (``RepoNotFound``) without one.
    """

    def __init__(self, root: Path | str, *, user: str = DEFAULT_USER, valid_tokens: set[str] | None = None,
                 host: str = "127.0.0.1", port: int = 0):
        self.root = Path(root)
        self.store = _Store(self.root)
        self.user = user
        self.valid_tokens = valid_tokens
        self.host = host
        self.port = port
        self.requests: list[RecordedRequest] = []
        # which files preupload sends through git-LFS (see module doc); everything else is "regular"
        self.lfs_patterns: tuple[str, ...] = ("*.parquet", "*.arrow")
        self.lfs_threshold: int = 10 * 1024 * 1024
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def start(self) -> str:
        if self._httpd is not None:
            return self.url
        self._stopping.clear()
        httpd = _HTTPServer((self.host, self.port), _Handler)
        httpd.hub = self
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=f"hub-server-{self.port}", daemon=True
        )
        self._thread.start()
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving: close the listening socket and every open connection (the port stays ours
        to restart on). Requests sleeping in a delay knob are woken up and dropped."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()  # ends serve_forever (bounded by poll_interval)
        httpd.close_all_connections()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout)
        self._httpd = None
        self._thread = None

    def restart(self) -> str:
        self.stop()
        return self.start()

    def __enter__(self) -> "HubServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- fault knobs ---------------------------------------------------------------------------
    def fail_next(self, count: int, *, route: str = "commit", status: int = 500) -> None:
        """Answer the next ``count`` requests of ``route`` (a route name such as "commit",
        "preupload", "resolve", "info", "create", "lfs-upload", or "*" for any) with HTTP
        ``status``, without touching the stored repos."""
        with self._lock:
            self._faults.append(_Fault("fail", route, int(count), status=status))

    def drop_next(self, count: int, *, route: str = "commit") -> None:
        """Close the connection of the next ``count`` requests of ``route`` without answering
        (after reading the request; nothing is stored): the client sees a network error."""
        with self._lock:
            self._faults.append(_Fault("drop", route, int(count)))

    def set_delay(self, seconds: float, *, route: str = "*", count: int | None = None) -> None:
        """Sleep ``seconds`` (at most MAX_DELAY_S) before handling requests of ``route``: the next
        ``count`` of them, or all until :meth:`clear_faults`. A stop() wakes sleepers up and drops them."""
        seconds = max(0.0, min(float(seconds), MAX_DELAY_S))
        with self._lock:
            self._faults.append(_Fault("delay", route, None if count is None else int(count), delay_s=seconds))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, route: str | None) -> tuple[float, str | None, int]:
        """(delay seconds, "fail" / "drop" / None, status) for one request, consuming counted faults."""
        delay, action, status = 0.0, None, 500
        with self._lock:
            for fault in list(self._faults):
                if fault.route not in ("*", route):
                    continue
                if fault.kind == "delay":
                    delay = max(delay, fault.delay_s)
                elif action is None:
                    action, status = fault.kind, fault.status
                else:
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
        return delay, action, status

    def upload_mode(self, path: str, size: int) -> str:
        name = path.rsplit("/", 1)[-1]
        if size > 0 and (size >= self.lfs_threshold or any(fnmatch.fnmatch(name, p) for p in self.lfs_patterns)):
            return "lfs"
        return "regular"

    # -- inspection helpers for tests ----------------------------------------------------------
    def requests_for(self, route: str | None = None, *, method: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            reqs = list(self.requests)
        return [r for r in reqs if (route is None or r.route == route) and (method is None or r.method == method)]

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def repo(self, repo_id: str, repo_type: str = "model") -> dict | None:
        """The stored repo record (see module doc), or None."""
        return self.store.load(repo_type, repo_id)

    def repo_exists(self, repo_id: str, repo_type: str = "model") -> bool:
        return self.repo(repo_id, repo_type) is not None

    def is_private(self, repo_id: str, repo_type: str = "model") -> bool:
        return bool(self._require_repo(repo_type, repo_id)["private"])

    def head(self, repo_id: str, repo_type: str = "model", branch: str = "main") -> str:
        return self._require_repo(repo_type, repo_id)["branches"][branch]

    def commits(self, repo_id: str, repo_type: str = "model", branch: str = "main") -> list[dict]:
        """Commits of ``branch``, newest first: dicts with "id", "title", "files" (path -> oid/size)."""
        repo = self._require_repo(repo_type, repo_id)
        out, sha = [], repo["branches"].get(branch)
        while sha is not None:
            commit = repo["commits"][sha]
            out.append({"id": sha, **commit})
            sha = commit["parent"]
        return out

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """path -> content of every file at ``revision``."""
        repo = self._require_repo(repo_type, repo_id)
        sha = self.store.resolve(repo, revision)
        return {p: self.store.read_file(info) for p, info in repo["commits"][sha]["files"].items()}

    def add_files(self, repo_id: str, files: dict[str, bytes], *, repo_type: str = "model",
                  private: bool = False, message: str = "Add files") -> str:
        """Seed a repo directly (creating it if needed) and return the new commit sha."""
        with self.store.lock:
            repo = self.store.load(repo_type, repo_id) or self._create_repo_record(repo_type, repo_id, private)
            tree = dict(repo["commits"][repo["branches"]["main"]]["files"])
            for path, data in files.items():
                tree[path] = {"oid": self.store.put_blob(data), "size": len(data)}
            sha = self.store.new_commit(repo, "main", tree, message)
            self.store.save(repo)
            return sha

    def _require_repo(self, repo_type: str, repo_id: str) -> dict:
        repo = self.store.load(repo_type, repo_id)
        if repo is None:
            raise KeyError(f"no {repo_type} repo {repo_id!r} on the fake hub")
        return repo

    def _create_repo_record(self, repo_type: str, repo_id: str, private: bool) -> dict:
        repo = {
            "id": repo_id,
            "type": repo_type,
            "private": bool(private),
            "createdAt": _now_iso(),
            "branches": {},
            "commits": {},
        }
        files = {".gitattributes": {"oid": self.store.put_blob(GITATTRIBUTES), "size": len(GITATTRIBUTES)}}
        self.store.new_commit(repo, "main", files, "initial commit")
        self.store.save(repo)
        return repo


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    hub: HubServer

    def __init__(self, *args, **kwargs):
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address):
        with self._conn_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._conn_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address):
        if not self.hub._stopping.is_set():  # connections cut by stop() are expected
            super().handle_error(request, client_address)

    def close_all_connections(self) -> None:
        with self._conn_lock:
            connections = list(self._connections)
            self._connections.clear()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                conn.close()
            except OSError:
                pass


def _parse_route(path: str) -> _Route:
    """Name the route a raw path (no query) belongs to; the repo id and the rest stay split."""
    segments = path.split("/")[1:]  # leading "/"
    if not segments or segments == [""]:
        return _Route("root")
    if segments[0] == "api":
        api = segments[1:]
        if api == ["whoami-v2"]:
            return _Route("whoami")
        if api == ["agent-harnesses"]:
            return _Route("agent-harnesses")
        if api[:1] == ["repos"] and len(api) == 2:
            return _Route(api[1] if api[1] in ("create", "delete") else "unknown")
        if api == ["validate-yaml"]:
            return _Route("validate-yaml")
        if len(api) >= 2 and api[0] in REPO_TYPES:
            repo_type = REPO_TYPES[api[0]]
            rest = api[1:]
            actions = {"revision", "tree", "paths-info", "refs", "commits", "preupload", "commit", "settings",
                       "xet-write-token", "xet-read-token"}
            # "ns/name/action/..." or "name/action/..." (repos without namespace)
            if len(rest) >= 3 and rest[2] in actions:
                repo_id, action, tail = "/".join(rest[:2]), rest[2], rest[3:]
            elif len(rest) >= 2 and rest[1] in actions:
                repo_id, action, tail = rest[0], rest[1], rest[2:]
            elif 1 <= len(rest) <= 2:
                repo_id, action, tail = "/".join(rest), "info", []
            else:
                return _Route("unknown")
            if action == "revision":
                action = "info"
            return _Route(action, repo_type, unquote(repo_id), tail)
        return _Route("unknown")
    if segments[0] in ("lfs-upload", "lfs-verify") and len(segments) == 2:
        return _Route(segments[0], rest=[segments[1]])
    # git-LFS batch API: [datasets|spaces/]{repo}.git/info/lfs/objects/batch
    if segments[-4:] == ["info", "lfs", "objects", "batch"]:
        head = segments[:-4]
        repo_type = "model"
        if head and head[0] in ("datasets", "spaces") and len(head) > 1:
            repo_type, head = REPO_TYPES[head[0]], head[1:]
        if head and head[-1].endswith(".git") and 1 <= len(head) <= 2:
            return _Route("lfs-batch", repo_type, unquote("/".join(head))[: -len(".git")])
        return _Route("unknown")
    # file routes: [datasets|spaces/]{repo}/resolve/{rev}/{path...}
    repo_type = "model"
    if segments[0] in ("datasets", "spaces") and len(segments) > 1:
        repo_type = REPO_TYPES[segments[0]]
        segments = segments[1:]
    for i in (1, 2):
        if len(segments) > i + 1 and segments[i] == "resolve":
            return _Route("resolve", repo_type, unquote("/".join(segments[:i])), segments[i + 1:])
    return _Route("unknown")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"
    timeout = 30  # idle keep-alive connections end after this
    server: _HTTPServer

    # -- plumbing ------------------------------------------------------------------------------
    def log_message(self, format, *args):  # noqa: A002 - quiet: tests read the request log instead
        pass

    def do_GET(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            for _ in range(1_000_000):
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
                total += size
                if total > MAX_BODY_BYTES:
                    raise HubError(413, "Request body too large")
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise HubError(413, "Request body too large")
        return self.rfile.read(length) if length else b""

    def _dispatch(self):
        hub = self.server.hub
        split = urlsplit(self.path)
        route = _parse_route(split.path)
        record = RecordedRequest(
            method=self.command,
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=b"",
            route=route.name if route.name != "unknown" else None,
            repo_id=route.repo_id,
            repo_type=route.repo_type,
        )
        with hub._lock:
            hub.requests.append(record)
        try:
            body = self._read_body()
        except (HubError, ValueError, OSError):
            self.close_connection = True
            record.status = 400
            self._send(400, {"error": "Could not read the request body"})
            return
        record.body = body[:RECORDED_BODY_BYTES]

        delay, action, fail_status = hub._take_fault(route.name)
        if delay:
            if hub._stopping.wait(delay):  # the server is stopping: drop the connection
                self.close_connection = True
                return
        if action == "drop":
            record.injected = True
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if action == "fail":
            record.status, record.injected = fail_status, True
            self._send(fail_status, {"error": f"Injected failure ({fail_status})"},
                       headers={"X-Error-Message": "Injected failure"})
            return
        try:
            status, payload, headers = self._handle(route, split.query, body)
        except HubError as err:
            headers = {**err.headers, "X-Error-Message": err.message}
            if err.error_code:
                headers["X-Error-Code"] = err.error_code
            status, payload = err.status, {"error": err.message, **err.extra}
        except Exception as err:  # a bug in the fake hub: answer 500 rather than hanging the client
            status, payload, headers = 500, {"error": f"fake hub crashed: {type(err).__name__}: {err}"}, {}
        record.status = status
        self._send(status, payload, headers=headers)

    def _send(self, status: int, payload: Any, headers: dict | None = None) -> None:
        headers = dict(headers or {})
        if isinstance(payload, (bytes, bytearray)):
            data = bytes(payload)
            headers.setdefault("Content-Type", "application/octet-stream")
        else:
            data = json.dumps(payload).encode()
            headers.setdefault("Content-Type", "application/json; charset=utf-8")
        headers.setdefault("Content-Length", str(len(data)))
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        try:
            self.send_response(status, phrase)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        except OSError:
            self.close_connection = True

    # -- auth ----------------------------------------------------------------------------------
    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if not auth.lower().startswith("bearer "):
            return None
        token = auth[7:].strip()
        valid = self.server.hub.valid_tokens
        return token if token and (valid is None or token in valid) else None

    def _require_token(self) -> str:
        token = self._token()
        if token is None:
            if self.headers.get("Authorization"):
                raise HubError(401, "Invalid credentials in Authorization header")
            raise HubError(401, "You must be authenticated to do this")
        return token

    def _load_repo(self, route: _Route, *, write: bool = False) -> dict:
        store = self.server.hub.store
        repo = store.load(route.repo_type, route.repo_id)
        token = self._token()
        if repo is None or (repo["private"] and token is None):
            if token is None:
                raise HubError(401, "Repository not found", "RepoNotFound")
            raise HubError(404, "Repository not found", "RepoNotFound")
        if write:
            self._require_token()
        return repo

    # -- routes --------------------------------------------------------------------------------
    def _handle(self, route: _Route, query: str, body: bytes):
        method, name = self.command, route.name
        params = parse_qs(query, keep_blank_values=True)
        hub = self.server.hub
        if name == "agent-harnesses" and method == "GET":  # huggingface_hub's agent-detection registry
            return 200, {"standardEnvVars": [], "harnesses": {}}, {}
        if name == "whoami" and method == "GET":
            token = self._require_token()
            return 200, {
                "type": "user",
                "id": "0" * 24,
                "name": hub.user,
                "fullname": hub.user.title(),
                "email": f"{hub.user}@example.invalid",
                "emailVerified": True,
                "isPro": False,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write",
                                                                   "createdAt": _now_iso()}},
                "_token_suffix": token[-4:],
            }, {}
        if name == "create" and method == "POST":
            return self._create_repo(_json(body))
        if name == "delete" and method in ("POST", "DELETE"):
            self._require_token()
            data = _json(body)
            repo_type = data.get("type") or "model"
            repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else f"{hub.user}/{data['name']}"
            with hub.store.lock:
                if not hub.store.delete(repo_type, repo_id):
                    raise HubError(404, "Repository not found", "RepoNotFound")
            return 200, {}, {}
        if name == "validate-yaml" and method == "POST":
            return self._validate_yaml(_json(body))
        if name == "lfs-upload" and method == "PUT":
            hub.store.put_lfs(route.rest[0], body)
            return 200, {}, {}
        if name == "lfs-verify" and method == "POST":
            data = _json(body)
            if not hub.store.has_lfs(route.rest[0], data.get("size")):
                raise HubError(404, "LFS object not found or of the wrong size")
            return 200, {"success": True}, {}
        if route.repo_id is None:
            raise HubError(404, f"Sorry, we can't find the page you are looking for: {method} {self.path}")
        if name == "info" and method in ("GET", "HEAD"):
            return self._info(route)
        if name == "tree" and method == "GET":
            return self._tree(route, params)
        if name == "paths-info" and method == "POST":
            form = parse_qs(body.decode("utf-8"), keep_blank_values=True)
            return self._paths_info(route, form)
        if name == "refs" and method == "GET":
            repo = self._load_repo(route)
            branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": sha} for b, sha in repo["branches"].items()]
            return 200, {"branches": branches, "converts": [], "tags": [], "pullRequests": []}, {}
        if name == "commits" and method == "GET":
            repo = self._load_repo(route)
            sha = hub.store.resolve(repo, route.rest[0] if route.rest else "main")
            out = []
            while sha is not None and len(out) < 1000:
                commit = repo["commits"][sha]
                out.append({"id": sha, "title": commit["title"], "message": commit["description"],
                            "authors": [{"user": hub.user}], "date": commit["date"]})
                sha = commit["parent"]
            return 200, out, {}
        if name == "settings" and method == "PUT":
            with hub.store.lock:
                repo = self._load_repo(route, write=True)
                data = _json(body)
                if "private" in data:
                    repo["private"] = bool(data["private"])
                if "visibility" in data:
                    repo["private"] = data["visibility"] == "private"
                hub.store.save(repo)
            return 200, {}, {}
        if name == "preupload" and method == "POST":
            return self._preupload(route, _json(body))
        if name == "commit" and method == "POST":
            return self._commit(route, body, params)
        if name == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(route)
        if name == "lfs-batch" and method == "POST":
            return self._lfs_batch(route, _json(body))
        if name in ("xet-write-token", "xet-read-token"):
            raise HubError(501, "The fake hub does not implement Xet storage: run the client with HF_HUB_DISABLE_XET=1")
        raise HubError(404, f"Sorry, we can't find the page you are looking for: {method} {self.path}")

    def _create_repo(self, data: dict):
        hub = self.server.hub
        self._require_token()
        repo_type = data.get("type") or "model"
        if repo_type not in PLURAL:
            raise HubError(400, f"Invalid repo type {repo_type!r}")
        name = data.get("name")
        if not name or not re.fullmatch(r"[\w.\-]{1,96}", name):
            raise HubError(400, f"Invalid repo name {name!r}")
        namespace = data.get("organization") or hub.user
        repo_id = f"{namespace}/{name}"
        private = data.get("private")
        if "visibility" in data:
            private = data["visibility"] == "private"
        prefix = "" if repo_type == "model" else f"{PLURAL[repo_type]}/"
        url = f"{hub.url}/{prefix}{repo_id}"
        with hub.store.lock:
            if hub.store.load(repo_type, repo_id) is not None:
                # the Hub's 409 carries the url: create_repo(exist_ok=True) builds its RepoUrl from it
                raise HubError(409, f"You already created this {repo_type} repo", url=url)
            hub._create_repo_record(repo_type, repo_id, bool(private))
        return 200, {"url": url, "name": repo_id, "id": repo_id}, {}

    def _validate_yaml(self, data: dict):
        content = data.get("content") or ""
        match = re.match(r"^\s*---\s*\n(.*?)\n---\s*(\n|$)", content, flags=re.S)
        if match:
            try:
                import yaml

                meta = yaml.safe_load(match.group(1))
                if meta is not None and not isinstance(meta, dict):
                    raise ValueError("metadata must be a mapping")
            except ImportError:
                pass
            except Exception as err:  # yaml.YAMLError or ValueError
                return 400, {"errors": [{"message": f"Invalid YAML: {err}"}], "warnings": []}, {}
        return 200, {"errors": [], "warnings": []}, {}

    def _card_data(self, files: dict) -> dict | None:
        info = files.get("README.md")
        if info is None:
            return None
        text = self.server.hub.store.read_file(info).decode("utf-8", errors="replace")
        match = re.match(r"^\s*---\s*\n(.*?)\n---\s*(\n|$)", text, flags=re.S)
        if not match:
            return None
        try:
            import yaml

            meta = yaml.safe_load(match.group(1))
        except Exception:
            return None
        return meta if isinstance(meta, dict) else None

    def _info(self, route: _Route):
        hub = self.server.hub
        repo = self._load_repo(route)
        sha = hub.store.resolve(repo, route.rest[0] if route.rest else "main")
        commit = repo["commits"][sha]
        files = commit["files"]
        info = {
            "_id": hashlib.sha1(f"{repo['type']}/{repo['id']}".encode()).hexdigest()[:24],
            "id": repo["id"],
            "author": repo["id"].split("/")[0] if "/" in repo["id"] else hub.user,
            "sha": sha,
            "lastModified": commit["date"],
            "createdAt": repo["createdAt"],
            "private": repo["private"],
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "cardData": self._card_data(files),
            "siblings": [_sibling(p, f) for p, f in sorted(files.items())],
        }
        if repo["type"] == "model":
            info["modelId"] = repo["id"]
            info["library_name"] = None
        if repo["type"] == "space":
            info["sdk"] = "static"
        return 200, info, {}

    def _entries(self, repo: dict, sha: str, prefix: str, recursive: bool, expand: bool) -> list[dict] | None:
        """Tree entries directly below ``prefix`` (or all below it when recursive); None: no such folder."""
        files = repo["commits"][sha]["files"]
        prefix = prefix.strip("/")
        base = prefix + "/" if prefix else ""
        if prefix and not any(p.startswith(base) for p in files):
            return None
        dirs: dict[str, list[str]] = {}
        out = []
        for path in sorted(files):
            if not path.startswith(base):
                continue
            rel = path[len(base):]
            parts = rel.split("/")
            for depth in range(1, len(parts)):
                if not recursive and depth > 1:
                    break
                dirs.setdefault(base + "/".join(parts[:depth]), []).append(files[path]["oid"])
            if recursive or len(parts) == 1:
                out.append(_tree_entry(path, files[path]))
        for d, oids in dirs.items():
            out.append({"type": "directory", "oid": hashlib.sha1("".join(oids).encode()).hexdigest(),
                        "size": 0, "path": d})
        out.sort(key=lambda e: (e["type"] != "directory", e["path"]))
        if expand:
            commit = repo["commits"][sha]
            for entry in out:
                entry["lastCommit"] = {"id": sha, "title": commit["title"], "date": commit["date"]}
        return out

    def _tree(self, route: _Route, params: dict):
        hub = self.server.hub
        repo = self._load_repo(route)
        if not route.rest:
            raise HubError(404, "Missing revision")
        sha = hub.store.resolve(repo, route.rest[0])
        path = unquote("/".join(route.rest[1:]))
        recursive = _truthy(params.get("recursive"))
        expand = _truthy(params.get("expand"))
        entries = self._entries(repo, sha, path, recursive, expand)
        if entries is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        return 200, entries, {}

    def _paths_info(self, route: _Route, form: dict):
        hub = self.server.hub
        repo = self._load_repo(route)
        sha = hub.store.resolve(repo, route.rest[0] if route.rest else "main")
        files = repo["commits"][sha]["files"]
        expand = _truthy(form.get("expand"))
        out = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in files:
                out.append(_tree_entry(path, files[path]))
            elif path and any(p.startswith(path + "/") for p in files):
                oids = "".join(files[p]["oid"] for p in sorted(files) if p.startswith(path + "/"))
                out.append({"type": "directory", "oid": hashlib.sha1(oids.encode()).hexdigest(), "size": 0,
                            "path": path})
        if expand:
            commit = repo["commits"][sha]
            for entry in out:
                entry["lastCommit"] = {"id": sha, "title": commit["title"], "date": commit["date"]}
        return 200, out, {}

    def _preupload(self, route: _Route, data: dict):
        hub = self.server.hub
        repo = self._load_repo(route, write=True)
        revision = unquote(route.rest[0]) if route.rest else "main"
        files = {}
        if revision in repo["branches"]:
            files = repo["commits"][repo["branches"][revision]]["files"]
        out = []
        for item in data.get("files", []):
            path = item["path"]
            existing = files.get(path)
            mode = hub.upload_mode(path, int(item.get("size") or 0))
            oid = None
            if existing:  # the client compares it with its local oid: git sha1 (regular) or sha256 (lfs)
                oid = existing["lfs"]["sha256"] if mode == "lfs" and "lfs" in existing else existing["oid"]
                if mode == "lfs" and "lfs" not in existing:
                    oid = None
            out.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return 200, {"files": out, "commitOid": repo["branches"].get(revision)}, {}

    def _commit(self, route: _Route, body: bytes, params: dict):
        hub = self.server.hub
        if _truthy(params.get("create_pr")):
            raise HubError(400, "The fake hub does not support pull requests (create_pr)")
        lines = [json.loads(line) for line in body.decode("utf-8").splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The commit payload must start with a header line")
        header = lines[0]["value"]
        branch = unquote(route.rest[0]) if route.rest else "main"
        with hub.store.lock:
            repo = self._load_repo(route, write=True)
            if branch not in repo["branches"]:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            head = repo["branches"][branch]
            parent = header.get("parentCommit")
            if parent and not head.startswith(parent):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            tree = dict(repo["commits"][head]["files"])
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value") or {}
                path = str(value.get("path", "")).strip("/")
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise HubError(400, f"Unsupported encoding {value.get('encoding')!r}")
                    data = base64.b64decode(value["content"])
                    tree[path] = {"oid": hub.store.put_blob(data), "size": len(data)}
                elif key == "deletedFile":
                    if path not in tree:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    del tree[path]
                elif key == "deletedFolder":
                    doomed = [p for p in tree if p.startswith(path + "/")]
                    if not doomed:
                        raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for p in doomed:
                        del tree[p]
                elif key == "lfsFile":
                    sha256, size = str(value.get("oid")), int(value.get("size", -1))
                    if not hub.store.has_lfs(sha256, size):
                        raise HubError(422, f"LFS file {path} ({sha256}) was not uploaded before the commit")
                    pointer = (f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\n"
                               f"size {size}\n").encode()
                    tree[path] = {"oid": git_blob_sha1(pointer), "size": size,
                                  "lfs": {"sha256": sha256, "size": size, "pointerSize": len(pointer)}}
                elif key == "copyFile":
                    raise HubError(400, "The fake hub does not support 'copyFile'")
                else:
                    raise HubError(400, f"Unknown commit operation {key!r}")
            sha = hub.store.new_commit(repo, branch, tree, header.get("summary") or "commit",
                                       header.get("description") or "")
            hub.store.save(repo)
        prefix = "" if repo["type"] == "model" else f"{PLURAL[repo['type']]}/"
        return 200, {"success": True, "commitOid": sha, "commitUrl": f"{hub.url}/{prefix}{repo['id']}/commit/{sha}",
                     "pullRequestUrl": None}, {}

    def _lfs_batch(self, route: _Route, data: dict):
        hub = self.server.hub
        self._load_repo(route, write=True)
        if data.get("operation") != "upload":
            raise HubError(400, "The fake hub's LFS batch API only supports uploads")
        objects = []
        for obj in data.get("objects", []):
            oid, size = str(obj.get("oid")), int(obj.get("size", -1))
            entry = {"oid": oid, "size": size, "authenticated": True}
            if not hub.store.has_lfs(oid, size):
                entry["actions"] = {
                    "upload": {"href": f"{hub.url}/lfs-upload/{oid}", "header": {}},
                    "verify": {"href": f"{hub.url}/lfs-verify/{oid}", "header": {}},
                }
            objects.append(entry)
        return 200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"}

    def _resolve(self, route: _Route):
        hub = self.server.hub
        repo = self._load_repo(route)
        if len(route.rest) < 2:
            raise HubError(404, "Entry not found", "EntryNotFound")
        sha = hub.store.resolve(repo, route.rest[0])
        path = unquote("/".join(route.rest[1:]))
        info = repo["commits"][sha]["files"].get(path)
        headers = {"X-Repo-Commit": sha}
        if info is None:  # like the Hub, say at which commit the file is missing (the client caches that)
            raise HubError(404, "Entry not found", "EntryNotFound", headers=headers)
        data = hub.store.read_file(info)
        etag = info["lfs"]["sha256"] if "lfs" in info else info["oid"]
        if "lfs" in info:  # the real Hub redirects to a CDN and announces these; we serve the bytes directly
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
        headers.update({"ETag": f'"{etag}"', "Accept-Ranges": "bytes",
                        "Content-Type": "application/octet-stream",
                        "Content-Disposition": f'inline; filename="{quote(path.rsplit("/", 1)[-1])}"'})
        status = 200
        range_header = self.headers.get("Range")
        if range_header and self.command == "GET":
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())
            if match and (match.group(1) or match.group(2)):
                size = len(data)
                if match.group(1):
                    start = int(match.group(1))
                    end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
                else:  # suffix range
                    start, end = max(0, size - int(match.group(2))), size - 1
                if start >= size or start > end:
                    headers["Content-Range"] = f"bytes */{size}"
                    return 416, b"", headers
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
                data, status = data[start:end + 1], 206
        return status, data, headers


def _sibling(path: str, info: dict) -> dict:
    out = {"rfilename": path, "size": info["size"], "blobId": info["oid"]}
    if "lfs" in info:
        out["lfs"] = dict(info["lfs"])
    return out


def _tree_entry(path: str, info: dict) -> dict:
    out = {"type": "file", "oid": info["oid"], "size": info["size"], "path": path}
    if "lfs" in info:
        out["lfs"] = {"oid": info["lfs"]["sha256"], "size": info["lfs"]["size"],
                      "pointerSize": info["lfs"]["pointerSize"]}
    return out


def _json(body: bytes) -> dict:
    try:
        data = json.loads(body.decode("utf-8") or "{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HubError(400, f"Invalid JSON body: {err}")
    if not isinstance(data, dict):
        raise HubError(400, "JSON body must be an object")
    return data


def _truthy(values: list[str] | None) -> bool:
    return bool(values) and values[-1].lower() in ("1", "true", "yes")


if __name__ == "__main__":  # manual use: python tests/hub_server.py /tmp/hub
    import sys

    server = HubServer(Path(sys.argv[1] if len(sys.argv) > 1 else "hub-data"), port=int(os.environ.get("PORT", "0")))
    print(server.start(), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
