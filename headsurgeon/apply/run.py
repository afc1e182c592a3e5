"""Merge a delta into a base checkpoint, streaming, and ship an ordinary HF directory.

Shards without a touched tensor are copied byte for byte (in the kernel); shards with one
are rewritten tensor by tensor with the base's own header bytes, so names, order, dtypes
and ``__metadata__`` are unchanged and only the touched slices' bytes differ; disk
writeback starts as bytes are copied, so each file's fsync finds little left. Peak memory
is one touched tensor per worker. The result is built in a temporary sibling directory,
verified, and renamed into place: ``out`` is either absent or complete.

Stale ``.<out>.*.partial`` siblings left by a killed apply are removed by the next apply
on the same ``out`` when provably dead: each apply holds an flock on a sibling
``.<out>.*.partial.lock`` until its directory is renamed into place, and the kernel drops
an flock when its holder dies, so a partial whose lock can be taken has no living owner.
"""
from __future__ import annotations

import json
import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch

from headsurgeon.core.atomic import atomic_directory, atomic_write_json, atomic_write_text
from headsurgeon.core.paths import (OUTPUT_FORMAT, OUTPUT_MANIFEST, check_replace,
                                    is_output_dir, make_parent)
from headsurgeon.model.delta import Delta, merge_slice, read_delta, version
from headsurgeon.apply.locks import (clean_stale_partials, lock_target, release_lock, take_lock,
                                     unlock_target)
from headsurgeon.core.recipe import Recipe
from headsurgeon.core.errors import CheckpointError, HeadsurgeonError, RuntimeFailure, ValidationError
from headsurgeon.model.safetensors_io import (INDEX_FILE, CheckpointIndex, file_sha256, read_checkpoint_index, read_header, read_tensor)
from headsurgeon.model.safetensors_write import (SafetensorsWriter, copy_file)

MANIFEST = OUTPUT_MANIFEST  # the mark of an apply output (core/paths.py: what --force may replace)
RECIPE_FILE = "headsurgeon-recipe.yaml"
CARD = "README.md"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# weights in other formats would be stale copies of the unedited base: never shipped
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".msgpack", ".h5", ".onnx") + PICKLE_SUFFIXES
SKIP_DIRS = (".git", ".cache")
_OURS = (MANIFEST, RECIPE_FILE, CARD)


def _log(progress: bool, msg: str) -> None:
    from headsurgeon.core.progress import progress_note

    if progress:
        progress_note(f"apply: {msg}")


