"""The hand-rolled safetensors reader/writer: interop, validation before allocation."""
import hashlib
import json
import struct
import tracemalloc

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from headsurgeon.model import safetensors_io as sio

from headsurgeon.model import safetensors_write as siw
from headsurgeon.core.errors import CheckpointError


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "b.weight": torch.randn(3, 5, generator=g).to(torch.bfloat16),
        "a.weight": torch.randn(4, 2, generator=g),
        "c.half": torch.randn(7, generator=g).to(torch.float16),
        "d.ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "e.mask": torch.tensor([True, False, True]),
        "f.empty": torch.zeros(0, 4),
        "g.scalar": torch.tensor(3.5),
    }


def _raw(path, header_obj, data: bytes):
    raw = json.dumps(header_obj).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_reads_what_safetensors_writes(tmp_path):
    ts = _tensors()
    save_file(ts, tmp_path / "x.safetensors", metadata={"format": "pt", "k": "v"})
    h = sio.read_header(tmp_path / "x.safetensors")
    assert h.metadata == {"format": "pt", "k": "v"}
    assert set(h.tensors) == set(ts)
    for name, t in sio.iter_tensors(tmp_path / "x.safetensors"):
        assert t.dtype == ts[name].dtype and torch.equal(t, ts[name]), name
        raw = ts[name].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        assert sio.tensor_sha256(tmp_path / "x.safetensors", name) == \
            hashlib.sha256(raw).hexdigest()


def test_writer_output_reads_in_safetensors_and_keeps_order(tmp_path):
    ts = _tensors()
    p = siw.save_tensors(tmp_path / "y.safetensors", ts, {"m": "1"})
    h = sio.read_header(p)
    assert list(h.tensors) == list(ts)  # data order = given order
    assert (8 + h.header_len) % 8 == 0
    with safe_open(str(p), "pt") as f:
        assert f.metadata() == {"m": "1"}
        for name in ts:
            assert torch.equal(f.get_tensor(name), ts[name])
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.parametrize("writeback", [False, True])
def test_raw_header_rewrite_is_byte_identical(tmp_path, monkeypatch, writeback):
    save_file(_tensors(), tmp_path / "x.safetensors", metadata={"format": "pt"})
    src = tmp_path / "x.safetensors"
    h = sio.read_header(src)
    started = []
    real = siw.start_writeback
    monkeypatch.setattr(siw, "start_writeback", lambda fd, off, n: (started.append((off, n)),
                                                                     real(fd, off, n)))
    with open(src, "rb") as fin, siw.SafetensorsWriter(tmp_path / "z.safetensors",
                                                       raw_header=h.raw,
                                                       writeback=writeback) as w:
        for name, info in h.tensors.items():
            if name == "b.weight":
                w.write(name, sio.read_tensor(src, name, h))
            else:
                w.copy_from(name, fin.fileno(), h.data_start + info.begin)
    assert (tmp_path / "z.safetensors").read_bytes() == src.read_bytes()
    if writeback:  # every data byte's writeback was started, exactly once
        assert sorted(started) == sorted((h.data_start + i.begin, i.nbytes)
                                         for i in h.tensors.values() if i.nbytes)
    else:
        assert started == []


def test_writer_refuses_bytes_off_their_offsets(tmp_path, monkeypatch):
    """A copy that lands short is caught where it happens, before anything is hashed."""
    save_file(_tensors(), tmp_path / "x.safetensors")
    src = tmp_path / "x.safetensors"
    h = sio.read_header(src)
    real = siw.copy_range
    monkeypatch.setattr(siw, "copy_range", lambda s, d, off, n, **k: real(s, d, off, n - 1, **k))
    with pytest.raises(CheckpointError, match="ends at byte") as ei:
        with open(src, "rb") as fin, siw.SafetensorsWriter(tmp_path / "z.safetensors",
                                                           raw_header=h.raw,
                                                           atomic=True) as w:
            for name, info in h.tensors.items():
                w.copy_from(name, fin.fileno(), h.data_start + info.begin)
    assert "\n" not in str(ei.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]


