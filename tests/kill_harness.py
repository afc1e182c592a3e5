"""Run headsurgeon CLI commands in forked children of a warm server process, so a test
can SIGKILL them at chosen moments without paying Python + torch start-up per run.

The server imports headsurgeon (and torch, transformers) once; each request forks a
child that runs ``headsurgeon.cli.main(argv)`` in ``cwd`` with stdout/stderr in a log
file. The child stays unreaped until the test has killed it (or not), so its pid cannot
be reused in between -- the same scheme as tests/test_apply_kill.py.
"""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SERVER = r"""
import importlib, itertools, json, os, socket, sys
import torch, transformers  # noqa: F401 - warm imports, shared by every child
import headsurgeon.train.run, headsurgeon.locate.run, headsurgeon.apply.run  # noqa: F401
from headsurgeon.cli import main
torch.set_num_threads(1)


def pause_after(at, socket_path, calls=1):
    # once `at` ("module:function" or "module:Class.method") has returned for the
    # `calls`-th time, say so on the Unix socket and wait there until the test answers
    # (or closes it, or kills this process)
    module_name, path = at.split(":")
    owner = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for p in parents:
        owner = getattr(owner, p)
    real, returned = getattr(owner, name), itertools.count(1)  # next(): atomic in CPython

    def paused(*args, **kwargs):
        result = real(*args, **kwargs)
        if next(returned) == calls:  # apply's shards return from several threads
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(socket_path)
                s.sendall(f"{os.getpid()}\n".encode())
                s.recv(1)
        return result
    setattr(owner, name, paused)


print("ready", flush=True)
for line in sys.stdin:
    req = json.loads(line)
    if "reap" in req:  # children stay unreaped until the test says so
        print(json.dumps({"status": os.waitpid(req["reap"], 0)[1]}), flush=True)
        continue
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            if req.get("pause"):
                pause_after(**req["pause"])
            os.chdir(req["cwd"])
            fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            try:
                main(req["argv"])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException as exc:  # noqa: BLE001
            sys.stderr.write(f"harness: {exc!r}\n")
            code = 99
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(pid, flush=True)
"""


class ForkServer:
    def __init__(self, env: dict | None = None):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_VERBOSITY": "error", **(env or {})}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        assert self._readline(180) == "ready"

    def _readline(self, timeout: float = 300) -> str:
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert r, "fork server hung"
        return self.proc.stdout.readline().strip()

    def _send(self, obj) -> None:
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def run(self, argv: list[str], cwd: Path, log: Path, *, kill_after: float | None = None,
            kill_when=None, then: float = 0.0, kill_at: "Pause | None" = None,
            timeout: float = 300) -> tuple[int | None, float]:
        """Run ``headsurgeon ARGV``; SIGKILL it after ``kill_after`` seconds, or ``then``
        seconds after ``kill_when()`` first returns true, if it is still running, or once it
        stands at the barrier ``kill_at`` (a deterministic point). Returns (exit code, or
        None when the kill ended it; seconds)."""
        pid, t0 = self.start(argv, cwd, log, pause=kill_at), time.monotonic()
        if kill_at is not None:
            kill_at.reached(pid)
            os.kill(pid, signal.SIGKILL)
            kill_at.close()
        elif kill_after is not None:
            time.sleep(kill_after)
            os.kill(pid, signal.SIGKILL)  # unreaped, so the pid is still this child's
        elif kill_when is not None:
            while not _exited(pid) and time.monotonic() - t0 < timeout:
                if kill_when():
                    time.sleep(then)
                    os.kill(pid, signal.SIGKILL)
                    break
                time.sleep(0.002)
        return self.wait(pid), time.monotonic() - t0

    def start(self, argv: list[str], cwd: Path, log: Path, pause: "Pause | None" = None
              ) -> int:
        """Fork a child running ``headsurgeon ARGV`` and return its pid at once; with
        ``pause``, the child stops right after ``pause.at`` returns, until released."""
        req = {"argv": argv, "cwd": str(cwd), "log": str(log)}
        if pause is not None:
            req["pause"] = {"at": pause.at, "socket_path": str(pause.path),
                            "calls": pause.calls}
        self._send(req)
        return int(self._readline())

    def wait(self, pid: int) -> int | None:
        """Reap ``pid``: its exit code, or None when a signal ended it."""
        self._send({"reap": pid})
        status = json.loads(self._readline())["status"]
        return None if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _exited(pid: int) -> bool:
    """True once ``pid`` is a zombie (it ran to its end and waits to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


class Pause:
    """A barrier for one child of the fork server: ``server.start(..., pause=p)`` makes
    the child stop right after the function ``at`` ("module:function" or
    "module:Class.method") returns for the ``calls``-th time;
    ``p.reached(pid)`` waits for that moment and returns the child's pid; ``p.release()``
    lets it go on. No sleeps: the child and the test meet on a Unix socket."""

    def __init__(self, at: str, path: Path, *, calls: int = 1, timeout: float = 300):
        self.at, self.path, self.calls = at, Path(path), calls
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(str(self.path))
        self._listener.listen(1)
        self.timeout = timeout  # only a guard against a hung child
        self._conn: socket.socket | None = None

    def reached(self, pid: int) -> int:
        """Wait until child ``pid`` stands at the barrier (fail if it exits first)."""
        deadline = time.monotonic() + self.timeout
        while not select.select([self._listener], [], [], 1.0)[0]:  # 1 s: a poll tick only
            assert not _exited(pid), f"child {pid} exited before reaching {self.at}"
            assert time.monotonic() < deadline, f"child {pid} hung before {self.at}"
        self._conn, _ = self._listener.accept()
        with self._conn.makefile("r") as f:
            line = f.readline()
        assert line.endswith("\n"), f"paused child closed the barrier early: {line!r}"
        return int(line)

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.sendall(b"g")
            except OSError:  # the child was killed at the barrier
                pass
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        self.release()
        self._listener.close()
        self.path.unlink(missing_ok=True)
