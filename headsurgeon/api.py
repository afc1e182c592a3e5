"""The Python API behind every CLI command; notebooks get the same features.

Each stage reads the previous stage's files under the run directory, so it can run,
resume and be tested alone: ``heads.json`` -> ``delta.safetensors`` -> ``model/`` ->
``metrics.json`` -> ``report.md``/``report.html``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from .errors import ValidationError
from .recipe import Recipe, load_recipe, summary

HEADS_FORMAT = "headsurgeon.heads/1"
MAX_JSON_BYTES = 64 << 20  # heads.json / config.json: megabytes at most


def _recipe(recipe: Recipe | str | Path) -> Recipe:
    return recipe if isinstance(recipe, Recipe) else load_recipe(recipe)


def expand_source(source: str) -> str:
    """Model sources may use ``$VARS`` and ``~`` (e.g. ``$MODELS/llama``), never secrets."""
    from .inputs import expand_path

    return expand_path(source, field="model.source")


def model_config(recipe: Recipe) -> dict:
    return read_config(model_dir(recipe) / "config.json")


def model_dir(recipe: Recipe) -> Path:
    """The local directory holding the model's config.json (and weights unless remote)."""
    from .models import resolve_model

    try:
        if recipe.locate.remote:  # NDIF: config and tokenizer only, no local weights
            from .remote import config_dir

            path = config_dir(recipe.model.source)
        else:
            path = resolve_model(expand_source(recipe.model.source),
                                 allow_pickle=recipe.model.allow_pickle).path
    except ValidationError as exc:
        raise recipe.error("model.source", exc.detail) from None
    return path


def read_config(path: Path) -> dict:
    """A model's config.json, as a dict; one-line errors naming the file."""
    from .inputs import read_input

    try:
        cfg = json.loads(read_input(path, limit=MAX_JSON_BYTES, what="config.json"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValidationError(f"not valid JSON ({str(exc).splitlines()[0][:120]})",
                              file=str(path)) from None
    if not isinstance(cfg, dict):
        raise ValidationError("must be a JSON object", file=str(path))
    return cfg


def head_map(recipe: Recipe):
    from .heads import HeadMap

    path = model_dir(recipe) / "config.json"
    try:
        return HeadMap.from_config(read_config(path))
    except ValidationError as exc:
        raise ValidationError(exc.detail, file=exc.file or str(path)) from None
    except (TypeError, ValueError, ArithmeticError) as exc:  # counts that are not numbers
        raise ValidationError(f"bad layer/head counts ({exc})", file=str(path)) from None


def load_heads_file(path: str | Path, *, field: str = "heads.from") -> list[tuple[int, int]]:
    """The selected heads of a locate output (``heads.json``)."""
    from .inputs import read_input

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


def validate(recipe_path: str | Path) -> dict:
    """Everything that can be checked without running: schema, plugins, model, heads."""
    recipe = _recipe(recipe_path)
    hm = head_map(recipe)
    if not recipe.locate.remote:  # local weights: headers and shapes, nothing allocated
        from .models import check_weights, resolve_model

        check_weights(resolve_model(recipe.model.source,
                                    allow_pickle=recipe.model.allow_pickle).path)
    if recipe.heads is not None:
        selected_heads(recipe, hm)
        try:
            hm.resolve_kv(recipe.train.kv)
        except ValidationError as exc:
            raise recipe.error("train.kv", exc.detail) from None
    if isinstance(recipe.locate.top_k, int) and recipe.locate.top_k > hm.n_total_heads:
        raise recipe.error("locate.top_k", f"{recipe.locate.top_k} is more than the model's "
                                           f"{hm.n_total_heads} heads")
    out = summary(recipe)
    out["model_geometry"] = (f"{hm.n_layers} layers x {hm.n_heads} heads "
                             f"({hm.n_kv_heads} KV), head_dim {hm.head_dim}, arch {hm.arch.name}")
    return out


def locate(recipe, *, out: Optional[Path] = None, remote: Optional[bool] = None,
           resume: bool = False) -> Path:
    from .locate import locate as run_locate

    recipe = _recipe(recipe)
    return run_locate(recipe, out or recipe.run_dir() / "heads.json", remote=remote,
                      resume=resume)


def train(recipe, *, out: Optional[Path] = None, resume: bool = False,
          heads: Optional[list] = None) -> Path:
    from .train import train as run_train

    recipe = _recipe(recipe)
    return run_train(recipe, out or recipe.run_dir() / "delta.safetensors", heads=heads,
                     resume=resume)


def apply(recipe=None, *, base=None, delta=None, out=None, force: bool = False,
          allow_pickle: bool = False, metrics: Optional[dict] = None) -> Path:
    from .apply import apply_delta
    from .models import resolve_model

    text = None
    if recipe is not None:
        recipe = _recipe(recipe)
        base = base or recipe.model.source
        delta = delta or recipe.run_dir() / "delta.safetensors"
        out = out or (recipe.apply.output and recipe.run_dir() / recipe.apply.output) \
            or recipe.run_dir() / "model"
        force = force or recipe.apply.force
        allow_pickle = allow_pickle or recipe.model.allow_pickle
        text = recipe.text
    base_path = Path(base) if Path(str(base)).is_dir() else resolve_model(str(base)).path
    apply_delta(base_path, Path(delta), Path(out), force=force, recipe_text=text,
                metrics=metrics, allow_pickle=allow_pickle)
    return Path(out)


def evaluate(recipe, *, models: Optional[list] = None) -> Path:
    from .evaluate import evaluate as run_eval

    recipe = _recipe(recipe)
    return run_eval(recipe, models=models)


def run(recipe, *, force: bool = False) -> Path:
    from .pipeline import run_pipeline

    return run_pipeline(_recipe(recipe), force=force)


def inspect(checkpoint, *, against=None):
    from .inspect import format_inspect, inspect_checkpoint

    report = inspect_checkpoint(Path(checkpoint), against=Path(against) if against else None)
    return report, format_inspect(report)
