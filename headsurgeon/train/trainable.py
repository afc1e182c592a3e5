"""What training may move: separate delta tensors, never the base weights themselves.

Each touched weight is reparametrised (``torch.nn.utils.parametrize``) as
``W = W0`` everywhere except on its declared slices, where
``W[slice] = (W0[slice].float() + delta).to(stored)`` -- exactly the merge rule of
:func:`headsurgeon.model.delta.merge_slice` in the checkpoint's STORED dtype (a bfloat16
checkpoint trains against bfloat16-rounded weights even when it is loaded in float32, with
a straight-through gradient), so the in-memory model equals the applied checkpoint bit
for bit. ``W0`` has ``requires_grad=False`` and is not given to the optimiser, so
neither gradients nor weight decay can reach anything outside the slices.

A delta is either dense (one fp32 tensor of the slice's shape) or low-rank
(``scale * A @ B``, the paper's SPT+LoRA); both materialise into the same
:class:`~headsurgeon.model.delta.DeltaSlice` values.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from headsurgeon.model.delta import DeltaSlice
from headsurgeon.model.heads import HeadMap, ParamSlice


class DenseDelta(nn.Module):
    def __init__(self, shape: Sequence[int]):
        super().__init__()
        self.value = nn.Parameter(torch.zeros(tuple(shape), dtype=torch.float32))

    def forward(self) -> torch.Tensor:
        return self.value


class LowRankDelta(nn.Module):
    """``scale * A @ B`` with B zero-initialised (the edit starts at exactly zero)."""

    def __init__(self, shape: Sequence[int], rank: int, scale: float, generator: torch.Generator):
        super().__init__()
        rows, cols = (shape[0], 1) if len(shape) == 1 else tuple(shape)
        rank = max(1, min(rank, rows, cols))
        self.shape, self.scale = tuple(shape), float(scale)
        self.A = nn.Parameter(torch.randn(rows, rank, generator=generator) / rank ** 0.5)
        self.B = nn.Parameter(torch.zeros(rank, cols))

    def forward(self) -> torch.Tensor:
        return (self.scale * (self.A @ self.B)).reshape(self.shape)


class SliceEdit(nn.Module):
    """The parametrisation of one weight tensor: base outside, base + delta on slices."""

    def __init__(self, slices: list[ParamSlice], parts: list[nn.Module]):
        super().__init__()
        self.slices = list(slices)
        self.parts = nn.ModuleList(parts)
        self.enabled = True
        self.stored: Optional[torch.dtype] = None  # the checkpoint's dtype (None: base's)

    def forward(self, base: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return base
        out = base.clone()
        # never autocast: a bf16 matmul in a low-rank delta would differ from what ships
        with torch.autocast(base.device.type, enabled=False):
            for s, part in zip(self.slices, self.parts):
                idx = s.index(base)
                merged = base[idx].to(torch.float32) + part().to(torch.float32)
                out[idx] = round_to(merged, self.stored).to(base.dtype)
        return out


def round_to(x: torch.Tensor, dtype: Optional[torch.dtype]) -> torch.Tensor:
    """``x`` (float32) rounded to ``dtype``'s values, with a straight-through gradient."""
    if dtype is None or dtype == torch.float32:
        return x
    return x + (x.to(dtype).to(torch.float32) - x).detach()


@dataclass
class Trainable:
    """The contract between an objective and the trainer.

    ``model`` is what the forward runs on (a peft wrapper for LoRA); ``parameters`` the
    ordered, named tensors the optimiser owns (also what checkpoints save);
    ``delta_slices()`` the artifact's content; ``base()`` a context in which the model
    behaves as the untouched base (for KL regularisers)."""

    model: nn.Module
    named: list[tuple[str, nn.Parameter]]
    heads: list = field(default_factory=list)
    touched_heads: list = field(default_factory=list)
    kv_policy: str = ""

    def parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named]

    @property
    def n_trainable(self) -> int:
        return sum(p.numel() for _, p in self.named)

    def delta_slices(self) -> list[DeltaSlice]:  # pragma: no cover - abstract
        raise NotImplementedError

    def ship_as(self, stored: dict) -> None:
        """``{model parameter name: torch dtype}`` the checkpoint stores each weight in:
        the forward must see the weights that will ship."""
        self.stored = dict(stored)

    def finish(self) -> None:
        """Called once training ends (the model then equals the shipped checkpoint)."""

    @contextlib.contextmanager
    def base(self) -> Iterator[None]:  # pragma: no cover - abstract
        raise NotImplementedError
        yield

    def detach(self) -> nn.Module:
        """Undo the training wrappers, leaving the model with its ORIGINAL weights."""
        return self.model


