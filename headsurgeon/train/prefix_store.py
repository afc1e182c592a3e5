"""Where the frozen prefix's hidden states live: memory up to a budget, then disk.

An entry is one token sequence's hidden states entering the lowest trained layer
(``[tokens, hidden]``). Its key names the sequence (token ids, first position, autocast
state); the *spec* names everything else the states depend on (the prefix's weights and
buffers, the config, the layer, the library versions, the device type), so an entry
written for another model, dtype or layer is never read back. Entries over the budget
are written as safetensors files under ``<dir>/<spec>/`` with their key and a checksum
of their bytes in the header; a file whose key, spec or checksum does not match is
recomputed and rewritten, never used.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Optional

import torch

FORMAT = 1


def tensor_digest(t: torch.Tensor) -> str:
    """blake2b of a tensor's dtype, shape and bytes."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{t.dtype}:{tuple(t.shape)}".encode())
    h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def module_digest(module: torch.nn.Module, skip: Callable[[str], bool]) -> str:
    """blake2b over the names, dtypes, shapes and bytes of every parameter and buffer of
    ``module`` whose name ``skip`` does not reject (shared tensors counted once)."""
    h = hashlib.blake2b(digest_size=16)
    seen: set = set()
    tensors = list(module.named_parameters(remove_duplicate=False)) + \
        list(module.named_buffers(remove_duplicate=False))
    for name, t in sorted(tensors, key=lambda nt: nt[0]):
        if skip(name) or (t.data_ptr(), t.dtype, tuple(t.shape)) in seen:
            continue
        seen.add((t.data_ptr(), t.dtype, tuple(t.shape)))
        h.update(name.encode())
        h.update(tensor_digest(t).encode())
    return h.hexdigest()


class PrefixStore:
    """``get``/``put`` of hidden states by key; ``spec`` (called at most once, when the
    disk is first needed) returns the key of what every entry depends on."""

    def __init__(self, budget_bytes: int, disk_dir: Optional[Path], spec: Callable[[], str]):
        self.budget = max(0, int(budget_bytes))
        self.disk_dir = Path(disk_dir) if disk_dir is not None else None
        # beside a run, every entry is also written through to disk: a run resumed after a
        # kill reads the states the killed run computed (in the batches it computed them
        # in), so its delta is byte-identical to an uninterrupted run's
        self.persistent = self.disk_dir is not None
        self._spec_fn, self._spec = spec, None
        self._tmp = None
        self.memory: dict[str, torch.Tensor] = {}
        self.on_disk: set[str] = set()
        self.memory_bytes = 0
        self.stats = {"memory_rows": 0, "disk_rows_written": 0, "disk_rows_read": 0,
                      "disk_rows_rejected": 0}

    @property
    def spilling(self) -> bool:
        """Whether entries go to disk (beside a run, or once the memory budget is spent)."""
        return self.persistent or self.memory_bytes >= self.budget or bool(self.on_disk)

    def _dir(self) -> Path:
        if self._spec is None:
            self._spec = self._spec_fn()
        base = self.disk_dir
        if base is None:  # no run directory: a temporary one, removed with the store
            import tempfile

            self._tmp = tempfile.TemporaryDirectory(prefix="headsurgeon-prefix-")
            base = self.disk_dir = Path(self._tmp.name)
        return base / self._spec[:24]

    def _path(self, key: str) -> Path:
        return self._dir() / f"{key}.safetensors"

    def get(self, key: str, device) -> Optional[torch.Tensor]:
        hit = self.memory.get(key)
        if hit is not None:
            return hit
        if not self.spilling:
            return None
        loaded = self._read(self._path(key))
        if loaded is None:
            return None
        self.stats["disk_rows_read"] += 1
        return loaded.to(device)

    def _read(self, path: Path) -> Optional[torch.Tensor]:
        from safetensors import SafetensorError, safe_open

        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                value = fh.get_tensor("hidden")
        except (OSError, SafetensorError, KeyError, ValueError, RuntimeError):
            value, meta = None, {}
        if (value is None or meta.get("key") != path.stem or meta.get("spec") != self._spec
                or meta.get("format") != str(FORMAT)
                or meta.get("digest") != tensor_digest(value)):
            self.stats["disk_rows_rejected"] += 1
            return None
        return value

    def put(self, key: str, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if self.memory_bytes + size <= self.budget and (self.persistent or not self.on_disk):
            self.memory[key] = value
            self.memory_bytes += size
            self.stats["memory_rows"] += 1
            if self.persistent:
                self._write(key, value)
            return
        self.memory_bytes = max(self.memory_bytes, self.budget)  # from now on: disk
        self._write(key, value)

    def put_group(self, keys: list[str], values: list[torch.Tensor]) -> None:
        """The rows one prefix pass computed together, in order."""
        for key, value in zip(keys, values):
            self.put(key, value)

    def _write(self, key: str, value: torch.Tensor) -> None:
        from safetensors.torch import save

        from headsurgeon.core.atomic import atomic_write_bytes

        cpu = value.detach().cpu().contiguous()
        meta = {"key": key, "spec": self._spec_or_compute(), "format": str(FORMAT),
                "digest": tensor_digest(cpu)}
        atomic_write_bytes(self._path(key), save({"hidden": cpu}, metadata=meta))
        self.on_disk.add(key)
        self.stats["disk_rows_written"] += 1

    def _spec_or_compute(self) -> str:
        self._dir()
        return self._spec

    def summary(self) -> dict:
        return {"budget_mb": round(self.budget / 2 ** 20, 3),
                "memory_mb": round(sum(v.numel() * v.element_size()
                                       for v in self.memory.values()) / 2 ** 20, 3),
                **self.stats}

    def close(self) -> None:
        self.memory.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def spec_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
