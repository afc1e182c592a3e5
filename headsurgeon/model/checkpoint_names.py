"""How the loaded model's parameter names map to the checkpoint's tensor names.

transformers adds or strips the base model prefix when it loads: a real GPT-2 checkpoint
stores ``h.0.attn.c_attn.weight`` while ``GPT2LMHeadModel`` calls it
``transformer.h.0.attn.c_attn.weight``. Training works on the model's names; the delta,
the hashes and apply work on the checkpoint's, read from the checkpoint's own index.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from headsurgeon.core.errors import ValidationError


def name_map(model_names: Iterable[str], stored: Iterable[str], prefix: str = ""
             ) -> dict[str, str]:
    """``{model name: checkpoint key}`` for every model name the checkpoint stores, as
    is, without the ``prefix.`` (the base model prefix) or with it added."""
    stored = set(stored)
    out = {}
    for name in model_names:
        if name in stored:
            out[name] = name
        elif prefix and name.startswith(prefix + ".") and name[len(prefix) + 1:] in stored:
            out[name] = name[len(prefix) + 1:]
        elif prefix and f"{prefix}.{name}" in stored:
            out[name] = f"{prefix}.{name}"
    return out


def model_name_map(model, stored: Iterable[str]) -> dict[str, str]:
    """:func:`name_map` of ``model``'s named parameters (tied copies listed once)."""
    return name_map([n for n, _ in model.named_parameters()], stored,
                    getattr(model, "base_model_prefix", "") or "")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def check_weights(path: str | Path) -> None:
    """Before transformers reads a byte: every safetensors header is validated (nothing is
    allocated for a header that lies), the checkpoint's names must be the model's (through
    :func:`name_map`; none in common is an error, not a silently random model), and every
    stored shape must be the one ``config.json`` builds (checked on a meta-device model,
    which holds no memory). CheckpointError names the shard and tensor; transformers
    would re-initialise or print a multi-line report."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from headsurgeon.core.errors import CheckpointError
    from headsurgeon.model.safetensors_io import read_checkpoint_index

    path = Path(path)
    index = read_checkpoint_index(path)
    try:
        cfg = AutoConfig.from_pretrained(path, local_files_only=True)
        with torch.device("meta"):
            meta = AutoModelForCausalLM.from_config(cfg)
        expected = {n: tuple(t.shape) for n, t in meta.state_dict().items()}
    except Exception as exc:  # noqa: BLE001 - any config transformers cannot build from
        raise ValidationError(f"cannot build the model its config describes: {_one_line(exc)}",
                              file=str(path / "config.json")) from None
    names = name_map(expected, index, getattr(meta, "base_model_prefix", "") or "")
    if not names:
        raise CheckpointError(
            f"no tensor name in common with the model config.json describes (the checkpoint "
            f"has e.g. {sorted(index)[0] if len(index) else 'nothing'!r}, the model wants "
            f"e.g. {sorted(expected)[0]!r})", file=str(index.shard_path(index.shards[0])))
    for name, key in sorted(names.items()):
        got = index.info(key).shape
        if tuple(got) != expected[name]:
            raise CheckpointError(f"tensor {key} has shape {list(got)} but config.json "
                                  f"makes it {list(expected[name])}",
                                  file=str(index.shard_path(index[key])))