def resolve_base(base, allow_pickle: bool = False) -> Path:
    """A local safetensors directory for ``base`` (GGUF files, aliases, hub ids and
    pickle-only directories go through :func:`headsurgeon.model.sources.resolve_model`)."""
    p = Path(base).expanduser()
    if p.is_dir() and ((p / "model.safetensors").is_file() or (p / INDEX_FILE).is_file()):
        return p
    if p.is_dir() and not allow_pickle:
        pickles = sorted(f.name for f in p.iterdir() if f.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise ValidationError(f"base has only pickle weights ({pickles[0]}); pickles can "
                                  "run code when loaded: pass allow_pickle=True (CLI "
                                  "--allow-pickle) to convert them with weights_only "
                                  "unpickling first", file=str(p))
    try:
        from headsurgeon.model.sources import resolve_model
    except ImportError as exc:  # pragma: no cover - models.py missing from a checkout
        raise ValidationError(f"not a safetensors model directory ({exc})", file=str(p)) from exc
    return Path(resolve_model(str(base), allow_pickle=allow_pickle).path)


def _check_paths(base_dir: Path, out: Path) -> None:
    b = base_dir.resolve()
    o = out.parent.resolve() / out.name
    if o == b or b in o.parents:
        raise ValidationError("output directory is the base model directory or inside it",
                              file=str(out))
    if o in b.parents:
        raise ValidationError("output directory contains the base model directory",
                              file=str(out))


# ---------------------------------------------------------------- stale partials

def _rewrite_shard(src: Path, dst: Path, header, delta: Delta, touched: set[str]) -> dict:
    """Copy ``src`` to ``dst`` tensor by tensor, merging the touched tensors."""
    hashes = {}
    with open(src, "rb") as fin, SafetensorsWriter(dst, raw_header=header.raw,
                                                     writeback=True, sha256=True) as w:
        for name, info in header.tensors.items():
            if name in touched:
                t = read_tensor(src, name, header)
                for s in delta.slices_for(name):
                    if s.value is None:  # read here, not cached on the Delta: bounded memory
                        s = replace(s, value=read_tensor(delta.path, s.key))
                    merge_slice(t, s, inplace=True)
                hashes[name] = w.write(name, t, sha256=True)
                del t
            else:
                w.copy_from(name, fin.fileno(), header.data_start + info.begin)
    return {"tensors": hashes, "file": w.sha256}


def _do_shard(index: CheckpointIndex, shard: str, tmp: Path, delta: Delta,
              touched: set[str]) -> dict:
    src, dst = index.shard_path(shard), tmp / shard
    dst.parent.mkdir(parents=True, exist_ok=True)
    header = index.headers[shard]
    mine = {n for n in header.tensors if n in touched}
    # Every shard's sha256 is taken from the bytes as they are written (one pass: read,
    # hash, write), so the manifest vouches for every byte; the touched tensors' hashes
    # come from the very buffers written at their offsets.
    if mine:
        got = _rewrite_shard(src, dst, header, delta, mine)  # fsyncs on close
        hashes, file_sha = got["tensors"], got["file"]
    else:
        file_sha = copy_file(src, dst, writeback=True, sha256=True)
        hashes = {}
        with open(dst, "rb") as fh:
            os.fsync(fh.fileno())
    return {"shard": shard, "rewritten": bool(mine), "tensor_sha256": hashes,
            "sha256": file_sha, "header_sha256": hashlib.sha256(header.raw).hexdigest(),
            "size": dst.stat().st_size}


def _other_files(base_dir: Path, index: CheckpointIndex) -> tuple[list[str], list[str]]:
    """(non-weight files to copy, weight-like files skipped), relative paths."""
    ours = set(index.shards) | {INDEX_FILE}
    copy, skip = [], []
    for root, dirs, files in os.walk(base_dir, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for f in sorted(files):
            rel = os.path.relpath(os.path.join(root, f), base_dir)
            if rel in ours or (root == str(base_dir) and f in _OURS):
                continue
            if f.endswith(WEIGHT_SUFFIXES) or f.endswith(".index.json"):
                skip.append(rel)
            else:
                copy.append(rel)
    return copy, skip


def _verify_output(tmp: Path, index: CheckpointIndex, results: dict[str, dict],
                   touched: set[str]) -> None:
    """Check the written files before they are renamed into place: every shard there,
    with the base's header and size, every touched tensor hashed, the index complete.

    Tensor bytes are not read back: copies are checked by length as they are made, and
    the writer checks each tensor ends at its header offset, so the hashes taken of the
    written buffers are the hashes of the bytes at those offsets."""
    def bad(msg: str):
        return RuntimeFailure(f"output verification failed: {msg}", file=str(tmp))

    if set(results) != set(index.shards):
        raise bad(f"shards {sorted(set(index.shards) ^ set(results))} missing")
    for shard, res in results.items():
        try:
            out_header = read_header(tmp / shard)
        except CheckpointError as exc:
            raise bad(str(exc)) from None
        base_header = index.headers[shard]
        if out_header.raw != base_header.raw:
            raise bad(f"{shard}: header differs from the base's")
        if out_header.file_size != base_header.file_size:
            raise bad(f"{shard}: {out_header.file_size} bytes, base has {base_header.file_size}")
        mine = {n for n in base_header.tensors if n in touched}
        if set(res["tensor_sha256"]) != mine:
            raise bad(f"{shard}: touched tensors {sorted(mine)} not all merged")
        if not res.get("sha256"):
            raise bad(f"{shard}: no sha256 taken while writing")
    if index.sharded:
        written = json.loads((tmp / INDEX_FILE).read_text("utf-8"))["weight_map"]
        headers = {s: read_header(tmp / s) for s in index.shards}
        for name, shard in index.weight_map.items():
            if written.get(name) != shard or name not in headers[shard].tensors:
                raise bad(f"{INDEX_FILE}: tensor {name} missing from {shard}")


def _manifest(delta: Delta, delta_sha: str, index: CheckpointIndex, results: dict,
              touched_before: dict, copied: list[str], skipped: list[str],
              other_sha: dict) -> dict:
    meta = {k: v for k, v in delta.meta.items() if k != "recipe"}
    touched = {}
    for shard, res in results.items():
        for name, h in res["tensor_sha256"].items():
            touched[name] = {"shard": shard, "sha256_before": touched_before[name]["sha256"],
                             "sha256": h, "dtype": touched_before[name]["dtype"],
                             "shape": touched_before[name]["shape"]}
    return {
        "format": OUTPUT_FORMAT,
        "headsurgeon_version": version(),
        "delta": meta,
        "delta_sha256": delta_sha,
        "index": INDEX_FILE if index.sharded else None,
        "files": {s: {"sha256": r["sha256"], "header_sha256": r["header_sha256"],
                      "size": r["size"], "rewritten": r["rewritten"]}
                  for s, r in sorted(results.items())},
        "touched": dict(sorted(touched.items())),
        "other_files": copied,
        "other_sha256": other_sha,
        "skipped_files": skipped,
    }


def _plain_modes(tmp: Path) -> None:
    """Give the output ordinary permissions (temp dirs/files are created 0700/0600)."""
    mask = os.umask(0o22)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)
    for root, dirs, files in os.walk(tmp):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~mask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~mask)


