"""The recipe: one YAML file that declares a whole surgery, validated strictly.

Every section is a pydantic model with ``extra="forbid"``. Plugin references
(``train.objective``, ``locate.method``, data sources, ...) are ``{name: ..., <params>}``
mappings (or just the name); their parameters are validated by the plugin's own
``Params`` schema. Errors read ``recipe.yaml:12: train.lr: Input should be > 0``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional, Union

import pydantic
from pydantic import Field, field_validator

from headsurgeon.core import plugins
from headsurgeon.core.errors import ValidationError
from headsurgeon.core.paths import RECIPE_DIR, RUN_DIR, inside, recipe_output_path
from headsurgeon.core.requirements import describe_missing
from headsurgeon.core.yamlfile import Lines, load_yaml, load_yaml_text
from headsurgeon.core.eval_sections import (  # noqa: F401 - re-exported
    BaselineSpec, EvalSection, SweepPoint, SweepSection)
from headsurgeon.core.sections import (  # noqa: F401 - re-exported: the schema's home
    ApplySection, DataSection, Dtype, HeadsFrom, LocateSection, ModelSection, NdifSection,
    PluginRef, SEED_MAX, Strict, Templates, TrainSection, parse_size)


class Recipe(Strict):
    name: Optional[str] = Field(None, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                                description="run name (default: the recipe file's stem)")
    model: ModelSection = Field(description="the model to edit")
    data: DataSection = Field(default_factory=DataSection, description="question sources")
    templates: Templates = Field(default_factory=Templates, description="dialogue texts")
    locate: LocateSection = Field(default_factory=LocateSection, description="head ranking")
    heads: Union[list[tuple[int, int]], HeadsFrom, None] = Field(None, description=(
        "the heads to train: [[layer, head], ...], {from: heads.json}, or null for the "
        "run's heads.json"))
    train: TrainSection = Field(default_factory=TrainSection, description="the tuning run")
    apply: ApplySection = Field(default_factory=ApplySection, description="the merge")
    eval: EvalSection = Field(default_factory=EvalSection, description="before/after metrics")
    sweep: SweepSection = Field(default_factory=SweepSection, description=(
        "the trade-off sweep run by `run`"))
    output_dir: Optional[str] = Field(None, description=(
        "run directory, relative to the recipe file (default: runs/NAME under the working "
        "directory)"))

    @field_validator("output_dir")
    @classmethod
    def _inside_recipe_dir(cls, v):
        return recipe_output_path(v, RECIPE_DIR)

    @field_validator("heads", mode="before")
    @classmethod
    def _heads_shape(cls, v):
        if isinstance(v, list):
            for i, h in enumerate(v):
                if not (isinstance(h, (list, tuple)) and len(h) == 2 and
                        all(isinstance(x, int) and not isinstance(x, bool) for x in h)):
                    raise ValueError(f"item {i} ({h!r}) is not [layer, head] (two integers)")
        return v

    def with_train(self, **overrides) -> "Recipe":
        """A copy whose ``train`` section has ``overrides`` applied (validated)."""
        merged = {**self.train.model_dump(by_alias=True), **overrides}
        copy = self.model_copy(update={"train": TrainSection.model_validate(merged)})
        copy._path, copy._text, copy._lines = self._path, self._text, self._lines
        return copy

    # filled by load_recipe, not part of the YAML
    _path: Optional[Path] = pydantic.PrivateAttr(None)
    _text: str = pydantic.PrivateAttr("")
    _lines: Lines = pydantic.PrivateAttr(default_factory=dict)

    @property
    def path(self) -> Optional[Path]:
        return self._path

    @property
    def text(self) -> str:
        return self._text

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self._text.encode()).hexdigest()

    def run_dir(self) -> Path:
        """``runs/NAME`` beside the current directory unless ``output_dir`` says otherwise."""
        if self.output_dir:
            base = self._path.parent if self._path else Path.cwd()
            try:
                return inside(base, self.output_dir, RECIPE_DIR)
            except ValueError as exc:
                raise self.error("output_dir", str(exc)) from None
        name = self.name or (self._path.stem if self._path else "recipe")
        return Path("runs") / name

    def apply_output(self) -> Path:
        """Where apply writes the model: ``apply.output`` inside the run directory."""
        if not self.apply.output:
            return self.run_dir() / "model"
        try:
            return inside(self.run_dir(), self.apply.output, RUN_DIR)
        except ValueError as exc:
            raise self.error("apply.output", str(exc)) from None

    def line_of(self, *path) -> Optional[int]:
        for n in range(len(path), 0, -1):
            if path[:n] in self._lines:
                return self._lines[path[:n]]
        return None

    def error(self, field: str, message: str) -> ValidationError:
        path = tuple(int(p) if p.isdigit() else p for p in field.split("."))
        return ValidationError(message, file=str(self._path or "<recipe>"),
                               line=self.line_of(*path), field=field)


# -- plugin parameter validation --------------------------------------------------------------
PLUGIN_FIELDS = [  # (path in recipe, plugin kind, is list)
    (("locate", "method"), "locators", False),
    (("locate", "metric"), "metrics", False),
    (("train", "objective"), "objectives", False),
    (("eval", "judge"), "judges", False),
    (("data", "locate"), "datasets", True),
    (("data", "train"), "datasets", True),
    (("data", "eval"), "datasets", True),
    (("data", "general"), "datasets", True),
    (("data", "neutral_text"), "datasets", True),
]


def _validate_plugin_ref(ref: PluginRef, kind: str, path: tuple, recipe: Recipe) -> None:
    field = ".".join(map(str, path))
    try:
        plugin = plugins.get(kind, ref.name)
    except ValidationError as exc:
        raise recipe.error(field + ".name", exc.detail) from None
    gap = describe_missing(kind[:-1], ref.name, plugin)
    if gap:  # before any model loads: a missing package is a set-up error, not a crash
        raise recipe.error(field + ".name", gap)
    schema = getattr(plugin, "Params", None)
    if schema is None:
        if ref.params:
            raise recipe.error(field + "." + next(iter(ref.params)),
                               f"{kind[:-1]} {ref.name!r} takes no parameters")
        return
    try:
        validated = schema.model_validate(ref.params)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        sub = ".".join(map(str, err["loc"]))
        raise recipe.error(f"{field}.{sub}" if sub else field, _message(err)) from None
    object.__setattr__(ref, "validated", validated)


def plugin_params(ref: PluginRef, kind: str):
    """The plugin's validated ``Params`` instance for a reference."""
    validated = getattr(ref, "validated", None)
    if validated is None:
        plugin = plugins.get(kind, ref.name)
        schema = getattr(plugin, "Params", None)
        validated = schema.model_validate(ref.params) if schema else None
    return validated


