"""The headsurgeon.delta/1 artifact: round trip, determinism, validation, base binding."""
import json
import shutil

import pytest
import torch

from headsurgeon.model.delta import (FORMAT, DeltaSlice, base_tensor_hashes, merge_slice, read_delta,
                               write_delta)
from headsurgeon.core.errors import CheckpointError, ValidationError
from headsurgeon.model.safetensors_io import (read_checkpoint_index, read_header)
from headsurgeon.model.safetensors_write import (save_tensors)
from headsurgeon.model.tiny import build_tiny

Q1 = "model.layers.1.self_attn.q_proj.weight"
O1 = "model.layers.1.self_attn.o_proj.weight"
K1 = "model.layers.1.self_attn.k_proj.weight"
NORM = "model.layers.1.input_layernorm.weight"
META = {"base_model": "tiny/llama", "heads": [[1, 2]], "touched_heads": [[1, 2], [1, 3]],
        "kv_policy": "group", "objective": "ce", "steps": 7, "seed": 3, "recipe_hash": "abc",
        "recipe": "model: tiny\ntrain:\n  steps: 7\n"}


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("delta_bases")
    return (build_tiny("llama", root / "a", dtype=torch.bfloat16),
            build_tiny("llama", root / "b", dtype=torch.bfloat16, seed=1))


