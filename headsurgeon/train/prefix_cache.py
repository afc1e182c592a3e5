"""Frozen-prefix training: the layers below the lowest trained one run once per sequence.

No weight below the lowest layer ``L`` that holds a trained parameter changes during
training, so the hidden states entering layer ``L`` are a function of the input tokens
alone. :class:`PrefixCache` hooks the model: every forward (training, teacher and anchor
passes alike) looks up each row's states by its tokens; rows not seen yet run once
through layers ``0..L-1`` (no gradient; the forward stops at ``L``); then the forward
runs with layers ``0..L-1`` passed through and layer ``L`` given the cached states. The
model's own forward still builds the embeddings' shape, the position ids, the rotary
embeddings and the attention masks, exactly as without the cache; only the prefix
layers' compute is skipped. Padded positions hold zeros: no real position attends to
them and they carry no loss, so they change nothing.

The cache is used only where it is exact, decided from the trainable parameters, not
the objective's name: off when any trained parameter sits below the first decoder layer
or outside the layers (full SFT, peft LoRA on every layer), when dropout is active (the
prefix would be random), and for a model split across devices. A forward it cannot key
(embeddings passed in, a KV cache, non-contiguous masks or positions) runs in full.
"""
from __future__ import annotations

import re
from typing import Optional

import torch

from headsurgeon.train.prefix_store import PrefixStore, module_digest, spec_key


class _Stop(Exception):
    """Ends a capture pass at the lowest trained layer."""


def layers_path(hm) -> str:
    """Module path of the decoder layers' list (``model.layers``), from the head map."""
    return hm.arch.attention.split(".{layer}", 1)[0]


def lowest_trained_layer(model, path: str, n_layers: int, params) -> tuple[Optional[int], str]:
    """The lowest decoder layer holding a trained parameter, or (None, why not)."""
    names = {id(p): n for n, p in model.named_parameters()}
    trained = [p for p in model.parameters() if p.requires_grad] + list(params)
    pattern = re.compile(re.escape(path) + r"\.(\d+)\.")
    lowest = n_layers
    for p in trained:
        name = names.get(id(p))
        if name is None:
            return None, "a trained parameter is not the model's"
        m = pattern.match(name)
        if m is None:
            return None, f"{name} trains outside the decoder layers"
        lowest = min(lowest, int(m.group(1)))
    if lowest == 0:
        return None, "layer 0 trains"
    return lowest, ""


def has_dropout(model) -> bool:
    """Any dropout module above zero, or a functional attention dropout rate above zero
    (Llama-family attention reads ``config.attention_dropout``)."""
    if any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules()):
        return True
    rate = getattr(getattr(model, "config", None), "attention_dropout", 0.0)
    return isinstance(rate, (int, float)) and rate > 0


