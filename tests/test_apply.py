"""apply_delta: streaming merge into tiny real checkpoints, atomicity, refusals."""
import errno
import fcntl
import filecmp
import json
import os
import shutil
import struct

import pytest
import torch

from headsurgeon.model import safetensors_io as sio

from headsurgeon.model import safetensors_write as siw
from headsurgeon.apply.locks import clean_stale_partials
from headsurgeon.apply.run import apply_delta
from headsurgeon.model.delta import DeltaSlice, base_tensor_hashes, merge_slice, write_delta
from headsurgeon.core.errors import CheckpointError, RuntimeFailure, ValidationError
from headsurgeon.model.heads import HeadMap
from headsurgeon.apply.inspect import format_inspect, inspect_checkpoint
from headsurgeon.model.tiny import build_tiny

RECIPE = "# a recipe\nmodel: tiny-llama\nheads: [[1, 2], [2, 0]]\ntrain:\n  steps: 5  # ```\n"
HEADS = [(1, 2), (2, 0)]


def make_delta(base, path, heads=HEADS, *, seed=0, scale=0.05, kv="group"):
    """A random delta over every slice of ``heads`` (HeadMap geometry) + a norm vector."""
    idx = sio.read_checkpoint_index(base)
    cfg = json.loads((base / "config.json").read_text())
    hm = HeadMap.from_config(cfg, param_names=list(idx))
    g = torch.Generator().manual_seed(seed)
    slices = []
    for ps in hm.slices_for(heads, kv=kv):
        owners = [list(h) for h in heads if any(o[:2] == h for o in
                                                hm.owners(ps.param, ps.axis, ps.start))]
        shape = list(idx.info(ps.param).shape)
        shape[ps.axis] = ps.stop - ps.start
        slices.append(DeltaSlice(ps.param, ps.axis, ps.start, ps.stop, ps.role, owners,
                                 torch.randn(*shape, generator=g) * scale))
    norm = "model.layers.0.input_layernorm.weight"
    slices.append(DeltaSlice(norm, 0, 4, 12, "other", [], torch.randn(8, generator=g)))
    bt = base_tensor_hashes(base, [s.param for s in slices])
    write_delta(path, slices, base_tensors=bt, meta={
        "base_model": "tiny/llama", "heads": [list(h) for h in heads],
        "touched_heads": [[1, 2], [1, 3], [2, 0], [2, 1]], "kv_policy": kv,
        "objective": "contrast", "steps": 5, "seed": seed, "recipe_hash": "f00",
        "recipe": RECIPE})
    return path, slices


def _hashes(d):
    return {p.name: sio.file_sha256(p) for p in sorted(d.iterdir()) if p.is_file()}


def _no_leftovers(out):
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*")), list(out.parent.iterdir())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    made = {}
    for dtype in (torch.float32, torch.bfloat16):
        for shard in ("20KB", None):
            name = f"{str(dtype)[6:]}-{'sharded' if shard else 'single'}"
            made[name] = build_tiny("llama", root / name, dtype=dtype, max_shard_size=shard)
    return made


@pytest.mark.parametrize("variant", ["float32-sharded", "float32-single",
                                     "bfloat16-sharded", "bfloat16-single"])
