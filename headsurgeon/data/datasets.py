"""Loading the question sets a recipe names, through the dataset plugins.

A dataset plugin is a class with ``name``, a pydantic ``Params`` schema and
``load(params) -> list[Question]``. Every source may add ``limit`` handling itself;
here the sources of one stage are concatenated, checked and seeded-shuffled.
"""
from __future__ import annotations

from typing import Sequence

from headsurgeon.core import plugins
from headsurgeon.core.errors import ValidationError
from headsurgeon.data.questions import Question, merge_sources, require_mc, shuffled
from headsurgeon.core.recipe import PluginRef, plugin_params


def load_source(ref: PluginRef) -> list[Question]:
    plugin = plugins.get("datasets", ref.name)
    params = plugin_params(ref, "datasets")
    questions = plugin().load(params)
    if not questions:
        raise ValidationError(f"dataset {ref.name!r} {ref.params} yielded no questions")
    return list(questions)


def load_stage(refs: Sequence[PluginRef], stage: str, *, seed: int = 0,
               mc_only: bool = False, balance: bool = False) -> list[Question]:
    """All questions of one stage (``data.locate``, ``data.train`` ...), shuffled by seed;
    ``balance`` (``data.balance_letters``): options permuted so that the gold letters are
    uniform along the shuffled order (:func:`headsurgeon.data.permute.balance_letters`)."""
    if not refs:
        raise ValidationError("no data sources given", field=f"data.{stage}")
    out = merge_sources([(f"data.{stage}.{i}", load_source(ref)) for i, ref in enumerate(refs)],
                        f"data.{stage}")
    if mc_only:
        out = require_mc(out, f"data.{stage}")
    out = shuffled(out, seed)
    if balance:
        from headsurgeon.data.permute import balance_letters

        out = balance_letters(out, seed)
    return out


def expand_path(path: str):
    """``$VARS`` and ``~`` expanded; relative paths resolve against the working directory.
    ``$HEADSURGEON_SHARED_DATA`` defaults to ``../shared/data`` beside the checkout."""
    import os
    from pathlib import Path

    from headsurgeon.core.inputs import expand_path as safe_expand

    os.environ.setdefault("HEADSURGEON_SHARED_DATA",
                          str(Path(__file__).resolve().parents[3] / "shared" / "data"))
    return Path(safe_expand(path, field="path"))  # a data source's path parameter