class PrefixCache:
    """Install with :meth:`install`, remove with :meth:`remove` (the model is then
    untouched); :meth:`summary` for the training log."""

    def __init__(self, model, path: str, layer: Optional[int], store: Optional[PrefixStore],
                 reason: str = ""):
        self.model, self.path, self.layer, self.store = model, path, layer, store
        self.reason = reason
        self.stats = {"forwards_from_cache": 0, "forwards_full": 0, "rows_computed": 0,
                      "rows_reused": 0}
        self._handles: list = []
        self._saved: list = []
        self._active = self._capturing = self._bypass = False
        self._pending: Optional[torch.Tensor] = None
        self._captured: Optional[torch.Tensor] = None
        self._dropout = False  # set by prefix_cache_for: dropout modules or rates above 0

    @property
    def enabled(self) -> bool:
        return self.layer is not None

    # ------------------------------------------------------------ install / remove
    def install(self) -> "PrefixCache":
        if not self.enabled or self._handles:
            return self
        layers = self.model.get_submodule(self.path)
        for i in range(self.layer):
            layer = layers[i]
            self._saved.append((layer, layer.__dict__.get("forward")))
            layer.forward = self._gate(layer.forward)
        self._handles = [
            layers[self.layer].register_forward_pre_hook(self._at_layer, with_kwargs=True),
            self.model.register_forward_pre_hook(self._before, with_kwargs=True),
            self.model.register_forward_hook(self._after, always_call=True)]
        return self

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        for layer, own in self._saved:
            if own is None:
                del layer.forward
            else:
                layer.forward = own
        self._saved = []
        self._active, self._pending = False, None
        if self.store is not None:
            self.store.close()

    def __enter__(self):
        return self.install()

    def __exit__(self, *exc):
        self.remove()

    def _gate(self, original):
        def forward(*args, **kwargs):
            if self._active:  # a frozen prefix layer: its output is replaced at layer L
                return args[0] if args else kwargs["hidden_states"]
            return original(*args, **kwargs)
        return forward

    def _at_layer(self, module, args, kwargs):
        if self._capturing:
            self._captured = args[0] if args else kwargs["hidden_states"]
            raise _Stop
        if self._active:
            if args:
                return (self._pending,) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": self._pending}
        return None

    def _after(self, module, args, output):
        if not self._bypass:
            self._active, self._pending = False, None

    # ------------------------------------------------------------ the forward
    def _before(self, module, args, kwargs):
        if self._bypass:
            return None
        self._active, self._pending = False, None
        rows = None if args else self._rows(kwargs)
        if rows is None:
            self.stats["forwards_full"] += 1
            return None
        ids, spans = rows[0], rows[3]
        found = self._lookup(*rows)
        self.stats["forwards_from_cache"] += 1
        ref = found[0]
        hidden = ref.new_zeros((ids.shape[0], ids.shape[1], ref.shape[-1]))
        for i, ((s, e), value) in enumerate(zip(spans, found)):
            hidden[i, s:e] = value.to(hidden.device)
        self._pending, self._active = hidden, True
        return None

    def _lookup(self, ids, mask, positions, spans, keys) -> list[torch.Tensor]:
        """Every row's cached states, computing (and keeping) the missing ones."""
        found = [self.store.get(k, ids.device) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            fresh = self._capture(ids, mask, positions, spans, missing)
            # one group, kept as one: a resumed run finds it whole or recomputes it whole
            self.store.put_group([keys[i] for i in missing], fresh)
            for i, value in zip(missing, fresh):
                found[i] = value
        self.stats["rows_computed"] += len(missing)
        self.stats["rows_reused"] += len(keys) - len(missing)
        return found

    def fill(self, **inputs) -> int:
        """Compute and keep the states of ``inputs``' rows (``input_ids``,
        ``attention_mask``...) without running the rest of the model; rows computed."""
        rows = self._rows(inputs) if self.enabled else None
        if rows is None:
            return 0
        before = self.stats["rows_computed"]
        self._lookup(*rows)
        return self.stats["rows_computed"] - before

    def _rows(self, kwargs):
        """(ids, mask, positions, per-row real spans, per-row keys), or None where the
        forward cannot be keyed by its rows' tokens."""
        ids = kwargs.get("input_ids")
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[1] == 0:
            return None
        if any(kwargs.get(k) is not None for k in ("inputs_embeds", "past_key_values", "cache")) \
                or kwargs.get("output_hidden_states") or kwargs.get("output_attentions") \
                or (self.model.training and self._dropout):
            return None  # the skipped layers' outputs would be asked for, or not keyable
        b, t = ids.shape
        mask = kwargs.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask
        pos = kwargs.get("position_ids")
        if mask.shape != ids.shape or (pos is not None and pos.shape not in ((b, t), (1, t))):
            return None
        pos = torch.arange(t, device=ids.device).expand(b, t) if pos is None else pos.expand(b, t)
        m, p, cpu_ids = mask.detach().cpu(), pos.detach().cpu(), ids.detach().cpu()
        spans, keys = [], []
        auto = _autocast_state(ids.device)
        for i in range(b):
            real = m[i].nonzero().flatten()
            if real.numel() == 0:
                return None
            s, e = int(real[0]), int(real[-1]) + 1
            p0 = int(p[i, s])
            if e - s != real.numel() or not torch.equal(
                    p[i, s:e], torch.arange(p0, p0 + e - s, dtype=p.dtype)):
                return None
            spans.append((s, e))
            keys.append(_row_key(cpu_ids[i, s:e], p0, auto))
        return ids, mask, pos, spans, keys

    def _capture(self, ids, mask, positions, spans, rows: list) -> list[torch.Tensor]:
        """Run ``rows`` through the prefix once; their states at their real positions."""
        lo = min(spans[i][0] for i in rows)
        hi = max(spans[i][1] for i in rows)
        sel = torch.tensor(rows, device=ids.device)
        self._bypass, self._capturing, self._captured = True, True, None
        try:
            with torch.no_grad():
                self.model(input_ids=ids[sel, lo:hi], attention_mask=mask[sel, lo:hi],
                           position_ids=positions[sel, lo:hi], use_cache=False)
        except _Stop:
            pass
        finally:
            self._bypass = self._capturing = False
        states, self._captured = self._captured, None
        if states is None:
            raise RuntimeError(f"the forward never reached decoder layer {self.layer}")
        return [states[j, spans[i][0] - lo:spans[i][1] - lo].detach().clone()
                for j, i in enumerate(rows)]

    def summary(self) -> dict:
        if not self.enabled:
            return {"used": False, "reason": self.reason}
        return {"used": True, "layer": self.layer, **self.stats,
                **(self.store.summary() if self.store is not None else {})}


def _autocast_state(device) -> str:
    kind = getattr(device, "type", str(device))
    try:
        on = torch.is_autocast_enabled(kind)
        return f"{kind}:{on}:{torch.get_autocast_dtype(kind) if on else ''}"
    except (TypeError, RuntimeError):
        return kind


def _row_key(ids: torch.Tensor, first_position: int, autocast: str) -> str:
    import hashlib

    h = hashlib.blake2b(digest_size=20)
    h.update(f"{first_position}:{autocast}:".encode())
    h.update(ids.to(torch.int64).contiguous().numpy())
    return h.hexdigest()


def prefix_cache_for(trainable, hm, *, mode: str = "auto", budget_mb: float = 1024.0,
                     disk_dir=None, training: bool = True) -> PrefixCache:
    """The cache for ``trainable`` (not installed yet); disabled, with its reason, where
    it would not be exact."""
    model = trainable.model
    path = layers_path(hm)
    if mode == "off":
        return PrefixCache(model, path, None, None, "train.prefix_cache is off")
    try:
        layers = model.get_submodule(path)
    except AttributeError:
        return PrefixCache(model, path, None, None, f"no decoder layers at {path}")
    if getattr(model, "hf_device_map", None):
        return PrefixCache(model, path, None, None, "the model is split across devices")
    layer, why = lowest_trained_layer(model, path, len(layers), trainable.parameters())
    dropout = has_dropout(model)
    if layer is not None and training and dropout:
        layer, why = None, "dropout is active (the frozen prefix would be random)"
    if layer is None:
        return PrefixCache(model, path, None, None, why)

    def spec() -> str:
        import transformers

        above = re.compile(re.escape(path) + r"\.(\d+)\.")
        skip = lambda n: bool((m := above.match(n)) and int(m.group(1)) >= layer)  # noqa: E731
        device = next(model.parameters()).device.type
        return spec_key({"weights": module_digest(model, skip), "layer": layer,
                         "config": model.config.to_json_string(use_diff=False),
                         "attention": getattr(model.config, "_attn_implementation", None),
                         "torch": torch.__version__, "transformers": transformers.__version__,
                         "device": device, "format": "prefix-cache-1"})

    store = PrefixStore(int(budget_mb * 2 ** 20), disk_dir, spec)
    cache = PrefixCache(model, path, layer, store)
    cache._dropout = dropout
    return cache
