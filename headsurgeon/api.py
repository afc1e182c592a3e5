"""The Python API behind every CLI command; notebooks get the same features.

Each stage reads the previous stage's files under the run directory, so it can run,
resume and be tested alone: ``heads.json`` -> ``delta.safetensors`` -> ``model/`` ->
``metrics.json`` -> ``report.md``/``report.html``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from headsurgeon.core.errors import ValidationError
from headsurgeon.core.recipe import Recipe, load_recipe, summary

from headsurgeon.model.config import (MAX_JSON_BYTES, expand_source, model_config,  # noqa: F401
                                      model_dir, read_config)
from headsurgeon.model.heads_file import (HEADS_FORMAT, head_map, load_heads_file,  # noqa: F401
                                          selected_heads)


def _recipe(recipe: Recipe | str | Path, device: Optional[str] = None) -> Recipe:
    """The recipe, with ``model.device`` overridden by ``device`` (the CLI's --device)."""
    from headsurgeon.model.placement import with_device

    return with_device(recipe if isinstance(recipe, Recipe) else load_recipe(recipe), device)


def check_data(recipe: Recipe, command: str = "validate"):
    """Open every data source of the recipe (headsurgeon.data.check); one-line
    ValidationError on the first problem, before anything loads a model."""
    from headsurgeon.data.check import check_data as run_check

    return run_check(recipe, command=command)


def validate(recipe_path: str | Path) -> dict:
    """Everything that can be checked without running: schema, plugins, model, heads,
    and every data source (exists, parses, schema, counts, disjoint splits)."""
    from headsurgeon.model.placement import check_recipe_device

    recipe = _recipe(recipe_path)
    data = check_data(recipe)  # before the model: resolving one may convert or build it
    check_recipe_device(recipe)
    # head_map -> model_dir runs the one model-source consistency check (as before every
    # stage): config.json against the tensors the shards hold, headers only
    hm = head_map(recipe)
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
    out["data_items"] = data.summary(recipe)
    if data.notes:
        out["data_notes"] = data.notes
    out["model_geometry"] = (f"{hm.n_layers} layers x {hm.n_heads} heads "
                             f"({hm.n_kv_heads} KV), head_dim {hm.head_dim}, model type "
                             f"{hm.model_type or '?'}, head layout {hm.arch.name}")
    return out


def locate(recipe, *, out: Optional[Path] = None, remote: Optional[bool] = None,
           resume: bool = False, device: Optional[str] = None) -> Path:
    from headsurgeon.locate.run import locate as run_locate

    recipe = _recipe(recipe, device)
    check_data(recipe, "locate")
    return run_locate(recipe, out or recipe.run_dir() / "heads.json", remote=remote,
                      resume=resume)


def train(recipe, *, out: Optional[Path] = None, resume: bool = False,
          heads: Optional[list] = None, device: Optional[str] = None) -> Path:
    from headsurgeon.train.run import train as run_train

    recipe = _recipe(recipe, device)
    check_data(recipe, "train")
    return run_train(recipe, out or recipe.run_dir() / "delta.safetensors", heads=heads,
                     resume=resume)


def apply(recipe=None, *, base=None, delta=None, out=None, force: bool = False,
          allow_pickle: bool = False, metrics: Optional[dict] = None) -> Path:
    from headsurgeon.apply.run import apply_recipe

    return apply_recipe(_recipe(recipe) if recipe is not None else None, base=base,
                        delta=delta, out=out, force=force, allow_pickle=allow_pickle,
                        metrics=metrics)


def evaluate(recipe, *, models: Optional[list] = None, device: Optional[str] = None) -> Path:
    from headsurgeon.evaluate.run import evaluate as run_eval

    recipe = _recipe(recipe, device)
    check_data(recipe, "eval")
    return run_eval(recipe, models=models)


def run(recipe, *, force: bool = False, device: Optional[str] = None) -> Path:
    from headsurgeon.pipeline import run_pipeline

    return run_pipeline(_recipe(recipe, device), force=force)


def inspect(checkpoint, *, against=None):
    from headsurgeon.apply.inspect import format_inspect, inspect_checkpoint

    report = inspect_checkpoint(Path(checkpoint), against=Path(against) if against else None)
    return report, format_inspect(report)


def export_gguf(directory, out, *, outtype: str = "f16", force: bool = False) -> dict:
    """Write an applied model directory as one GGUF file (llama.cpp / Ollama)."""
    from headsurgeon.apply.export_gguf import export_gguf as run_export

    return run_export(directory, out, outtype=outtype, force=force)


def export_lora(source, lora=None, lora_gguf=None, *, base: Optional[str] = None,
                force: bool = False) -> dict:
    """The edit of a run directory, applied model directory or delta file as an exact LoRA
    adapter: a peft directory (``lora``) and/or a llama.cpp GGUF LoRA (``lora_gguf``)."""
    from headsurgeon.apply.export_lora import export_lora as run_export

    return run_export(source, lora, lora_gguf, base=base, force=force)


def push(directory, repo: str, *, private: bool = False, dry_run: bool = False,
         commit_message: Optional[str] = None, lora: bool = False) -> dict:
    """Upload a model directory and its card to the Hub (``dry_run``: only the plan);
    ``lora``: a LoRA adapter directory written by ``export --lora``."""
    from headsurgeon.apply import hub

    plan = hub.plan_push(directory, repo, private=private, lora=lora)
    out = plan.summary() | {"dry_run": dry_run, "token": hub.token_source(), "commit": None}
    if not dry_run:
        out["commit"] = hub.push(plan, commit_message=commit_message)
    return out
