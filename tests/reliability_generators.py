"""Generators of the corpus's binary and unusual inputs (tests/fixtures/bad/corpus.yaml
names them under ``make:``): mutations of tiny models' safetensors headers, indexes and
configs, pickles, edited deltas, huge or endless files. Each ``g_NAME(d, ws, **args)``
works in the case directory ``d``; ``ws`` is the corpus Workspace (shared tiny models).
"""
from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import torch

HEADS = [[1, 2], [2, 0]]


def make_delta(base: Path, path: Path, *, seed: int = 0) -> Path:
    """A random delta over every q/k/v/o slice of HEADS (HeadMap geometry)."""
    from headsurgeon.model import safetensors_io as sio
    from headsurgeon.model.delta import DeltaSlice, base_tensor_hashes, write_delta
    from headsurgeon.model.heads import HeadMap

    idx = sio.read_checkpoint_index(base)
    hm = HeadMap.from_config(json.loads((base / "config.json").read_text()),
                             param_names=list(idx))
    g = torch.Generator().manual_seed(seed)
    slices = []
    for ps in hm.slices_for([tuple(h) for h in HEADS], kv="group"):
        shape = list(idx.info(ps.param).shape)
        shape[ps.axis] = ps.stop - ps.start
        slices.append(DeltaSlice(ps.param, ps.axis, ps.start, ps.stop, ps.role, [],
                                 torch.randn(*shape, generator=g) * 0.01))
    write_delta(path, slices, base_tensors=base_tensor_hashes(base, [s.param for s in slices]),
                meta={"base_model": "tiny/llama", "heads": HEADS, "recipe": "corpus: true\n"})
    return path


