"""The Hub test infrastructure itself, exercised with a model that is not ours (a tiny Marian).

Real client code (``transformers`` / ``datasets`` / ``huggingface_hub``) runs in subprocesses
against servers on 127.0.0.1: the fake Hub of ``hub_server.py`` and the ``olah`` mirror.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import time
import urllib.error
import urllib.request

import pytest
from helpers import RESULT_PREFIX, TEST_TOKEN, hub_env, json_result, run_python

MARIAN = """
import torch
from transformers import MarianConfig, MarianMTModel

def tiny_marian(seed):
    config = MarianConfig(
        vocab_size=99, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )
    torch.manual_seed(seed)
    return MarianMTModel(config).eval()

def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
"""

PRELUDE = f"import json\nRESULT_PREFIX = {RESULT_PREFIX!r}\n"


def _get(url: str, token: str | None = None, method: str = "GET"):
    """(status, headers, body) of one plain HTTP request from the test process (loopback only)."""
    request = urllib.request.Request(url, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_push_to_hub_private_then_from_pretrained(hub_server, hub_client_env):
    proc = run_python(PRELUDE + MARIAN + """
model = tiny_marian(seed=0)
info = model.push_to_hub("org/tiny", private=True)
loaded = MarianMTModel.from_pretrained("org/tiny")
print(RESULT_PREFIX + json.dumps({"oid": info.oid, "same": same_weights(model, loaded)}))
""", hub_client_env, timeout=180)
    result = json_result(proc)
    assert result["same"], "from_pretrained did not give back bitwise-equal weights"

    # the repo: private, and main points at the pushed commit with the model files
    assert hub_server.is_private("org/tiny")
    assert hub_server.head("org/tiny") == result["oid"]
    assert {"config.json", "model.safetensors", "README.md"} <= set(hub_server.files("org/tiny"))

    # what the client sent: private=True as visibility, and the token on every write
    (create,) = hub_server.requests_for("create")
    assert create.json()["visibility"] == "private"
    assert create.json()["organization"] == "org" and create.json()["name"] == "tiny"
    for route in ("create", "preupload", "commit", "info", "resolve"):
        seen = hub_server.requests_for(route)
        assert seen, f"the client never used the {route!r} route"
        assert all(r.authorization == f"Bearer {TEST_TOKEN}" for r in seen), route
    unknown = [(r.method, r.path) for r in hub_server.requests if r.route is None]
    assert not unknown, f"requests the fake hub has no route for: {unknown}"

    # a private repo is invisible without a token, as on the Hub
    status, headers, _ = _get(f"{hub_server.url}/api/models/org/tiny")
    assert status == 401 and headers.get("X-Error-Code") == "RepoNotFound"
    status, headers, _ = _get(f"{hub_server.url}/org/tiny/resolve/main/config.json", token=TEST_TOKEN, method="HEAD")
    assert status == 200 and headers["X-Repo-Commit"] == result["oid"] and headers["ETag"]
    status, headers, _ = _get(f"{hub_server.url}/org/tiny/resolve/main/missing.json", token=TEST_TOKEN)
    assert status == 404 and headers.get("X-Error-Code") == "EntryNotFound"


def test_second_commit_replaces_files_and_hfapi_endpoint_argument(hub_server, hub_client_env, tmp_path):
    first = json_result(run_python(PRELUDE + MARIAN + """
from huggingface_hub import HfApi
tiny_marian(seed=0).push_to_hub("org/tiny2")
info = HfApi().upload_file(path_or_fileobj=b"notes v1", path_in_repo="notes.txt", repo_id="org/tiny2")
print(RESULT_PREFIX + json.dumps({"oid": info.oid}))
""", hub_client_env, timeout=180))
    v1_files = hub_server.files("org/tiny2")
    assert v1_files["notes.txt"] == b"notes v1"

    # Second push with an explicit `HfApi(endpoint=...)` while HF_ENDPOINT points at a closed local
    # port: every request must follow the argument, none the environment.
    env = hub_env("http://127.0.0.1:9", tmp_path / "hf_home_2", token=TEST_TOKEN)
    second = json_result(run_python(PRELUDE + MARIAN + f"""
import hashlib, tempfile
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
url = {hub_server.url!r}
api = HfApi(endpoint=url)
model = tiny_marian(seed=1)
with tempfile.TemporaryDirectory() as folder:
    model.save_pretrained(folder)
    info = api.upload_folder(folder_path=folder, repo_id="org/tiny2", commit_message="v2",
                             delete_patterns=["notes.txt"])