def test_apply_matches_in_memory_merge(tmp_path, tiny, variant):
    from transformers import AutoModelForCausalLM

    base = tiny[variant]
    before = _hashes(base)
    delta, slices = make_delta(base, tmp_path / "d.safetensors")
    out = tmp_path / "out"
    res = apply_delta(base, delta, out, recipe_text=RECIPE, metrics={"flip_rate": 0.25},
                      progress=False)
    assert _hashes(base) == before  # base untouched

    # logits: the shipped checkpoint == the base with merge_slice applied in memory
    ref = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        for s in slices:
            p = ref.get_parameter(s.param)
            p.copy_(merge_slice(p.data, s))
    got = AutoModelForCausalLM.from_pretrained(out)
    assert got.dtype == ref.dtype
    ids = torch.tensor([[1, 5, 9, 77, 200, 3, 42]])
    with torch.no_grad():
        assert torch.equal(got(ids).logits, ref(ids).logits)
    assert not torch.equal(got(ids).logits, AutoModelForCausalLM.from_pretrained(base)(ids).logits)

    # files: untouched shards byte-identical, touched ones differ only inside the slices
    bidx, oidx = sio.read_checkpoint_index(base), sio.read_checkpoint_index(out)
    touched = {s.param for s in slices}
    assert set(res["rewritten"]) == {bidx[p] for p in touched}
    for shard in bidx.shards:
        same = filecmp.cmp(base / shard, out / shard, shallow=False)
        assert same == (shard not in res["rewritten"]), shard
        assert sio.read_header(out / shard).raw == bidx.headers[shard].raw
    for name in bidx:
        a = sio.read_tensor(base / bidx[name], name)
        b = sio.read_tensor(out / oidx[name], name)
        bits = {4: torch.int32, 2: torch.int16}[a.element_size()]
        diff = a.view(bits) != b.view(bits)
        inside = torch.zeros_like(diff)
        for s in slices:
            if s.param == name:
                inside[s.index(a)] = True
        assert not (diff & ~inside).any(), name
        assert diff.any() == (name in touched), name
    if bidx.sharded:
        bi = json.loads((base / sio.INDEX_FILE).read_text())
        oi = json.loads((out / sio.INDEX_FILE).read_text())
        assert oi["weight_map"] == bi["weight_map"]
        assert oi["metadata"] == bi["metadata"]  # total_size recomputed, same value
    else:
        assert not (out / sio.INDEX_FILE).exists()
    for f in ("config.json", "generation_config.json", "tokenizer.json",
              "tokenizer_config.json", "chat_template.jinja"):
        assert filecmp.cmp(base / f, out / f, shallow=False), f

    # card, recipe, manifest, inspect
    card = (out / "README.md").read_text()
    assert card.startswith("---\nbase_model: tiny/llama\ntags:\n- headsurgeon\n- sycophancy\n")
    assert RECIPE in card and "````yaml\n" + RECIPE + "````" in card
    assert "| layer | head | selected | roles | params touched |" in card
    assert "| 1 | 2 | yes | q, k, v, o |" in card and "| 1 | 3 | sibling |" in card
    assert "flip_rate" in card and "0.25" in card
    assert (out / "headsurgeon-recipe.yaml").read_text() == RECIPE
    man = json.loads((out / "headsurgeon.json").read_text())
    assert "recipe" not in man["delta"] and man["delta"]["heads"] == [[1, 2], [2, 0]]
    assert set(man["touched"]) == touched
    assert set(man["files"]) == set(bidx.shards)
    rep = inspect_checkpoint(out)
    assert rep["ok"], rep["problems"]
    rep = inspect_checkpoint(out, against=base)
    assert rep["ok"] and rep["outside_slices"] == 0, format_inspect(rep)
    assert rep["n_compared"] == len(bidx) and rep["n_identical"] == len(bidx) - len(touched)
    by_t = {r["tensor"]: r for r in rep["differing"]}
    assert {tuple(h) for h in by_t["model.layers.1.self_attn.q_proj.weight"]["heads"]} == \
        {(1, 2, "q")}
    assert {tuple(h) for h in by_t["model.layers.2.self_attn.o_proj.weight"]["heads"]} == \
        {(2, 0, "o")}
    assert {tuple(h[:2]) for h in by_t["model.layers.1.self_attn.k_proj.weight"]["heads"]} \
        == {(1, 2), (1, 3)}
    assert "outside_slices: 0" in format_inspect(rep)
    assert os.stat(out).st_mode & 0o777 == 0o777 & ~_umask()


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_inspect_detects_edits_outside_slices_and_tampering(tmp_path, tiny):
    base = tiny["float32-sharded"]
    delta, _ = make_delta(base, tmp_path / "d.safetensors")
    out = tmp_path / "out"
    apply_delta(base, delta, out, progress=False)
    idx = sio.read_checkpoint_index(out)
    name = "model.layers.2.self_attn.o_proj.weight"  # o cols 0:8 edited; flip col 20
    info, h = idx.info(name), idx.headers[idx[name]]
    with open(out / idx[name], "r+b") as fh:
        fh.seek(h.data_start + info.begin + 4 * 20)
        fh.write(struct.pack("<f", 123.0))
    rep = inspect_checkpoint(out, against=base)
    assert not rep["ok"] and rep["outside_slices"] == 1
    assert not inspect_checkpoint(out)["ok"]