def _split(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _join(path: Path, header: dict, data: bytes, *, raw: bytes | None = None) -> None:
    raw = raw if raw is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _shard(d: Path, which: str = "first") -> Path:
    """A shard of ./base with at least two tensors (or model.safetensors)."""
    base = d / "base"
    if (base / "model.safetensors").exists():
        return base / "model.safetensors"
    shards = sorted(base.glob("model-*.safetensors"))
    multi = [s for s in shards if len([k for k in _split(s)[0] if k != "__metadata__"]) >= 2]
    return multi[0] if which == "first" else multi[-1]


def _tensors_of(header: dict) -> list[str]:
    return sorted((k for k in header if k != "__metadata__"),
                  key=lambda k: header[k]["data_offsets"])


def g_truncate(d, ws, file="shard", by=100):
    p = _shard(d) if file == "shard" else d / file
    os.truncate(p, p.stat().st_size - by)


def g_header(d, ws, edit, file="shard"):
    """Rewrite a safetensors header (data bytes kept): ``edit`` names the lie."""
    p = _shard(d) if file == "shard" else d / file
    h, data = _split(p)
    a, b = _tensors_of(h)[:2]
    if edit == "offsets_lie":
        h[a]["data_offsets"][1] -= 4
    elif edit == "overlap":
        h[b]["data_offsets"] = list(h[a]["data_offsets"])
        h[b]["shape"] = list(h[a]["shape"])
    elif edit == "gap":
        data = data + bytes(8)
        for k in _tensors_of(h)[1:]:
            h[k]["data_offsets"] = [o + 8 for o in h[k]["data_offsets"]]
    elif edit == "trailing":
        data = data + bytes(16)
    elif edit == "huge_shape":
        h[a]["shape"] = [10**6, 10**6]
    elif edit == "unknown_dtype":
        h[a]["dtype"] = "F128"
    elif edit == "negative_shape":
        h[a]["shape"] = [-1] + h[a]["shape"][1:]
    elif edit == "not_json":
        _join(p, h, data, raw=b"{\"a\": [1, 2" + b" " * 20)
        return
    elif edit == "deep":  # JSON nested past Python's recursion limit
        _join(p, h, data, raw=b"[" * 100000 + b"]" * 100000)
        return
    elif edit == "duplicate":
        raw = json.dumps(h).encode()
        first = json.dumps({a: h[a]}).encode()[1:-1]
        raw = raw[:-1] + b", " + first + b"}"
        _join(p, h, data, raw=raw)
        return
    elif edit == "length_beyond_file":
        p.write_bytes(struct.pack("<Q", 10**9) + json.dumps(h).encode()[:64])
        return
    elif edit == "tiny_file":
        p.write_bytes(b"\x10\x00")
        return
    elif edit == "shape_vs_config":  # a consistent file whose q_proj contradicts config
        from headsurgeon.model import safetensors_io as sio
        from headsurgeon.model import safetensors_write as siw

        ts = dict(sio.iter_tensors(p))
        ts["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(16, 32)
        meta = sio.read_header(p).metadata
        p.unlink()
        siw.save_tensors(p, ts, meta)
        return
    else:
        raise ValueError(edit)
    _join(p, h, data)


def g_tensors(d, ws, drop=(), copy=None):
    """Rewrite ./base/model.safetensors (a consistent file): ``drop`` these tensors,
    ``copy`` = {new name: existing name} adds copies (an extra layer, a stray tensor)."""
    from headsurgeon.model import safetensors_io as sio
    from headsurgeon.model import safetensors_write as siw

    p = d / "base" / "model.safetensors"
    ts = dict(sio.iter_tensors(p))
    for name in drop:
        del ts[name]
    for new, old in (copy or {}).items():
        ts[new] = ts[old].clone()
    meta = sio.read_header(p).metadata
    p.unlink()
    siw.save_tensors(p, ts, meta)


def g_config_set(d, ws, raw=None, **fields):
    """Set fields of ./base/config.json (the rest kept); ``raw`` = {field: JSON text},
    written as is (``1e9``)."""
    cfg = json.loads((d / "base" / "config.json").read_text())
    cfg.update(fields)
    cfg.update({k: f"@@{k}@@" for k in raw or {}})
    text = json.dumps(cfg, indent=2)
    for k, v in (raw or {}).items():
        text = text.replace(f'"@@{k}@@"', v)
    (d / "base" / "config.json").write_text(text)


def g_index(d, ws, edit):
    idx = d / "base" / "model.safetensors.index.json"
    obj = json.loads(idx.read_text())
    wmap = obj["weight_map"]
    if edit == "ghost_tensor":
        wmap["model.ghost.weight"] = sorted(set(wmap.values()))[0]
    elif edit == "escapes":
        wmap[next(iter(wmap))] = "../../outside.safetensors"
    elif edit == "missing_shard":
        (d / "base" / sorted(set(wmap.values()))[-1]).unlink()
    elif edit == "not_json":
        idx.write_text('{"weight_map": {')
        return
    elif edit == "also_single":
        shutil.copy(ws.single / "model.safetensors", d / "base" / "model.safetensors")
    elif edit == "duplicate_across_shards":
        shards = sorted(set(wmap.values()))
        a, b = d / "base" / shards[0], d / "base" / shards[1]
        ha, da = _split(a)
        hb, db = _split(b)
        name = _tensors_of(ha)[0]
        end = max(e["data_offsets"][1] for k, e in hb.items() if k != "__metadata__")
        nbytes = ha[name]["data_offsets"][1] - ha[name]["data_offsets"][0]
        hb[name] = {**ha[name], "data_offsets": [end, end + nbytes]}
        _join(b, hb, db + da[ha[name]["data_offsets"][0]:ha[name]["data_offsets"][1]])
    else:
        raise ValueError(edit)
    idx.write_text(json.dumps(obj))


def g_remove(d, ws, glob):
    for p in (d / "base").glob(glob):
        p.unlink()


def g_config(d, ws, text):
    (d / "base" / "config.json").write_text(text)


def g_pickle(d, ws, evil=False, name="pytorch_model.bin"):
    """Replace the weights by a pickle (``name``): a real state dict, or one whose
    unpickling would run ``touch PWNED`` (the nothing-written check sees if it ran)."""
    for p in (d / "base").glob("*.safetensors*"):
        p.unlink()
    target = d / "base" / name
    if evil:
        torch.save({"w": _Evil()}, target)
    else:
        from headsurgeon.model import safetensors_io as sio

        torch.save(dict(sio.iter_tensors(ws.single / "model.safetensors")), target)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def g_delta_meta(d, ws, edit):
    """Rewrite the delta's __metadata__ (tensor bytes kept)."""
    p = d / "delta.safetensors"
    h, data = _split(p)
    meta = h["__metadata__"]
    bt = json.loads(meta["base_tensors"])
    slices = json.loads(meta["slices"])
    first = sorted(bt)[0]
    if edit == "hash":
        bt[first]["sha256"] = "0" * 64
    elif edit == "base_shape":
        bt[first]["shape"] = [bt[first]["shape"][0] * 2] + bt[first]["shape"][1:]
    elif edit == "shape_not_ints":
        bt[first]["shape"] = ["32", "x"]
    elif edit == "slices_not_json":
        meta["slices"] = "[{not json"
        _join(p, h, data)
        return
    elif edit == "slices_deep":
        meta["slices"] = "[" * 100000 + "]" * 100000
        _join(p, h, data)
        return
    elif edit == "out_of_range":
        s = slices[0]
        old = s["key"]
        s["stop"] = s["start"] + 10**6
        s["key"] = f"{s['param']}@{s['axis']}:{s['start']}:{s['stop']}"
        h[s["key"]] = h.pop(old)
    elif edit == "format":
        meta["format"] = "someone-else/1"
    elif edit == "wrong_dtype":
        k = _tensors_of(h)[0]
        h[k]["dtype"] = "I32"
    elif edit == "tensors_disagree":
        k = _tensors_of(h)[0]
        h["model.renamed@0:0:8"] = h.pop(k)
    elif edit == "no_tensors_sha256":
        del meta["tensors_sha256"]
    else:
        raise ValueError(edit)
    meta["base_tensors"] = json.dumps(bt)
    meta["slices"] = json.dumps(slices)
    _join(p, h, data)


def g_flip_byte(d, ws, file="delta.safetensors", at=-5):
    """Flip one bit of a data byte (``at`` from the end: tensor data, never the header)."""
    p = d / file
    raw = bytearray(p.read_bytes())
    raw[at] ^= 0x01
    p.write_bytes(bytes(raw))


def g_foreign_delta(d, ws):
    make_delta(ws.other, d / "delta.safetensors", seed=3)


def g_plain_safetensors(d, ws, name="delta.safetensors"):
    from headsurgeon.model import safetensors_write as siw

    (d / name).unlink(missing_ok=True)
    siw.save_tensors(d / name, {"x": torch.zeros(2)}, {"format": "pt"})


def g_torch_save(d, ws, file):
    torch.save({"w": torch.zeros(2)}, d / file)


def g_big_line(d, ws, file, size):
    """A jsonl file whose second line is ``size`` bytes (written in chunks)."""
    with open(d / file, "wb") as fh:
        fh.write(json.dumps({"id": "ok", "question": "Q?", "choices": ["a", "b"],
                             "answer": "A"}).encode() + b"\n")
        fh.write(b'{"id": "big", "question": "')
        left, chunk = size - 40, b"x" * (1 << 20)
        while left > 0:
            fh.write(chunk[:left])
            left -= len(chunk)
        fh.write(b'", "choices": ["a", "b"], "answer": "A"}\n')


def g_deep(d, ws, file, depth, prefix="", suffix=""):
    (d / file).write_text(prefix + "[" * depth + "]" * depth + suffix + "\n")


def g_fifo(d, ws, file):
    os.mkfifo(d / file)


def g_mkdir(d, ws, path):
    (d / path).mkdir(parents=True)


def g_big_file(d, ws, file, size, head=""):
    with open(d / file, "w") as fh:
        fh.write(head)
        fh.write("#" * (size - len(head)) + "\n")


def g_laughs(d, ws, file, levels=9):
    lines = ["model: {source: $BASE}", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    (d / file).write_text("\n".join(lines) + "\n")


def g_edited_copy(d, ws, tensor="model.layers.0.mlp.down_proj.weight", value=123.0,
                  drop=None):
    """./edited: a copy of ./base (single file, float32) with one element of ``tensor``
    set to ``value`` (an MLP weight: outside every head's slices), or without ``drop``."""
    shutil.copytree(d / "base", d / "edited")
    path = d / "edited" / "model.safetensors"
    if drop:
        from safetensors.torch import load_file, save_file

        tensors = load_file(path)
        del tensors[drop]
        save_file(tensors, path, metadata={"format": "pt"})
        return
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    begin = 8 + n + json.loads(raw[8:8 + n])[tensor]["data_offsets"][0]
    raw[begin:begin + 4] = struct.pack("<f", value)  # header bytes untouched
    path.write_bytes(bytes(raw))


GENERATORS = {name[2:]: fn for name, fn in globals().items() if name.startswith("g_")}
