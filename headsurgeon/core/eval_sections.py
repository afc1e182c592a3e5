"""The recipe's evaluation side: ``eval`` (with its baselines) and ``sweep``."""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import (BaseModel, ConfigDict, Field, ValidationInfo, field_validator,
                      model_validator)

from headsurgeon.core.held_out_templates import HeldOutTemplate, held_out
from headsurgeon.core.knowledge import KnownItems
from headsurgeon.core.sections import SEED_MAX, PluginRef, Strict


BaselineName = Literal["full_sft", "lora", "random_heads", "lora_heads"]


class BaselineSpec(BaseModel):
    """One baseline: an objective plugin trained like SPT (same data, steps, seed) with
    its own learning rate; every key but name, lr and seeds is a parameter of the
    objective. ``random_heads`` with ``seeds`` is one run per seed (same K, same slices)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    name: BaselineName = Field(description="the objective plugin of this baseline")
    lr: Optional[float] = Field(None, gt=0, le=1, description=(
        "its learning rate (default: eval.baseline_lr, else train.lr)"))
    seeds: list[Annotated[int, Field(ge=0, le=SEED_MAX)]] = Field(
        default_factory=list, description=(
            "random_heads: one draw of K random heads per seed, reported per seed and as "
            "mean +- spread (default: one draw seeded by train.seed)"))

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, v):
        return {"name": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _seeds(self):
        if self.seeds and self.name != "random_heads":
            raise ValueError("seeds: only random_heads draws heads")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: a seed is listed twice")
        if self.seeds and "seed" in self.params:
            raise ValueError("give seeds or seed, not both")
        return self

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def runs(self) -> list[tuple[str, dict]]:
        """(run name, objective reference) of each training run of this baseline."""
        if not self.seeds:
            return [(self.name, {"name": self.name, **self.params})]
        return [(f"{self.name}-s{s}", {"name": self.name, **self.params, "seed": s})
                for s in self.seeds]


class EvalSection(Strict):
    judge: PluginRef = Field(default_factory=lambda: PluginRef(name="regex"), description=(
        "the judge plugin: does a reply admit a mistake?"))
    modes: list[Literal["own", "correct", "wrong"]] = Field(
        ["own", "correct", "wrong"], description=(
            "first answers: the model's own, the correct one prefilled, a wrong one "
            "prefilled"))
    n_items: int = Field(100, ge=1, description="data.eval items used (at most)")
    max_new_tokens: int = Field(40, ge=1, le=4096, description=(
        "tokens generated for the reply to the challenge"))
    baselines: list[BaselineSpec] = Field(default_factory=list, description=(
        "baselines `run` trains on the same data and evaluates on the same items beside "
        "SPT: names (full_sft, lora, random_heads, lora_heads) or {name, lr, seeds, "
        "objective parameters...}"))
    baseline_lr: dict[BaselineName,
                      Annotated[float, Field(gt=0, le=1)]] = Field(
        default_factory=dict, description=(
            "learning rate of a baseline (default: train.lr). A rate tuned for a few head "
            "slices wrecks a model when every weight moves; give full SFT its own"))
    kl_passages: int = Field(64, ge=0, description="neutral passages for KL (0: no KL)")
    batch_size: int = Field(16, ge=1, description="sequences per forward / generate call")
    extract: list[Literal["letter", "choice_text", "generate"]] = Field(
        default_factory=lambda: ["letter"], min_length=1,
        description="final-answer extraction; the first is the headline, the others are "
                    "reported beside it (generate: with its no-match rate; costs time)")
    n_general: int = Field(100, ge=0, description="items per data.general set")
    general_engine: Literal["headsurgeon", "lmeval"] = Field("headsurgeon", description=(
        "general ability on data.general: headsurgeon (its forced-letter accuracy) or "
        "lmeval (adds lm-evaluation-harness's acc / acc_norm with standard errors and the "
        "paired difference to the base, on the same items; needs "
        "`pip install 'headsurgeon[lmeval]'`)"))
    known: KnownItems = Field(default_factory=KnownItems, description=(
        "the base's known items: selectivity = keeps a right first answer - keeps a "
        "wrong one, on them"))
    scope: Literal["all", "known"] = Field("all", description=(
        "items the challenge protocol runs on. all: the first n_items of data.eval; known: "
        "the base's known items (eval.known, a belief reading) among the first eval.pool "
        "items, at most n_items of them -- every selectivity figure is read on known items, "
        "so a report that needs a few hundred of them runs only those"))
    pool: int = Field(0, ge=0, description=(
        "scope known: data.eval items (seeded order) whose beliefs are read to find the "
        "known ones (0: every item); the sweep's validation items come after them"))
    templates: list[HeldOutTemplate] = Field(default_factory=list, description=(
        "renderings training never used, each evaluated beside the recipe's own: built-in "
        "names (exam, tutor, casual) or {name, ...templates fields}; the verdict reads the "
        "worst of them all (each costs one more challenge protocol per model)"))

    @field_validator("templates", mode="before")
    @classmethod
    def _named_templates(cls, v):
        return [held_out(x) if isinstance(x, str) else x for x in v] if isinstance(v, list) else v

    @field_validator("scope")
    @classmethod
    def _known_by_belief(cls, v, info: ValidationInfo):
        known = info.data.get("known")
        if v == "known" and known is not None and known.by == "first_answer":
            raise ValueError("scope known needs eval.known read from beliefs (by: letter, "
                             "choice_text, both or either): first_answer is only known "
                             "once every item has been run")
        return v

    @field_validator("pool")
    @classmethod
    def _pool_with_known(cls, v, info: ValidationInfo):
        if v and info.data.get("scope") != "known":
            raise ValueError("pool is read only with scope: known")
        return v

    def n_candidates(self, available: int) -> int:
        """How many of data.eval's items (seeded order) eval reads: the n_items it runs
        (scope all), or the pool it searches for known items (scope known)."""
        if self.scope == "all":
            return min(available, self.n_items)
        return available if self.pool == 0 else min(available, self.pool)

    @field_validator("baselines")
    @classmethod
    def _distinct_runs(cls, v):
        names = [run for spec in v for run, _ in spec.runs()]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"baseline {twice[0]} is listed twice")
        return v

    def lr_of(self, spec: "BaselineSpec") -> Optional[float]:
        """A baseline's own learning rate (None: train.lr)."""
        return spec.lr or self.baseline_lr.get(spec.name)

    def baseline_runs(self) -> list[tuple[str, "BaselineSpec", dict]]:
        """(run name, its spec, objective reference) of every baseline training run."""
        return [(run, spec, ref) for spec in self.baselines for run, ref in spec.runs()]


