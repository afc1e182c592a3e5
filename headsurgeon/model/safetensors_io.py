"""Hand-rolled safetensors reading (writing: ``safetensors_write``): the one place that
touches the format.

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

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from headsurgeon.core.errors import CheckpointError

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
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # deep nesting too
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
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
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
