"""Hand-rolled safetensors reading and writing: the one place that touches the format.

Why not ``safetensors.safe_open``: we need to validate a header completely *before*
allocating anything (a hostile header can claim 10^12 elements), hash tensors as stored,
copy untouched byte ranges without decoding them, and write a file tensor by tensor so
peak memory is one tensor rather than one shard.

Layout: ``u64 little-endian N | N bytes of JSON header | data``; header entries are
``name -> {"dtype", "shape", "data_offsets": [begin, end]}`` relative to the data start,
plus an optional ``"__metadata__": {str: str}``. The data must be exactly covered by the
tensors, without gaps or overlaps.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from .atomic import fsync_dir, write_all
from .errors import CheckpointError, RuntimeFailure

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the limit the reference implementation enforces
CHUNK = 8 * 1024 * 1024
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# dtype tag -> (itemsize, torch dtype name); dtypes this torch lacks are dropped below.
_DTYPES = {"BOOL": (1, "bool"), "U8": (1, "uint8"), "I8": (1, "int8"), "I16": (2, "int16"),
           "U16": (2, "uint16"), "I32": (4, "int32"), "U32": (4, "uint32"),
           "I64": (8, "int64"), "U64": (8, "uint64"), "F16": (2, "float16"),
           "BF16": (2, "bfloat16"), "F32": (4, "float32"), "F64": (8, "float64"),
           "F8_E4M3": (1, "float8_e4m3fn"), "F8_E5M2": (1, "float8_e5m2"),
           "F8_E8M0": (1, "float8_e8m0fnu"), "C64": (8, "complex64")}
ITEMSIZE = {k: size for k, (size, tname) in _DTYPES.items() if hasattr(torch, tname)}
TORCH_DTYPE = {k: getattr(torch, tname) for k, (_s, tname) in _DTYPES.items()
               if hasattr(torch, tname)}
DTYPE_TAG = {v: k for k, v in TORCH_DTYPE.items()}


def dtype_tag(dtype: torch.dtype) -> str:
    if dtype not in DTYPE_TAG:
        raise CheckpointError(f"dtype {dtype} cannot be stored in safetensors")
    return DTYPE_TAG[dtype]


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str             # safetensors tag: "F32", "BF16", ...
    shape: tuple[int, ...]
    begin: int             # offsets relative to the start of the data section
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def torch_dtype(self) -> torch.dtype:
        return TORCH_DTYPE[self.dtype]


@dataclass
class Header:
    path: Path
    header_len: int
    file_size: int
    tensors: dict[str, TensorInfo]        # in data (offset) order
    metadata: dict[str, str] | None
    raw: bytes = field(repr=False)        # the JSON header bytes exactly as stored

    @property
    def data_start(self) -> int:
        return 8 + self.header_len

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise CheckpointError(f"no tensor {name!r} in file", file=str(self.path)) from None


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def read_header(path: str | os.PathLike) -> Header:
    """Parse and fully validate the header of ``path``; nothing is allocated per tensor."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < 8:
                raise _bad(path, f"file is {size} bytes, too short for a header")
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > min(size - 8, MAX_HEADER_BYTES):
                raise _bad(path, f"header length {n} exceeds the file size {size}"
                           if n > size - 8 else f"header length {n} over {MAX_HEADER_BYTES}")
            raw = fh.read(n)
    except (FileNotFoundError, IsADirectoryError):
        raise CheckpointError("no such safetensors file", file=str(path)) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read: {exc.strerror or exc}", file=str(path)) from exc
    if len(raw) != n:
        raise _bad(path, "file truncated inside the header")
    return parse_header(raw, path, size - 8 - n)


def _bad(path: Path, msg: str) -> CheckpointError:
    return CheckpointError(f"corrupt safetensors header: {msg}", file=str(path))