def _message(err: dict) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required field is missing"
    msg = err["msg"]
    return msg.removeprefix("Value error, ")


def _loc_to_field(loc: tuple) -> tuple:
    # Union branches add type names to loc ("heads", "list[...]", 0): keep the data path.
    return tuple(p for p in loc if isinstance(p, int) or not any(c in p for c in "[]()"))


def recipe_from_data(data: Any, *, file: str = "<recipe>", lines: Lines | None = None,
                     text: str = "", path: Path | None = None, check_plugins: bool = True
                     ) -> Recipe:
    lines = lines or {}
    if not isinstance(data, dict):
        raise ValidationError("a recipe is a YAML mapping (model:, data:, train:, ...)",
                              file=file, line=lines.get((), 1))
    try:
        recipe = Recipe.model_validate(data)
    except pydantic.ValidationError as exc:
        errors = exc.errors()
        err = errors[0]
        loc = _loc_to_field(err["loc"])
        line = None
        for n in range(len(loc), -1, -1):
            if loc[:n] in lines:
                line = lines[loc[:n]]
                break
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ValidationError(_message(err) + more, file=file, line=line,
                              field=".".join(map(str, loc)) or None) from None
    recipe._path, recipe._text, recipe._lines = path, text, lines
    recipe.apply_output()  # an absolute output path outside its folder: refused now
    if check_plugins:
        for fpath, kind, is_list in PLUGIN_FIELDS:
            value = recipe
            for p in fpath:
                value = getattr(value, p)
            refs = list(enumerate(value)) if is_list else [(None, value)]
            for i, ref in refs:
                _validate_plugin_ref(ref, kind, fpath + ((i,) if i is not None else ()), recipe)
    _validate_sweep_points(recipe, check_plugins)
    _validate_held_out(recipe)
    if check_plugins:
        _validate_baselines(recipe)
        check_engines(recipe)
    return recipe


# Optional packages a recipe field's value needs, like a plugin's ``requires``:
# (field, value) -> {module: what installs it}
FIELD_REQUIRES = {("eval.general_engine", "lmeval"): {"lm_eval": "headsurgeon[lmeval]"}}


