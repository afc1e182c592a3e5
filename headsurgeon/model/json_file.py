"""A model directory's JSON files (config.json, tokenizer.json...), read with one-line
errors naming the file and a size bound (a JSON file is megabytes at most)."""
from __future__ import annotations

import json
from pathlib import Path

from headsurgeon.core.errors import ValidationError

MAX_JSON_BYTES = 64 << 20  # heads.json / config.json / tokenizer.json: megabytes at most


def read_json(path: Path, what: str = "JSON file"):
    """The parsed contents of ``path``; ValidationError "not valid JSON (...)" otherwise."""
    from headsurgeon.core.inputs import read_input

    try:
        return json.loads(read_input(path, limit=MAX_JSON_BYTES, what=what))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValidationError(f"not valid JSON ({str(exc).splitlines()[0][:120]})",
                              file=str(path)) from None


def read_config(path: Path) -> dict:
    """A model's config.json, as a dict; one-line errors naming the file."""
    cfg = read_json(path, "config.json")
    if not isinstance(cfg, dict):
        raise ValidationError("must be a JSON object", file=str(path))
    return cfg