def parse_header(raw: bytes, path: Path, data_size: int | None) -> Header:
    """Validate header bytes against a data section of ``data_size`` bytes (None: the
    size the header itself implies, for a file about to be written)."""
    try:
        obj = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad(path, f"invalid JSON ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(obj, dict):
        raise _bad(path, "header is not a JSON object")
    metadata = obj.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(v, str) for v in metadata.values())):
        raise _bad(path, "__metadata__ must map strings to strings")
    if data_size is None:
        data_size = max((e["data_offsets"][1] for e in obj.values()), default=0)
    infos = []
    for name, entry in obj.items():
        def bad(msg: str, name=name) -> CheckpointError:
            return _bad(path, f"tensor {name!r}: {msg}")
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
            raise bad("needs dtype, shape and data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in ITEMSIZE:
            raise bad(f"unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise bad("shape must be a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_int, offsets))):
            raise bad("data_offsets must be two integers")
        begin, end = offsets
        count = math.prod(shape)  # Python ints: no overflow, and nothing is allocated
        nbytes = count * ITEMSIZE[dtype]
        if nbytes > data_size:
            raise bad(f"shape {shape} claims {count} elements, more than the {data_size} "
                      "data bytes hold")
        if not 0 <= begin <= end <= data_size:
            raise bad(f"data_offsets {offsets} outside the {data_size} data bytes")
        if end - begin != nbytes:
            raise bad(f"data_offsets span {end - begin} bytes but shape {shape} x {dtype} "
                      f"needs {nbytes}")
        infos.append(TensorInfo(name, dtype, tuple(shape), begin, end))
    infos.sort(key=lambda t: (t.begin, t.end))
    pos = 0
    for t in infos:
        if t.begin != pos:
            raise _bad(path, f"tensor {t.name!r}: data_offsets {[t.begin, t.end]} " + (
                "overlap the previous tensor" if t.begin < pos else f"leave a gap after {pos}"))
        pos = t.end
    if pos != data_size:
        raise _bad(path, f"tensors cover {pos} of the {data_size} data bytes")
    return Header(path, len(raw), 8 + len(raw) + data_size, {t.name: t for t in infos},
                  metadata, raw)


# ---------------------------------------------------------------- reading

def read_tensor(path: str | os.PathLike, name: str, header: Header | None = None
                ) -> torch.Tensor:
    """Read tensor ``name`` (one seek + one read into a fresh buffer of its size)."""
    header = header or read_header(path)
    info = header.info(name)
    buf = torch.empty(info.nbytes, dtype=torch.uint8)
    with open(path, "rb") as fh:
        fh.seek(header.data_start + info.begin)
        got = fh.readinto(memoryview(buf.numpy())) if info.nbytes else 0
    if got != info.nbytes:
        raise CheckpointError(f"tensor {name!r}: file truncated (changed while reading?)",
                              file=str(path))
    return buf.view(info.torch_dtype).reshape(info.shape)


