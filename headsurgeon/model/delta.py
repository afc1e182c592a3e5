"""The delta artifact ``headsurgeon.delta/1``: what train writes and apply reads.

A safetensors file with one float32 tensor per touched slice, keyed
``"{param}@{axis}:{start}:{stop}"`` (axis 0 = rows, 1 = columns; 1-D tensors use axis 0),
holding the ADDITIVE change of that slice. ``__metadata__`` records the base tensors'
hashes so a delta is never merged into a checkpoint it was not made for, the sha256 of
the delta's own tensor bytes (``tensors_sha256``: the data after the header, checked by
:func:`read_delta`, so a flipped byte is never merged), and everything needed to
reproduce and describe the edit. No timestamps: the same inputs give the same bytes.

The merge rule, shared by the trainer's in-memory model and by apply, is
``merged = (base.float() + delta).to(base.dtype)`` on the slice; every other element is
left untouched bit for bit (:func:`merge_slice`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable

import torch

from headsurgeon.core.errors import CheckpointError, ValidationError
from headsurgeon.model.safetensors_io import (HASH_CHUNK, CheckpointIndex, read_checkpoint_index,
                                              read_header, read_tensor, tensor_sha256)
from headsurgeon.model.safetensors_write import save_tensors, tensor_bytes

FORMAT = "headsurgeon.delta/1"
ROLES = ("q", "k", "v", "o", "other")
# metadata fields stored JSON-encoded; every other field is a plain string
JSON_FIELDS = ("base_tensors", "slices", "heads", "touched_heads", "steps", "seed")
STRING_FIELDS = ("format", "base_model", "kv_policy", "objective", "recipe_hash", "recipe",
                 "headsurgeon_version", "tensors_sha256")
_KEY = re.compile(r"^(?P<param>.+)@(?P<axis>[01]):(?P<start>\d+):(?P<stop>\d+)$")


def version() -> str:
    try:
        from headsurgeon import __version__
        return str(__version__)
    except ImportError:  # pragma: no cover - partial checkout
        return "0+unknown"


@dataclass
class DeltaSlice:
    """Rows (axis 0) or columns (axis 1) ``[start, stop)`` of checkpoint tensor ``param``
    and their additive float32 change ``value`` (None until loaded, see read_delta)."""

    param: str
    axis: int
    start: int
    stop: int
    role: str
    heads: list = field(default_factory=list)   # [[layer, head], ...]
    value: torch.Tensor | None = None

    @property
    def key(self) -> str:
        return f"{self.param}@{self.axis}:{self.start}:{self.stop}"

    def index(self, tensor=None) -> tuple:
        """Indexing tuple of the slice (``tensor`` unused; same call as ParamSlice.index)."""
        sl = slice(self.start, self.stop)
        return (sl,) if self.axis == 0 else (slice(None), sl)

    def shape_in(self, base_shape) -> tuple[int, ...]:
        s = list(base_shape)
        s[self.axis] = self.stop - self.start
        return tuple(s)

    def describe(self) -> dict:
        return {"key": self.key, "param": self.param, "axis": self.axis, "start": self.start,
                "stop": self.stop, "role": self.role,
                "heads": [[int(a), int(b)] for a, b in self.heads]}


def merge_slice(base: torch.Tensor, s: DeltaSlice, *, inplace: bool = False) -> torch.Tensor:
    """THE merge rule: ``(base.float() + delta).to(base.dtype)`` on the slice only.

    Returns a new tensor unless ``inplace``; elements outside the slice keep their bits.
    """
    if s.value is None:
        raise ValueError(f"delta slice {s.key} has no value loaded")
    _check_bounds(s, tuple(base.shape), f"merge_slice({s.key})")
    if tuple(s.value.shape) != s.shape_in(base.shape):
        raise ValueError(f"delta slice {s.key} has shape {tuple(s.value.shape)}, "
                         f"expected {s.shape_in(base.shape)}")
    out = base if inplace else base.clone()
    idx = s.index(base)
    region = base[idx]
    merged = (region.to(torch.float32) + s.value.to(device=base.device, dtype=torch.float32))
    out[idx] = merged.to(base.dtype)
    return out


def stored_dtype(tag: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype tag (``"BF16"`` -> ``torch.bfloat16``)."""
    from headsurgeon.model.safetensors_io import TORCH_DTYPE

    return TORCH_DTYPE[tag]


