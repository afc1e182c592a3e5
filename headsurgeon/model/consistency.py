"""THE model-source consistency check: does ``config.json`` describe the weights the
shards actually hold? Run by ``validate``, before every stage (through
:func:`headsurgeon.model.config.model_dir`) and before every load (``load_model``).

Read from headers only, in this order, so nothing grows with what the config claims
before the claim is checked against the weights:

1. the config's geometry: layer, head and hidden counts are positive integers, the heads
   split into KV groups and divide the hidden size (one line naming config.json and the
   field, never "add an architecture" for a count that is merely wrong);
2. every other ``*.json`` of the directory (tokenizer, tokenizer_config...) parses;
3. the layers the shards hold (``<prefix>.<i>.*``) are exactly ``0..num_hidden_layers-1``;
4. the model config.json builds (on the meta device, so no memory), now bounded by the
   real layer count, against the stored tensors: none missing (transformers would
   initialise it at random), none unexpected (it would be dropped), none mis-shaped.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from headsurgeon.core.errors import CheckpointError, ValidationError

_NUMBERED = re.compile(r"^((?:[^.]+\.)*?)(\d+)\.")  # "model.layers." + "7" in model.layers.7.x
_PASSED: dict = {}   # directories that passed, by the stat signature of their files
_PASSED_MAX = 64


@dataclass(frozen=True)
class Geometry:
    n_layers: int
    layers_key: str  # the config field that holds it ("num_hidden_layers", "n_layer"...)


def check_model_source(path: str | Path, *, weights: bool = True) -> None:
    """Refuse a model directory whose config.json and weights disagree (see module doc).
    ``weights=False``: config and tokenizer files only (a remote model has no weights
    here). A directory that passed is not checked again while its files are unchanged."""
    path = Path(path)
    key = _signature(path, weights)
    if key in _PASSED:
        return
    from headsurgeon.model.json_file import read_config

    cfg_path = path / "config.json"
    cfg = read_config(cfg_path)
    geo = check_geometry(cfg, cfg_path)
    check_json_files(path)
    if weights:
        from headsurgeon.model.safetensors_io import read_checkpoint_index

        index = read_checkpoint_index(path)
        n_stored = _check_layers(geo, index, cfg_path)
        meta = _meta_model(path, cfg, geo, n_stored or 1)
        _check_tensors(meta, index)
    if key[0] is not None:
        while len(_PASSED) >= _PASSED_MAX:
            _PASSED.pop(next(iter(_PASSED)))
        _PASSED[key] = True


check_weights = check_model_source  # its old name


def _signature(path: Path, weights: bool) -> tuple:
    try:
        files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".safetensors"))
        stats = tuple((p.name, st.st_size, st.st_mtime_ns) for p in files
                      for st in (p.stat(),))
    except OSError:
        return (None,)  # not remembered: checked (and refused) every time
    return (str(path.resolve()), weights, stats)


# ---------------------------------------------------------------- 1. geometry

def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_geometry(cfg: dict, cfg_path: Path) -> Geometry:
    """The counts every stage relies on, one-line errors naming config.json and the field."""
    from headsurgeon.model.heads import _CONFIG_KEYS, HOW_TO_ADD

    inner, pre = cfg, ""
    if not any(cfg.get(k) is not None for k in _CONFIG_KEYS["n_heads"]) and \
            isinstance(cfg.get("text_config"), dict):  # multimodal wrappers
        inner, pre = cfg["text_config"], "text_config."

    def bad(field: str, message: str) -> ValidationError:
        return ValidationError(message, file=str(cfg_path), field=pre + field)

    def count(kind: str, names=None):
        for name in names or _CONFIG_KEYS[kind]:
            value = inner.get(name)
            if value is not None:
                if not _is_count(value):
                    raise bad(name, f"must be a positive integer, not {json.dumps(value)}")
                return name, value
        return None, None

    layers, heads, hidden = count("n_layers"), count("n_heads"), count("hidden")
    if not (layers[0] and heads[0] and hidden[0]):
        model_type = inner.get("model_type") or cfg.get("model_type")
        raise ValidationError(f"config of model type {model_type!r} lacks layer/head/hidden "
                              f"counts; {HOW_TO_ADD}", file=str(cfg_path))
    kv = count("n_kv_heads")
    head_dim = count("head_dim")
    count("", ("vocab_size",))
    count("", ("intermediate_size",))
    if kv[0] and heads[1] % kv[1]:
        raise bad(kv[0], f"{heads[1]} heads do not split into {kv[1]} KV groups")
    if not head_dim[0] and hidden[1] % heads[1]:
        raise bad(heads[0], f"{heads[1]} heads do not divide {hidden[0]} {hidden[1]} "
                            "(and no head_dim is given)")
    return Geometry(layers[1], pre + layers[0])


# ---------------------------------------------------------------- 2. the other JSON files

def check_json_files(path: Path) -> None:
    """Every ``*.json`` beside config.json (tokenizer.json, tokenizer_config.json,
    generation_config.json...) must parse: transformers would fail on it mid-stage."""
    from headsurgeon.model.json_file import read_json
    from headsurgeon.model.safetensors_io import INDEX_FILE

    for f in sorted(path.glob("*.json")):
        if f.name not in ("config.json", INDEX_FILE):  # read by their own readers
            read_json(f)


# ---------------------------------------------------------------- 3. layers

def layer_stack(names) -> tuple[str, set[int]]:
    """The numbered stack holding the most tensors (``model.layers.``) and its indices."""
    stacks: dict[str, list[int]] = {}
    for name in names:
        m = _NUMBERED.match(name)
        if m:
            stacks.setdefault(m.group(1), []).append(int(m.group(2)))
    if not stacks:
        return "", set()
    prefix = max(sorted(stacks), key=lambda p: len(stacks[p]))
    return prefix, set(stacks[prefix])


def _spans(indices: set[int], most: int = 4) -> str:
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    text = [f"{a}-{b}" if b > a else f"{a}" for a, b in runs[:most]]
    return ", ".join(text) + (", ..." if len(runs) > most else "")


def _check_layers(geo: Geometry, index, cfg_path: Path) -> int:
    """The stored layer count, which must be the config's; 0 when nothing is numbered
    (then the name check below says what the weights are)."""
    prefix, found = layer_stack(index)
    if found and (len(found) != geo.n_layers or max(found) != geo.n_layers - 1):
        raise ValidationError(f"{geo.n_layers}, but the weights hold {len(found)} layers "
                              f"({prefix}{_spans(found)})", file=str(cfg_path),
                              field=geo.layers_key)
    return len(found)


# ---------------------------------------------------------------- 4. tensors

def _one_line(exc: BaseException) -> str:
    """The first line of ``exc``, with the next one when it only announces it."""
    text = [t.strip() for t in str(exc).strip().splitlines() if t.strip()]
    if len(text) > 1 and text[0].endswith(":"):
        text = [f"{text[0]} {text[1]}"]
    return (text[0] if text else type(exc).__name__)[:300]


def _meta_model(path: Path, cfg: dict, geo: Geometry, n_layers: int):
    """The model config.json builds, on the meta device, with ``n_layers`` layers (the
    config's own count once step 3 has matched it to the weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        if n_layers == geo.n_layers:
            config = AutoConfig.from_pretrained(path, local_files_only=True)
        else:  # no numbered layers stored: build one, never the count the config claims
            d = json.loads(json.dumps(cfg))
            inner = d["text_config"] if geo.layers_key.startswith("text_config.") else d
            inner[geo.layers_key.rpartition(".")[2]] = n_layers
            if isinstance(inner.get("layer_types"), list):
                inner["layer_types"] = inner["layer_types"][:n_layers]
            config = AutoConfig.for_model(**d)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except Exception as exc:  # noqa: BLE001 - any config transformers cannot build from
        raise ValidationError(f"cannot build the model its config describes: {_one_line(exc)}",
                              file=str(path / "config.json")) from None


def _renamer(meta):
    """transformers' own renaming of checkpoint keys on load (GPT-NeoX's ``embed_out`` is
    ``lm_head``; legacy names); ``(key, converter)`` where a converter fuses or splits."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, rename_source_key

        transforms = get_model_conversion_mapping(meta)
    except Exception:  # noqa: BLE001 - an older or newer transformers: names as stored
        return lambda key: (key, None)
    renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]

    def rename(key: str):
        try:
            return rename_source_key(key, renamings, converters)
        except Exception:  # noqa: BLE001
            return key, None
    return rename


def _ignored(name: str, patterns) -> bool:
    return any(re.search(p, name) for p in (patterns or ()))


def _more(items: list) -> str:
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""


def _check_tensors(meta, index) -> None:
    from headsurgeon.model.checkpoint_names import name_map

    expected = {n: tuple(t.shape) for n, t in meta.state_dict().items()}
    rename, fused, stored = _renamer(meta), False, {}
    for key in index:
        name, converter = rename(key)
        if converter is not None:  # fused or split on load: transformers checks those
            fused = True
        else:
            stored[name] = key
    names = name_map(expected, stored, getattr(meta, "base_model_prefix", "") or "")
    if not names:
        raise CheckpointError(
            f"no tensor name in common with the model config.json describes (the checkpoint "
            f"has e.g. {sorted(index)[0] if len(index) else 'nothing'!r}, the model wants "
            f"e.g. {sorted(expected)[0]!r})", file=str(index.shard_path(index.shards[0])))
    if not fused:
        _missing_or_unexpected(meta, index, names, stored)
    for name, stored_name in sorted(names.items()):
        key = stored[stored_name]
        got = index.info(key).shape
        if tuple(got) != expected[name]:
            raise CheckpointError(f"tensor {key} has shape {list(got)} but config.json "
                                  f"makes it {list(expected[name])}",
                                  file=str(index.shard_path(index[key])))


def _missing_or_unexpected(meta, index, names: dict, stored: dict) -> None:
    from headsurgeon.model.safetensors_io import INDEX_FILE

    have = set(names)
    tied = getattr(meta, "all_tied_weights_keys", None) or {}
    either = {n: {t, s} for t, s in tied.items() for n in (t, s)}  # one of a tied pair
    missing = [n for n, _ in meta.named_parameters()
               if n not in have and not (either.get(n, set()) & have)
               and not _ignored(n, getattr(meta, "_keys_to_ignore_on_load_missing", None))]
    if missing:
        where = index.root / INDEX_FILE if index.sharded else index.shard_path(index.shards[0])
        raise CheckpointError(f"tensor {missing[0]}{_more(missing)} is missing: config.json's "
                              "model has it, and loading would initialise it at random",
                              file=str(where))
    used = set(names.values())
    unexpected = [stored[n] for n in sorted(stored) if n not in used and not _ignored(
        n, getattr(meta, "_keys_to_ignore_on_load_unexpected", None))]
    if unexpected:
        raise CheckpointError(f"tensor {unexpected[0]}{_more(unexpected)} is not part of the "
                              "model config.json describes",
                              file=str(index.shard_path(index[unexpected[0]])))