def iter_tensors(path: str | os.PathLike, header: Header | None = None
                 ) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` in stored order, one tensor in memory at a time."""
    header = header or read_header(path)
    for name in header.tensors:
        yield name, read_tensor(path, name, header)


HASH_CHUNK = 1024 * 1024


def _sha256_of(fh, left: int | None):
    """Hash ``left`` bytes (None: to EOF) from the position of the unbuffered ``fh``,
    reading into one reused buffer (a fresh 8 MB ``bytes`` per read cost a quarter of the
    time in page faults). Returns the hash and the number of bytes missing."""
    h = hashlib.sha256()
    buf = memoryview(bytearray(HASH_CHUNK))
    while left is None or left:
        n = fh.readinto(buf if left is None else buf[:min(HASH_CHUNK, left)])
        if not n:
            break
        h.update(buf[:n])
        if left is not None:
            left -= n
    return h, left or 0


def tensor_sha256(path: str | os.PathLike, name: str, header: Header | None = None) -> str:
    """sha256 hex of the raw bytes of ``name`` as stored (streamed, never decoded)."""
    header = header or read_header(path)
    info = header.info(name)
    with open(path, "rb", buffering=0) as fh:
        fh.seek(header.data_start + info.begin)
        h, missing = _sha256_of(fh, info.nbytes)
    if missing:
        raise CheckpointError(f"tensor {name!r}: file truncated", file=str(path))
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    with open(path, "rb", buffering=0) as fh:
        return _sha256_of(fh, None)[0].hexdigest()


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of ``t`` (no copy when already contiguous on CPU)."""
    t = t.detach().cpu().contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy())


# ---------------------------------------------------------------- copying / writing

WRITEBACK_CHUNK = 64 * 1024 * 1024
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
               writeback: bool = False) -> None:
    """Copy ``length`` bytes at ``offset`` of ``src_fd`` to the current position of
    ``dst_fd`` inside the kernel (copy_file_range, falling back to read/write). With
    ``writeback``, disk writeback of each copied chunk is started as the copy goes on."""
    left = length
    dst_pos = os.lseek(dst_fd, 0, os.SEEK_CUR) if writeback else 0
    step = WRITEBACK_CHUNK if writeback else 1 << 30
    if hasattr(os, "copy_file_range"):
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
    while left:
        chunk = os.pread(src_fd, min(CHUNK, left), offset)
        if not chunk:
            raise CheckpointError("source file truncated while copying")
        _write_all(dst_fd, chunk)
        offset += len(chunk)
        left -= len(chunk)


def copy_file(src: str | os.PathLike, dst: str | os.PathLike, *,
              writeback: bool = False) -> None:
    """Byte-for-byte copy of a whole file (kernel-side where possible)."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        copy_range(fin.fileno(), fout.fileno(), 0, os.fstat(fin.fileno()).st_size,
                   writeback=writeback)


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
    :meth:`close` only (written beside it, fsynced, renamed); with ``writeback`` disk
    writeback starts as tensors are written (see :func:`start_writeback`)."""

    def __init__(self, path: str | os.PathLike,
                 entries: list[tuple[str, str, tuple[int, ...]]] | None = None,
                 metadata: Mapping[str, str] | None = None, *, raw_header: bytes | None = None,
                 atomic: bool = False, writeback: bool = False):
        self.path = Path(path)
        self._writeback = writeback
        if raw_header is None:
            raw_header = build_header(entries or [], metadata)
        self._header = parse_header(raw_header, self.path, None)
        self._order = list(self._header.tensors.values())
        self._next = 0
        self._atomic = atomic
        self._tmp = (self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
                     if atomic else self.path)
        self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(self._fd, struct.pack("<Q", len(raw_header)) + raw_header)
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
        _write_all(self._fd, data)
        self._done(info)
        if self._writeback:
            start_writeback(self._fd, self._header.data_start + info.begin, info.nbytes)
        return hashlib.sha256(data).hexdigest() if sha256 else None

    def copy_from(self, name: str, src_fd: int, offset: int) -> None:
        """Write the next tensor by copying its raw bytes from ``src_fd`` at ``offset``."""
        info = self._expect(name)
        copy_range(src_fd, self._fd, offset, info.nbytes, writeback=self._writeback)
        self._done(info)

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
            os.close(self._fd)
            self._fd = -1
            if self._atomic:
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

class CheckpointIndex(dict):
    """tensor name -> shard file (relative to ``root``), with every shard header parsed."""

    def __init__(self, root: Path, weight_map: dict[str, str], headers: dict[str, Header],
                 index_file: str | None, index_metadata: dict | None):
        super().__init__(weight_map)
        self.root, self.headers = root, headers
        self.index_file, self.index_metadata = index_file, index_metadata

    weight_map = property(lambda self: dict(self))
    shards = property(lambda self: list(self.headers))
    sharded = property(lambda self: self.index_file is not None)

    def info(self, name: str) -> TensorInfo:
        if name not in self:
            raise CheckpointError(f"no tensor {name!r} in the checkpoint", file=str(self.root))
        return self.headers[self[name]].tensors[name]

    def shard_path(self, shard: str) -> Path:
        return self.root / shard

    def total_size(self) -> int:
        return sum(self.info(n).nbytes for n in self)


def read_checkpoint_index(directory: str | os.PathLike) -> CheckpointIndex:
    """Locate and validate the safetensors weights of an HF directory (single file or
    ``model.safetensors.index.json`` + shards); every shard header is validated."""
    root = Path(directory)
    single, index = root / SINGLE_FILE, root / INDEX_FILE
    if single.is_file() and index.is_file():
        raise CheckpointError(f"both {SINGLE_FILE} and {INDEX_FILE} exist; remove the stale "
                              "one", file=str(root))
    if single.is_file():
        header = read_header(single)
        return CheckpointIndex(root, {n: SINGLE_FILE for n in header.tensors},
                               {SINGLE_FILE: header}, None, None)
    if not index.is_file():
        raise CheckpointError(f"no {SINGLE_FILE} or {INDEX_FILE}", file=str(root))
    try:
        obj = json.loads(index.read_text("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"invalid JSON ({str(exc).splitlines()[0][:120]})",
                              file=str(index)) from None
    wmap = obj.get("weight_map") if isinstance(obj, dict) else None
    if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
        raise CheckpointError("weight_map must map tensor names to shard files",
                              file=str(index), field="weight_map")
    meta = obj.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise CheckpointError("metadata must be an object", file=str(index), field="metadata")
    headers: dict[str, Header] = {}
    for shard in dict.fromkeys(sorted(wmap.values())):
        if os.path.isabs(shard) or ".." in Path(shard).parts or not shard.strip():
            raise CheckpointError(f"shard path {shard!r} is not inside the checkpoint",
                                  file=str(index), field="weight_map")
        if not (root / shard).is_file():
            raise CheckpointError(f"missing shard file named by {INDEX_FILE}",
                                  file=str(root / shard))
        headers[shard] = read_header(root / shard)
    owner: dict[str, str] = {}
    for shard, header in headers.items():
        for name in header.tensors:
            if name in owner:
                raise CheckpointError(f"duplicate tensor {name!r} (also in {owner[name]})",
                                      file=str(root / shard))
            owner[name] = shard
    for name, shard in wmap.items():
        if name not in headers[shard].tensors:
            raise CheckpointError(f"index names tensor {name!r}, absent from shard {shard}",
                                  file=str(index), field="weight_map")
    return CheckpointIndex(root, dict(wmap), headers, INDEX_FILE, meta)
