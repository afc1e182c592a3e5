"""THE definition of an attention head, per architecture. Everything else asks here.

A head h of layer l owns:
- its query rows (and bias entries) in W_Q, or in the q part of a fused QKV weight;
- the key/value rows of the KV group it reads (``h // (n_heads // n_kv_heads)``), shared
  with its GQA siblings;
- its input columns of W_O: the o_proj INPUT slice ``[h*d:(h+1)*d]`` is the head's output.

Architectures are data (:class:`ArchSpec`, JSON files registered by plugins); a model
type no plugin registers falls back to inference from the model's parameter names. Types
whose heads are NOT separable (OLMo-2's q/k norms span all heads) are ``refused`` by name,
and inference never guesses for an attention with a q_norm/k_norm.
Slices are contiguous ``[start, stop)`` ranges along one axis of one checkpoint tensor;
for Conv1D weights (GPT-2, stored ``[in, out]``) the axes are swapped accordingly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Literal, Mapping

import torch

from headsurgeon.core.errors import ValidationError

Layout = Literal["separate", "fused_concat", "fused_interleaved"]
KVPolicy = Literal["auto", "freeze", "own", "group"]

_CONFIG_KEYS = {
    "n_layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "n_heads": ("num_attention_heads", "n_head", "num_heads"),
    "n_kv_heads": ("num_key_value_heads", "num_kv_heads", "multi_query_group_num"),
    "hidden": ("hidden_size", "n_embd", "d_model"),
    "head_dim": ("head_dim",),
}

HOW_TO_ADD = ("add an architecture: a JSON file like plugins/architectures/llama.json "
              "(model_types, attention path, layout, q/k/v/o or qkv/o names) registered by a "
              "plugin's register_architectures hook; see docs/plugins.md")


@dataclass(frozen=True)
class ArchSpec:
    """Where the attention weights of one architecture family live."""

    name: str
    model_types: tuple[str, ...]
    attention: str                  # module path template with {layer}
    layout: Layout
    o: str
    q: str | None = None
    k: str | None = None
    v: str | None = None
    qkv: str | None = None
    conv1d: bool = False
    description: str = ""
    # model types whose weights look like this family's but whose heads are NOT separable
    # (or whose tensors live elsewhere): (model_type, why), refused by name
    refused: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_dict(cls, d: Mapping) -> "ArchSpec":
        d = dict(d)
        d["model_types"] = tuple(d.get("model_types", ()))
        d["refused"] = tuple((str(k), str(v)) for k, v in dict(d.get("refused", {})).items())
        spec = cls(**d)
        if spec.layout == "separate" and not (spec.q and spec.k and spec.v):
            raise ValueError(f"architecture {spec.name}: layout 'separate' needs q, k and v")
        if spec.layout != "separate" and not spec.qkv:
            raise ValueError(f"architecture {spec.name}: fused layouts need 'qkv'")
        return spec


@dataclass(frozen=True)
class ParamSlice:
    """Rows (axis 0) or columns (axis 1) ``[start, stop)`` of checkpoint tensor ``param``."""

    param: str
    axis: int
    start: int
    stop: int
    role: str  # q | k | v | o

    @property
    def key(self) -> str:
        return f"{self.param}@{self.axis}:{self.start}:{self.stop}"

    def index(self, tensor: torch.Tensor) -> tuple:
        sl = slice(self.start, self.stop)
        return (sl,) if self.axis == 0 else (slice(None), sl)


def _cfg_get(cfg: Mapping, key: str):
    for name in _CONFIG_KEYS[key]:
        if cfg.get(name) is not None:
            return cfg[name]
    return None


def config_dict(config) -> dict:
    if isinstance(config, Mapping):
        d = dict(config)
    else:
        d = config.to_dict()
    # multimodal wrappers keep the language model's numbers in text_config
    if _cfg_get(d, "n_heads") is None and isinstance(d.get("text_config"), Mapping):
        inner = dict(d["text_config"])
        inner.setdefault("model_type", d.get("model_type"))
        d = inner
    return d


@dataclass
class HeadMap:
    """Head geometry of one model plus the architecture's weight names."""

    arch: ArchSpec
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden: int
    model_type: str = ""
    param_names: frozenset[str] = field(default_factory=frozenset)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_config(cls, config, arch: ArchSpec | None = None,
                    param_names: Iterable[str] = ()) -> "HeadMap":
        outer = config if isinstance(config, Mapping) else config.to_dict()
        cfg = config_dict(config)
        model_type = str(cfg.get("model_type") or "")
        names = frozenset(param_names)
        if arch is None:  # an explicit arch is the caller's own claim
            check_not_refused(str(outer.get("model_type") or ""))  # e.g. a multimodal wrapper
            arch = find_arch(model_type, names)
        n_layers, n_heads, hidden = (_cfg_get(cfg, k) for k in ("n_layers", "n_heads", "hidden"))
        if not (n_layers and n_heads and hidden):
            raise ValidationError(f"config of model type {model_type!r} lacks layer/head/hidden "
                                  f"counts; {HOW_TO_ADD}")
        n_kv = _cfg_get(cfg, "n_kv_heads") or n_heads
        head_dim = _cfg_get(cfg, "head_dim") or hidden // n_heads
        if n_heads % n_kv:
            raise ValidationError(f"{n_heads} heads do not split into {n_kv} KV groups")
        if arch.layout == "fused_interleaved" and n_kv != n_heads:
            raise ValidationError(f"architecture {arch.name!r} interleaves q/k/v per head, so it "
                                  f"needs one KV head per query head, not {n_kv} for {n_heads}")
        return cls(arch, int(n_layers), int(n_heads), int(n_kv), int(head_dim), int(hidden),
                   model_type, names)

    @classmethod
    def from_model(cls, model, arch: ArchSpec | None = None) -> "HeadMap":
        names = [n for n, _ in model.named_parameters()]
        hm = cls.from_config(model.config, arch, names)
        hm.check_against(names)
        return hm

    def check_against(self, names: Iterable[str]) -> None:
        names = set(names)
        missing = [s.param for s in self.slices(0, 0, kv="group") if s.param not in names]
        if missing:
            raise ValidationError(
                f"architecture {self.arch.name!r} expects tensor {missing[0]!r}, which model type "
                f"{self.model_type!r} does not have; {HOW_TO_ADD}")

    # -- geometry -------------------------------------------------------------------------
    @property
    def group_size(self) -> int:
        return self.n_heads // self.n_kv_heads

    @property
    def multi_head_kv(self) -> bool:
        return self.n_kv_heads == self.n_heads

    @property
    def n_total_heads(self) -> int:
        return self.n_layers * self.n_heads

    def kv_head(self, head: int) -> int:
        return head // self.group_size

    def siblings(self, head: int) -> list[int]:
        g = self.kv_head(head)
        return list(range(g * self.group_size, (g + 1) * self.group_size))

    def all_heads(self) -> list[tuple[int, int]]:
        return [(l, h) for l in range(self.n_layers) for h in range(self.n_heads)]

    def check_head(self, layer: int, head: int) -> None:
        if not (0 <= layer < self.n_layers and 0 <= head < self.n_heads):
            raise ValidationError(f"head [{layer}, {head}] is outside the model "
                                  f"({self.n_layers} layers x {self.n_heads} heads)")

    def resolve_kv(self, kv: KVPolicy) -> str:
        """``auto`` = the paper: own k/v rows for multi-head models, frozen under GQA/MQA."""
        if kv == "auto":
            return "own" if self.multi_head_kv else "freeze"
        if kv == "own" and not self.multi_head_kv:
            raise ValidationError(
                f"kv policy 'own' needs one KV head per query head, but this model has "
                f"{self.n_heads} query heads sharing {self.n_kv_heads} KV heads; use "
                f"'freeze' or 'group'")
        return kv

    # -- names ----------------------------------------------------------------------------
    def module(self, layer: int, part: str) -> str:
        return f"{self.arch.attention.format(layer=layer)}.{getattr(self.arch, part)}"

    def o_module(self, layer: int) -> str:
        """The module whose INPUT holds the per-head outputs, concatenated."""
        return self.module(layer, "o")

    def output_range(self, head: int) -> tuple[int, int]:
        return head * self.head_dim, (head + 1) * self.head_dim

    def _with_bias(self, module: str, axis_w: int, start: int, stop: int, role: str,
                   bias: bool = True) -> list[ParamSlice]:
        out = [ParamSlice(f"{module}.weight", axis_w, start, stop, role)]
        if bias and (not self.param_names or f"{module}.bias" in self.param_names):
            out.append(ParamSlice(f"{module}.bias", 0, start, stop, role))
        return out

    def _proj_rows(self, layer: int, role: str, index: int) -> list[ParamSlice]:
        """Output-feature range of q head ``index`` (role q) or KV head ``index`` (k/v)."""
        d, a = self.head_dim, self.arch
        row_axis = 1 if a.conv1d else 0
        if a.layout == "separate":
            return self._with_bias(self.module(layer, role), row_axis, index * d, (index + 1) * d,
                                   role)
        q_size, kv_size = self.n_heads * d, self.n_kv_heads * d
        if a.layout == "fused_concat":
            base = {"q": 0, "k": q_size, "v": q_size + kv_size}[role]
            start = base + index * d
        else:  # fused_interleaved: per head [q | k | v], multi-head only
            start = index * 3 * d + {"q": 0, "k": d, "v": 2 * d}[role]
        return self._with_bias(self.module(layer, "qkv"), row_axis, start, start + d, role)

    def q_slices(self, layer: int, head: int) -> list[ParamSlice]:
        return self._proj_rows(layer, "q", head)

    def kv_slices(self, layer: int, head: int) -> list[ParamSlice]:
        g = self.kv_head(head)
        return self._proj_rows(layer, "k", g) + self._proj_rows(layer, "v", g)

    def o_slices(self, layer: int, head: int) -> list[ParamSlice]:
        start, stop = self.output_range(head)
        col_axis = 0 if self.arch.conv1d else 1
        return self._with_bias(self.o_module(layer), col_axis, start, stop, "o", bias=False)

    def slices(self, layer: int, head: int, kv: KVPolicy = "auto") -> list[ParamSlice]:
        """Every tensor slice that belongs to head ``(layer, head)`` under a kv policy."""
        self.check_head(layer, head)
        kv = self.resolve_kv(kv)
        out = self.q_slices(layer, head) + self.o_slices(layer, head)
        if kv in ("own", "group"):
            out += self.kv_slices(layer, head)
        return out

    def slices_for(self, heads: Iterable[tuple[int, int]], kv: KVPolicy = "auto"
                   ) -> list[ParamSlice]:
        """Deduplicated slices of several heads (GQA siblings share k/v rows)."""
        seen: dict[str, ParamSlice] = {}
        for layer, head in heads:
            for s in self.slices(layer, head, kv):
                seen.setdefault(s.key, s)
        return sorted(seen.values(), key=lambda s: (s.param, s.axis, s.start))

    def owners(self, param: str, axis: int, index: int) -> list[tuple[int, int, str]]:
        """Which (layer, head, role) own element ``index`` along ``axis`` of ``param``."""
        out = []
        for layer, head in self.all_heads():
            for s in self.slices(layer, head, kv="group" if not self.multi_head_kv else "own"):
                if s.param == param and s.axis == axis and s.start <= index < s.stop:
                    out.append((layer, head, s.role))
        return out

    # -- per-head view of activations -------------------------------------------------------
    def split_heads(self, o_input: torch.Tensor) -> torch.Tensor:
        """``[..., n_heads*head_dim]`` o_proj input -> ``[..., n_heads, head_dim]``."""
        return o_input.unflatten(-1, (self.n_heads, self.head_dim))

    def head_contributions(self, o_input: torch.Tensor, o_weight: torch.Tensor) -> torch.Tensor:
        """Each head's write to the residual stream through W_O: ``[..., n_heads, hidden]``
        (o_proj bias excluded; the contributions plus the bias sum to the o_proj output)."""
        w = o_weight if self.arch.conv1d else o_weight.T  # -> [in, out]
        w = w.reshape(self.n_heads, self.head_dim, -1)
        return torch.einsum("...hd,hdo->...ho", self.split_heads(o_input), w)


