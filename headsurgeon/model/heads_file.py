"""``heads.json``: the located heads a recipe edits, and the model's head map."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from headsurgeon.core.errors import ValidationError
from headsurgeon.core.recipe import Recipe
from headsurgeon.model.config import MAX_JSON_BYTES, model_dir, read_config

HEADS_FORMAT = "headsurgeon.heads/1"


def head_map(recipe: Recipe):
    from headsurgeon.model.heads import HeadMap

    path = model_dir(recipe) / "config.json"
    try:
        return HeadMap.from_config(read_config(path))
    except ValidationError as exc:
        raise ValidationError(exc.detail, file=exc.file or str(path)) from None
    except (TypeError, ValueError, ArithmeticError) as exc:  # counts that are not numbers
        raise ValidationError(f"bad layer/head counts ({exc})", file=str(path)) from None


def load_heads_file(path: str | Path, *, field: str = "heads.from") -> list[tuple[int, int]]:
    """The selected heads of a locate output (``heads.json``)."""
    from headsurgeon.core.inputs import read_input

    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise ValidationError("no such file (run `headsurgeon locate` first)", file=str(path),
                              field=field)
    try:
        data = json.loads(read_input(path, limit=MAX_JSON_BYTES, what="heads.json file"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValidationError(f"not a heads.json file: {str(exc).splitlines()[0][:120]}",
                              file=str(path)) from None
    if not isinstance(data, dict) or data.get("format") != HEADS_FORMAT:
        raise ValidationError(f"not a heads.json file (format is not {HEADS_FORMAT})",
                              file=str(path))
    sel = data.get("selected")
    if (not isinstance(sel, list) or not sel or
            not all(isinstance(x, list) and len(x) == 2 and all(isinstance(i, int) for i in x)
                    for x in sel)):
        raise ValidationError("'selected' must be a non-empty list of [layer, head]",
                              file=str(path), field="selected")
    return [tuple(x) for x in sel]


def selected_heads(recipe: Recipe, hm=None, *, run_dir: Optional[Path] = None
                   ) -> list[tuple[int, int]]:
    """The heads to edit: explicit list, a heads.json named by the recipe, or the run's."""
    heads = recipe.heads
    if isinstance(heads, list):
        chosen, field = heads, "heads"
    elif heads is not None:
        try:
            chosen, field = load_heads_file(heads.from_), "heads.from"
        except ValidationError as exc:
            raise recipe.error("heads.from", f"{heads.from_}: {exc.detail}") from None
    else:
        chosen, field = load_heads_file((run_dir or recipe.run_dir()) / "heads.json"), "heads"
    if not chosen:
        raise recipe.error("heads", "no heads selected")
    if len(set(chosen)) != len(chosen):
        raise recipe.error(field, "a head is listed twice")
    if hm is not None:
        for i, (layer, head) in enumerate(chosen):
            try:
                hm.check_head(layer, head)
            except ValidationError as exc:
                raise recipe.error(f"{field}.{i}" if field == "heads" else field,
                                   exc.detail) from None
    return list(chosen)
