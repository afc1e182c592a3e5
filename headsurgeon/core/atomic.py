"""Atomic file and directory writes: a reader sees nothing or the complete result.

Files are written to a temporary name in the same directory, fsynced, then renamed
over the target; directories are built in a temporary sibling and renamed into place.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from headsurgeon.core.errors import RuntimeFailure, ValidationError


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data) -> None:
    """``os.write`` until every byte is written: the one low-level write of our outputs."""
    view = memoryview(data).cast("B")
    while len(view):
        n = os.write(fd, view)
        view = view[n:]


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def _disk_error(path: Path, exc: OSError) -> RuntimeFailure:
    return RuntimeFailure(f"cannot write: {exc.strerror or exc}", file=str(path))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are ordinary files
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _disk_error(path, exc) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj, **kw) -> Path:
    kw.setdefault("indent", 2)
    kw.setdefault("sort_keys", False)
    return atomic_write_text(path, json.dumps(obj, **kw) + "\n")


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; on success rename it into place.

    An existing ``target`` is refused unless ``force``; with ``force`` it is replaced only
    after the new directory is complete. On any failure the temporary directory is removed
    and ``target`` is left as it was.
    """
    target = Path(target).absolute()
    if (target.exists() or target.is_symlink()) and not force:
        raise ValidationError("output exists; pass --force to replace it", file=str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield tmp
        for root, _dirs, files in os.walk(tmp):
            for name in files:
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(tmp)
        if target.exists() or target.is_symlink():
            if not force:  # appeared while we were writing: never replace it unasked
                raise ValidationError("output appeared while it was being written; pass "
                                      "--force to replace it", file=str(target))
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            if old.is_symlink():  # a link is replaced, never followed
                old.unlink()
            else:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        fsync_dir(target.parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _disk_error(target, exc) from exc
    except RuntimeFailure as exc:  # a write inside tmp: name the output, not the temporary
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.file and Path(exc.file).is_relative_to(tmp):
            raise RuntimeFailure(exc.detail, file=str(target)) from exc
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
