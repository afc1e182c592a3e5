"""The numbers of the report: one row of headline metrics per model, baseline groups
(random heads over several seeds as mean +- sd) and number formatting.

Every figure the report prints goes through :func:`fmt`, which refuses anything that is
not a number, so no raw dict or list can reach a table.
"""
from __future__ import annotations

import math
from typing import Optional

from headsurgeon.core.recipe import Recipe


def fmt(v, digits: int = 3) -> str:
    """A number as the report prints it ("–" when it was not measured)."""
    if v is None:
        return "–"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"the report prints numbers, not {type(v).__name__} ({v!r:.60})")
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.{digits}f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return f"{v:,}" if abs(v) >= 10_000 else str(v)


def get(d, *path):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def model_row(res: dict) -> dict:
    """The headline numbers of one model's metrics."""
    syc = res.get("sycophancy", {})
    modes = syc.get("modes", {})
    known = "base_known" if any("base_known" in m for m in modes.values()) else "known"
    return {
        "accuracy": syc.get("accuracy_before"),
        "conf_own": get(modes, "own", "known", "confidence"),
        "truth_own": get(modes, "own", "known", "truthfulness"),
        "conf_correct": get(modes, "correct", "all", "confidence"),
        "truth_correct": get(modes, "correct", "all", "truthfulness"),
        "keeps_right_known": get(modes, "correct", known, "truthfulness"),
        "correction_known": get(modes, "wrong", known, "correction"),
        "kept_wrong_known": get(modes, "wrong", known, "kept_wrong"),
        "mc_accuracy": get(res, "general", "mc_accuracy"),
        "mc_minus_base": get(res, "general", "minus_base"),  # paired, with its interval
        "open_accuracy": get(res, "general", "open_accuracy"),
        "kl": get(res, "kl", "mean"),
        "discrimination": discrimination(modes),
        "selectivity": get(syc, "selectivity", "selectivity"),
        "selectivity_ci": get(syc, "selectivity", "ci95"),  # [lo, hi] (evaluate/intervals.py)
        "letters": syc.get("letters") or None,  # gold and final letters, the habit flag
        "constant_letter": get(syc, "controls", "best_constant", "letter"),
        "constant_selectivity": get(syc, "controls", "best_constant", "selectivity"),
    }


def discrimination(modes: dict) -> Optional[float]:
    """How much more often a prefilled RIGHT answer survives the challenge than a prefilled
    WRONG one, on the same items: 0 means the model cannot tell them apart, and then every
    point of Truthfulness it gains is paid for in Correction (and vice versa)."""
    keep_right = get(modes, "correct", "all", "kept_first")
    keep_wrong = get(modes, "wrong", "all", "kept_first")
    if keep_right is None or keep_wrong is None:
        return None
    return round(keep_right - keep_wrong, 6)


# What each column of the before/after table means (columns without an entry, added by
# other sections, are listed by their header alone).
MEANINGS = {
    "accuracy": "share of the evaluation items answered right unprompted",
    "conf_own": "own first answer, known items: share where the model keeps its answer "
                "when challenged",
    "truth_own": "own first answer, known items: share right after the challenge",
    "conf_correct": "right answer prefilled: share kept when challenged (all items)",
    "truth_correct": "right answer prefilled: share right after the challenge (all items)",
    "keeps_right_known": "right answer prefilled, items the base knows: share right after "
                         "the challenge",
    "correction_known": "wrong answer prefilled, items the base knows: share that accept "
                        "the correction and end right",
    "kept_wrong_known": "wrong answer prefilled, items the base knows: share that keep the "
                        "wrong answer",
    "mc_accuracy": "mean accuracy over the multiple-choice general-ability sets",
    "open_accuracy": "mean accuracy over the open (numeric) general-ability sets",
    "kl": "mean next-token KL(base || model) per token of neutral text (nats; 0 = "
          "unchanged)",
    "discrimination": "keeps a prefilled right answer minus keeps a prefilled wrong one "
                      "(0: cannot tell them apart)",
    "selectivity": "the same on the items the base knows (eval.known): 0 for a stubborn "
                   "model or a letter-copier, near 1 for an honest one",
}


def baseline_groups(recipe: Recipe) -> dict[str, list[str]]:
    """Baselines trained several times (random heads, one run per seed): label -> runs."""
    out = {}
    for spec in recipe.eval.baselines:
        runs = [name for name, _ in spec.runs()]
        if len(runs) > 1:
            out[f"{spec.name} (mean ± sd, {len(runs)} seeds)"] = runs
    return out


def mean_sd(values: list) -> tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation of the measured values (None when none)."""
    vals = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not vals:
        return None, None
    m = sum(vals) / len(vals)
    if len(vals) == 1:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def group_row(rows: dict[str, dict], runs: list[str], keys) -> dict[str, tuple]:
    """Per key: (mean, sd) over the group's runs that were evaluated."""
    present = [rows[r] for r in runs if r in rows]
    return {k: mean_sd([r.get(k) for r in present]) for k in keys}


def fmt_mean_sd(pair: tuple, digits: int = 3) -> str:
    m, sd = pair
    return "–" if m is None else f"{fmt(m, digits)} ± {fmt(sd, digits)}"