def _split(name: str) -> tuple[str, str]:
    module, _, attr = name.rpartition(".")
    return module, attr


class SliceTrainable(Trainable):
    """Delta tensors on declared slices of named weights (SPT, random heads, SPT+LoRA)."""

    def __init__(self, model: nn.Module, slices: Sequence[ParamSlice], *,
                 slice_heads: Optional[dict] = None, heads=(), touched_heads=(), kv_policy="",
                 rank: int = 0, scale: float = 1.0, seed: int = 0):
        by_param: dict[str, list[ParamSlice]] = {}
        for s in sorted(slices, key=lambda s: (s.param, s.axis, s.start)):
            by_param.setdefault(s.param, []).append(s)
        params = dict(model.named_parameters())
        gen = torch.Generator().manual_seed(seed)
        named: list[tuple[str, nn.Parameter]] = []
        self.edits: dict[str, SliceEdit] = {}
        for p in model.parameters():
            p.requires_grad_(False)
        for pname, group in by_param.items():
            if pname not in params:
                raise KeyError(f"model has no parameter {pname!r}")
            base = params[pname]
            parts = []
            for s in group:
                shape = list(base.shape)
                shape[s.axis] = s.stop - s.start
                part = (LowRankDelta(shape, rank, scale, gen) if rank else DenseDelta(shape))
                parts.append(part.to(base.device))  # a split model: beside its weight
                for sub, t in part.named_parameters():
                    named.append((f"{s.key}.{sub}", t))
            edit = SliceEdit(group, parts)
            module_name, attr = _split(pname)
            module = model.get_submodule(module_name)
            parametrize.register_parametrization(module, attr, edit, unsafe=True)
            module.parametrizations[attr].original.requires_grad_(False)
            self.edits[pname] = edit
        super().__init__(model, named, [list(h) for h in heads],
                         [list(h) for h in touched_heads], kv_policy)
        self.slice_heads = slice_heads or {}

    def ship_as(self, stored: dict) -> None:
        super().ship_as(stored)
        for pname, edit in self.edits.items():
            edit.stored = stored.get(pname)

    def delta_slices(self) -> list[DeltaSlice]:
        out = []
        with torch.no_grad():
            for edit in self.edits.values():
                for s, part in zip(edit.slices, edit.parts):
                    out.append(DeltaSlice(s.param, s.axis, s.start, s.stop, s.role,
                                          self.slice_heads.get(s.key, []),
                                          part().detach().to(torch.float32).clone()))
        return out

    @contextlib.contextmanager
    def base(self) -> Iterator[None]:
        for e in self.edits.values():
            e.enabled = False
        try:
            yield
        finally:
            for e in self.edits.values():
                e.enabled = True

    def base_tensor(self, pname: str) -> torch.Tensor:
        module_name, attr = _split(pname)
        return self.model.get_submodule(module_name).parametrizations[attr].original

    def detach(self) -> nn.Module:
        for pname in list(self.edits):
            module_name, attr = _split(pname)
            parametrize.remove_parametrizations(self.model.get_submodule(module_name), attr,
                                                leave_parametrized=False)
        self.edits.clear()
        return self.model