# -- architecture registry ---------------------------------------------------------------------
def find_arch(model_type: str, param_names: frozenset[str] = frozenset()) -> ArchSpec:
    from headsurgeon.core.plugins import get_architectures

    archs = get_architectures()
    check_not_refused(model_type)
    for spec in archs.values():
        if model_type in spec.model_types:
            return spec
    inferred = infer_arch(param_names, archs.values())
    if inferred is not None:
        norms = _qk_norms(inferred, param_names)
        if norms:
            raise ValidationError(
                f"model type {model_type!r} is not registered and its attention has "
                f"{norms[0]!r}: such a norm may normalise across all heads (as OLMo-2's "
                f"does), so heads are not known to be separable; {HOW_TO_ADD}")
        return inferred
    raise ValidationError(f"unsupported architecture (model_type {model_type!r}); {HOW_TO_ADD}")


def check_not_refused(model_type: str) -> None:
    """A model type some architecture lists as ``refused`` fails here, with its reason."""
    from headsurgeon.core.plugins import get_architectures

    for spec in get_architectures().values():
        why = dict(spec.refused).get(model_type)
        if why:
            raise ValidationError(f"model type {model_type!r} is not supported: {why}")


def _qk_norms(spec: ArchSpec, param_names: frozenset[str]) -> list[str]:
    att = spec.attention.format(layer=0)
    return [n for n in (f"{att}.q_norm.weight", f"{att}.k_norm.weight") if n in param_names]


def infer_arch(param_names: frozenset[str], specs: Iterable[ArchSpec]) -> ArchSpec | None:
    """Fallback for unregistered model types: the first known layout whose layer-0 weight
    names all exist in the model."""
    if not param_names:
        return None
    for spec in specs:
        parts = ("q", "k", "v", "o") if spec.layout == "separate" else ("qkv", "o")
        att = spec.attention.format(layer=0)
        if all(f"{att}.{getattr(spec, p)}.weight" in param_names for p in parts):
            return spec
    return None
