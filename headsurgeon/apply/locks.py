"""Locks of an apply: one writer per output directory, and stale partial outputs.

A partial output ``OUT.partial-<pid>-<n>`` carries a lock file; a killed apply leaves its
partial unlocked, so the next apply removes it. The target itself is locked for the
whole merge, so two applies to one output never replace each other's result.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path

from headsurgeon.core.errors import RuntimeFailure

def _lock_path(partial: Path) -> Path:
    return partial.with_name(partial.name + ".lock")


def take_lock(partial: Path) -> int:
    """flock a sibling ``<partial>.lock`` for as long as this process lives or builds."""
    fd = os.open(_lock_path(partial), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{os.getpid()}\n".encode())
    except BaseException:  # e.g. disk full: leave no lock file that outlives us
        release_lock(partial, fd)
        raise
    return fd


def release_lock(partial: Path, fd: int) -> None:
    with contextlib.suppress(OSError):
        os.unlink(_lock_path(partial))
    os.close(fd)


def clean_stale_partials(out: Path) -> list[Path]:
    """Remove ``.<out.name>.*.partial`` siblings whose owner is provably dead: their
    ``.lock`` sibling exists and can be flocked (the kernel drops an flock when its holder
    dies, even by SIGKILL). Partials without a lock file are left alone."""
    removed = []
    out = Path(out)
    if not out.parent.is_dir():
        return removed
    for lock in sorted(out.parent.glob(f".{out.name}.*.partial.lock")):
        partial = lock.with_name(lock.name[:-len(".lock")])
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # its owner is alive
        try:
            if partial.is_dir():
                shutil.rmtree(partial, ignore_errors=True)
                removed.append(partial)
            with contextlib.suppress(OSError):
                os.unlink(lock)
        finally:
            os.close(fd)
    return removed


def _target_lock_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.lock")


def lock_target(out: Path) -> int:
    """flock ``.<out>.lock`` for the whole apply, so a second apply to the same ``out``
    fails at once (RuntimeFailure) instead of racing the final rename. The lock file is
    unlinked on release; a holder re-checks after locking that the path still names the
    file it locked, so an unlink between its open and its flock cannot give two holders."""
    path = _target_lock_path(out)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RuntimeFailure(f"another apply is writing this output (pid {holder}); "
                                 "wait for it to finish or choose another --out",
                                 file=str(out)) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            with contextlib.suppress(OSError):  # the pid is for the message only
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)


def unlock_target(out: Path, fd: int) -> None:
    with contextlib.suppress(OSError):
        os.unlink(_target_lock_path(out))
    os.close(fd)


# ---------------------------------------------------------------- building
