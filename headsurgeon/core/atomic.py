"""Atomic file and directory writes: a reader sees nothing or the complete result.

Files are written to a temporary name in the same directory, fsynced, read back (size
and bytes) and only then renamed over the target; files that belong together are renamed
together or not at all (:func:`atomic_files`); directories are built in a temporary
sibling and swapped into place. What may be replaced, and where, is
:mod:`headsurgeon.core.paths`'s one policy.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from headsurgeon.core.errors import RuntimeFailure, ValidationError
from headsurgeon.core.paths import check_replace, is_plain_dir, make_parent, refuse_special


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


def _read_back(fd: int, data, path: Path) -> None:
    """The verified part of every write: the file holds exactly ``data`` (its size, then
    its bytes read back), checked before the rename that publishes it."""
    size = os.fstat(fd).st_size
    if size != len(data):
        raise RuntimeFailure(f"cannot write: {size} of {len(data)} bytes written (disk "
                             "full?)", file=str(path))
    view, pos = memoryview(data).cast("B"), 0
    while pos < size:
        chunk = os.pread(fd, min(1 << 22, size - pos), pos)
        if not chunk or chunk != view[pos:pos + len(chunk)]:
            raise RuntimeFailure("cannot write: the file read back differs from what was "
                                 "written", file=str(path))
        pos += len(chunk)


class AtomicFiles:
    """Files written together: each to a temporary beside its target, verified, and
    renamed into place only when every one of them is complete (in the order added, so the
    last is the one readers look for). A failure before that leaves none of them."""

    def __init__(self):
        self._pending: list[tuple[Path, Path]] = []  # (temporary, target)

    def temp(self, target: str | os.PathLike) -> Path:
        """A temporary name beside ``target`` for a writer that verifies its own file."""
        target = Path(target)
        refuse_special(target)
        make_parent(target)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                   dir=target.parent)
        os.close(fd)
        self._pending.append((Path(tmp), target))
        return Path(tmp)

    def write_bytes(self, target: str | os.PathLike, data: bytes) -> Path:
        tmp = self.temp(target)
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_TRUNC)
            try:
                os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are ordinary
                write_all(fd, data)
                os.fsync(fd)
                _read_back(fd, data, Path(target))
            finally:
                os.close(fd)
        except OSError as exc:
            raise _disk_error(Path(target), exc) from exc
        return Path(target)

    def commit(self) -> None:
        dirs = set()
        while self._pending:
            tmp, target = self._pending[0]
            refuse_special(target)  # again: it may have appeared while we wrote
            try:
                os.replace(tmp, target)
            except OSError as exc:
                raise _disk_error(target, exc) from exc
            self._pending.pop(0)
            dirs.add(target.parent)
        for d in sorted(dirs):
            fsync_dir(d)

    def discard(self) -> None:
        for tmp, _ in self._pending:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self._pending.clear()


@contextlib.contextmanager
def atomic_files() -> Iterator[AtomicFiles]:
    """``with atomic_files() as group: group.write_bytes(a, ...); ...``: all or nothing."""
    group = AtomicFiles()
    try:
        yield group
        group.commit()
    except RuntimeFailure as exc:  # a writer of a temporary: name the output instead
        targets = {str(tmp): target for tmp, target in group._pending}
        if exc.file in targets:
            raise RuntimeFailure(exc.detail, file=str(targets[exc.file])) from exc
        raise
    finally:
        group.discard()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_files() as group:
        group.write_bytes(path, data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj, **kw) -> Path:
    kw.setdefault("indent", 2)
    kw.setdefault("sort_keys", False)
    return atomic_write_text(path, json.dumps(obj, **kw) + "\n")


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` in one step (renameat2 RENAME_EXCHANGE); False where the
    system or file system cannot, so the caller falls back to two renames."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                   ctypes.c_uint]
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _replace_directory(tmp: Path, target: Path) -> None:
    """Put the complete ``tmp`` where ``target`` (a directory) is, then remove the old one;
    nothing named after the old one is left behind."""
    if _exchange(tmp, target):  # tmp now holds the old output
        shutil.rmtree(tmp)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except OSError:
        os.replace(old, target)  # put it back: the old output, as it was
        raise
    shutil.rmtree(old)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, *, force: bool = False,
                     ours: Callable[[Path], bool] = is_plain_dir,
                     what: str = "an output directory") -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; on success rename it into place.

    An existing ``target`` is refused unless ``force`` and ``ours(target)`` (see
    :func:`headsurgeon.core.paths.check_replace`); it is replaced only after the new
    directory is complete. On any failure the temporary directory is removed and
    ``target`` is left as it was.
    """
    target = Path(target).absolute()
    check_replace(target, force=force, ours=ours, what=what)
    make_parent(target)
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
            check_replace(target, force=force, ours=ours, what=what)
            _replace_directory(tmp, target)
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
