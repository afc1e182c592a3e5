"""A real NDIF server on 127.0.0.1 for integration tests (see docs/remote.md).

Processes, each started here and stopped by its PID: ``redis-server`` (no persistence),
an S3 object store (``moto_server``, needed by ndif for non-blocking jobs), ndif's own
FastAPI app under uvicorn, and the CPU worker of ``tests/ndif_worker.py``. Ray is never
started (it leaves loopback). Every component can be stopped and restarted separately, so
tests can produce the failure cases for real.

Exposed as the session fixture ``ndif_server`` (registered in ``tests/conftest.py``). If
the server cannot start, the fixture FAILS (it never skips): install it with
``scripts/install-ndif-test-deps.sh``.
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
LOOPBACK = "127.0.0.1"
TINY_REPO = "headsurgeon-test/tiny-llama"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class ServerError(RuntimeError):
    pass


class NdifServer:
    """Start/stop the loopback NDIF components; ``host`` is the API's URL."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ports = {name: free_port() for name in ("redis", "s3", "api")}
        self.procs: dict[str, subprocess.Popen] = {}
        self.host = f"http://{LOOPBACK}:{self.ports['api']}"
        self.redis_url = f"redis://{LOOPBACK}:{self.ports['redis']}/0"
        self.env = {
            **os.environ,
            "NDIF_REDIS_URL": self.redis_url,
            "NDIF_OBJECT_STORE_URL": f"http://{LOOPBACK}:{self.ports['s3']}",
            "NDIF_OBJECT_STORE_ACCESS_KEY": "testing",
            "NDIF_OBJECT_STORE_SECRET_KEY": "testing",
            "NDIF_OBJECT_STORE_BUCKET": "ndif-results",
            "NDIF_POSTGRES_URL": "",  # no auth
            "NDIF_API_PORT": str(self.ports["api"]),
            "HF_HUB_OFFLINE": "1",
            "RAY_ENABLE_AUTO_CONNECT": "0",  # never start or join Ray (it leaves loopback)
            "PYTHONUNBUFFERED": "1",
        }
        for var in ("NDIF_API_KEY", "NDIF_HOST", "NDIF_LOKI_URL", "NDIF_INFLUXDB_URL",
                    "RAY_ADDRESS"):
            self.env.pop(var, None)
        self._redis = None
        atexit.register(self.stop_all)

    # -- processes ------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.workdir / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(argv, env=self.env, stdout=log, stderr=log,
                                            stdin=subprocess.DEVNULL, cwd=self.workdir)
        log.close()

    def log_tail(self, name: str, n: int = 25) -> str:
        path = self.workdir / f"{name}.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return "\n".join(lines[-n:])

    def _wait(self, name: str, ready, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise ServerError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")
            try:
                if ready():
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.1)
        raise ServerError(f"{name} not ready after {timeout:.0f} s:\n{self.log_tail(name)}")

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def stop_all(self) -> None:
        for name in ("worker", "api", "s3", "redis"):
            self.stop(name)

    def running(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    # -- components -----------------------------------------------------------------
    def start_redis(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise ServerError("redis-server not found (run scripts/install-ndif-test-deps.sh)")
        self._spawn("redis", [exe, "--bind", LOOPBACK, "--port", str(self.ports["redis"]),
                              "--save", "", "--appendonly", "no", "--protected-mode", "yes"])
        self._wait("redis", lambda: self.redis().ping(), 15)

    def start_s3(self) -> None:
        exe = Path(sys.executable).with_name("moto_server")
        self._spawn("s3", [str(exe), "-H", LOOPBACK, "-p", str(self.ports["s3"])])
        self._wait("s3", lambda: _http_ok(f"http://{LOOPBACK}:{self.ports['s3']}/"), 30)

    def start_api(self) -> None:
        self._spawn("api", [sys.executable, str(HERE / "ndif_api.py"), LOOPBACK,
                            str(self.ports["api"])])
        self._wait("api", lambda: _http_ok(f"{self.host}/ping"), 60)

    def start_worker(self) -> None:
        self.redis().delete("ray:connected", "hs:busy")
        self._spawn("worker", [sys.executable, str(HERE / "ndif_worker.py")])
        self._wait("worker", lambda: self.redis().get("ray:connected"), 60)

    def start_all(self) -> "NdifServer":
        self.start_redis()
        self.start_s3()
        self.start_api()
        self.start_worker()
        return self

    def ensure_up(self) -> None:
        """Restart whatever a test stopped; clear fault hooks."""
        for name, start in (("redis", self.start_redis), ("s3", self.start_s3),
                            ("api", self.start_api), ("worker", self.start_worker)):
            if not self.running(name):
                start()
        self.redis().delete("hs:fault")
        self.wait_idle()

    # -- test hooks -----------------------------------------------------------------
    def redis(self):
        if self._redis is None:
            import redis

            self._redis = redis.Redis.from_url(self.redis_url, decode_responses=True,
                                               socket_timeout=5)
        return self._redis

    def register_model(self, repo_id: str, path: Path) -> None:
        self.redis().hset("hs:models", repo_id, str(path))

    def fault(self, *values: str) -> None:
        """Faults for the worker's next requests, one each (see tests/ndif_worker.py)."""
        self.redis().rpush("hs:fault", *values)

    def release(self, n: int = 1) -> None:
        """Let ``n`` jobs held by the ``hold`` fault go on."""
        self.redis().rpush("hs:release", *["go"] * n)

    def served(self) -> int:
        return int(self.redis().get("hs:served") or 0)

    def wait_idle(self, timeout: float = 30) -> None:
        """Wait until no request is queued or running (jobs a client gave up on still run)."""
        deadline = time.monotonic() + timeout
        quiet = 0
        while time.monotonic() < deadline and quiet < 2:
            r = self.redis()
            quiet = quiet + 1 if not r.llen("queue") and not r.get("hs:busy") else 0
            time.sleep(0.05)


def _http_ok(url: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(url, timeout=2) as resp:  # loopback only
        return resp.status == 200


@pytest.fixture(scope="session")
def ndif_server(tmp_path_factory):
    """A running loopback NDIF server with a tiny llama registered as TINY_REPO."""
    from headsurgeon.model.tiny import build_tiny

    base = tmp_path_factory.mktemp("ndif")
    server = NdifServer(base / "server")
    try:
        server.start_all()
    except (ServerError, OSError) as exc:
        server.stop_all()
        pytest.fail(f"the loopback NDIF server did not start: {exc}", pytrace=False)
    server.tiny_dir = build_tiny("llama", base / "tiny-llama")
    server.register_model(TINY_REPO, server.tiny_dir)
    try:
        yield server
    finally:
        server.stop_all()


@pytest.fixture
def ndif(ndif_server, monkeypatch):
    """The session server with every component up and no fault pending; NDIF_HOST set."""
    try:
        ndif_server.ensure_up()
    except ServerError as exc:
        pytest.fail(f"the loopback NDIF server could not be restarted: {exc}", pytrace=False)
    monkeypatch.setenv("NDIF_HOST", ndif_server.host)
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    return ndif_server


def tiny_recipe(path: Path, model_dir: Path, shared_data: Path, **ndif) -> Path:
    """A small locate recipe for the tiny llama, remote by default, on ``NDIF_HOST``."""
    import json as _json

    lines = [
        "name: tiny-ndif",
        f"output_dir: {path.parent / 'runs'}",
        f"model: {{source: {model_dir}, remote_id: {TINY_REPO}}}",
        "data:",
        f"  locate: [{{name: jsonl, path: {shared_data / 'arc' / 'arc_easy_validation.jsonl'},"
        " limit: 12}]",
        "locate:",
        "  remote: true",
        "  method: {name: attribution, approximates: path_patching}",
        "  confirm_top: 2",
        "  n_probes: 2",
        "  batch_size: 2",
        "  k_max: 2",
        "  knockout_random_sets: 1",
        f"  ndif: {_json.dumps({'poll_seconds': 0.2, **ndif})}",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path
