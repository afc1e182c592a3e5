"""The ``general.*`` keys of an exported GGUF: what the model is called and where it comes from.

Read the way llama.cpp's converter reads them, through gguf's own ``Metadata``: the model card's
front matter (``license``, ``base_model``, ``tags``, ...), ``config.json``'s Hub id and the
directory's name. An applied model directory (``runs/NAME/model``) says little of that itself;
its card names the base model, so the base's Hub id gives the basename and finetune when
nothing else does (``HuggingFaceTB/SmolLM2-135M-Instruct``: ``SmolLM2``, ``Instruct``). The size
label comes from the parameter count when no name states it, as in llama.cpp.
"""
from __future__ import annotations

import re
from pathlib import Path

from headsurgeon.core.errors import ValidationError

_HUB_URL = re.compile(r"https?://huggingface\.co/([^/]+/[^/]+)$")


def _base_model_id(meta) -> str | None:
    """The first base model's Hub id (``org/name``), from the ``repo_url`` gguf derives from
    the card's ``base_model`` (its ``name`` is retitled: "Smollm2 135M Instruct")."""
    for entry in meta.base_models or []:
        found = _HUB_URL.match(str(entry.get("repo_url") or ""))
        if found:
            return found.group(1)
    return None


def general_metadata(model_dir: Path, name: str, total_params: int):
    """gguf's ``Metadata`` for ``model_dir`` with ``general.name`` = ``name``."""
    import gguf

    try:
        meta = gguf.Metadata.load(None, model_dir, name, total_params)
    except Exception as exc:  # noqa: BLE001 - a card gguf cannot read is the input's fault
        raise ValidationError(f"model card front matter: {str(exc).splitlines()[0][:160]}",
                              file=str(model_dir / "README.md")) from None
    base_id = _base_model_id(meta)
    if meta.basename is None and base_id:
        # parsed without our parameter count: the base's name states the base's size
        _, _, basename, finetune, _, _ = gguf.Metadata.get_model_id_components(base_id, 0)
        meta.basename = basename
        meta.finetune = meta.finetune or finetune
    if meta.size_label is None and total_params > 0:
        meta.size_label = gguf.size_label(total_params, 0, 0, 0)
    return meta


def write_general(writer, model_dir: Path, name: str, total_params: int) -> None:
    """Add ``general.type``, ``general.name`` and every descriptive key that is known."""
    import gguf

    writer.add_type(gguf.GGUFType.MODEL)
    general_metadata(model_dir, name, total_params).set_gguf_meta_model(writer)