def test_writer_enforces_order_shape_and_completeness(tmp_path):
    entries = [("a", "F32", (2,)), ("b", "BF16", (3,))]
    w = siw.SafetensorsWriter(tmp_path / "w.safetensors", entries, atomic=True)
    with pytest.raises(ValueError, match="expected tensor 'a'"):
        w.write("b", torch.zeros(3, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="header says"):
        w.write("a", torch.zeros(3))
    w.write("a", torch.zeros(2))
    with pytest.raises(ValueError, match="only 1 of 2"):
        w.close()
    assert list(tmp_path.iterdir()) == []  # atomic: nothing left on failure


def _assert_bad(path, match):
    with pytest.raises(CheckpointError, match=match) as ei:
        sio.read_header(path)
    assert "\n" not in str(ei.value) and str(path) in str(ei.value)


def test_corrupt_headers_rejected(tmp_path):
    ok = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}
    data = bytes(12)
    (tmp_path / "short").write_bytes(b"\x01\x00")
    _assert_bad(tmp_path / "short", "too short")
    (tmp_path / "len").write_bytes(struct.pack("<Q", 10**9) + b"{}")
    _assert_bad(tmp_path / "len", "exceeds the file size")
    (tmp_path / "json").write_bytes(struct.pack("<Q", 5) + b"{nope")
    _assert_bad(tmp_path / "json", "invalid JSON")
    _assert_bad(_raw(tmp_path / "dtype", {"a": {**ok["a"], "dtype": "F128"}}, bytes(8)),
                "unknown dtype")
    _assert_bad(_raw(tmp_path / "past", ok, bytes(10)), "outside")  # truncated data
    _assert_bad(_raw(tmp_path / "lie", {**ok, "b": {**ok["b"], "data_offsets": [8, 16]}},
                     bytes(16)), "span 8 bytes but .* needs 4")
    _assert_bad(_raw(tmp_path / "overlap", {"a": ok["a"], "b": {**ok["b"],
                "data_offsets": [4, 8]}, "c": {"dtype": "F32", "shape": [1],
                "data_offsets": [8, 12]}}, data), "overlap")
    _assert_bad(_raw(tmp_path / "gap", {"a": ok["a"], "b": {**ok["b"],
                "data_offsets": [12, 16]}}, bytes(16)), "gap")
    _assert_bad(_raw(tmp_path / "tail", ok, bytes(20)), "cover 12 of the 20")
    _assert_bad(_raw(tmp_path / "shape", {"a": {**ok["a"], "shape": [-2]}}, bytes(8)),
                "non-negative")
    (tmp_path / "dup").write_bytes(
        struct.pack("<Q", 2 * len(json.dumps(ok["a"])) + 17) + b"{\"a\": " +
        json.dumps(ok["a"]).encode() + b", \"a\": " + json.dumps(ok["a"]).encode() + b"}"
        + bytes(8))
    _assert_bad(tmp_path / "dup", "duplicate")


def test_absurd_element_count_raises_without_allocating(tmp_path, monkeypatch):
    path = _raw(tmp_path / "huge", {"w": {"dtype": "BF16", "shape": [10**6, 10**6],
                                          "data_offsets": [0, 2 * 10**12]}}, bytes(64))
    calls = []
    real_empty = torch.empty
    monkeypatch.setattr(sio.torch, "empty", lambda *a, **k: calls.append(a) or real_empty(*a, **k))
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="10000000000000 elements|1000000000000 el"):
            sio.read_header(path)
        with pytest.raises(CheckpointError):
            sio.read_tensor(path, "w")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20 and calls == []


def _sharded(tmp_path):
    ts = _tensors()
    names = list(ts)
    save_file({n: ts[n] for n in names[:3]}, tmp_path / "s1.safetensors")
    save_file({n: ts[n] for n in names[3:]}, tmp_path / "s2.safetensors")
    wmap = {n: "s1.safetensors" if i < 3 else "s2.safetensors" for i, n in enumerate(names)}
    (tmp_path / sio.INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": 1},
                                                       "weight_map": wmap}))
    return wmap


def test_checkpoint_index_single_and_sharded(tmp_path):
    wmap = _sharded(tmp_path)
    idx = sio.read_checkpoint_index(tmp_path)
    assert dict(idx) == wmap and idx.sharded and idx.shards == ["s1.safetensors",
                                                                 "s2.safetensors"]
    assert idx.total_size() == sum(t.numel() * t.element_size() for t in _tensors().values())
    single = tmp_path / "single"
    single.mkdir()
    save_file(_tensors(), single / "model.safetensors")
    idx = sio.read_checkpoint_index(single)
    assert not idx.sharded and set(idx.values()) == {"model.safetensors"}


@pytest.mark.parametrize("case", ["missing_shard", "absent_tensor", "dup_key", "dup_tensor",
                                  "both", "nothing", "escape"])
def test_checkpoint_index_errors(tmp_path, case):
    wmap = _sharded(tmp_path)
    index = tmp_path / sio.INDEX_FILE
    if case == "missing_shard":
        (tmp_path / "s2.safetensors").unlink()
        match = "s2.safetensors: missing shard"
    elif case == "absent_tensor":
        wmap["ghost.weight"] = "s1.safetensors"
        index.write_text(json.dumps({"weight_map": wmap}))
        match = "ghost.weight"
    elif case == "dup_key":
        index.write_text('{"weight_map": {"a.weight": "s1.safetensors", '
                         '"a.weight": "s2.safetensors"}}')
        match = "duplicate key"
    elif case == "dup_tensor":
        save_file({"a.weight": torch.zeros(4, 2)}, tmp_path / "s2.safetensors")
        wmap = {"a.weight": "s1.safetensors", "b.weight": "s1.safetensors"}
        index.write_text(json.dumps({"weight_map": {**wmap, "x": "s2.safetensors"}}))
        match = "duplicate tensor 'a.weight'"
    elif case == "both":
        save_file({"a": torch.zeros(1)}, tmp_path / "model.safetensors")
        match = "both"
    elif case == "nothing":
        index.unlink()
        match = "no model.safetensors"
    else:
        index.write_text(json.dumps({"weight_map": {"a.weight": "../s1.safetensors"}}))
        match = "not inside"
    with pytest.raises(CheckpointError, match=match) as ei:
        sio.read_checkpoint_index(tmp_path)
    assert "\n" not in str(ei.value)