local = snapshot_download("org/tiny2", endpoint=url)
loaded = MarianMTModel.from_pretrained(local)
old = hf_hub_download("org/tiny2", "model.safetensors", revision={first["oid"]!r}, endpoint=url)
print(RESULT_PREFIX + json.dumps({{
    "oid": info.oid, "same": same_weights(model, loaded), "files": sorted(api.list_repo_files("org/tiny2")),
    "old_sha256": hashlib.sha256(open(old, "rb").read()).hexdigest(),
}}))
""", env, timeout=180))
    assert second["same"]
    assert second["files"] == [".gitattributes", "README.md", "config.json", "generation_config.json",
                               "model.safetensors"]
    assert second["old_sha256"] == hashlib.sha256(v1_files["model.safetensors"]).hexdigest()

    v2_files = hub_server.files("org/tiny2")
    assert hub_server.head("org/tiny2") == second["oid"]
    assert "notes.txt" not in v2_files
    assert v2_files["model.safetensors"] != v1_files["model.safetensors"]
    assert v2_files["config.json"] == v1_files["config.json"]
    assert [c["title"] for c in hub_server.commits("org/tiny2")][:1] == ["v2"]
    assert len(hub_server.commits("org/tiny2")) == 4  # initial, push, notes, v2
    # unchanged files are skipped by the client: it compared the oids the preupload answered
    (commit,) = [r for r in hub_server.requests_for("commit") if b'"v2"' in r.body]
    ops = [json.loads(line) for line in commit.body.splitlines()]
    assert {op["value"]["path"] for op in ops if op["key"] == "file"} == {"model.safetensors"}
    assert {op["value"]["path"] for op in ops if op["key"] == "deletedFile"} == {"notes.txt"}


def test_dataset_push_to_hub_then_load_dataset(hub_server, hub_client_env):
    proc = run_python(PRELUDE + """
import datasets
ds = datasets.Dataset.from_dict({"a": list(range(10)), "b": [str(i) for i in range(10)]})
ds.push_to_hub("org/ds")
back = datasets.load_dataset("org/ds")
print(RESULT_PREFIX + json.dumps({"splits": sorted(back), "same": back["train"].to_dict() == ds.to_dict()}))
""", hub_client_env, timeout=180)
    result = json_result(proc)
    assert result == {"splits": ["train"], "same": True}
    files = hub_server.repo("org/ds", "dataset")
    head = files["commits"][files["branches"]["main"]]["files"]
    parquet = [path for path in head if path.endswith(".parquet")]
    assert parquet and all("lfs" in head[path] for path in parquet)  # went through the git-LFS batch API
    assert hub_server.requests_for("lfs-batch") and hub_server.requests_for("lfs-upload", method="PUT")
    assert "README.md" in head


def test_olah_mirror_serves_model_and_parquet_dataset(hub_mirror, tmp_path):
    import datasets
    import torch
    from transformers import MarianConfig, MarianMTModel

    config = MarianConfig(
        vocab_size=99, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )
    torch.manual_seed(0)
    model_dir = tmp_path / "model"
    MarianMTModel(config).save_pretrained(model_dir)
    model_sha = hub_mirror.add_repo("model", "org/tiny", model_dir)

    data_dir = tmp_path / "data"
    (data_dir / "data").mkdir(parents=True)
    datasets.Dataset.from_dict({"x": [1, 2, 3], "y": ["a", "b", "c"]}).to_parquet(
        data_dir / "data" / "train-00000-of-00001.parquet")
    datasets.Dataset.from_dict({"x": [9], "y": ["z"]}).to_parquet(data_dir / "data" / "test-00000-of-00001.parquet")
    (data_dir / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n"
        "  - split: test\n    path: data/test-*\n---\n# A parquet dataset\n")
    hub_mirror.add_repo("dataset", "org/pq", data_dir)

    proc = run_python(PRELUDE + f"""
import torch, datasets
from safetensors.torch import load_file
from transformers import MarianMTModel
model = MarianMTModel.from_pretrained("org/tiny")
expected = load_file({str(model_dir / "model.safetensors")!r})
state = model.state_dict()
same = all(torch.equal(state[k], v) for k, v in expected.items())
ds = datasets.load_dataset("org/pq")
print(RESULT_PREFIX + json.dumps({{"same": same, "train": ds["train"].to_dict(), "test": ds["test"].to_dict()}}))
""", hub_mirror.env(tmp_path / "hf_home"), timeout=180)
    result = json_result(proc)
    assert result == {"same": True, "train": {"x": [1, 2, 3], "y": ["a", "b", "c"]}, "test": {"x": [9], "y": ["z"]}}
    log = hub_mirror.output()
    assert f"/org/tiny/resolve/{model_sha}/model.safetensors" in log  # the bytes came through olah
    assert "/datasets/org/pq/resolve/" in log


def test_fault_injection_failed_commits_leave_repo_unchanged(hub_server, hub_client_env):
    before = hub_server.add_files("org/faulty", {"a.txt": b"old"})
    hub_server.fail_next(2, route="commit")
    proc = run_python(PRELUDE + """
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError
api = HfApi()
out = {"failures": [], "sha_after_failures": [], "content_after_failures": []}
for _ in range(2):
    try:
        api.upload_file(path_or_fileobj=b"new", path_in_repo="a.txt", repo_id="org/faulty")
    except HfHubHTTPError as err:
        out["failures"].append(err.response.status_code)
    out["sha_after_failures"].append(api.repo_info("org/faulty").sha)
    out["content_after_failures"].append(open(hf_hub_download("org/faulty", "a.txt", force_download=True)).read())