def apply_delta(base, delta, out, *, force: bool = False, recipe_text: str | None = None,
                metrics: dict | None = None, allow_pickle: bool = False,
                progress: bool = True) -> dict:
    """Merge ``delta`` (path or :class:`Delta`) into ``base`` and write ``out``.

    Everything is validated (base shards, delta format, delta-vs-base hashes, paths)
    before anything is written. Returns a summary dict (also the manifest contents)."""
    t0 = time.monotonic()
    out = Path(out).expanduser().absolute()
    base_dir = resolve_base(base, allow_pickle)
    _check_paths(base_dir, out)
    check_replace(out, force=force, ours=is_output_dir, what="a model directory")
    try:
        d = delta if isinstance(delta, Delta) else read_delta(delta, load_values=False)
        index = read_checkpoint_index(base_dir)
        d.verify_against(base_dir, index)
        delta_sha = d.verify_bytes()  # the delta's own tensors_sha256, and the file's hash
        copy_rel, skip_rel = _other_files(base_dir, index)
    except OSError as exc:  # unreadable base or delta (permissions, I/O error)
        raise RuntimeFailure(f"cannot read: {exc.strerror or exc}",
                             file=exc.filename or str(base_dir)) from exc
    touched = set(d.params)
    if skip_rel:
        _log(progress, f"not copying weight files outside the checkpoint: {', '.join(skip_rel)}")
    recipe = recipe_text if recipe_text is not None else d.meta.get("recipe") or None
    make_parent(out)
    try:
        target_fd = lock_target(out)
    except OSError as exc:
        raise RuntimeFailure(f"cannot write: {exc.strerror or exc}", file=str(out)) from exc
    results: dict[str, dict] = {}
    lock: tuple[Path, int] | None = None
    # The merges are tiny next to the I/O; intra-op (OpenMP) threads only add barrier
    # latency, badly so on a busy machine (x1000 measured on 2 cores under load).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # again, now that no other apply can be writing it
        check_replace(out, force=force, ours=is_output_dir, what="a model directory")
        for p in clean_stale_partials(out):
            _log(progress, f"removed stale {p.name} of a killed apply")
        with atomic_directory(out, force=force, ours=is_output_dir,
                              what="a model directory") as tmp:
            lock = (tmp, take_lock(tmp))
            manifest = _build(base_dir, index, d, tmp, touched, delta_sha, copy_rel,
                              skip_rel, recipe, metrics, results, progress)
    finally:
        torch.set_num_threads(threads)
        if lock is not None:
            release_lock(*lock)
        unlock_target(out, target_fd)
    dt = time.monotonic() - t0
    total = sum(r["size"] for r in results.values())
    _log(progress, f"wrote {out} ({total / 1e9:.2f} GB in {dt:.1f}s)")
    return {"out": str(out), "base": str(base_dir), "seconds": dt, "bytes": total,
            "rewritten": sorted(s for s, r in results.items() if r["rewritten"]),
            "copied": sorted(s for s, r in results.items() if not r["rewritten"]),
            "manifest": manifest}