def rounding_report(base_dir: str | os.PathLike, slices: Iterable[DeltaSlice]) -> dict:
    """How many changed delta elements the merge rule rounds away: where the delta is
    not zero but ``merge_slice`` gives back the stored base value (a change smaller than
    half a unit in the last place of the stored dtype). Reported, never silently lost."""
    index = read_checkpoint_index(base_dir)
    changed = erased = 0
    dtypes = set()
    by_param: dict[str, list[DeltaSlice]] = {}
    for s in slices:
        by_param.setdefault(s.param, []).append(s)
    for param, group in sorted(by_param.items()):
        base = read_tensor(index.shard_path(index[param]), param, index.headers[index[param]])
        dtypes.add(str(base.dtype).removeprefix("torch."))
        for s in group:
            region = base[s.index()]  # merged on its own: no copy of the whole tensor
            merged = merge_slice(region, replace(s, start=0, stop=s.stop - s.start))
            moved = s.value.to(torch.float32) != 0
            changed += int(moved.sum())
            erased += int((moved & (merged == region)).sum())
    out = {"stored_dtypes": sorted(dtypes), "delta_elements": changed,
           "erased_by_rounding": erased}
    if erased:
        out["warning"] = (f"{erased} of {changed} changed delta elements are too small to "
                          f"survive rounding to the checkpoint's {'/'.join(sorted(dtypes))}; "
                          "the shipped model keeps the base value there")
    return out


def _check_bounds(s: DeltaSlice, shape: tuple[int, ...], where: str) -> None:
    if s.axis not in (0, 1) or (len(shape) < 2 and s.axis != 0) or len(shape) == 0:
        raise ValueError(f"{where}: axis {s.axis} invalid for a tensor of shape {list(shape)}")
    if not 0 <= s.start < s.stop <= shape[s.axis]:
        raise ValueError(f"{where}: range [{s.start}, {s.stop}) outside dimension "
                         f"{s.axis} of size {shape[s.axis]}")


def _check_slices(slices: Iterable[DeltaSlice], base_tensors: dict, where: str) -> None:
    """Bounds, roles, known params, and no two slices of one param overlapping."""
    by_param: dict[str, list[DeltaSlice]] = {}
    for s in slices:
        if s.param not in base_tensors:
            raise ValueError(f"{where}: slice {s.key} names a tensor missing from base_tensors")
        if s.role not in ROLES:
            raise ValueError(f"{where}: slice {s.key} has role {s.role!r}, not one of {ROLES}")
        _check_bounds(s, tuple(base_tensors[s.param]["shape"]), f"{where}: slice {s.key}")
        by_param.setdefault(s.param, []).append(s)
    for param, group in by_param.items():
        axes = {s.axis for s in group}
        if len(axes) > 1:  # a row range and a column range of one matrix always intersect
            raise ValueError(f"{where}: slices of {param} on both rows and columns overlap")
        group.sort(key=lambda s: s.start)
        for a, b in zip(group, group[1:], strict=False):
            if b.start < a.stop:
                raise ValueError(f"{where}: slices {a.key} and {b.key} overlap")


def _encode_meta(meta: dict) -> dict[str, str]:
    out = {}
    for k, v in meta.items():
        if k in JSON_FIELDS or not isinstance(v, str):
            out[k] = json.dumps(v, sort_keys=True, separators=(",", ":"))
        else:
            out[k] = v
    return dict(sorted(out.items()))


