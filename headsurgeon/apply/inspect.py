"""What differs in a merged checkpoint, which heads it belongs to, and proof of the rest.

``inspect_checkpoint(out, against=base)`` streams every tensor of both checkpoints (one
at a time; raw bytes compared first, decoded only when they differ), maps differing
rows/columns to heads with :meth:`headsurgeon.model.heads.HeadMap.owners`, and counts the
differing elements that fall outside the declared slices (``outside_slices``; the
declared slices are the manifest's when ``out`` is a headsurgeon output, otherwise every
head's slices). Without ``against`` it re-verifies ``out`` against its own manifest.
"""
from __future__ import annotations

import hashlib

import json
import os
from pathlib import Path

import torch

from headsurgeon.core.errors import CheckpointError
from headsurgeon.model.safetensors_io import (CHUNK, CheckpointIndex, file_sha256, read_checkpoint_index,
                             read_header, read_tensor, tensor_sha256)

_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _ranges(idx: list[int]) -> list[list[int]]:
    """[0,1,2,5] -> [[0,3],[5,6]] (half-open runs)."""
    out: list[list[int]] = []
    for i in idx:
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out


def _same_bytes(a: CheckpointIndex, b: CheckpointIndex, name: str) -> bool:
    ia, ib = a.info(name), b.info(name)
    if ia.nbytes != ib.nbytes:
        return False
    ha, hb = a.headers[a[name]], b.headers[b[name]]
    with open(a.shard_path(a[name]), "rb") as fa, open(b.shard_path(b[name]), "rb") as fb:
        fa.seek(ha.data_start + ia.begin)
        fb.seek(hb.data_start + ib.begin)
        left = ia.nbytes
        while left:
            n = min(CHUNK, left)
            if fa.read(n) != fb.read(n):
                return False
            left -= n
    return True


def _head_map(out: Path, against: Path | None, names):
    """HeadMap of the model, or (None, reason) when it cannot be built."""
    for d in (out, against):
        if d is not None and (d / "config.json").is_file():
            try:
                from headsurgeon.model.heads import HeadMap
                cfg = json.loads((d / "config.json").read_text("utf-8"))
                return HeadMap.from_config(cfg, param_names=names), None
            except Exception as exc:  # noqa: BLE001 - report, do not fail the comparison
                return None, f"heads unknown: {str(exc).splitlines()[0][:200]}"
    return None, "heads unknown: no config.json"