def check_engines(recipe: Recipe) -> None:
    """Every optional engine the recipe's fields ask for is installed (FIELD_REQUIRES):
    one line naming the field and the install command, before any model loads."""
    for (field, value), requires in FIELD_REQUIRES.items():
        section, key = field.split(".")
        if getattr(getattr(recipe, section), key) == value:
            gap = describe_missing(key.replace("_", " "), value,
                                   SimpleNamespace(requires=requires))
            if gap:
                raise recipe.error(field, gap)


def _validate_held_out(recipe: Recipe) -> None:
    """``eval.templates`` are renderings training never uses (core/held_out_templates.py)."""
    from headsurgeon.core.held_out_templates import unseen_problems

    t = recipe.templates
    for i, v in enumerate(recipe.eval.templates):
        problems = unseen_problems(recipe.eval.templates[:i + 1], t, t.training_challenges())
        if problems:
            raise recipe.error(f"eval.templates.{i}", problems[-1])


def _validate_baselines(recipe: Recipe) -> None:
    """Each baseline's objective parameters, at the baseline's own line."""
    for i, spec in enumerate(recipe.eval.baselines):
        _, ref = spec.runs()[0]
        _validate_plugin_ref(PluginRef.model_validate(ref), "objectives",
                             ("eval", "baselines", i), recipe)


def _validate_sweep_points(recipe: Recipe, check_plugins: bool) -> None:
    """Each sweep point's ``train`` overrides (and objective plugin) are checked now, with
    the point's own line, rather than when the sweep reaches it."""
    if recipe.data.confirm and not recipe.sweep.points:
        raise recipe.error("data.confirm", "only the sweep reads it, and sweep.points is empty")
    if recipe.sweep.max_general_drop is not None and not recipe.data.general:
        raise recipe.error("sweep.max_general_drop", (
            "needs data.general: the sets general accuracy is read on"))
    for i, point in enumerate(recipe.sweep.points):
        where = f"sweep.points.{i}"
        try:
            trained = recipe.with_train(**point.train_overrides)
        except pydantic.ValidationError as exc:
            err = exc.errors()[0]
            sub = ".".join(map(str, _loc_to_field(err["loc"])))
            raise recipe.error(f"{where}.{sub}" if sub else where, _message(err)) from None
        if check_plugins and "objective" in point.train_overrides:
            _validate_plugin_ref(trained.train.objective, "objectives",
                                 (*where.split("."), "objective"), recipe)


def load_recipe(path: str | Path, *, check_plugins: bool = True) -> Recipe:
    path = Path(path)
    data, lines, text = load_yaml(path)
    return recipe_from_data(data, file=str(path), lines=lines, text=text, path=path,
                            check_plugins=check_plugins)


def load_recipe_text(text: str, file: str = "<recipe>") -> Recipe:
    data, lines = load_yaml_text(text, file)
    return recipe_from_data(data, file=file, lines=lines, text=text)


def summary(recipe: Recipe) -> dict:
    """A short normalised view (what ``validate`` prints)."""
    def ref(r: PluginRef):
        p = getattr(r, "validated", None)
        return {"name": r.name, **(p.model_dump() if p is not None else r.params)}

    heads = recipe.heads
    return {
        "name": recipe.name or (recipe.path.stem if recipe.path else None),
        "model": recipe.model.model_dump(exclude_none=True),
        "data": {k: [ref(r) for r in getattr(recipe.data, k)]
                 for k in ("locate", "train", "eval", "confirm", "general", "neutral_text")
                 if getattr(recipe.data, k)},
        "locate": {"method": ref(recipe.locate.method), "metric": ref(recipe.locate.metric),
                   "top_k": recipe.locate.top_k, "remote": recipe.locate.remote},
        "heads": (list(map(list, heads)) if isinstance(heads, list)
                  else {"from": heads.from_} if heads else "from locate"),
        "train": {"objective": ref(recipe.train.objective), "kv": recipe.train.kv,
                  "lr": recipe.train.lr, "steps": recipe.train.steps,
                  "batch_size": recipe.train.batch_size, "seed": recipe.train.seed,
                  "dtype": recipe.train.dtype},
        "apply": recipe.apply.model_dump(exclude_none=True),
        "eval": {"judge": ref(recipe.eval.judge), "modes": recipe.eval.modes,
                 "baselines": [run for run, _, _ in recipe.eval.baseline_runs()]},
        "run_dir": str(recipe.run_dir()),
        "sha256": recipe.sha256[:16],
    }


def dumps_summary(recipe: Recipe) -> str:
    return json.dumps(summary(recipe), indent=2)