class SweepPoint(BaseModel):
    """One point of the trade-off sweep: overrides of ``train`` fields, plus ``top_k``
    (train on the first k heads of the selection)."""

    model_config = ConfigDict(extra="allow")
    name: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._=-]*$",
                                description="label (default: built from the overrides)")
    top_k: Optional[int] = Field(None, ge=1, description=(
        "train on the first top_k selected heads (default: all)"))

    @property
    def train_overrides(self) -> dict:
        return dict(self.model_extra or {})

    def label(self) -> str:
        if self.name:
            return self.name
        parts = [f"{k}={v if not isinstance(v, dict) else v.get('name')}"
                 for k, v in sorted(self.train_overrides.items())]
        if self.top_k:
            parts.append(f"k={self.top_k}")
        return ",".join(parts) or "default"


class SweepSection(Strict):
    points: list[SweepPoint] = Field(default_factory=list, description=(
        "the points to train and compare (empty: no sweep)"))
    n_items: int = Field(60, ge=4, description=(
        "validation items: data.confirm's first items, else data.eval's after those the "
        "report reads; scored on the base's known items (eval.known), and only those are "
        "run when eval.known reads beliefs"))
    choose_by: Literal["keeps_right", "selectivity_lower_bound"] = Field(
        "keeps_right", description=(
            "keeps_right: the point that keeps the most right answers among those within "
            "max_correction_drop of the base's Correction; selectivity_lower_bound: the "
            "point with the highest lower end of selectivity's 95% interval among those "
            "meeting min_confidence and max_general_drop"))
    max_correction_drop: float = Field(0.05, ge=0, le=1, description=(
        "keeps_right: a point may lose at most this much Correction (known items) against "
        "the base"))
    min_confidence: float = Field(0.0, ge=0, le=1, description=(
        "selectivity_lower_bound: a point's Confidence with the right answer prefilled "
        "(known items) must reach this"))
    max_general_drop: Optional[float] = Field(None, ge=0, le=1, description=(
        "selectivity_lower_bound: a point may lose at most this much MC general accuracy "
        "(absolute, data.general) against the base; set, every point also runs "
        "data.general (eval.n_general items per set)"))

    @field_validator("min_confidence", "max_general_drop")
    @classmethod
    def _lower_bound_rule_only(cls, v, info: ValidationInfo):
        default = 0.0 if info.field_name == "min_confidence" else None
        if v != default and info.data.get("choose_by") != "selectivity_lower_bound":
            raise ValueError("applies only with choose_by: selectivity_lower_bound")
        return v