def head_slices(hm: HeadMap, heads: Iterable[tuple[int, int]], kv: str
                ) -> tuple[list[ParamSlice], dict[str, list], list]:
    """Deduplicated slices of ``heads`` under resolved kv policy ``kv``, which selected heads
    own each slice, and every head whose weights are touched (GQA siblings under 'group')."""
    heads = [tuple(h) for h in heads]
    owners: dict[str, list] = {}
    for layer, head in heads:
        for s in hm.slices(layer, head, kv):
            owners.setdefault(s.key, []).append([layer, head])
    touched = set(heads)
    if kv == "group" and not hm.multi_head_kv:
        touched |= {(layer, sib) for layer, head in heads for sib in hm.siblings(head)}
    return hm.slices_for(heads, kv), owners, [list(h) for h in sorted(touched)]


def slice_trainable(model: nn.Module, hm: HeadMap, heads, kv: str, *, rank: int = 0,
                    scale: float = 1.0, seed: int = 0) -> SliceTrainable:
    slices, owners, touched = head_slices(hm, heads, kv)
    return SliceTrainable(model, slices, slice_heads=owners, heads=sorted(map(tuple, heads)),
                          touched_heads=touched, kv_policy=kv, rank=rank, scale=scale,
                          seed=seed)


class FullTrainable(Trainable):
    """Every parameter trains in place (the full-SFT baseline); the delta is whole tensors.

    A model loaded in a half dtype trains in float32 (master weights; ``train.dtype``
    bfloat16 keeps the matmuls in bfloat16): an AdamW step at a full-SFT learning rate
    (~3e-5) is below a bfloat16 weight's rounding step and would mostly be lost. The
    model returns to its dtype when training ends, so it is evaluated as the others are."""

    def __init__(self, model: nn.Module, checkpoint_names: Optional[set] = None):
        named = []
        self.base_copy: dict[str, torch.Tensor] = {}
        self.final: dict[str, torch.Tensor] = {}  # deltas frozen by finish()
        self.loaded_dtype = next((p.dtype for p in model.parameters()
                                  if p.dtype in (torch.bfloat16, torch.float16)), None)
        for name, p in model.named_parameters():
            if checkpoint_names is None or name in checkpoint_names:
                self.base_copy[name] = p.detach().clone()  # in the loaded dtype
        if self.loaded_dtype is not None:
            model.float()
        for name, p in model.named_parameters():
            if checkpoint_names is not None and name not in checkpoint_names:
                p.requires_grad_(False)
                continue
            p.requires_grad_(True)
            named.append((name, p))
        super().__init__(model, named, [], [], "")

    def _restore_dtype(self) -> None:
        if self.loaded_dtype is not None:
            self.model.to(self.loaded_dtype)
            self.named = [(n, p) for n, p in self.model.named_parameters() if n in self.base_copy]

    def _delta(self, name: str, p: torch.Tensor) -> torch.Tensor:
        if name in self.final:
            return self.final[name]
        return p.detach().to(torch.float32) - self.base_copy[name].to(torch.float32)

    def delta_slices(self) -> list[DeltaSlice]:
        with torch.no_grad():
            return [DeltaSlice(name, 0, 0, p.shape[0], "other", [], self._delta(name, p))
                    for name, p in self.named]

    def finish(self) -> None:
        """The trained weights become the merge rule's result in the stored dtype (what
        apply ships), so evaluating this model evaluates the shipped checkpoint."""
        stored = getattr(self, "stored", {})
        with torch.no_grad():
            for name, p in self.named:
                d = self._delta(name, p).clone()
                self.final[name] = d
                merged = self.base_copy[name].to(torch.float32) + d
                ship = stored.get(name, self.base_copy[name].dtype)
                p.copy_(merged.to(ship).to(p.dtype))
        self._restore_dtype()

    @contextlib.contextmanager
    def base(self) -> Iterator[None]:
        saved = {n: p.detach().clone() for n, p in self.named}
        with torch.no_grad():
            for n, p in self.named:
                p.copy_(self.base_copy[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.named:
                    p.copy_(saved[n])

    def detach(self) -> nn.Module:
        with torch.no_grad():
            for n, p in self.named:
                p.copy_(self.base_copy[n])
                p.requires_grad_(False)
        self._restore_dtype()
        return self.model