def write_delta(path: str | os.PathLike, slices: list[DeltaSlice], *, base_tensors: dict,
                meta: dict, atomic: bool = True) -> Path:
    """Atomically write a delta. ``base_tensors`` = {param: {"sha256", "dtype", "shape"}}
    for every touched param (see :func:`base_tensor_hashes`); ``meta`` supplies
    base_model, heads, touched_heads, kv_policy, objective, steps, seed, recipe_hash and
    recipe. Tensors and metadata keys are sorted, so equal inputs give equal bytes.
    ``atomic=False`` writes ``path`` in place (a temporary of an atomic group)."""
    path = Path(path)
    where = str(path)
    try:
        _check_slices(slices, base_tensors, where)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    touched = {s.param for s in slices}
    if extra := set(base_tensors) - touched:
        base_tensors = {k: v for k, v in base_tensors.items() if k not in extra}
    tensors = {}
    for s in sorted(slices, key=lambda s: (s.param, s.axis, s.start)):
        if s.value is None:
            raise ValidationError(f"{where}: slice {s.key} has no value")
        v = s.value.detach().to("cpu", torch.float32).contiguous()
        if tuple(v.shape) != s.shape_in(base_tensors[s.param]["shape"]):
            raise ValidationError(f"{where}: slice {s.key} value has shape {tuple(v.shape)}, "
                                  f"expected {s.shape_in(base_tensors[s.param]['shape'])}")
        tensors[s.key] = v
    full = {k: "" for k in STRING_FIELDS}
    full.update({"heads": [], "touched_heads": [], "steps": 0, "seed": 0})
    full.update({k: v for k, v in meta.items() if v is not None})
    full.update({
        "format": FORMAT,
        "headsurgeon_version": meta.get("headsurgeon_version") or version(),
        "base_tensors": {k: {"sha256": v["sha256"], "dtype": v["dtype"],
                             "shape": [int(d) for d in v["shape"]]}
                         for k, v in sorted(base_tensors.items())},
        "slices": [s.describe() for s in sorted(slices,
                                                key=lambda s: (s.param, s.axis, s.start))],
        "tensors_sha256": _tensors_sha256(tensors.values()),
    })
    if not full["base_model"]:
        raise ValidationError(f"{where}: delta metadata needs base_model")
    return save_tensors(path, tensors, _encode_meta(full), atomic=atomic)


def _tensors_sha256(values) -> str:
    """sha256 of the data section the tensors make, in file order (no padding between)."""
    h = hashlib.sha256()
    for v in values:
        h.update(tensor_bytes(v))
    return h.hexdigest()


def data_sha256(path: Path, header) -> tuple[str, str]:
    """(sha256 of the bytes after the header, sha256 of the whole file): one read."""
    data, whole = hashlib.sha256(), hashlib.sha256()
    buf = memoryview(bytearray(HASH_CHUNK))
    with open(path, "rb", buffering=0) as fh:
        pos = 0
        while n := fh.readinto(buf):
            chunk = buf[:n]
            whole.update(chunk)
            skip = max(0, min(n, header.data_start - pos))
            data.update(chunk[skip:])
            pos += n
    return data.hexdigest(), whole.hexdigest()


def is_delta(path: Path) -> bool:
    """A file a train wrote (what train --out may replace): a headsurgeon delta header."""
    from headsurgeon.core.paths import kind_of

    if kind_of(path) != "file":
        return False
    try:
        return (read_header(path).metadata or {}).get("format") == FORMAT
    except (CheckpointError, OSError):
        return False


@dataclass
class Delta:
    path: Path
    meta: dict                       # decoded metadata (JSON fields parsed)
    base_tensors: dict               # {param: {"sha256", "dtype", "shape"}}
    slices: list[DeltaSlice]         # sorted by (param, axis, start)

    @property
    def params(self) -> list[str]:
        return sorted(self.base_tensors)

    @property
    def heads(self) -> list:
        return self.meta.get("heads", [])

    @property
    def touched_heads(self) -> list:
        return self.meta.get("touched_heads", [])

    def slices_for(self, param: str) -> list[DeltaSlice]:
        return [s for s in self.slices if s.param == param]

    def load_values(self, param: str | None = None) -> list[DeltaSlice]:
        """Read the float32 values of ``param``'s slices (all slices when None)."""
        header = read_header(self.path)
        todo = self.slices if param is None else self.slices_for(param)
        for s in todo:
            if s.value is None:
                s.value = read_tensor(self.path, s.key, header)
        return todo

    def verify_bytes(self) -> str:
        """Check the tensor bytes against ``tensors_sha256``; returns the file's sha256."""
        header = read_header(self.path)
        data, whole = data_sha256(self.path, header)
        if data != self.meta.get("tensors_sha256"):
            raise CheckpointError(f"not a valid {FORMAT} delta: its tensor bytes do not match "
                                  "their sha256 (the file is corrupt)", file=str(self.path),
                                  field="tensors_sha256")
        return whole

    def verify_against(self, base_dir: str | os.PathLike,
                       index: CheckpointIndex | None = None) -> CheckpointIndex:
        """Raise CheckpointError unless every recorded base tensor exists in ``base_dir``
        with the same dtype, shape and raw-bytes sha256. Returns the parsed index."""
        index = index or read_checkpoint_index(base_dir)
        for param, rec in sorted(self.base_tensors.items()):
            def bad(what: str, param=param) -> CheckpointError:
                return CheckpointError(f"delta was made for another base: tensor {param} "
                                       f"{what}", file=str(self.path))
            if param not in index:
                raise bad(f"not in {index.root}")
            info = index.info(param)
            if info.dtype != rec["dtype"] or list(info.shape) != list(rec["shape"]):
                raise bad(f"is {info.dtype} {list(info.shape)} in the base, the delta "
                          f"recorded {rec['dtype']} {list(rec['shape'])}")
            shard = index.shard_path(index[param])
            if tensor_sha256(shard, param, index.headers[index[param]]) != rec["sha256"]:
                raise bad("hash mismatch")
        return index