class _Owners:
    """HeadMap.owners memoised per head_dim block (head slices are head_dim aligned)."""

    def __init__(self, hm):
        self.hm, self.cache = hm, {}
        self.block = getattr(hm, "head_dim", 1) or 1

    def __call__(self, param: str, axis: int, index: int) -> list[tuple[int, int, str]]:
        key = (param, axis, index // self.block)
        if key not in self.cache:
            self.cache[key] = [tuple(o) for o in self.hm.owners(param, axis, index)]
        return self.cache[key]


def _declared(out: Path, hm) -> tuple[dict[str, list[tuple[int, int, int]]], str]:
    """{param: [(axis, start, stop)]} the differences are allowed to lie in."""
    mpath = out / "headsurgeon.json"
    if mpath.is_file():
        try:
            man = json.loads(mpath.read_text("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise CheckpointError(f"invalid JSON ({str(exc).splitlines()[0][:120]})",
                                  file=str(mpath)) from None
        decl: dict = {}
        for s in man.get("delta", {}).get("slices", []):
            decl.setdefault(s["param"], []).append((s["axis"], s["start"], s["stop"]))
        return decl, "manifest"
    if hm is None:
        return {}, "none"
    decl = {}
    kv = "group" if not hm.multi_head_kv else "own"
    for s in hm.slices_for(hm.all_heads(), kv=kv):
        decl.setdefault(s.param, []).append((s.axis, s.start, s.stop))
    return decl, "heads"


def _diff_tensor(name: str, a, b, owners, declared) -> dict:
    rec = {"tensor": name, "dtype": str(b.dtype).replace("torch.", ""),
           "shape": list(b.shape)}
    if a.dtype != b.dtype or a.shape != b.shape:
        rec.update(n_diff=b.numel(), outside_slices=b.numel(), heads=[],
                   note=f"dtype/shape changed from {a.dtype} {list(a.shape)}")
        return rec
    bits = _BITS[a.element_size()]
    ne = a.reshape(-1).view(bits) != b.reshape(-1).view(bits)
    ne = ne.reshape(a.shape) if a.dim() else ne.reshape(())
    covered = torch.zeros_like(ne)
    for axis, start, stop in declared.get(name, []):
        if ne.dim() == 0:
            continue
        if axis == 0:
            covered[start:stop] = True
        elif ne.dim() > 1:
            covered[:, start:stop] = True
    rec["n_diff"] = int(ne.sum())
    rec["outside_slices"] = int((ne & ~covered).sum())
    heads: set = set()
    if ne.dim() >= 1:
        rows = ne.reshape(ne.shape[0], -1).any(1).nonzero().flatten().tolist()
        rec["rows"] = _ranges(rows)
        axes = [(0, rows)]
        if ne.dim() == 2:
            cols = ne.any(0).nonzero().flatten().tolist()
            rec["cols"] = _ranges(cols)
            axes.append((1, cols))
        if owners is not None:
            for axis, idx in axes:
                for i in idx:
                    heads.update(owners(name, axis, i))
    rec["heads"] = [list(h) for h in sorted(heads)]
    return rec


def _compare(out: Path, against: Path) -> dict:
    io, ia = read_checkpoint_index(out), read_checkpoint_index(against)
    names_o, names_a = set(io), set(ia)
    hm, hm_note = _head_map(out, against, names_a)
    owners = _Owners(hm) if hm is not None else None
    declared, declared_from = _declared(out, hm)
    report = {"mode": "compare", "out": str(out), "against": str(against),
              "missing": sorted(names_a - names_o), "extra": sorted(names_o - names_a),
              "n_compared": 0, "n_identical": 0, "differing": [],
              "declared_from": declared_from}
    if hm_note:
        report["note"] = hm_note
    for name in sorted(names_o & names_a):
        report["n_compared"] += 1
        if (io.info(name).dtype == ia.info(name).dtype and io.info(name).shape ==
                ia.info(name).shape and _same_bytes(io, ia, name)):
            report["n_identical"] += 1
            continue
        a = read_tensor(ia.shard_path(ia[name]), name, ia.headers[ia[name]])
        b = read_tensor(io.shard_path(io[name]), name, io.headers[io[name]])
        rec = _diff_tensor(name, a, b, owners, declared)
        del a, b
        report["differing"].append(rec)
    report["outside_slices"] = sum(r["outside_slices"] for r in report["differing"])
    report["ok"] = not (report["missing"] or report["extra"]) and report["outside_slices"] == 0
    return report


def _verify_manifest(out: Path) -> dict:
    from headsurgeon.apply.run import load_manifest

    man = load_manifest(out)
    problems = []
    files = man.get("files", {})
    for shard, rec in sorted(files.items()):
        p = out / shard
        if not p.is_file():
            problems.append(f"{shard}: missing")
            continue
        if not rec.get("sha256"):  # every byte is checked, or the output is not verified
            problems.append(f"{shard}: no sha256 in the manifest (written by an older "
                            "headsurgeon): compare it with --against the base")
            continue
        if p.stat().st_size != rec["size"] or file_sha256(p) != rec["sha256"]:
            problems.append(f"{shard}: sha256 differs from the manifest")
            continue
        try:
            header = read_header(p)
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        if hashlib.sha256(header.raw).hexdigest() != rec.get("header_sha256"):
            problems.append(f"{shard}: header differs from the manifest")
    try:
        index = read_checkpoint_index(out)
    except CheckpointError as exc:
        problems.append(str(exc))
        index = None
    if index is not None and set(index.shards) != set(files):
        problems.append("shards on disk differ from the manifest's")
    for rel, sha in sorted(man.get("other_sha256", {}).items()):  # index, config, tokenizer
        if not (out / rel).is_file() or file_sha256(out / rel) != sha:
            problems.append(f"{rel}: sha256 differs from the manifest")
    edits = []
    delta = man.get("delta", {})
    by_param: dict[str, list] = {}
    for s in delta.get("slices", []):
        by_param.setdefault(s["param"], []).append(s)
    for param, rec in sorted(man.get("touched", {}).items()):
        if index is not None and param in index:
            got = tensor_sha256(index.shard_path(index[param]), param,
                                index.headers[index[param]])
            if got != rec["sha256"]:
                problems.append(f"{param}: sha256 differs from the manifest")
        edits.append({"tensor": param, "shard": rec["shard"],
                      "slices": [{"axis": s["axis"], "start": s["start"], "stop": s["stop"],
                                  "role": s["role"], "heads": s["heads"]}
                                 for s in by_param.get(param, [])]})
    return {"mode": "manifest", "out": str(out), "base_model": delta.get("base_model"),
            "heads": delta.get("heads", []), "touched_heads": delta.get("touched_heads", []),
            "n_files": len(files), "edits": edits, "problems": problems, "ok": not problems}


def resolve_against(against: str | os.PathLike) -> Path:
    """The directory ``--against`` names: a checkpoint directory as it is, anything else
    (an alias such as ``tiny:llama``, a ``.gguf`` file, a cached Hub id) resolved the way
    ``model.source`` is (converted or built once into the cache)."""
    path = Path(against).expanduser()
    if path.is_dir():
        return path
    from headsurgeon.core.errors import ValidationError
    from headsurgeon.model.sources import resolve_model

    try:
        return resolve_model(str(against)).path
    except ValidationError as exc:
        raise ValidationError(exc.detail, field="--against") from None


def verdict_error(report: dict):
    """The :class:`VerdictNotOk` (exit 3) a NOT OK report ends the CLI with, or None."""
    from headsurgeon.core.errors import VerdictNotOk

    if report["ok"]:
        return None
    if report["mode"] == "manifest":
        return VerdictNotOk(f"NOT OK: {len(report['problems'])} problem(s) against "
                            "headsurgeon.json", file=report["out"])
    what = [f"{report['outside_slices']} element(s) outside the declared slices"]
    what += [f"{len(report[k])} {k} tensor(s)" for k in ("missing", "extra") if report[k]]
    return VerdictNotOk(f"NOT OK against {report['against']}: " + ", ".join(what),
                        file=report["out"])


def inspect_checkpoint(out: str | os.PathLike, against: str | os.PathLike | None = None
                       ) -> dict:
    """Compare ``out`` with ``against`` tensor by tensor, or (no ``against``) re-verify
    ``out`` against its ``headsurgeon.json`` and report the recorded edits."""
    out = Path(out)
    if against is None:
        return _verify_manifest(out)
    return _compare(out, resolve_against(against))


def _fmt_ranges(r: list[list[int]] | None) -> str:
    if not r:
        return "-"
    parts = [f"{a}:{b}" for a, b in r[:6]]
    return ", ".join(parts) + (f", ... ({len(r)} runs)" if len(r) > 6 else "")


def format_inspect(report: dict) -> str:
    """Human-readable text of a report, for the CLI."""
    lines = []
    if report["mode"] == "manifest":
        lines.append(f"{report['out']}: headsurgeon edit of {report['base_model']}")
        lines.append(f"  heads: {' '.join(f'L{ly}H{h}' for ly, h in report['heads']) or '-'}"
                     f"  (touched incl. GQA siblings: {len(report['touched_heads'])})")
        for e in report["edits"]:
            lines.append(f"  {e['tensor']} ({e['shard']})")
            for s in e["slices"]:
                heads = " ".join(f"L{ly}H{h}" for ly, h in s["heads"])
                lines.append(f"    {'rows' if s['axis'] == 0 else 'cols'} "
                             f"{s['start']}:{s['stop']} {s['role']} {heads}")
        lines.append(f"  {report['n_files']} shard files "
                     + ("verified against the manifest" if report["ok"] else "FAILED:"))
        lines += [f"    {p}" for p in report["problems"]]
        return "\n".join(lines)
    lines.append(f"{report['out']} vs {report['against']}: {report['n_compared']} tensors "
                 f"compared, {report['n_identical']} identical, "
                 f"{len(report['differing'])} differ")
    if report.get("note"):
        lines.append(f"  ({report['note']})")
    for name in report["missing"]:
        lines.append(f"  missing from output: {name}")
    for name in report["extra"]:
        lines.append(f"  not in base: {name}")
    for r in report["differing"]:
        heads = " ".join(f"L{ly}H{h}:{role}" for ly, h, role in r["heads"]) or "no head"
        lines.append(f"  {r['tensor']}: {r['n_diff']} elements differ, rows "
                     f"{_fmt_ranges(r.get('rows'))} cols {_fmt_ranges(r.get('cols'))} -> "
                     f"{heads}; outside_slices: {r['outside_slices']}")
    lines.append(f"outside_slices: {report['outside_slices']} (declared slices from "
                 f"{report['declared_from']}) -> {'OK' if report['ok'] else 'NOT OK'}")
    return "\n".join(lines)
