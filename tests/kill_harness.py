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
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SERVER = r"""
import json, os, sys
import torch, transformers  # noqa: F401 - warm imports, shared by every child
import headsurgeon.train.run, headsurgeon.locate.run, headsurgeon.apply.run  # noqa: F401
from headsurgeon.cli import main
torch.set_num_threads(1)
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
            kill_when=None, then: float = 0.0, timeout: float = 300
            ) -> tuple[int | None, float]:
        """Run ``headsurgeon ARGV``; SIGKILL it after ``kill_after`` seconds, or ``then``
        seconds after ``kill_when()`` first returns true, if it is still running. Returns
        (exit code, or None when the kill ended it; seconds)."""
        pid, t0 = self.start(argv, cwd, log), time.monotonic()
        if kill_after is not None:
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

    def start(self, argv: list[str], cwd: Path, log: Path) -> int:
        """Fork a child running ``headsurgeon ARGV`` and return its pid at once."""
        self._send({"argv": argv, "cwd": str(cwd), "log": str(log)})
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
