"""Recipe settings that say which items the BASE model knows (see model/beliefs.py).

Used by ``eval.known`` (the items selectivity is measured on), ``train.knowledge``
(knowledge-aware training data) and ``locate.self_knowledge`` (the probe's known/unknown
split). Kept apart from core/sections.py, which imports these classes.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

BeliefReading = Literal["letter", "choice_text", "both", "either"]
_READINGS = ("letter: its forced option letter after the first-answer prefix; choice_text: "
             "the option whose text it finds likeliest; both: the two agree; either: one "
             "of them")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


_PERMUTATIONS = ("rotations of each item's options its belief is read under (at most one per "
                 "option; 4 puts a 4-option item's right text once at every letter); 1: the "
                 "presented order only")
_SHARE = ("share of those rotations under which the reading must name the right option "
          "text for the item to count as known (1.0: every one, a letter-invariant belief)")


class KnownItems(_Strict):
    """Which eval items count as known to the BASE model: metrics.json's ``selectivity``
    entry (keeps right, keeps wrong, their difference, correction) is measured on them,
    the same items for every model."""
    by: Literal["first_answer", "letter", "choice_text", "both", "either"] = Field(
        "first_answer", description=(
            "first_answer: the base's own generated first answer is right; or a reading "
            "of its unprompted belief (" + _READINGS + ")"))
    margin: float = Field(0.0, ge=0, le=100, description=(
        "a belief reading counts only when its log-prob gap to the runner-up is at "
        "least this"))
    permutations: int = Field(4, ge=1, le=26, description=(
        _PERMUTATIONS + "; belief readings only (first_answer reads the presented order)"))
    permutation_share: float = Field(1.0, gt=0, le=1, description=_SHARE)


class TrainKnowledge(_Strict):
    """Knowledge-aware training data: the base model's unprompted belief per item decides
    what each training dialogue teaches (method.md §6b)."""
    by: BeliefReading = Field("letter", description="reading of the belief: " + _READINGS)
    margin: float = Field(0.0, ge=0, le=100, description=(
        "a reading counts only with at least this log-prob gap to the runner-up"))
    permutations: int = Field(4, ge=1, le=26, description=_PERMUTATIONS)
    permutation_share: float = Field(1.0, gt=0, le=1, description=_SHARE)
    unknown: Literal["drop", "paper", "insist"] = Field("drop", description=(
        "items whose belief is not the right answer: drop them, train them as the paper "
        "does (insist on gold, revise a random wrong letter), or insist only (a bare "
        "challenge carries no evidence: keep a right answer, never learn to drop one)"))


class SelfKnowledge(_Strict):
    """The self-knowledge diagnostic (locate): a linear probe on the residual stream at
    the end of the challenge, prefilled-right vs prefilled-wrong, cross-validated AUC
    per layer on known and unknown items; the ceiling estimate of selectivity."""
    n_items: int = Field(0, ge=0, le=100_000, description=(
        "data.locate items probed, each twice (right and wrong prefilled); 0: off"))
    by: BeliefReading = Field("letter", description="known items: " + _READINGS)
    margin: float = Field(0.0, ge=0, le=100, description="belief margin for known items")
    permutations: int = Field(4, ge=1, le=26, description=_PERMUTATIONS)
    permutation_share: float = Field(1.0, gt=0, le=1, description=_SHARE)
    folds: int = Field(5, ge=2, le=20, description="cross-validation folds (item pairs "
                                                   "stay in one fold)")
    l2: float = Field(1.0, gt=0, le=1e6, description="ridge penalty of the logistic probe")
