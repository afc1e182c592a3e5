"""``headsurgeon export MODEL_OR_RUN --lora OUT``: the edit as a peft LoRA adapter directory.

Built from the delta and its base (never from the merged weights alone): the factors are
exact (see :mod:`headsurgeon.model.lora_factors`), every module's rank is the number of
rows or columns it edits (``rank_pattern``) and its alpha equals its rank
(``alpha_pattern``), so peft's scale ``alpha / r`` is 1 everywhere. The global ``r`` and
``lora_alpha`` are equal too, so a loader that reads only those also scales by 1. Edited
bias entries need peft's ``lora_bias``. The directory (``adapter_config.json``,
``adapter_model.safetensors``, ``README.md``, ``headsurgeon-lora.json``) appears complete
or not at all.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from headsurgeon.model.lora_factors import (ADAPTER_METADATA, ADAPTER_WEIGHTS, LoraPlan,
                                            peft_tensors, plan_lora, slice_values)
from headsurgeon.core.errors import ValidationError

ADAPTER_CONFIG = "adapter_config.json"
LORA_MANIFEST = "headsurgeon-lora.json"
LORA_FORMAT = "headsurgeon.lora/1"
DELTA_FILE = "delta.safetensors"


@dataclass
class LoraEdit:
    """A delta checked against its base, planned as LoRA factors, with the values read."""

    plan: LoraPlan
    base_dir: Path
    base_model: str
    values: dict[str, torch.Tensor]
    base_files: dict[str, dict]      # {shard: {"sha256", "size"}} of the base checkpoint

    @property
    def checkpoint_bytes(self) -> int:
        return sum(f["size"] for f in self.base_files.values())


def find_delta(source: str | os.PathLike) -> Path:
    """The delta behind ``source``: a delta file, a run directory (``delta.safetensors``),
    or an applied model directory whose run directory holds the delta it was merged from
    (checked against the manifest's ``delta_sha256``)."""
    from headsurgeon.apply.run import MANIFEST, load_manifest
    from headsurgeon.model.safetensors_io import file_sha256

    src = Path(source)
    if src.is_file():
        return src
    if (src / DELTA_FILE).is_file():
        return src / DELTA_FILE
    if (src / MANIFEST).is_file():
        want = load_manifest(src).get("delta_sha256")
        cand = src.absolute().parent / DELTA_FILE
        if cand.is_file() and file_sha256(cand) == want:
            return cand
        raise ValidationError(f"the LoRA export needs the delta this model was merged from; "
                              f"{cand} is {'another delta' if cand.is_file() else 'missing'}"
                              f": give the run directory or the delta file", file=str(src))
    raise ValidationError("not a delta file, a run directory (no delta.safetensors) or a "
                          "headsurgeon model directory", file=str(src))


def load_edit(source, base: str | None = None) -> LoraEdit:
    """Read the delta behind ``source``, find its base (``base`` or the delta's own
    ``base_model``), check every touched tensor's hash, and plan the factors."""
    from headsurgeon.apply.run import resolve_base
    from headsurgeon.model.config import read_config
    from headsurgeon.model.delta import read_delta
    from headsurgeon.model.safetensors_io import file_sha256

    delta_path = find_delta(source)
    delta = read_delta(delta_path, load_values=False)
    base_model = base or str(delta.meta.get("base_model") or "")
    if not base_model:
        raise ValidationError("the delta names no base model; pass --base",
                              file=str(delta_path))
    try:
        base_dir = resolve_base(base_model)
    except ValidationError as exc:
        if base:
            raise
        raise ValidationError(f"cannot find the base model the delta names "
                              f"({exc.detail}); pass --base", file=str(delta_path)) from None
    index = delta.verify_against(base_dir)
    cfg = read_config(base_dir / "config.json")
    plan = plan_lora(delta, cfg, list(index))
    values = slice_values(plan, base_dir, index)
    files = {s: {"sha256": file_sha256(index.shard_path(s)),
                 "size": index.shard_path(s).stat().st_size} for s in sorted(index.shards)}
    return LoraEdit(plan, base_dir, str(delta.meta.get("base_model") or base_model), values,
                    files)


def lora_config(plan: LoraPlan, base_model: str) -> dict:
    """``adapter_config.json`` as stock peft writes it (sets as sorted lists)."""
    from peft import LoraConfig

    ranks = plan.ranks
    top = max(ranks.values())
    cfg = LoraConfig(r=top, lora_alpha=top, target_modules=sorted(ranks),
                     rank_pattern=dict(ranks), alpha_pattern=dict(ranks), lora_dropout=0.0,
                     bias="none", lora_bias=plan.lora_bias, fan_in_fan_out=plan.conv1d,
                     task_type="CAUSAL_LM", inference_mode=True,
                     base_model_name_or_path=base_model)
    out = cfg.to_dict()
    for key, value in out.items():
        if isinstance(value, (set, frozenset)):
            out[key] = sorted(value)
    return dict(sorted(out.items()))


def lora_manifest(edit: LoraEdit, adapter_bytes: int | None = None) -> dict:
    d = edit.plan.delta
    from headsurgeon.model.safetensors_io import file_sha256

    return {"format": LORA_FORMAT, "base_model": edit.base_model,
            "base_files": edit.base_files, "checkpoint_bytes": edit.checkpoint_bytes,
            "adapter_bytes": adapter_bytes, "delta_sha256": file_sha256(d.path),
            "base_tensors": d.base_tensors, "lora_bias": edit.plan.lora_bias,
            "ranks": edit.plan.ranks, "heads": d.heads, "touched_heads": d.touched_heads}


def is_lora_dir(path: Path) -> bool:
    """An adapter directory this exporter wrote (what ``--force`` may replace)."""
    from headsurgeon.core.paths import kind_of

    if kind_of(path) != "directory" or kind_of(path / LORA_MANIFEST) != "file":
        return False
    try:
        obj = json.loads((path / LORA_MANIFEST).read_text("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and obj.get("format") == LORA_FORMAT


def check_adapter_dir(path: Path) -> dict:
    """Before a push: ``path`` is an adapter directory this exporter wrote, its config a
    peft LoRA config, its weights' header valid, its card there. Returns the adapter's
    size and the full checkpoint's."""
    from headsurgeon.model.safetensors_io import read_header

    if not is_lora_dir(path):
        raise ValidationError(f"not a LoRA adapter directory (no valid {LORA_MANIFEST}); "
                              "write one with `headsurgeon export RUN --lora DIR`",
                              file=str(path))
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        raise ValidationError("missing or not valid JSON", file=str(path / ADAPTER_CONFIG)
                              ) from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise ValidationError("not a peft LoRA config", file=str(path / ADAPTER_CONFIG),
                              field="peft_type")
    if not (path / "README.md").is_file():
        raise ValidationError("no model card (README.md); `headsurgeon export --lora` "
                              "writes one", file=str(path))
    read_header(path / ADAPTER_WEIGHTS)  # a valid header before anything is sent
    manifest = json.loads((path / LORA_MANIFEST).read_text("utf-8"))
    return {"adapter_bytes": (path / ADAPTER_WEIGHTS).stat().st_size,
            "checkpoint_bytes": manifest.get("checkpoint_bytes")}


def _check_out(out: Path, force: bool) -> None:
    from headsurgeon.core.paths import check_replace

    check_replace(out, force=force, ours=is_lora_dir, what="a LoRA adapter directory")


def write_adapter(edit: LoraEdit, out: str | os.PathLike, *, force: bool = False) -> dict:
    """Write the peft adapter directory ``out``; returns a summary."""
    from headsurgeon.apply.lora_card import render_lora_card
    from headsurgeon.core.atomic import atomic_directory, atomic_write_json, atomic_write_text
    from headsurgeon.model.safetensors_write import save_tensors

    out = Path(out)
    _check_out(out, force)
    config = lora_config(edit.plan, edit.base_model)
    tensors = peft_tensors(edit.plan, edit.values)
    with atomic_directory(out, force=force, ours=is_lora_dir,
                          what="a LoRA adapter directory") as tmp:
        save_tensors(tmp / ADAPTER_WEIGHTS, tensors, ADAPTER_METADATA, atomic=False)
        size = (tmp / ADAPTER_WEIGHTS).stat().st_size
        atomic_write_text(tmp / ADAPTER_CONFIG, json.dumps(config, indent=2) + "\n")
        manifest = lora_manifest(edit, size)
        atomic_write_json(tmp / LORA_MANIFEST, manifest, indent=2, sort_keys=True)
        atomic_write_text(tmp / "README.md", render_lora_card(edit.plan, manifest))
        _plain_modes(tmp)
    return {"path": str(out), "modules": len(edit.plan.modules),
            "ranks": sorted(set(edit.plan.ranks.values())), "lora_bias": edit.plan.lora_bias,
            "bytes": size, "checkpoint_bytes": edit.checkpoint_bytes}


def _plain_modes(tmp: Path) -> None:
    """Ordinary permissions (temporary directories are created 0700, files 0600)."""
    mask = os.umask(0o22)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)
    for f in tmp.iterdir():
        os.chmod(f, 0o666 & ~mask)


def export_lora(source, lora_out=None, gguf_out=None, *, base: str | None = None,
                force: bool = False) -> dict:
    """The edit behind ``source`` as a peft adapter directory and/or a llama.cpp GGUF
    LoRA. Everything both outputs need is checked before either is written."""
    from headsurgeon.apply.export_lora_gguf import check_gguf_lora, write_gguf_lora

    if lora_out is None and gguf_out is None:
        raise ValidationError("give --lora OUT and/or --lora-gguf OUT.gguf")
    started = time.perf_counter()
    edit = load_edit(source, base)
    if lora_out is not None:
        _check_out(Path(lora_out), force)
    if gguf_out is not None:
        check_gguf_lora(edit, Path(gguf_out), force)
    out: dict = {"base": edit.base_model, "checkpoint_bytes": edit.checkpoint_bytes}
    if lora_out is not None:
        out["lora"] = write_adapter(edit, lora_out, force=force)
    if gguf_out is not None:
        out["gguf"] = write_gguf_lora(edit, Path(gguf_out), force=force)
    out["seconds"] = round(time.perf_counter() - started, 2)
    return out


def format_export_lora(summary: dict) -> str:
    """What the CLI prints: each file written, its size next to the full checkpoint's."""
    full = summary["checkpoint_bytes"]
    lines = []
    if "lora" in summary:
        s = summary["lora"]
        lines.append(f"wrote {s['path']} (peft LoRA adapter, {s['modules']} modules, rank "
                     f"{'/'.join(map(str, s['ranks']))}"
                     f"{', lora_bias' if s['lora_bias'] else ''}, {_mb(s['bytes'])}; the full "
                     f"checkpoint is {_mb(full)})")
    if "gguf" in summary:
        s = summary["gguf"]
        lines.append(f"wrote {s['path']} (llama.cpp LoRA, {s['architecture']}, {s['tensors']} "
                     f"tensors, rank {s['rank']}, {_mb(s['bytes'])}; the full checkpoint is "
                     f"{_mb(full)})")
    return "\n".join(lines)


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 10_000 else f"{n} bytes"