def _build(base_dir: Path, index: CheckpointIndex, d: Delta, tmp: Path, touched: set[str],
           delta_sha: str, copy_rel: list[str], skip_rel: list[str], recipe: str | None,
           metrics: dict | None, results: dict, progress: bool) -> dict:
    """Fill ``tmp`` with the merged checkpoint and verify it; returns the manifest."""
    from headsurgeon.apply.card import heads_table, render_model_card

    # two per core: while one waits on fsync the other hashes; memory stays one touched
    # tensor per worker
    workers = max(1, min(8, 2 * (os.cpu_count() or 1), len(index.shards)))
    # rewritten shards (the slow ones) first, so none is left running alone at the end
    order = sorted(index.shards, key=lambda s: not touched & set(index.headers[s].tensors))
    with ThreadPoolExecutor(workers) as pool:
        futs = [pool.submit(_do_shard, index, s, tmp, d, touched) for s in order]
        try:
            for i, f in enumerate(futs, 1):
                res = f.result()
                results[res["shard"]] = res
                _log(progress, f"[{i}/{len(futs)}] {res['shard']} "
                     f"{'merged' if res['rewritten'] else 'copied'}")
        except BaseException:
            for f in futs:
                f.cancel()
            raise
    if index.sharded:
        atomic_write_json(tmp / INDEX_FILE, {
            "metadata": {**(index.index_metadata or {}), "total_size": index.total_size()},
            "weight_map": dict(sorted(index.weight_map.items()))})
    other_sha = {}  # the index and every copied file, hashed as they are written
    if index.sharded:
        other_sha[INDEX_FILE] = file_sha256(tmp / INDEX_FILE)
    for rel in copy_rel:
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        other_sha[rel] = copy_file(base_dir / rel, tmp / rel, sha256=True)
    _verify_output(tmp, index, results, touched)
    manifest = _manifest(d, delta_sha, index, results, d.base_tensors, copy_rel, skip_rel,
                         dict(sorted(other_sha.items())))
    atomic_write_json(tmp / MANIFEST, manifest)
    atomic_write_text(tmp / CARD, render_model_card(
        d.meta, recipe, metrics, heads_table(d.meta)))
    if recipe:
        atomic_write_text(tmp / RECIPE_FILE, recipe)
    _plain_modes(tmp)
    return manifest


def load_manifest(out: str | os.PathLike) -> dict:
    path = Path(out) / MANIFEST
    try:
        obj = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"no {MANIFEST}: not a headsurgeon output", file=str(out)) from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"invalid JSON ({exc})", file=str(path)) from None
    if not isinstance(obj, dict) or obj.get("format") != OUTPUT_FORMAT:
        raise CheckpointError(f"format is not {OUTPUT_FORMAT}", file=str(path), field="format")
    return obj


__all__ = ["apply_delta", "resolve_base", "clean_stale_partials", "load_manifest",
           "HeadsurgeonError"]


def apply_recipe(recipe: Optional[Recipe] = None, *, base=None, delta=None, out=None,
                 force: bool = False, allow_pickle: bool = False,
                 metrics: Optional[dict] = None) -> Path:
    """Merge a delta into its base: from a recipe's run directory, or from explicit paths."""
    from headsurgeon.model.sources import resolve_model

    text = None
    if recipe is not None:
        from headsurgeon.model.heads_file import check_heads_file

        check_heads_file(recipe)  # a heads.json of another model: refused before any work
        base = base or recipe.model.source
        delta = delta or recipe.run_dir() / "delta.safetensors"
        out = out or recipe.apply_output()  # inside the run directory (core/paths.py)
        force = force or recipe.apply.force
        allow_pickle = allow_pickle or recipe.model.allow_pickle
        text = recipe.text
    base_path = Path(base) if Path(str(base)).is_dir() else resolve_model(str(base)).path
    apply_delta(base_path, Path(delta), Path(out), force=force, recipe_text=text,
                metrics=metrics, allow_pickle=allow_pickle)
    return Path(out)
