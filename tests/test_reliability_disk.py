"""A disk that fills up, and two applies racing to one output.

Disk full: every write of our outputs goes through ``os.write``, ``os.pwrite``,
``os.copy_file_range`` or ``os.sendfile`` (atomic.write_all, the safetensors writer,
kernel copies, shutil). ``disk_budget`` wraps those four: writes to files under one
directory (the "disk") succeed for ``nbytes`` bytes in all -- the last one short, as
on a real full disk -- and then fail with ENOSPC. apply, train and locate run through
the CLI against budgets spread over the bytes a complete run writes: each must fail with
one line and exit 1, leave no partial output or temporary behind, and not touch the base.

Concurrency: two processes apply to one output at the same moment; one wins, the other
fails cleanly (exit 1, "another apply is writing") or finds the output already there
(exit 2), and the output verifies.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import reliability_corpus as rc
from headsurgeon.cli import cli
from kill_harness import ForkServer

@contextlib.contextmanager
def disk_budget(disk: Path, nbytes: float):
    """Writes to files under ``disk`` fail with ENOSPC once ``nbytes`` are written.
    Yields a dict whose "written" counts the bytes that went to the disk."""
    state = {"written": 0}
    real = {n: getattr(os, n) for n in ("write", "pwrite", "copy_file_range", "sendfile")}
    root = str(disk.resolve())

    def on_disk(fd: int) -> bool:
        try:
            return os.readlink(f"/proc/self/fd/{fd}").startswith(root)
        except OSError:
            return False

    lock = threading.Lock()  # apply writes shards from several threads

    def limited(fd: int, want: int, do) -> int:
        """Write at most what is left of the budget (ENOSPC when nothing is)."""
        if not on_disk(fd):
            return do(want)
        with lock:
            left = nbytes - state["written"]
            if left <= 0 and want > 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            done = do(int(min(want, left)))
            state["written"] += done
            return done

    def write(fd, data):
        view = memoryview(data).cast("B")
        return limited(fd, len(view), lambda n: real["write"](fd, view[:n]))

    def pwrite(fd, data, offset):
        view = memoryview(data).cast("B")
        return limited(fd, len(view), lambda n: real["pwrite"](fd, view[:n], offset))

    def copy_file_range(src, dst, count, offset_src=None, offset_dst=None):
        return limited(dst, count, lambda n: real["copy_file_range"](src, dst, n, offset_src,
                                                                     offset_dst))

    def sendfile(out_fd, in_fd, offset, count):
        return limited(out_fd, count, lambda n: real["sendfile"](out_fd, in_fd, offset, n))

    patched = {"write": write, "pwrite": pwrite, "copy_file_range": copy_file_range,
               "sendfile": sendfile}
    try:
        for name, fn in patched.items():
            setattr(os, name, fn)
        yield state
    finally:
        for name, fn in real.items():
            setattr(os, name, fn)


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    torch.set_num_threads(1)
    return rc.Workspace(tmp_path_factory.mktemp("disk-models"))


def _invoke(args, cwd: Path, env: dict | None = None):
    with rc._cwd(cwd):
        return CliRunner().invoke(cli, args, env={"HF_HUB_OFFLINE": "1", **(env or {})})


def _budgets(total: int) -> list[int]:
    return sorted({0, 1, 100, total // 4, total // 2, (9 * total) // 10, total - 1})


def test_disk_budget_fails_writes_after_n_bytes(tmp_path):
    """The simulation itself: a short write at the limit, then ENOSPC; other files free."""
    (tmp_path / "disk").mkdir()
    fd = os.open(tmp_path / "disk" / "f", os.O_WRONLY | os.O_CREAT)
    other = os.open(tmp_path / "g", os.O_WRONLY | os.O_CREAT)
    try:
        with disk_budget(tmp_path / "disk", 10) as st:
            assert os.write(fd, b"x" * 8) == 8 and os.write(fd, b"y" * 8) == 2
            with pytest.raises(OSError) as ei:
                os.write(fd, b"z")
            assert ei.value.errno == errno.ENOSPC and st["written"] == 10
            assert os.write(other, b"w" * 100) == 100
    finally:
        os.close(fd)
        os.close(other)


def test_apply_on_a_full_disk(ws, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(ws.sharded, base)
    rc.make_delta(base, tmp_path / "d.safetensors")
    (tmp_path / "disk").mkdir()
    before = _tree(base)
    args = ["apply", "--base", str(base), "--delta", str(tmp_path / "d.safetensors"),
            "--out", "disk/out"]
    with disk_budget(tmp_path / "disk", float("inf")) as st:
        res = _invoke(args, tmp_path)
    assert res.exit_code == 0, res.stderr
    total = st["written"]
    reference = _tree(tmp_path / "disk" / "out")
    assert total > 100_000  # the shards, index, manifest, card, tokenizer files
    shutil.rmtree(tmp_path / "disk" / "out")
    for budget in _budgets(total):
        with disk_budget(tmp_path / "disk", budget):
            res = _invoke(args, tmp_path)
        out = tmp_path / "disk" / "out"
        assert res.exit_code == 1, (budget, res.stderr)
        last = res.stderr.strip().splitlines()[-1]  # after apply's progress lines
        assert last == f"error: {out}: cannot write: No space left on device"
        assert list((tmp_path / "disk").iterdir()) == [], budget  # no partial, no lock
        assert _tree(base) == before
    with disk_budget(tmp_path / "disk", total):  # exactly enough: complete, the same bytes
        res = _invoke(args, tmp_path)
    assert res.exit_code == 0 and _tree(tmp_path / "disk" / "out") == reference


def _complete_or_absent(d: Path, reference: dict) -> None:
    """No temporary is left behind; every file with a real name is the complete run's
    (byte for byte, but for timings and plots) or an earlier, complete checkpoint."""
    from headsurgeon.model import safetensors_io as sio

    tree = _tree(d)
    for rel, sha in tree.items():
        assert not Path(rel).name.startswith("."), f"leftover {rel}"
        if rel.startswith("delta.ckpt"):  # an earlier step's: checked below
            if rel.endswith(".safetensors"):
                sio.read_header(d / rel)  # a whole safetensors file
        elif not rel.endswith(("train.json", ".png")):
            assert reference.get(rel) == sha, f"partial or different {rel}"
    if "delta.ckpt.json" in tree:
        meta = json.loads((d / "delta.ckpt.json").read_text())
        assert tree.get(meta["tensors_file"]) == meta["tensors_sha256"]


@pytest.mark.parametrize("stage", ["train", "locate"])
def test_train_and_locate_on_a_full_disk(ws, tmp_path, stage):
    (tmp_path / "disk").mkdir()
    (tmp_path / "r.yaml").write_text(
        f"name: full\nmodel: {{source: {ws.single}}}\n" +
        ("heads: [[0, 1]]\n" if stage == "train" else "") +
        "data:\n  locate: [{name: builtin, set: arithmetic, split: locate, n: 4}]\n"
        "  train: [{name: builtin, set: arithmetic, split: train, n: 8}]\n"
        "locate: {n_probes: 4, top_k: 1, k_max: 2, knockout_random_sets: 1}\n"
        "train: {steps: 2, batch_size: 2, n_examples: 4, checkpoint_every: 1}\n"
        "output_dir: disk/run\n")
    env = {"HEADSURGEON_CACHE": str(tmp_path / "cache")}
    with disk_budget(tmp_path / "disk", float("inf")) as st:
        res = _invoke([stage, "r.yaml"], tmp_path, env)
    assert res.exit_code == 0, res.stderr
    total, reference = st["written"], _tree(tmp_path / "disk" / "run")
    shutil.rmtree(tmp_path / "disk" / "run")
    # logs hold step timings ("seconds": 0.1 or 0.123), so two runs of the same work
    # write a few bytes more or less: the last budget stops short by more than that and
    # by less than the last file (the delta or heads.json, each > 1 KB)
    for budget in (0, total // 3, (2 * total) // 3, total - 256):
        with disk_budget(tmp_path / "disk", budget):
            res = _invoke([stage, "r.yaml"], tmp_path, env)
        lines = res.stderr.strip().splitlines()
        assert res.exit_code == 1, (budget, res.stderr[-2000:])
        assert lines[-1].startswith("error: ") and lines[-1].endswith(
            ": cannot write: No space left on device"), lines[-1]
        assert "disk/run/" in lines[-1]  # names the file it could not write
        _complete_or_absent(tmp_path / "disk" / "run", reference)
        shutil.rmtree(tmp_path / "disk" / "run", ignore_errors=True)


# ---------------------------------------------------------------- two applies, one output

def test_apply_refuses_while_another_holds_the_output(ws, tmp_path):
    from headsurgeon.apply.locks import lock_target, unlock_target

    base = tmp_path / "base"
    shutil.copytree(ws.single, base)
    rc.make_delta(base, tmp_path / "d.safetensors")
    out = tmp_path / "out"
    args = ["apply", "--base", "base", "--delta", "d.safetensors", "--out", "out"]
    fd = lock_target(out)  # as another apply would hold it
    try:
        res = _invoke(args, tmp_path)
    finally:
        unlock_target(out, fd)
    assert res.exit_code == 1
    assert res.stderr.strip() == (f"error: {out}: another apply is writing this output "
                                  f"(pid {os.getpid()}); wait for it to finish or choose "
                                  "another --out")
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    assert _invoke(args, tmp_path).exit_code == 0  # once it is released


def test_a_holder_that_has_not_written_its_pid_yet_is_named_as_unknown(tmp_path):
    """Between a holder's flock and its pid write, a loser says "pid ?"."""
    import fcntl

    from headsurgeon.apply.locks import lock_target
    from headsurgeon.core.errors import RuntimeFailure

    out = tmp_path / "out"
    fd = os.open(tmp_path / ".out.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # locked, nothing written yet
        with pytest.raises(RuntimeFailure) as ei:
            lock_target(out)
    finally:
        os.close(fd)
    assert str(ei.value) == (f"{out}: another apply is writing this output (pid ?); "
                             "wait for it to finish or choose another --out")


@pytest.fixture(scope="module")
def fork_server():
    server = ForkServer()
    yield server
    server.close()


def _race_setup(ws, tmp_path: Path, force: bool):
    base = tmp_path / "base"
    shutil.copytree(ws.sharded, base)
    rc.make_delta(base, tmp_path / "d.safetensors")
    args = ["apply", "--base", str(base), "--delta", str(tmp_path / "d.safetensors"),
            "--out", "out"] + (["--force"] if force else [])
    return base, args


def _last_line(log: Path) -> str:
    text = log.read_text().strip()
    return text.splitlines()[-1] if text else ""


def _assert_clean_output(tmp_path: Path, base: Path, before: dict) -> None:
    from headsurgeon.apply.inspect import inspect_checkpoint

    rep = inspect_checkpoint(tmp_path / "out")
    assert rep["ok"], rep["problems"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert _tree(base) == before


@pytest.mark.parametrize("force", [False, True])
def test_second_apply_fails_while_the_first_holds_the_output(ws, fork_server, tmp_path, force):
    """The first apply is stopped right after it locked the output (a barrier, no
    timing): the second, started then, fails at once with exit 1 naming the holder, and
    leaves nothing; the first, released, writes an output that verifies."""
    from kill_harness import Pause

    base, args = _race_setup(ws, tmp_path, force)
    before = _tree(base)
    server = fork_server
    pause = Pause("headsurgeon.apply.run:lock_target", tmp_path / "barrier.sock")
    try:
        if force:  # --force replaces an output that is already there
            assert server.wait(server.start(args, tmp_path, tmp_path / "first.log")) == 0
            old = _tree(tmp_path / "out")
        a = server.start(args, tmp_path, tmp_path / "a.log", pause=pause)
        assert pause.reached(a) == a  # a holds the output's lock now
        b = server.start(args, tmp_path, tmp_path / "b.log")
        assert server.wait(b) == 1
        assert _last_line(tmp_path / "b.log") == (
            f"error: {tmp_path / 'out'}: another apply is writing this output (pid {a}); "
            "wait for it to finish or choose another --out")
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [
            ".out.lock"]  # a's lock only: b made no partial of its own
        if force:
            assert _tree(tmp_path / "out") == old  # b did not touch a's target
        else:
            assert not (tmp_path / "out").exists()
        pause.release()
        assert server.wait(a) == 0, (tmp_path / "a.log").read_text()[-2000:]
    finally:
        pause.close()
    _assert_clean_output(tmp_path, base, before)


@pytest.mark.parametrize("force", [False, True])
def test_second_apply_after_the_first_finished(ws, fork_server, tmp_path, force):
    """The other order: the second apply starts once the first has released the lock;
    it finds the output there (exit 2) or, with --force, replaces it (exit 0)."""
    base, args = _race_setup(ws, tmp_path, force)
    before = _tree(base)
    server = fork_server
    assert server.wait(server.start(args, tmp_path, tmp_path / "a.log")) == 0
    first = _tree(tmp_path / "out")
    code = server.wait(server.start(args, tmp_path, tmp_path / "b.log"))
    if force:
        assert code == 0, (tmp_path / "b.log").read_text()[-2000:]
        assert _tree(tmp_path / "out").keys() == first.keys()
    else:
        assert code == 2
        assert _last_line(tmp_path / "b.log") == (
            f"error: {tmp_path / 'out'}: output exists; pass --force to replace it")
        assert _tree(tmp_path / "out") == first
    _assert_clean_output(tmp_path, base, before)
