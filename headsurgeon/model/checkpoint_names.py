"""How the loaded model's parameter names map to the checkpoint's tensor names.

transformers adds or strips the base model prefix when it loads: a real GPT-2 checkpoint
stores ``h.0.attn.c_attn.weight`` while ``GPT2LMHeadModel`` calls it
``transformer.h.0.attn.c_attn.weight``. Training works on the model's names; the delta,
the hashes and apply work on the checkpoint's, read from the checkpoint's own index.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable



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

