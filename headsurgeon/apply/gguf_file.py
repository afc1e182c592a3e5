"""What every GGUF headsurgeon writes shares: the mark that says headsurgeon wrote it (so
``--force`` replaces only its own files) and the verified atomic write (a temporary file
beside the output, checked before the rename, never left behind)."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable

from headsurgeon.core.atomic import _umask, fsync_dir
from headsurgeon.core.errors import RuntimeFailure
from headsurgeon.core.paths import check_replace, kind_of, make_parent

MARK_KEY = "headsurgeon.format"


def has_mark(path: Path, mark: str) -> bool:
    """A regular GGUF file whose ``headsurgeon.format`` key is ``mark``."""
    if kind_of(path) != "file":
        return False
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != b"GGUF":
                return False
        from gguf import GGUFReader

        field = GGUFReader(path).fields.get(MARK_KEY)
        return field is not None and field.contents() == mark
    except Exception:  # noqa: BLE001 - unreadable: not ours
        return False


def write_verified(out: Path, *, force: bool, mark: str, what: str,
                   write: Callable[[Path], None], verify: Callable[[Path], None]) -> None:
    """``write(tmp)`` then ``verify(tmp)`` (raises on a short or unreadable file), then
    rename onto ``out`` if it is still absent or still one of ours."""
    make_parent(out)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        verify(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; this is an ordinary file
        check_replace(out, force=force, ours=lambda p: has_mark(p, mark), what=what)
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except OSError as exc:
        raise RuntimeFailure(f"cannot write: {exc.strerror or exc}", file=str(out)) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