def test_existing_output_refused_then_forced(tmp_path, tiny):
    base = tiny["bfloat16-sharded"]
    delta, _ = make_delta(base, tmp_path / "d.safetensors")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValidationError, match="output exists") as ei:
        apply_delta(base, delta, out, progress=False)
    assert ei.value.exit_code == 2 and "\n" not in str(ei.value)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    # --force replaces only what an apply wrote: a directory of the user's is kept
    with pytest.raises(ValidationError, match="not a model directory written by headsurgeon"):
        apply_delta(base, delta, out, force=True, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (out / "keep.txt").unlink()
    out.rmdir()
    apply_delta(base, delta, out, progress=False)
    (out / "stale.txt").write_text("from the first apply")
    apply_delta(base, delta, out, force=True, progress=False)  # its own output: replaced
    assert not (out / "stale.txt").exists() and inspect_checkpoint(out)["ok"]
    assert not list(tmp_path.glob(".out.*"))


def test_output_inside_or_around_base_refused(tmp_path, tiny):
    base = tmp_path / "base"
    shutil.copytree(tiny["float32-single"], base)
    delta, _ = make_delta(base, tmp_path / "d.safetensors")
    before = _hashes(base)
    for out in (base, base / "merged", base / "a" / "b"):
        with pytest.raises(ValidationError, match="inside"):
            apply_delta(base, delta, out, force=True, progress=False)
    with pytest.raises(ValidationError, match="contains the base"):
        apply_delta(base, delta, tmp_path, force=True, progress=False)
    assert _hashes(base) == before and sorted(os.listdir(base)) == sorted(before)


def _rewrite_header(path, mutate):
    h = sio.read_header(path)
    data = path.read_bytes()[h.data_start:]
    obj = json.loads(h.raw)
    mutate(obj)
    raw = json.dumps(obj).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _multi_tensor_shard(base):
    idx = sio.read_checkpoint_index(base)
    shard = next(s for s in idx.shards if len(idx.headers[s].tensors) >= 2)
    return base / shard, list(idx.headers[shard].tensors)


BAD = ["missing_shard", "absent_tensor", "truncated", "corrupt_header", "lying_offsets",
       "overlapping_offsets", "huge_shape", "other_model", "edited_tensor", "pickle_only",
       "enospc_copy", "enospc_rewrite", "bad_delta"]


@pytest.mark.parametrize("case", BAD)
def test_bad_inputs_leave_nothing(tmp_path, tiny, case, monkeypatch):
    base = tmp_path / "base"
    shutil.copytree(tiny["float32-sharded"], base)
    delta, _ = make_delta(base, tmp_path / "d.safetensors")
    shard, names = _multi_tensor_shard(base)
    idx_path = base / sio.INDEX_FILE
    want = CheckpointError
    if case == "missing_shard":
        shard.unlink()
    elif case == "absent_tensor":
        obj = json.loads(idx_path.read_text())
        obj["weight_map"]["model.ghost.weight"] = shard.name
        idx_path.write_text(json.dumps(obj))
    elif case == "truncated":
        os.truncate(shard, shard.stat().st_size - 100)
    elif case == "corrupt_header":
        with open(shard, "r+b") as fh:
            fh.seek(9)
            fh.write(b"\xff garbage")
    elif case == "lying_offsets":
        _rewrite_header(shard, lambda o: o[names[0]]["data_offsets"].__setitem__(
            1, o[names[0]]["data_offsets"][1] - 4))
    elif case == "overlapping_offsets":
        def ov(o):
            o[names[1]]["data_offsets"] = list(o[names[0]]["data_offsets"])
            o[names[1]]["shape"] = list(o[names[0]]["shape"])
        _rewrite_header(shard, ov)
    elif case == "huge_shape":
        _rewrite_header(shard, lambda o: o[names[0]].update(shape=[10**6, 10**6]))
    elif case == "other_model":
        other = build_tiny("llama", tmp_path / "other", seed=7)
        delta, _ = make_delta(other, tmp_path / "d2.safetensors")
    elif case == "edited_tensor":
        idx = sio.read_checkpoint_index(base)
        name = "model.layers.1.self_attn.q_proj.weight"
        h, info = idx.headers[idx[name]], idx.info(name)
        with open(base / idx[name], "r+b") as fh:
            fh.seek(h.data_start + info.begin)
            fh.write(b"\0\0\0\0")
    elif case == "pickle_only":
        for p in base.glob("*.safetensors*"):
            p.unlink()
        (base / "pytorch_model.bin").write_bytes(b"not even a pickle")
        want = ValidationError
    elif case.startswith("enospc"):
        real = siw._write_all if case == "enospc_rewrite" else siw.copy_range
        calls = []

        def full(*a, **k):
            calls.append(1)
            if len(calls) > 1:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(*a, **k)
        monkeypatch.setattr(siw, "_write_all" if case == "enospc_rewrite" else "copy_range",
                            full)
        want = RuntimeFailure
    elif case == "bad_delta":
        with open(delta, "r+b") as fh:
            fh.seek(20)
            fh.write(b"{{{{")
    before = _hashes(base)
    out = tmp_path / "out"
    with pytest.raises(want) as ei:
        apply_delta(base, delta, out, progress=False)
    msg = str(ei.value)
    assert "\n" not in msg and ei.value.exit_code == (1 if want is RuntimeFailure else 2)
    if case in ("other_model", "edited_tensor"):
        assert "delta was made for another base" in msg and "hash mismatch" in msg
    if case.startswith("enospc"):
        assert "No space left on device" in msg
    if case == "huge_shape":
        assert "1000000000000 elements" in msg
    _no_leftovers(out)
    assert _hashes(base) == before


def test_pickle_base_with_allow_pickle(tmp_path, tiny, monkeypatch):
    """A .bin-only base is converted (weights_only) by models.resolve_model, then merged."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("HEADSURGEON_CACHE", str(tmp_path / "cache"))
    src = tiny["float32-single"]
    base = tmp_path / "pickled"
    base.mkdir()
    torch.save(AutoModelForCausalLM.from_pretrained(src).state_dict(),
               base / "pytorch_model.bin")
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f, base / f)
    delta, _ = make_delta(src, tmp_path / "d.safetensors")
    with pytest.raises(ValidationError, match="allow_pickle"):
        apply_delta(base, delta, tmp_path / "out", progress=False)
    apply_delta(base, delta, tmp_path / "out", allow_pickle=True, progress=False)
    assert inspect_checkpoint(tmp_path / "out", against=src)["ok"]


def test_stale_partials_cleaned_only_when_dead(tmp_path, tiny):
    base = tiny["float32-single"]
    delta, _ = make_delta(base, tmp_path / "d.safetensors")
    out = tmp_path / "out"
    dead, alive, unknown = (tmp_path / f".out.{n}.partial" for n in ("dead", "alive", "x"))
    lock = {d: d.with_name(d.name + ".lock") for d in (dead, alive)}
    for d in (dead, alive, unknown):
        d.mkdir()
        (d / "junk").write_text("x")
    lock[dead].write_text("12345\n")
    lock[alive].write_text(f"{os.getpid()}\n")
    fd = os.open(lock[alive], os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another open file description: conflicts like a process
    try:
        apply_delta(base, delta, out, progress=False)
        assert not dead.exists() and not lock[dead].exists()
        assert alive.exists() and unknown.exists()
        assert clean_stale_partials(out) == []
    finally:
        os.close(fd)
    assert clean_stale_partials(out) == [alive] and not lock[alive].exists()
    assert unknown.exists()  # no lock file: cannot prove its owner dead, left alone
    assert inspect_checkpoint(out)["ok"]
