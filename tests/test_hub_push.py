"""`headsurgeon push MODEL_DIR --repo ORG/NAME`: against a fake Hub on 127.0.0.1.

The CLI runs in a subprocess with ``HF_ENDPOINT`` at the fake Hub and every proxy variable
at a second local "trap" server, exempting only 127.0.0.1: a request to any other host would
reach the trap. The commit the fake Hub receives must hold exactly the files (path, size,
sha256) the ``--dry-run`` listing printed, and the token must appear in nothing but the
Authorization header of requests to the fake Hub.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from headsurgeon.cli import cli
from silent_server import Silent

TOKEN = "hf_fakeTokenForTheTest0123456789abcdef"
REPO = "some-org/tiny-edit"


class Recorder(ThreadingHTTPServer):
    """A tiny Hub: create repo, validate card YAML, preupload (every file "regular", so the
    bytes travel inline in the commit) and commit. Records every request."""

    def __init__(self):
        self.requests: list[dict] = []
        self.refuse_upload = False
        super().__init__(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def reply(self, method: str, path: str, body: bytes):
        route = path.split("?")[0]
        if self.refuse_upload and "/preupload/" in route:
            return 403, {"error": "You don't have the rights to create a model under this "
                                  "namespace"}
        if method == "POST" and route == "/api/repos/create":
            return 200, {"url": f"{self.url}/{REPO}", "name": REPO}
        if method == "POST" and route == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}
        if method == "POST" and route == f"/api/models/{REPO}/preupload/main":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                    "shouldIgnore": False} for f in files]}
        if method == "POST" and route == f"/api/models/{REPO}/commit/main":
            return 200, {"commitUrl": f"{self.url}/{REPO}/commit/0123abc",
                         "commitOid": "0123abc", "pullRequestUrl": None}
        return 404, {"error": "not here"}


class _Handler(BaseHTTPRequestHandler):
    def _any(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        self.server.requests.append({"method": self.command, "path": self.path,
                                     "headers": dict(self.headers), "body": body})
        reply = getattr(self.server, "reply", None)
        status, obj = reply(self.command, self.path, body) if reply else (502, {})
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = do_CONNECT = _any

    def log_message(self, *args):
        pass


class Trap(ThreadingHTTPServer):
    def __init__(self):
        self.requests: list[dict] = []
        super().__init__(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


def _serve(server):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


@pytest.fixture
def servers():
    hub, trap = _serve(Recorder()), _serve(Trap())
    yield hub, trap
    for s in (hub, trap):
        s.shutdown()
        s.server_close()


@pytest.fixture
def model_dir(tmp_path):
    from headsurgeon.model.tiny import build_tiny

    out = build_tiny("llama", tmp_path / "runs" / "tiny" / "model")
    (out / "README.md").write_text("---\ntags:\n- headsurgeon\n---\n# tiny edit\n")
    (out / ".model.safetensors.tmp").write_bytes(b"a temporary never ships")
    return out


def run_push(args, hub, trap, tmp_path, *, token=TOKEN, extra_env=None):
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("HF_") or k.lower().endswith("_proxy"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="0",
               NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                "all_proxy"):
        env[var] = trap.url
    if token:
        env["HF_TOKEN"] = token
    env.update(extra_env or {})
    # the CLI's own group, without plugin discovery (seconds of imports a push never needs)
    code = "import sys; from headsurgeon.cli import cli; cli.main(sys.argv[1:], 'headsurgeon')"
    proc = subprocess.run([sys.executable, "-c", code, "push", *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    return proc.returncode, proc.stdout, proc.stderr


def listing(stdout: str) -> dict[str, tuple[int, str]]:
    """path -> (size, sha256) from the ``sha256  size  path`` lines."""
    out = {}
    for line in stdout.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and len(parts[0]) == 64 and parts[1].isdigit():
            out[parts[2]] = (int(parts[1]), parts[0])
    return out


def on_disk(model_dir: Path) -> dict[str, tuple[int, str]]:
    return {p.relative_to(model_dir).as_posix(): (p.stat().st_size,
                                                  hashlib.sha256(p.read_bytes()).hexdigest())
            for p in model_dir.rglob("*") if p.is_file() and not p.name.startswith(".")}


def committed(hub) -> dict[str, tuple[int, str]]:
    [commit] = [r for r in hub.requests if r["path"].startswith(f"/api/models/{REPO}/commit/")]
    out = {}
    for line in commit["body"].splitlines():
        item = json.loads(line)
        if item["key"] == "file":
            data = base64.b64decode(item["value"]["content"])
            out[item["value"]["path"]] = (len(data), hashlib.sha256(data).hexdigest())
        else:
            assert item["key"] == "header", item  # nothing but inline files
    return out


def test_dry_run_lists_exactly_what_push_sends(servers, model_dir, tmp_path):
    hub, trap = servers
    code, dry_out, dry_err = run_push([model_dir, "--repo", REPO, "--dry-run"], hub, trap,
                                      tmp_path)
    assert code == 0, dry_err
    assert hub.requests == [] and trap.requests == []  # a dry run sends nothing at all
    assert f"would push {len(on_disk(model_dir))} files" in dry_out
    assert f"{hub.url}/{REPO} (private model repo)" not in dry_out  # --private not given
    assert f"{hub.url}/{REPO} (public model repo)" in dry_out
    assert f"endpoint: {hub.url}" in dry_out and "token: from HF_TOKEN" in dry_out
    planned = listing(dry_out)
    assert planned == on_disk(model_dir) and "README.md" in planned
    assert ".model.safetensors.tmp" not in planned

    code, out, err = run_push([model_dir, "--repo", REPO, "--private"], hub, trap, tmp_path)
    assert code == 0, err
    assert committed(hub) == planned  # same paths, sizes and bytes as the dry run listed
    assert listing(out) == planned and f"commit: {hub.url}/{REPO}/commit/0123abc" in out
    [create] = [r for r in hub.requests if r["path"] == "/api/repos/create"]
    body = json.loads(create["body"])
    assert (body["name"], body["organization"], body["visibility"]) == (
        "tiny-edit", "some-org", "private")
    assert trap.requests == []  # no request left for any other host

    # the token: only in the Authorization header, only to the endpoint, never printed
    for r in hub.requests:
        auth = {k.lower(): v for k, v in r["headers"].items()}.get("authorization")
        assert auth in (None, f"Bearer {TOKEN}"), r["path"]
        others = {k: v for k, v in r["headers"].items() if k.lower() != "authorization"}
        assert TOKEN not in json.dumps(others) and TOKEN.encode() not in r["body"]
        assert TOKEN not in r["path"]
    assert sum(1 for r in hub.requests if "authorization" in map(str.lower, r["headers"])) >= 3
    for text in (dry_out, dry_err, out, err):
        assert TOKEN not in text
    for p in tmp_path.rglob("*"):
        if p.is_file():
            assert TOKEN.encode() not in p.read_bytes(), p


def test_push_without_a_token_sends_nothing(servers, model_dir, tmp_path):
    hub, trap = servers
    code, out, err = run_push([model_dir, "--repo", REPO], hub, trap, tmp_path, token=None)
    assert code == 2 and err.startswith("error: ") and "HF_TOKEN" in err
    assert len(err.strip().splitlines()) == 1
    assert hub.requests == [] and trap.requests == []


def _cli(args):
    res = CliRunner().invoke(cli, ["push", *map(str, args)], prog_name="headsurgeon")
    return res.exit_code, res.stderr.strip()


def test_bad_inputs_exit_2_with_one_line(model_dir, tmp_path):
    code, err = _cli([model_dir, "--repo", "not a repo"])
    assert code == 2 and "--repo" in err and "ORG/NAME" in err and "\n" not in err
    code, err = _cli([tmp_path / "nowhere", "--repo", REPO, "--dry-run"])
    assert code == 2 and "not a model directory" in err and "\n" not in err
    (model_dir / "README.md").unlink()
    code, err = _cli([model_dir, "--repo", REPO, "--dry-run"])
    assert code == 2 and "README.md" in err and "\n" not in err


def test_a_refused_push_is_one_line_without_the_token(servers, model_dir, tmp_path):
    hub, trap = servers
    hub.refuse_upload = True
    code, out, err = run_push([model_dir, "--repo", REPO], hub, trap, tmp_path)
    *waiting, last = err.strip().splitlines()
    assert code == 1 and last.startswith(f"error: push to {hub.url}/{REPO} failed: ")
    assert waiting == [f"waiting for {hub.url} (create repo {REPO})...",
                       f"waiting for {hub.url} (commit {len(on_disk(model_dir))} files)..."]
    assert TOKEN not in out + err
    assert not any("/commit/" in r["path"] for r in hub.requests) and trap.requests == []


def test_an_endpoint_that_never_answers_times_out_and_says_so(model_dir, tmp_path):
    """It accepts the connection and sends nothing: each try ends at the read timeout, the
    tries are bounded, and stderr says what was waited for (no 60 s of silence)."""
    silent, trap = Silent(), _serve(Trap())
    try:
        code, out, err = run_push([model_dir, "--repo", REPO], silent, trap, tmp_path,
                                  extra_env={"HEADSURGEON_READ_TIMEOUT": "0.5",
                                             "HEADSURGEON_CONNECT_TIMEOUT": "0.5",
                                             "HEADSURGEON_NET_TRIES": "2"})
        assert code == 1, err
        assert err.splitlines() == [
            f"waiting for {silent.url} (create repo {REPO})...",
            f"waiting for {silent.url} (create repo {REPO})... try 2 of 2",
            f"error: push to {silent.url}/{REPO} failed: {silent.url} did not answer "
            f"(create repo {REPO}) within 0.5 s; 2 tries (HEADSURGEON_READ_TIMEOUT sets the "
            "read timeout)"]
        creates = [line for line in silent.request_lines() if "/api/repos/" in line]
        assert creates == ["POST /api/repos/create HTTP/1.1"] * 2  # one request a try
        assert trap.requests == []
        assert TOKEN not in out + err
    finally:
        silent.close()
        trap.shutdown()
        trap.server_close()


def test_bad_timeout_setting_is_a_usage_error(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HEADSURGEON_READ_TIMEOUT", "soon")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    code, err = _cli([model_dir, "--repo", REPO])
    assert code == 2 and err == ("error: HEADSURGEON_READ_TIMEOUT: 'soon' is not a number "
                                 "of seconds in (0, 86400]")