def read_delta(path: str | os.PathLike, *, load_values: bool = True) -> Delta:
    """Read and validate a delta (never unpickles: safetensors + JSON only)."""
    path = Path(path)
    header = read_header(path)

    def bad(msg: str, fld: str | None = None) -> CheckpointError:
        return CheckpointError(f"not a valid {FORMAT} delta: {msg}", file=str(path), field=fld)

    raw = header.metadata or {}
    if raw.get("format") != FORMAT:
        raise bad(f"format is {raw.get('format')!r}", "format")
    meta: dict = {}
    for k, v in raw.items():
        if k in JSON_FIELDS:
            try:
                meta[k] = json.loads(v)
            except (ValueError, RecursionError):
                raise bad("not valid JSON", k) from None
        else:
            meta[k] = v
    base_tensors, slice_recs = meta.get("base_tensors"), meta.get("slices")
    if not isinstance(base_tensors, dict) or not all(
            isinstance(r, dict) and isinstance(r.get("sha256"), str) and isinstance(
                r.get("dtype"), str) and isinstance(r.get("shape"), list) and all(
                type(d) is int and d >= 0 for d in r["shape"])
            for r in base_tensors.values()):
        raise bad("needs {param: {sha256, dtype, shape}}", "base_tensors")
    if not isinstance(slice_recs, list) or not all(isinstance(r, dict) for r in slice_recs):
        raise bad("must be a list of objects", "slices")
    slices = []
    for rec in slice_recs:
        try:
            s = DeltaSlice(str(rec["param"]), int(rec["axis"]), int(rec["start"]),
                           int(rec["stop"]), str(rec["role"]),
                           [[int(a), int(b)] for a, b in rec.get("heads", [])])
        except (KeyError, TypeError, ValueError):
            raise bad(f"malformed entry {json.dumps(rec)[:200]}", "slices") from None
        if rec.get("key") != s.key:
            raise bad(f"entry key {rec.get('key')!r} does not match {s.key!r}", "slices")
        slices.append(s)
    keys = {s.key for s in slices}
    if len(keys) != len(slices):
        raise bad("duplicate slice keys", "slices")
    if set(header.tensors) != keys:
        odd = sorted(set(header.tensors) ^ keys)[:3]
        raise bad(f"tensors and slices metadata disagree on {odd}")
    try:
        _check_slices(slices, base_tensors, "slices")
    except ValueError as exc:
        raise bad(str(exc)) from None
    for s in slices:
        info = header.tensors[s.key]
        m = _KEY.match(s.key)
        if m is None:
            raise bad(f"bad tensor key {s.key!r}")
        if info.dtype != "F32" or info.shape != s.shape_in(base_tensors[s.param]["shape"]):
            raise bad(f"tensor {s.key} is {info.dtype} {list(info.shape)}, expected F32 "
                      f"{list(s.shape_in(base_tensors[s.param]['shape']))}")
    slices.sort(key=lambda s: (s.param, s.axis, s.start))
    if not re.fullmatch(r"[0-9a-f]{64}", str(meta.get("tensors_sha256", ""))):
        raise bad("no sha256 of its tensor bytes (written before deltas carried one: train "
                  "again)", "tensors_sha256")
    delta = Delta(path, meta, base_tensors, slices)
    delta.verify_bytes()
    if load_values:
        delta.load_values()
    return delta


def base_tensor_hashes(base_dir: str | os.PathLike, params: Iterable[str]) -> dict:
    """``{param: {"sha256", "dtype", "shape"}}`` of the raw stored tensors in ``base_dir``."""
    index = read_checkpoint_index(base_dir)
    out = {}
    for p in sorted(set(params)):
        if p not in index:
            raise CheckpointError(f"no tensor {p!r} in the checkpoint", file=str(base_dir))
        info = index.info(p)
        out[p] = {"sha256": tensor_sha256(index.shard_path(index[p]), p, index.headers[index[p]]),
                  "dtype": info.dtype, "shape": list(info.shape)}
    return out