info = api.upload_file(path_or_fileobj=b"new", path_in_repo="a.txt", repo_id="org/faulty")
out["final_oid"] = info.oid
print(RESULT_PREFIX + json.dumps(out))
""", hub_client_env, timeout=120)
    result = json_result(proc)
    assert result["failures"] == [500, 500]
    assert result["sha_after_failures"] == [before, before]
    assert result["content_after_failures"] == ["old", "old"]
    injected = [r for r in hub_server.requests_for("commit") if r.injected]
    assert len(injected) == 2 and all(r.status == 500 for r in injected)
    assert hub_server.head("org/faulty") == result["final_oid"] != before
    assert hub_server.files("org/faulty")["a.txt"] == b"new"
    assert len(hub_server.commits("org/faulty")) == 3  # initial, seed, the one commit that went through


def test_delay_knob_and_restart_on_same_port(hub_server):
    hub_server.add_files("org/persist", {"f.txt": b"kept"})
    url, port = hub_server.url, hub_server.port

    hub_server.set_delay(0.5, route="info")
    start = time.monotonic()
    status, _, body = _get(f"{url}/api/models/org/persist")
    assert status == 200 and json.loads(body)["id"] == "org/persist"
    assert time.monotonic() - start >= 0.5
    start = time.monotonic()
    status, _, _ = _get(f"{url}/org/persist/resolve/main/f.txt")  # other routes are not slowed down
    assert status == 200 and time.monotonic() - start < 0.5
    hub_server.clear_faults()

    hub_server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/api/models/org/persist", timeout=2)
    assert hub_server.start() == url and hub_server.port == port
    status, _, body = _get(f"{url}/org/persist/resolve/main/f.txt")
    assert status == 200 and body == b"kept"  # the repos live on disk and survive the restart
    hub_server.fail_next(1, route="*", status=503)
    assert _get(f"{url}/api/models/org/persist")[0] == 503
    assert _get(f"{url}/api/models/org/persist")[0] == 200
    hub_server.drop_next(1, route="resolve")
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
        _get(f"{url}/org/persist/resolve/main/f.txt")
    assert _get(f"{url}/org/persist/resolve/main/f.txt")[2] == b"kept"


def test_hfapi_repo_management_routes(hub_server, hub_client_env):
    hub_server.add_files("org/misc", {"a/b/c.txt": b"c", "top.txt": b"t"})
    result = json_result(run_python(PRELUDE + """
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError
api = HfApi()
out = {"user": api.whoami()["name"], "exists": api.repo_exists("org/misc"), "missing": api.repo_exists("org/nope"),
       "file": api.file_exists("org/misc", "a/b/c.txt"), "no_file": api.file_exists("org/misc", "x.txt")}
out["tree"] = sorted(f.path for f in api.list_repo_tree("org/misc", recursive=True))
out["top"] = sorted(f.path for f in api.list_repo_tree("org/misc"))
out["sub"] = sorted(f.path for f in api.list_repo_tree("org/misc", path_in_repo="a/b"))
out["paths"] = sorted(type(p).__name__ + ":" + p.path for p in api.get_paths_info("org/misc", ["a", "top.txt", "zz"]))
out["branches"] = [b.name for b in api.list_repo_refs("org/misc").branches]
out["commits"] = [c.title for c in api.list_repo_commits("org/misc")]
try:
    api.create_repo("org/misc")
except HfHubHTTPError as err:
    out["create_again"] = err.response.status_code
out["exist_ok"] = api.create_repo("org/misc", exist_ok=True).repo_id
out["own"] = api.create_repo("mine", private=True).repo_id
api.update_repo_settings("org/misc", private=True)
try:
    HfApi(token=False).model_info("org/misc")
except RepositoryNotFoundError:
    out["anonymous_private"] = "RepositoryNotFoundError"
try:
    hf_hub_download("org/misc", "nothing.txt")
except EntryNotFoundError:
    out["missing_entry"] = "EntryNotFoundError"
api.delete_file("top.txt", "org/misc")
out["after_delete"] = sorted(api.list_repo_files("org/misc"))
api.delete_repo("org/misc")
out["deleted"] = not api.repo_exists("org/misc")
print(RESULT_PREFIX + json.dumps(out))
""", hub_client_env, timeout=120))
    assert result == {
        "user": "tester", "exists": True, "missing": False, "file": True, "no_file": False,
        "tree": [".gitattributes", "a", "a/b", "a/b/c.txt", "top.txt"],
        "top": [".gitattributes", "a", "top.txt"],
        "sub": ["a/b/c.txt"],
        "paths": ["RepoFile:top.txt", "RepoFolder:a"],
        "branches": ["main"],
        "commits": ["Add files", "initial commit"],
        "create_again": 409, "exist_ok": "org/misc", "own": "tester/mine",
        "anonymous_private": "RepositoryNotFoundError", "missing_entry": "EntryNotFoundError",
        "after_delete": [".gitattributes", "a/b/c.txt"], "deleted": True,
    }
    assert hub_server.is_private("tester/mine")
