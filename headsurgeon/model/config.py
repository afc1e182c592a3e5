"""The model a recipe names: its local directory and config.json, found offline.

Every stage asks here (never re-resolves a source itself), so a local directory, an alias,
a GGUF file and a remote (NDIF) model all resolve the same way.
"""
from __future__ import annotations

from pathlib import Path

from headsurgeon.core.errors import ValidationError
from headsurgeon.core.recipe import Recipe
from headsurgeon.model.json_file import MAX_JSON_BYTES, read_config  # noqa: F401 - their home


def expand_source(source: str) -> str:
    """Model sources may use ``$VARS`` and ``~`` (e.g. ``$MODELS/llama``), never secrets."""
    from headsurgeon.core.inputs import expand_path

    return expand_path(source, field="model.source")


def model_config(recipe: Recipe) -> dict:
    return read_config(model_dir(recipe) / "config.json")


def model_dir(recipe: Recipe) -> Path:
    """The local directory holding the model's config.json (and weights unless remote),
    checked by the one model-source consistency check (model/consistency.py) before any
    stage uses it: config.json against the tensors the shards hold."""
    from headsurgeon.model.consistency import check_model_source
    from headsurgeon.model.sources import resolve_model

    try:
        if recipe.locate.remote:  # NDIF: config and tokenizer only, no local weights
            path = config_dir(recipe.model.source)
        else:
            path = resolve_model(expand_source(recipe.model.source),
                                 allow_pickle=recipe.model.allow_pickle).path
    except ValidationError as exc:
        raise recipe.error("model.source", exc.detail) from None
    check_model_source(path, weights=not recipe.locate.remote)
    return path


def config_dir(source: str) -> Path:
    """A local directory with ``config.json`` and the tokenizer, found offline.

    Remote locate needs no weights: a model directory, an alias / anything
    :func:`headsurgeon.model.sources.resolve_model` accepts, or a Hub id whose config and
    tokenizer files are in the local HF cache (``huggingface-cli download ID --include
    '*.json' '*.model'``) all do."""
    from headsurgeon.model import sources as models
    from headsurgeon.core.inputs import expand_path

    path = Path(expand_path(source, field="model.source"))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValidationError(f"{source}: directory has no config.json", field="model.source")
        return path
    if models._HUB_ID.match(source) and not path.exists():
        from huggingface_hub import snapshot_download

        repo_id, _, revision = source.partition("@")
        try:
            snap = Path(snapshot_download(repo_id, revision=revision or None,
                                          cache_dir=models._hub_cache_dir(),
                                          local_files_only=True,
                                          allow_patterns=["*.json", "*.model", "*.jinja"]))
        except Exception:  # noqa: BLE001 - LocalEntryNotFoundError and friends
            snap = None
        if snap is None or not (snap / "config.json").is_file():
            raise ValidationError(
                f"{source}: config and tokenizer are not in the local Hugging Face cache; "
                f"fetch them first: huggingface-cli download {repo_id} --include '*.json'",
                field="model.source")
        return snap
    return models.resolve_model(source).path
