"""``tiny:ARCH`` model sources: headsurgeon's tiny random models, built on first use.

``model: {source: tiny:llama}`` needs no download and no manual step: the model of
:func:`headsurgeon.model.tiny.build_tiny` (seed 0, so every machine gets the same bytes)
is written once into ``<cache>/tiny/ARCH`` and loaded from there after, like a converted
GGUF. The directory appears complete or not at all; two processes building it at once
both succeed (the second keeps the first's identical copy).
"""
from __future__ import annotations

import json
from pathlib import Path

from headsurgeon.core.atomic import atomic_directory
from headsurgeon.core.errors import ValidationError

PREFIX = "tiny:"
SEED = 0
FIELD = "model.source"


def is_tiny_source(source: str) -> bool:
    return source.startswith(PREFIX)


def tiny_arch(source: str) -> str:
    """The architecture a ``tiny:ARCH`` source names; one-line error listing the valid ones."""
    from headsurgeon.model.tiny import TINY_ARCHS

    arch = source[len(PREFIX):].strip()
    if arch not in TINY_ARCHS:
        raise ValidationError(f"{source}: unknown tiny architecture {arch!r}; choose one of "
                              f"{', '.join(PREFIX + a for a in TINY_ARCHS)}", field=FIELD)
    return arch


def resolve_tiny(source: str, cache_dir: Path) -> Path:
    """``<cache>/tiny/ARCH``, built (atomically) when it is not there yet."""
    arch = tiny_arch(source)
    target = Path(cache_dir) / "tiny" / arch
    if (target / "config.json").is_file():
        return target
    from transformers.utils import logging as hf_logging

    from headsurgeon.model import tiny

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Writing model shards" bar inside `validate`
    try:
        with atomic_directory(target) as tmp:
            tiny.build_tiny(arch, tmp, seed=SEED)
            (tmp / "headsurgeon_source.json").write_text(
                json.dumps({"tiny": arch, "seed": SEED}, indent=2) + "\n")
    except ValidationError:  # another process finished the same build first
        if not (target / "config.json").is_file():
            raise
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return target