def _slices(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [DeltaSlice(Q1, 0, 16, 24, "q", [[1, 2]], torch.randn(8, 32, generator=g)),
            DeltaSlice(O1, 1, 16, 24, "o", [[1, 2]], torch.randn(32, 8, generator=g)),
            DeltaSlice(K1, 0, 8, 16, "k", [[1, 2], [1, 3]], torch.randn(8, 32, generator=g)),
            DeltaSlice(NORM, 0, 0, 4, "other", [], torch.randn(4, generator=g))]


def _write(path, base, slices=None):
    slices = _slices() if slices is None else slices
    bt = base_tensor_hashes(base, [s.param for s in slices])
    return write_delta(path, slices, base_tensors=bt, meta=META)


def test_round_trip(tmp_path, bases):
    p = _write(tmp_path / "d.safetensors", bases[0])
    d = read_delta(p)
    assert d.meta["format"] == FORMAT and d.meta["steps"] == 7 and d.meta["seed"] == 3
    assert d.meta["recipe"] == META["recipe"] and d.heads == [[1, 2]]
    assert d.touched_heads == [[1, 2], [1, 3]]
    assert d.params == sorted([Q1, O1, K1, NORM])
    assert d.base_tensors[Q1]["dtype"] == "BF16" and d.base_tensors[Q1]["shape"] == [32, 32]
    want = {s.key: s for s in _slices()}
    assert {s.key for s in d.slices} == set(want)
    for s in d.slices:
        w = want[s.key]
        assert (s.param, s.axis, s.start, s.stop, s.role, s.heads) == \
            (w.param, w.axis, w.start, w.stop, w.role, w.heads)
        assert s.value.dtype == torch.float32 and torch.equal(s.value, w.value)
    h = read_header(p)
    assert all(i.dtype == "F32" for i in h.tensors.values())
    assert "time" not in json.dumps(h.metadata).lower()
    lazy = read_delta(p, load_values=False)
    assert all(s.value is None for s in lazy.slices)
    assert torch.equal(lazy.load_values(Q1)[0].value, want[f"{Q1}@0:16:24"].value)


def test_deterministic_bytes(tmp_path, bases):
    a = _write(tmp_path / "a.safetensors", bases[0])
    b = _write(tmp_path / "b.safetensors", bases[0], list(reversed(_slices())))
    assert a.read_bytes() == b.read_bytes()
    c = _write(tmp_path / "c.safetensors", bases[0], _slices(seed=1))
    assert c.read_bytes() != a.read_bytes()


@pytest.mark.parametrize("bad", [
    [DeltaSlice(Q1, 0, 0, 8, "q", [], torch.zeros(8, 32)),
     DeltaSlice(Q1, 0, 4, 12, "q", [], torch.zeros(8, 32))],
    [DeltaSlice(Q1, 0, 0, 8, "q", [], torch.zeros(8, 32)),
     DeltaSlice(Q1, 1, 24, 32, "q", [], torch.zeros(32, 8))],
    [DeltaSlice(Q1, 0, 30, 34, "q", [], torch.zeros(4, 32))],
    [DeltaSlice(NORM, 1, 0, 4, "other", [], torch.zeros(4))],
    [DeltaSlice(Q1, 0, 0, 8, "x", [], torch.zeros(8, 32))],
    [DeltaSlice(Q1, 0, 0, 8, "q", [], torch.zeros(8, 31))],
], ids=["overlap", "rows_and_cols", "out_of_bounds", "axis1_on_1d", "role", "shape"])
def test_invalid_slices_rejected(tmp_path, bases, bad):
    bt = base_tensor_hashes(bases[0], [Q1, NORM])
    with pytest.raises(ValidationError):
        write_delta(tmp_path / "d.safetensors", bad, base_tensors=bt, meta=META)
    assert not list(tmp_path.iterdir())


def test_read_rejects_tampered_or_foreign_files(tmp_path, bases):
    p = _write(tmp_path / "d.safetensors", bases[0])
    h = read_header(p)
    from headsurgeon.model.safetensors_io import read_tensor
    tensors = {n: read_tensor(p, n, h) for n in h.tensors}
    for name, meta in [("fmt", {**h.metadata, "format": "other/1"}),
                       ("slices", {**h.metadata, "slices": "[]"}),
                       ("json", {**h.metadata, "base_tensors": "{nope"})]:
        save_tensors(tmp_path / f"{name}.safetensors", tensors, meta)
        with pytest.raises(CheckpointError, match="not a valid headsurgeon.delta/1") as ei:
            read_delta(tmp_path / f"{name}.safetensors")
        assert "\n" not in str(ei.value)
    # overlapping slices in a hand-made (otherwise consistent) file are rejected on read
    recs = [{"key": f"{Q1}@0:{a}:{b}", "param": Q1, "axis": 0, "start": a, "stop": b,
             "role": "q", "heads": []} for a, b in ((0, 8), (4, 12))]
    save_tensors(tmp_path / "ov.safetensors", {r["key"]: torch.zeros(8, 32) for r in recs},
                 {**h.metadata, "slices": json.dumps(recs)})
    with pytest.raises(CheckpointError, match="overlap"):
        read_delta(tmp_path / "ov.safetensors")


def test_verify_against(tmp_path, bases):
    base, other = bases
    p = _write(tmp_path / "d.safetensors", base)
    d = read_delta(p)
    idx = d.verify_against(base)
    assert set(idx) >= set(d.params)
    with pytest.raises(CheckpointError, match="delta was made for another base: tensor "
                       ".* hash mismatch") as ei:
        d.verify_against(other)
    assert str(p) in str(ei.value) and "\n" not in str(ei.value)
    # flip one byte of one touched tensor in a copy of the base
    edited = tmp_path / "edited"
    shutil.copytree(base, edited)
    idx = read_checkpoint_index(edited)
    info, h = idx.info(O1), idx.headers[idx[O1]]
    with open(edited / idx[O1], "r+b") as fh:
        fh.seek(h.data_start + info.begin + 10)
        b = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([b[0] ^ 1]))
    with pytest.raises(CheckpointError, match=f"tensor {O1} hash mismatch"):
        d.verify_against(edited)
    # a base of another shape/dtype
    f32 = build_tiny("llama", tmp_path / "f32")
    with pytest.raises(CheckpointError, match="is F32 .* recorded BF16"):
        d.verify_against(f32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_merge_rule(dtype):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(16, 12, generator=g).to(dtype)
    s = DeltaSlice("w", 1, 4, 8, "o", [], torch.randn(16, 4, generator=g) * 0.01)
    out = merge_slice(base, s)
    assert out is not base and out.dtype == dtype
    want = (base[:, 4:8].to(torch.float32) + s.value).to(dtype)
    assert torch.equal(out[:, 4:8], want)
    bits = {torch.float32: torch.int32}.get(dtype, torch.int16)
    keep = torch.ones_like(base, dtype=torch.bool)
    keep[:, 4:8] = False
    assert torch.equal(out.view(bits)[keep], base.view(bits)[keep])
    again = base.clone()
    assert merge_slice(again, s, inplace=True) is again and torch.equal(again, out)
    with pytest.raises(ValueError):
        merge_slice(base, DeltaSlice("w", 0, 10, 20, "q", [], torch.zeros(10, 12)))
