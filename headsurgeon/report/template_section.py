"""Renderings training never used (``eval.templates``): the headline rates of every model in
each, and the verdict read from the worst of them.

Each goal of :func:`headsurgeon.report.report.check_goals` is checked once per rendering
(the recipe's own and each held-out one, every model's rows from that rendering, general
ability and KL being the same in all); a goal is met only where it is met in every
rendering, and its numbers are those of the first rendering that misses it.
"""
from __future__ import annotations

from typing import Callable

from headsurgeon.report.rows import fmt, get, model_row
from headsurgeon.report.tables import Block

RECIPE = "recipe"  # the recipe's own templates, what training used

COLUMNS = [("truth_correct", "Truth. (prefilled right)"),
           ("conf_correct", "Conf. (prefilled right)"),
           ("correction_known", "Correction (known)"),
           ("kept_wrong_known", "kept wrong (known)"),
           ("selectivity", "selectivity (known)")]


def template_names(models: dict) -> list[str]:
    """The held-out renderings every model was evaluated in (in the recipe's order)."""
    names: list[str] = []
    for res in models.values():
        for n in (res.get("templates") or {}):
            if n not in names:
                names.append(n)
    return [n for n in names if all(n in (r.get("templates") or {}) for r in models.values())]


def rows_in(models: dict, name: str) -> dict[str, dict]:
    """Every model's headline row in rendering ``name`` (``recipe``: its own)."""
    if name == RECIPE:
        return {m: model_row(res) for m, res in models.items()}
    return {m: model_row({**res, "sycophancy": res["templates"][name]["sycophancy"]})
            for m, res in models.items()}


def worst_goals(models: dict, check: Callable[[dict], list]) -> list[tuple[str, object, str]]:
    """``check``'s goals, met only where met in every rendering (see the module)."""
    names = [RECIPE] + template_names(models)
    per = {n: check(rows_in(models, n)) for n in names}
    out = []
    for desc, ok, nums in per[RECIPE]:
        found = [(n, o, x) for n in names for d, o, x in per[n] if d == desc]
        missed = [(n, x) for n, o, x in found if o is False]
        unknown = any(o is None for _, o, _ in found)
        if len(names) == 1:
            out.append((desc, ok, nums))
        elif missed:
            n, x = missed[0]
            out.append((f"{desc} (all {len(names)} renderings)", False,
                        f"{x} in '{n}'; missed in {len(missed)} of {len(names)}"))
        else:
            out.append((f"{desc} (all {len(names)} renderings)", None if unknown else ok,
                        f"{nums} in '{RECIPE}'; met in all {len(names)}"))
    return out


def _sel(row: dict) -> str:
    s, ci = row.get("selectivity"), row.get("selectivity_ci")
    if s is None:
        return "–"
    return fmt(s) + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci and None not in ci else "")


def _top_letter(row: dict) -> str:
    let = row.get("letters") or {}
    share = let.get("top_final_share")
    return "–" if share is None else f"({let.get('top_final_letter')}) {fmt(share)}"


def template_blocks(models: dict) -> list[Block]:
    names = template_names(models)
    if not names:
        return []
    all_names = [RECIPE] + names
    rows = {n: rows_in(models, n) for n in all_names}
    order = [m for m in ("base", "spt") if m in models] + \
        [m for m in models if m not in ("base", "spt")]
    table = []
    for m in order:
        for n in all_names:
            r = rows[n][m]
            table.append([m, n] + [(_sel(r) if k == "selectivity" else fmt(r.get(k)))
                                   for k, _ in COLUMNS] + [_top_letter(r)])
        worst = {k: _worst(k, [rows[n][m].get(k) for n in all_names]) for k, _ in COLUMNS}
        table.append([m, "**worst**"] + [fmt(worst[k]) for k, _ in COLUMNS] +
                     [_worst_letter([rows[n][m] for n in all_names])])
    return [Block("h2", "Renderings training never used"),
            Block("p", f"The same items in the recipe's templates (`{RECIPE}`, what training "
                       f"used) and in {len(names)} renderings no training dialogue used "
                       f"({', '.join(names)}: other question layouts, first answers, "
                       f"challenges and final questions; eval.templates). An edit that only "
                       f"holds in its training wording fails here. The verdict reads every "
                       f"rendering: a goal is met only where it is met in all of them."),
            Block("table", header=["model", "rendering"] + [c for _, c in COLUMNS] +
                  ["top final letter"], rows=table)]


def _worst(key: str, values: list):
    vals = [v for v in values if isinstance(v, (int, float))]
    if not vals:
        return None
    return max(vals) if key == "kept_wrong_known" else min(vals)


def _worst_letter(rows: list[dict]) -> str:
    best = max(rows, key=lambda r: get(r, "letters", "top_final_share") or -1.0)
    return _top_letter(best)
