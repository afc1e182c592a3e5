"""Writing safetensors files tensor by tensor, and copying untouched byte ranges.

The writer knows every tensor's offset from the header it wrote first, so peak memory is
one tensor, and it checks each write's position and the final size before fsync.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import torch

from headsurgeon.core.atomic import fsync_dir, write_all
from headsurgeon.core.paths import make_parent, refuse_special
from headsurgeon.core.errors import CheckpointError, RuntimeFailure
from headsurgeon.model.safetensors_io import (ITEMSIZE, TensorInfo, dtype_tag,
                                              parse_header)


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of ``t`` (no copy when already contiguous on CPU)."""
    t = t.detach().cpu().contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy())


# ---------------------------------------------------------------- copying / writing

WRITEBACK_CHUNK = 64 * 1024 * 1024
COPY_CHUNK = 1024 * 1024  # user-space copies (hashed as they go): one small buffer each
_SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _sync_file_range():
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux/glibc: writeback starts at fsync
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``fd``'s dirty bytes ``[offset, offset+length)``
    to disk without waiting (sync_file_range WRITE). Only a head start for a later
    fsync, which alone makes data durable; a no-op where unavailable."""
    fn = _sync_file_range()
    if fn is not None and length > 0:
        fn(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # errors: fsync reports them


def copy_range(src_fd: int, dst_fd: int, offset: int, length: int, *,
               writeback: bool = False, sha=None) -> None:
    """Copy ``length`` bytes at ``offset`` of ``src_fd`` to the current position of
    ``dst_fd`` inside the kernel (copy_file_range, falling back to read/write). With
    ``writeback``, disk writeback of each copied chunk is started as the copy goes on.
    With ``sha`` (a hashlib object) the bytes pass through user space once and are
    hashed as they are written: the hash of what was written, with no second pass."""
    left = length
    dst_pos = os.lseek(dst_fd, 0, os.SEEK_CUR) if writeback else 0
    step = WRITEBACK_CHUNK if writeback else 1 << 30
    if hasattr(os, "copy_file_range") and sha is None:
        try:
            while left:
                n = os.copy_file_range(src_fd, dst_fd, min(left, step), offset)
                if n == 0:
                    raise CheckpointError("source file truncated while copying")
                if writeback:
                    start_writeback(dst_fd, dst_pos, n)
                    dst_pos += n
                offset += n
                left -= n
            return
        except OSError as exc:
            if exc.errno not in (18, 22, 38, 95):  # EXDEV, EINVAL, ENOSYS, EOPNOTSUPP
                raise
    buf = memoryview(bytearray(min(COPY_CHUNK, max(left, 1))))
    while left:
        n = os.preadv(src_fd, [buf[:min(len(buf), left)]], offset)
        if not n:
            raise CheckpointError("source file truncated while copying")
        chunk = buf[:n]
        if sha is not None:
            sha.update(chunk)
        _write_all(dst_fd, chunk)
        if writeback:
            start_writeback(dst_fd, dst_pos, n)
            dst_pos += n
        offset += n
        left -= n


def copy_file(src: str | os.PathLike, dst: str | os.PathLike, *,
              writeback: bool = False, sha256: bool = False) -> str | None:
    """Byte-for-byte copy of a whole file (kernel-side where possible); with ``sha256``
    returns the hash of the bytes written, taken as they are copied."""
    sha = hashlib.sha256() if sha256 else None
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        copy_range(fin.fileno(), fout.fileno(), 0, size, writeback=writeback, sha=sha)
        written = os.fstat(fout.fileno()).st_size
    if written != size:
        raise RuntimeFailure(f"cannot write: {written} of {size} bytes copied", file=str(dst))
    return sha.hexdigest() if sha is not None else None


def _write_all(fd: int, data) -> None:
    write_all(fd, data)


def build_header(entries: list[tuple[str, str, tuple[int, ...]]],
                 metadata: Mapping[str, str] | None = None) -> bytes:
    """JSON header bytes (padded to 8) for tensors laid out in ``entries`` order."""
    obj: dict = {}
    if metadata is not None:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ValueError("safetensors __metadata__ must map str to str")
        obj["__metadata__"] = dict(metadata)
    pos = 0
    for name, dtype, shape in entries:
        if name in obj or name == "__metadata__":
            raise ValueError(f"duplicate tensor name {name!r}")
        n = math.prod(shape) * ITEMSIZE[dtype]
        obj[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + n]}
        pos += n
    raw = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return raw + b" " * (-len(raw) % 8)


class SafetensorsWriter:
    """Write a safetensors file tensor by tensor: header first, then each tensor in the
    declared order. ``raw_header`` reuses an existing file's header bytes verbatim (same
    names, order, metadata); with ``atomic`` the file appears under ``path`` on
    :meth:`close` only (written beside it, fsynced, checked, renamed); with ``writeback``
    disk writeback starts as tensors are written (see :func:`start_writeback`); with
    ``sha256`` every byte written is hashed as it goes (:attr:`sha256` after close).
    :meth:`close` checks what was written before it is renamed into place: the size the
    header declares and the header read back from the file."""

    def __init__(self, path: str | os.PathLike,
                 entries: list[tuple[str, str, tuple[int, ...]]] | None = None,
                 metadata: Mapping[str, str] | None = None, *, raw_header: bytes | None = None,
                 atomic: bool = False, writeback: bool = False, sha256: bool = False):
        self.path = Path(path)
        self._sha = hashlib.sha256() if sha256 else None
        self.sha256: str | None = None
        self._writeback = writeback
        if raw_header is None:
            raw_header = build_header(entries or [], metadata)
        self._header = parse_header(raw_header, self.path, None)
        self._order = list(self._header.tensors.values())
        self._next = 0
        self._atomic = atomic
        self._tmp = (self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
                     if atomic else self.path)
        if atomic:
            refuse_special(self.path)
            make_parent(self.path)
        self._fd = os.open(self._tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self._prefix = struct.pack("<Q", len(raw_header)) + raw_header
        try:
            self._hash(self._prefix)
            _write_all(self._fd, self._prefix)
        except BaseException:
            self.abort()
            raise

    def _expect(self, name: str) -> TensorInfo:
        if self._next >= len(self._order):
            raise ValueError(f"{self.path}: unexpected tensor {name!r}: all tensors written")
        info = self._order[self._next]
        if info.name != name:
            raise ValueError(f"{self.path}: expected tensor {info.name!r} next, got {name!r}")
        return info

    def write(self, name: str, tensor: torch.Tensor, *, sha256: bool = False) -> str | None:
        """Write the next tensor; returns the sha256 of its bytes when asked."""
        info = self._expect(name)
        if tuple(tensor.shape) != info.shape or tensor.dtype != info.torch_dtype:
            raise ValueError(f"{self.path}: tensor {name!r} is {tensor.dtype} "
                             f"{tuple(tensor.shape)}, header says {info.dtype} {info.shape}")
        data = tensor_bytes(tensor)
        self._hash(data)
        _write_all(self._fd, data)
        self._done(info)
        if self._writeback:
            start_writeback(self._fd, self._header.data_start + info.begin, info.nbytes)
        return hashlib.sha256(data).hexdigest() if sha256 else None

    def copy_from(self, name: str, src_fd: int, offset: int) -> None:
        """Write the next tensor by copying its raw bytes from ``src_fd`` at ``offset``."""
        info = self._expect(name)
        copy_range(src_fd, self._fd, offset, info.nbytes, writeback=self._writeback,
                   sha=self._sha)
        self._done(info)

    def _hash(self, data) -> None:
        if self._sha is not None:
            self._sha.update(data)

    def _done(self, info: TensorInfo) -> None:
        """Check that ``info``'s bytes ended exactly where the header puts its end: what
        was written (and hashed) is at the declared offsets."""
        pos = os.lseek(self._fd, 0, os.SEEK_CUR)
        if pos != self._header.data_start + info.end:
            raise CheckpointError(f"tensor {info.name!r} ends at byte {pos}, header says "
                                  f"{self._header.data_start + info.end}", file=str(self.path))
        self._next += 1

    def close(self) -> Path:
        try:
            if self._next != len(self._order):
                raise ValueError(f"{self.path}: only {self._next} of {len(self._order)} "
                                 "tensors written")
            if os.fstat(self._fd).st_size != self._header.file_size:
                raise CheckpointError(f"{os.fstat(self._fd).st_size} bytes written, header "
                                      f"says {self._header.file_size}", file=str(self.path))
            os.fsync(self._fd)
            if os.pread(self._fd, len(self._prefix), 0) != self._prefix:
                raise RuntimeFailure("cannot write: the header read back differs from the "
                                     "one written", file=str(self.path))
            os.close(self._fd)
            if self._sha is not None:
                self.sha256 = self._sha.hexdigest()
            self._fd = -1
            if self._atomic:
                refuse_special(self.path)
                os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        if self._atomic:
            with contextlib.suppress(OSError):
                fsync_dir(self.path.parent)
        return self.path

    def abort(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)

    def __enter__(self) -> "SafetensorsWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close() if exc_type is None else self.abort()


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, str] | None = None, *, atomic: bool = True) -> Path:
    """Write ``tensors`` in the given order (callers sort for deterministic bytes)."""
    entries = [(k, dtype_tag(t.dtype), tuple(t.shape)) for k, t in tensors.items()]
    try:
        with SafetensorsWriter(path, entries, metadata, atomic=atomic) as w:
            for k, t in tensors.items():
                w.write(k, t)
    except OSError as exc:  # disk full, permissions: the writer removed its partial file
        raise RuntimeFailure(f"cannot write: {exc.strerror or exc}", file=str(path)) from exc
    return Path(path)


# ---------------------------------------------------------------- checkpoints
