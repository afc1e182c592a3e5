"""Opening every data source of a recipe before any stage runs.

A broken data file used to surface only when the stage reading it started: an eval
file with a bad line failed after locate and train had run (minutes on a small model,
hours on a large one). :func:`check_data` opens every ``data.*`` source the way the
stages will (exists, parses, schema), counts what each stage gets, requires what the
stages require (multiple choice for locate and train, at least one item, the sources a
command needs), that no id appears twice among a stage's sources (both places named) and
that locate, train, eval and confirm share no question (by id or normalised text). ``validate``
and every command call it before a model is loaded.

Errors are one line: a data file's own line and field (``x.jsonl:7: answer: 'F' is not
one of the option letters A-D``), or the recipe's (``r.yaml:9: data.eval.0.path:
x.jsonl: no such file``). Hugging Face datasets are read offline, as the stages read
them: an id that is not in the local ``datasets`` cache is an error here too; what the
Hub itself holds (a newer revision) is never looked at.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from headsurgeon.core.errors import ValidationError
from headsurgeon.core.recipe import PluginRef, Recipe
from headsurgeon.data.datasets import load_source
from headsurgeon.data.questions import Question, check_disjoint, merge_sources

STAGES = ("locate", "train", "eval", "confirm", "general", "neutral_text")
MC_STAGES = ("locate", "train")  # the probes and the dialogues need option letters
DISJOINT = (("train", "eval"), ("train", "locate"), ("locate", "eval"),
            ("confirm", "eval"), ("confirm", "train"), ("confirm", "locate"))
MISSING = {  # what a command that needs a stage says when the recipe gives it no source
    "locate": "no probe questions (add a data.locate source)",
    "train": "no training questions (add a data.train source)",
    "eval": "no evaluation questions (add a data.eval source)",
}
# a source that could not be opened: the recipe's path is what to fix
OPEN_ERRORS = ("no such file", "is a directory", "not a regular file", "cannot read")


@dataclass
class DataCheck:
    """What each stage's sources hold (``validate`` prints it)."""
    items: dict[str, list[Question]] = field(default_factory=dict)
    per_source: dict[str, list[int]] = field(default_factory=dict)  # items of each source
    notes: list[str] = field(default_factory=list)

    def summary(self, recipe: Recipe) -> dict[str, str]:
        out = {}
        for stage, qs in self.items.items():
            n_mc = sum(q.is_mc for q in qs)
            used, asked = _used(recipe, stage, qs, self.per_source[stage])
            out[stage] = (f"{len(qs)} items ({n_mc} multiple choice) from "
                          f"{len(self.per_source[stage])} source(s)"
                          + (f"; {used} used ({asked})" if asked else ""))
        return out


def needed_stages(recipe: Recipe, command: str) -> tuple[str, ...]:
    """The data stages ``command`` cannot run without."""
    if command == "run":
        return (("locate",) if recipe.heads is None else ()) + ("train", "eval")
    return {"locate": ("locate",), "train": ("train",), "eval": ("eval",)}.get(command, ())


def check_data(recipe: Recipe, *, command: str = "validate") -> DataCheck:
    """Open every source of ``recipe.data``; ValidationError (one line) on the first
    problem. ``command`` says which stages must have sources (see :func:`needed_stages`)."""
    for stage in needed_stages(recipe, command):
        if not getattr(recipe.data, stage):
            raise recipe.error(f"data.{stage}", MISSING[stage])
    result = DataCheck()
    for stage in STAGES:
        refs = getattr(recipe.data, stage)
        if not refs:
            continue
        sources = [(f"data.{stage}.{i}", _open(recipe, ref, f"data.{stage}.{i}"))
                   for i, ref in enumerate(refs)]
        result.per_source[stage] = [len(loaded) for _, loaded in sources]
        try:
            qs = merge_sources(sources, f"data.{stage}")  # an id in two sources: an error
        except ValidationError as exc:
            if exc.file is None:  # items without a file (built-in): the recipe's line
                raise recipe.error(exc.field, exc.detail) from None
            raise
        if stage in MC_STAGES and not any(q.is_mc for q in qs):
            raise recipe.error(f"data.{stage}", "no multiple-choice questions (every item "
                                                "has empty choices)")
        result.items[stage] = qs
        result.notes += _hub_notes(stage, refs)
    for a, b in DISJOINT:
        if a in result.items and b in result.items:
            try:
                check_disjoint({a: result.items[a], b: result.items[b]})
            except ValidationError as exc:
                raise recipe.error(f"data.{a}", exc.detail) from None
    return result


def _open(recipe: Recipe, ref: PluginRef, where: str) -> list[Question]:
    try:
        return load_source(ref)
    except ValidationError as exc:
        if exc.file and exc.line is None and exc.field is None and \
                exc.detail.startswith(OPEN_ERRORS):
            raise recipe.error(f"{where}.path", f"{exc.file}: {exc.detail}") from None
        if exc.file is None:  # a plugin's own complaint: the recipe's line names it
            raise recipe.error(f"{where}.{exc.field}" if exc.field else where,
                               exc.detail) from None
        raise


def _used(recipe: Recipe, stage: str, qs: list[Question], per_source: list[int]
          ) -> tuple[int, str]:
    """How many items the stage uses, and the recipe field that says so."""
    ev = recipe.eval
    if stage == "locate":
        n_mc = sum(q.is_mc for q in qs)
        return min(n_mc, recipe.locate.n_probes), f"locate.n_probes: {recipe.locate.n_probes}"
    if stage == "eval":
        if ev.scope == "known":
            return ev.n_candidates(len(qs)), f"eval.pool: {ev.pool or 'all'} (scope known)"
        return min(len(qs), ev.n_items), f"eval.n_items: {ev.n_items}"
    if stage == "general":
        return (sum(min(n, ev.n_general) for n in per_source),
                f"eval.n_general: {ev.n_general} per source")
    if stage == "confirm":
        n = min(len(qs), recipe.sweep.n_items)
        return n, f"sweep.n_items: {recipe.sweep.n_items}"
    if stage == "neutral_text":
        return min(len(qs), ev.kl_passages), f"eval.kl_passages: {ev.kl_passages}"
    return len(qs), ""


def _hub_notes(stage: str, refs) -> list[str]:
    notes = []
    for i, ref in enumerate(refs):
        if ref.name == "hf":
            notes.append(f"data.{stage}.{i}: {ref.params.get('path')} read offline from "
                         "local files or the local datasets cache; the Hub is not contacted")
    return notes
