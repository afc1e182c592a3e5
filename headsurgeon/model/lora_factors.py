"""A head-slice delta as exact LoRA factors, one pair per edited projection.

A delta changes whole rows or whole columns of a projection (``W`` as ``nn.Linear`` holds
it, ``out x in``), so the change is exactly low rank:

- rows ``R`` of ``W`` (q/k/v rows of some heads): ``B`` is the ``out x |R|`` selection
  matrix (column ``i`` one-hot at ``R[i]``) and ``A = dW[R, :]``;
- columns ``C`` (o_proj inputs of some heads): ``A`` is the ``|C| x in`` selection matrix
  (row ``i`` one-hot at ``C[i]``) and ``B = dW[:, C]``.

``B @ A`` is then ``dW`` bit for bit (every element is one product with 1.0 plus zeros),
so ``W + B @ A`` rebuilds the merged weight exactly. Edited bias entries (q/k/v biases of
Qwen2-style models) go to ``lora_B``'s bias (peft's ``lora_bias``). Conv1D weights (GPT-2,
stored ``in x out``) are turned to the ``nn.Linear`` orientation first, as peft's
``fan_in_fan_out`` expects. The values are the delta's own for float32 bases (the merge
rule then gives the shipped tensor exactly); for half-precision bases they are the change
the shipped checkpoint really holds, ``merged - base`` after rounding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from headsurgeon.core.errors import ValidationError
from headsurgeon.model.delta import Delta, DeltaSlice, merge_slice

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_METADATA = {"format": "pt"}  # what peft's own save_pretrained writes
PEFT_PREFIX = "base_model.model."


@dataclass
class LoraModule:
    """One edited projection: which of its rows (or columns) moved, and by which slices."""

    module: str                 # module path in the loaded model (peft's key)
    weight: str                 # the checkpoint tensor the factors rebuild
    out_features: int
    in_features: int
    conv1d: bool
    kind: str = "bias"          # rows | cols | bias (only bias entries moved)
    index: list[int] = field(default_factory=list)   # edited rows or columns, ascending
    slices: list[DeltaSlice] = field(default_factory=list)
    bias: str | None = None     # its bias tensor, when the edit changes it
    bias_slices: list[DeltaSlice] = field(default_factory=list)

    @property
    def rank(self) -> int:
        return max(1, len(self.index))  # a bias-only edit still needs one (zero) factor


@dataclass
class LoraPlan:
    delta: Delta
    cfg: dict
    modules: list[LoraModule]   # sorted by module path

    @property
    def lora_bias(self) -> bool:
        return any(m.bias_slices for m in self.modules)

    @property
    def ranks(self) -> dict[str, int]:
        return {m.module: m.rank for m in self.modules}

    @property
    def conv1d(self) -> bool:
        return any(m.conv1d for m in self.modules)


def _projection_names(hm) -> dict[str, str]:
    """``{weight name: module path}`` for every attention projection, under the loaded
    model's names and under the same names without the base-model prefix (how a real
    GPT-2 checkpoint stores them)."""
    parts = ("q", "k", "v", "o") if hm.arch.layout == "separate" else ("qkv", "o")
    names: dict[str, str] = {}
    for layer in range(hm.n_layers):
        for part in parts:
            module = hm.module(layer, part)
            names[f"{module}.weight"] = module
            names.setdefault(f"{module.partition('.')[2]}.weight", module)
    return names


def plan_lora(delta: Delta, cfg: dict, param_names=()) -> LoraPlan:
    """Which projections the delta edits and how (rows or columns); a slice LoRA cannot
    carry (a norm, an embedding, a full fine-tune's MLP) is refused with its name."""
    from headsurgeon.model.heads import HeadMap

    hm = HeadMap.from_config(cfg, param_names=param_names)
    names = _projection_names(hm)
    if not delta.slices:
        raise ValidationError("the delta changes nothing: there is no adapter to write",
                              file=str(delta.path))
    modules: dict[str, LoraModule] = {}
    for s in delta.slices:
        stem, _, suffix = s.param.rpartition(".")
        module = names.get(f"{stem}.weight") if suffix in ("weight", "bias") else None
        if module is None:
            raise ValidationError(
                f"delta slice {s.key} is not in an attention projection (q/k/v/o); a LoRA "
                "adapter carries head-slice edits only", file=str(delta.path))
        weight = f"{stem}.weight"
        shape = _shape(delta, weight, s)
        out_f, in_f = (shape[1], shape[0]) if hm.arch.conv1d else (shape[0], shape[1])
        m = modules.setdefault(module, LoraModule(module, weight, out_f, in_f, hm.arch.conv1d))
        if suffix == "bias":
            m.bias = s.param
            m.bias_slices.append(s)
        else:
            m.slices.append(s)
    for m in modules.values():
        _set_index(m, delta)
    return LoraPlan(delta, cfg, [modules[k] for k in sorted(modules)])


def _shape(delta: Delta, weight: str, s: DeltaSlice) -> list[int]:
    rec = delta.base_tensors.get(weight)
    if rec is not None and len(rec["shape"]) == 2:
        return [int(d) for d in rec["shape"]]
    if s.param != weight:  # a bias slice of a projection whose weight did not move
        raise ValidationError(f"delta slice {s.key} moves a bias whose weight {weight} the "
                              "delta does not record; cannot size its LoRA factors",
                              file=str(delta.path))
    raise ValidationError(f"delta tensor {weight} is not a matrix", file=str(delta.path))


def _set_index(m: LoraModule, delta: Delta) -> None:
    """Rows or columns (``nn.Linear`` orientation) the weight slices cover, in order."""
    if not m.slices:
        return
    axes = {s.axis if not m.conv1d else 1 - s.axis for s in m.slices}
    if len(axes) != 1:  # read_delta already refuses this; a plan never guesses
        raise ValidationError(f"delta edits both rows and columns of {m.weight}",
                              file=str(delta.path))
    m.kind = "rows" if axes.pop() == 0 else "cols"
    m.slices.sort(key=lambda s: s.start)
    m.index = [i for s in m.slices for i in range(s.start, s.stop)]


# ---------------------------------------------------------------- values and factors

def slice_values(plan: LoraPlan, base_dir: Path | None, index=None) -> dict[str, torch.Tensor]:
    """``{slice key: float32 change}``: the delta's values for float32 base tensors, the
    shipped change (``merge_slice(base) - base``, after rounding) for other dtypes."""
    from headsurgeon.model.safetensors_io import read_checkpoint_index, read_tensor

    d = plan.delta
    out: dict[str, torch.Tensor] = {}
    for param in d.params:
        slices = d.load_values(param)
        if d.base_tensors[param]["dtype"] == "F32":
            out.update({s.key: s.value.to(torch.float32) for s in slices})
            continue
        index = index or read_checkpoint_index(base_dir)
        base = read_tensor(index.shard_path(index[param]), param, index.headers[index[param]])
        for s in slices:
            region = base[s.index()]
            merged = merge_slice(region, replace(s, start=0, stop=s.stop - s.start))
            out[s.key] = merged.to(torch.float32) - region.to(torch.float32)
        del base
    return out


def _linear(value: torch.Tensor, m: LoraModule) -> torch.Tensor:
    """A weight slice's change in ``nn.Linear`` orientation (``out x in`` sub-block)."""
    return value.T if m.conv1d else value


def module_factors(m: LoraModule, values: dict[str, torch.Tensor]
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(A [r x in], B [out x r], bias change [out] or None)``, float32."""
    r = m.rank
    a = torch.zeros(r, m.in_features, dtype=torch.float32)
    b = torch.zeros(m.out_features, r, dtype=torch.float32)
    pos = 0
    for s in m.slices:
        v, n = _linear(values[s.key], m), s.stop - s.start
        if m.kind == "rows":
            a[pos:pos + n] = v
            b[torch.arange(s.start, s.stop), torch.arange(pos, pos + n)] = 1.0
        else:
            b[:, pos:pos + n] = v
            a[torch.arange(pos, pos + n), torch.arange(s.start, s.stop)] = 1.0
        pos += n
    bias = None
    if m.bias_slices:
        bias = torch.zeros(m.out_features, dtype=torch.float32)
        for s in m.bias_slices:
            bias[s.start:s.stop] = values[s.key]
    return a, b, bias


def peft_tensors(plan: LoraPlan, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter's tensors under peft's own names, sorted. With ``lora_bias`` every
    module carries a ``lora_B.bias`` (zeros where the edit leaves the bias alone), as peft
    creates one on every targeted layer."""
    out: dict[str, torch.Tensor] = {}
    for m in plan.modules:
        a, b, bias = module_factors(m, values)
        key = f"{PEFT_PREFIX}{m.module}"
        out[f"{key}.lora_A.weight"] = a
        out[f"{key}.lora_B.weight"] = b
        if plan.lora_bias:
            out[f"{key}.lora_B.bias"] = (bias if bias is not None
                                         else torch.zeros(m.out_features, dtype=torch.float32))
    return dict(sorted(out.items()))


def planned_entries(plan: LoraPlan) -> list[tuple[str, str, tuple[int, ...]]]:
    """``(name, dtype, shape)`` of every adapter tensor, in file order, without values."""
    out = []
    for m in plan.modules:
        key = f"{PEFT_PREFIX}{m.module}"
        out += [(f"{key}.lora_A.weight", "F32", (m.rank, m.in_features)),
                (f"{key}.lora_B.weight", "F32", (m.out_features, m.rank))]
        if plan.lora_bias:
            out.append((f"{key}.lora_B.bias", "F32", (m.out_features,)))
    return sorted(out)


def planned_adapter_bytes(plan: LoraPlan) -> int:
    """The exact size of ``adapter_model.safetensors`` for ``plan`` (nothing is read)."""
    from headsurgeon.model.safetensors_write import build_header

    entries = planned_entries(plan)
    data = sum(math.prod(shape) * 4 for _, _, shape in entries)
    return 8 + len(build_header(entries, ADAPTER_METADATA)) + data
