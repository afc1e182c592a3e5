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
    return _selected(read_heads_doc(path, field=field), path)


def read_heads_doc(path: str | Path, *, field: str = "heads.from") -> dict:
    """A locate output (``heads.json``), its format and ``selected`` list checked."""
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
    _selected(data, path)
    return data


def _selected(data: dict, path) -> list[tuple[int, int]]:
    sel = data.get("selected")
    if (not isinstance(sel, list) or not sel or
            not all(isinstance(x, list) and len(x) == 2 and all(isinstance(i, int) for i in x)
                    for x in sel)):
        raise ValidationError("'selected' must be a non-empty list of [layer, head]",
                              file=str(path), field="selected")
    return [tuple(x) for x in sel]


def check_provenance(recipe: Recipe, doc: dict, path: Path, *, probes: bool) -> None:
    """Refuse a heads.json located on another model than ``recipe.model`` (weights hash,
    else model id when the file has no hash: a remote locate), or, with ``probes``, on other
    probes than the recipe's ``data.locate``. Files without that provenance (written by
    hand) are taken as they are."""
    from headsurgeon.model.sources import resolve_model, weights_hash

    model = doc.get("model") if isinstance(doc.get("model"), dict) else {}
    their_id, their_hash = model.get("id"), model.get("weights_sha256")
    if their_id is not None or their_hash is not None:
        try:
            resolved = resolve_model(recipe.model.source, allow_pickle=recipe.model.allow_pickle)
        except ValidationError as exc:
            raise recipe.error("model.source", exc.detail) from None
        if their_hash:
            ours = weights_hash(resolved.path)
            if ours != their_hash:
                raise ValidationError(
                    f"located on model {their_id} (weights {their_hash[:19]}...), but the "
                    f"recipe's model.source {recipe.model.source} has weights {ours[:19]}...; "
                    "locate again for this model", file=str(path), field="model")
        elif their_id not in (resolved.model_id, recipe.model.remote_id, recipe.model.source):
            raise ValidationError(
                f"located on model {their_id}, but the recipe's model is "
                f"{recipe.model.remote_id or resolved.model_id}; locate again for this model",
                file=str(path), field="model")
    theirs = doc.get("probes", {}).get("data_sha256") if isinstance(doc.get("probes"),
                                                                    dict) else None
    if probes and theirs and recipe.data.locate:
        ours = probes_hash(recipe)
        if ours != theirs:
            raise ValidationError(
                f"located on other probes ({theirs[:19]}...) than the recipe's data.locate "
                f"and locate.n_probes ({ours[:19]}...): a stale file; locate again",
                file=str(path), field="probes")


def probes_hash(recipe: Recipe) -> str:
    """The hash locate records of its probe questions (``probes.data_sha256``)."""
    from headsurgeon.data.datasets import load_stage
    from headsurgeon.data.questions import data_hash

    try:
        qs = load_stage(recipe.data.locate, "locate", seed=recipe.data.seed, mc_only=True,
                        balance=recipe.data.balance_letters)
    except ValidationError as exc:
        if exc.file:
            raise
        raise recipe.error("data.locate", exc.detail.removeprefix("data.locate: ")) from None
    return data_hash(qs[: recipe.locate.n_probes])


def selected_heads(recipe: Recipe, hm=None, *, run_dir: Optional[Path] = None
                   ) -> list[tuple[int, int]]:
    """The heads to edit: explicit list, a heads.json named by the recipe, or the run's
    (a file located on another model, or the run's on other probes, is refused)."""
    heads = recipe.heads
    if isinstance(heads, list):
        chosen, field = heads, "heads"
    elif heads is not None:
        try:
            doc = read_heads_doc(heads.from_)
        except ValidationError as exc:
            raise recipe.error("heads.from", f"{heads.from_}: {exc.detail}") from None
        check_provenance(recipe, doc, Path(heads.from_), probes=False)
        chosen, field = _selected(doc, heads.from_), "heads.from"
    else:
        path = (run_dir or recipe.run_dir()) / "heads.json"
        doc = read_heads_doc(path)
        check_provenance(recipe, doc, path, probes=True)
        chosen, field = _selected(doc, path), "heads"
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


def check_heads_file(recipe: Recipe, *, run_dir: Optional[Path] = None) -> None:
    """For stages that do not read the heads (apply): refuse a recipe whose heads.json
    (``heads.from``, or the run's when it exists) was located on another model."""
    if isinstance(recipe.heads, list):
        return
    if recipe.heads is None and not ((run_dir or recipe.run_dir()) / "heads.json").is_file():
        return
    selected_heads(recipe, run_dir=run_dir)
