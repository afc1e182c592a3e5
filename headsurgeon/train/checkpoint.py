"""Training checkpoints: safetensors + a JSON sidecar, never pickle.

``<stem>.ckpt-<step>.safetensors`` holds the trainable tensors (``param/<name>``), the
AdamW state (``opt/<name>/exp_avg|exp_avg_sq|step``) and torch's RNG state
(``rng/torch``); ``<stem>.ckpt.json`` holds the step, the recipe hash, the heads, the loss
log so far, the name of its tensor file and that file's sha256. Both are written
atomically, tensors first, and older tensor files are removed only after the JSON names
the new one: a kill at any moment leaves a JSON naming a complete tensor file (the
previous step's, at worst). Only the latest checkpoint is kept.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
import torch

from headsurgeon.core.atomic import atomic_write_json
from headsurgeon.core.errors import CheckpointError
from headsurgeon.model.safetensors_io import (file_sha256, iter_tensors, read_header)
from headsurgeon.model.safetensors_write import (save_tensors)

FORMAT = "headsurgeon.train-checkpoint/1"


@dataclass
class CheckpointState:
    step: int
    meta: dict
    tensors: dict[str, torch.Tensor]


class Checkpoints:
    def __init__(self, out: Path):
        out = Path(out)
        self.out = out
        self.json_path = out.with_name(out.stem + ".ckpt.json")

    def tensors_file(self, step: int) -> Path:
        return self.out.with_name(f"{self.out.stem}.ckpt-{step:07d}.safetensors")

    def _tensor_files(self) -> list[Path]:
        return sorted(self.out.parent.glob(f"{self.out.stem}.ckpt-*.safetensors"))

    def exists(self) -> bool:
        return self.json_path.is_file()

    def save(self, step: int, named: list, optimizer: torch.optim.Optimizer, meta: dict
             ) -> None:
        tensors: dict[str, torch.Tensor] = {}
        for name, p in named:
            tensors[f"param/{name}"] = p.detach().cpu().contiguous()
            for key, value in sorted(optimizer.state.get(p, {}).items()):
                if not torch.is_tensor(value):
                    value = torch.tensor(value)
                tensors[f"opt/{name}/{key}"] = value.detach().cpu().contiguous()
        tensors["rng/torch"] = torch.get_rng_state()
        path = self.tensors_file(step)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_tensors(path, tensors, {"format": FORMAT, "step": str(step)}, atomic=True)
        atomic_write_json(self.json_path, {"format": FORMAT, "step": step, **meta,
                                           "tensors_file": path.name,
                                           "tensors_sha256": file_sha256(path)})
        for old in self._tensor_files():  # older steps, and any a kill orphaned
            if old != path:
                old.unlink(missing_ok=True)

    def load(self, *, recipe_hash: str, train_hash: str, objective: str, heads: list
             ) -> CheckpointState:
        """Read and check the latest checkpoint; CheckpointError names what disagrees."""
        where = str(self.json_path)
        try:
            meta = json.loads(self.json_path.read_text())
        except FileNotFoundError:
            raise CheckpointError("no checkpoint to resume from (train without --resume)",
                                  file=where) from None
        except (OSError, ValueError, RecursionError) as exc:
            raise CheckpointError(f"unreadable checkpoint: {exc}", file=where) from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(f"not a {FORMAT} file", file=where)
        if meta.get("recipe_hash") != recipe_hash or meta.get("train_hash") != train_hash:
            raise CheckpointError("checkpoint was written by another recipe (recipe hash "
                                  f"{str(meta.get('recipe_hash'))[:12]}, this recipe "
                                  f"{recipe_hash[:12]}); remove it or train without --resume",
                                  file=where, field="recipe_hash")
        if meta.get("objective") != objective or meta.get("heads") != heads:
            raise CheckpointError("checkpoint was trained with other heads or another "
                                  "objective; remove it or train without --resume", file=where)
        name = meta.get("tensors_file", f"{self.out.stem}.ckpt.safetensors")  # or older
        if not isinstance(name, str) or Path(name).name != name or not name:
            raise CheckpointError("tensors_file must name a file beside it", file=where,
                                  field="tensors_file")
        path = self.json_path.with_name(name)
        if not path.is_file():
            raise CheckpointError("checkpoint tensors are missing", file=str(path))
        if file_sha256(path) != meta.get("tensors_sha256"):
            raise CheckpointError("checkpoint tensors do not match their JSON (edited?)",
                                  file=str(path))
        header = read_header(path)
        if str(meta.get("step")) != (header.metadata or {}).get("step"):
            raise CheckpointError("checkpoint step disagrees with its tensors", file=str(path))
        tensors = dict(iter_tensors(path, header))
        return CheckpointState(int(meta["step"]), meta, tensors)

    @staticmethod
    def restore(state: CheckpointState, named: list, optimizer: torch.optim.Optimizer) -> None:
        with torch.no_grad():
            for name, p in named:
                value = state.tensors.get(f"param/{name}")
                if value is None:
                    raise CheckpointError(f"checkpoint lacks trainable tensor {name}")
                if value.shape != p.shape or value.dtype != p.dtype:
                    raise CheckpointError(f"checkpoint tensor {name} is {value.dtype} "
                                          f"{list(value.shape)}, the run has {p.dtype} "
                                          f"{list(p.shape)}")
                p.copy_(value)
                prefix = f"opt/{name}/"
                opt_state = {k[len(prefix):]: v.clone() for k, v in state.tensors.items()
                             if k.startswith(prefix)}
                if opt_state:
                    optimizer.state[p] = opt_state
        torch.set_rng_state(state.tensors["rng/torch"])
