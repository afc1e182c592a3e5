"""The trade-off sweep: what keeping right answers costs in accepting corrections.

Tuning that makes a model keep every right answer can make it keep every WRONG answer
too (method.md §6). Each sweep point (overrides of the insist/revise mix, K, objective,
steps, ...) is trained in memory and measured on known items in two modes: prefilled
right (does it keep it?) and prefilled wrong (does it accept the correction?). The
point shipped (``sweep.choose_by``) keeps the most right answers while losing at most
``sweep.max_correction_drop`` of the base's Correction, or has the highest lower end of
selectivity's 95% interval among the points that keep Confidence and general accuracy
(``min_confidence``, ``max_general_drop``): a point chosen on the interval's lower end is
one whose selectivity is unlikely to be luck of the split. The decision is written down.

The points are measured on a validation split: ``data.confirm`` (e.g. the questions'
confirm parts), else ``data.eval`` items after those the report evaluates; never one the
report evaluates, so the shipped point's numbers in the report are not the numbers it was
chosen on.
"""
from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Optional

from headsurgeon.core.atomic import atomic_write_bytes, atomic_write_json
from headsurgeon.core.progress import progress_note
from headsurgeon.core.recipe import Recipe

SWEEP_FILE = "sweep.json"


def _scores(metrics: dict) -> dict:
    """A point's numbers on the known items: the report's ``selectivity`` entry."""
    sel = metrics["sycophancy"]["selectivity"]
    ci = sel.get("ci95") or [None, None]
    return {"keeps_right": sel["keeps_right"], "confidence_right": sel["confidence_right"],
            "correction": sel["correction"], "kept_wrong": sel["keeps_wrong"],
            "selectivity": sel["selectivity"], "selectivity_lo": ci[0],
            "n_known": sel["n_known"],
            "general": (metrics.get("general") or {}).get("mc_accuracy")}


def choose(points: list[dict], base: dict, sweep) -> tuple[Optional[dict], str]:
    """The shipped point and a sentence saying why (``sweep``: the recipe's section;
    ``base``: the base's scores on the same items)."""
    scored = [p for p in points if p.get("keeps_right") is not None]
    if not scored:
        if not points:
            return None, "no point was trained"
        return points[0], (f"no point could be measured (the validation split has no item "
                           f"the base knows); shipped the first point, {points[0]['name']}, "
                           f"unchosen. Give data.eval more items.")
    if sweep.choose_by == "selectivity_lower_bound":
        return _by_lower_bound(scored, base, sweep)
    base_correction, max_drop = base.get("correction"), sweep.max_correction_drop
    floor = (base_correction or 0.0) - max_drop
    ok = [p for p in scored if (p.get("correction") or 0.0) >= floor]
    if ok:
        best = max(ok, key=lambda p: (p["keeps_right"], p.get("correction") or 0.0))
        return best, (f"shipped {best['name']}: it keeps the most right answers "
                      f"({best['keeps_right']:.2f}) among the points whose Correction "
                      f"({best.get('correction') or 0:.2f}) stays within {max_drop:.2f} of the "
                      f"base's ({base_correction or 0:.2f}).")
    best = max(scored, key=lambda p: p["keeps_right"] + (p.get("correction") or 0.0))
    return best, (f"no point kept Correction within {max_drop:.2f} of the base's "
                  f"({base_correction or 0:.2f}); shipped {best['name']}, the best sum of "
                  f"keeps-right ({best['keeps_right']:.2f}) and Correction "
                  f"({best.get('correction') or 0:.2f}). The goal is missed.")


def _num(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _by_lower_bound(scored: list[dict], base: dict, sweep) -> tuple[dict, str]:
    """``choose_by: selectivity_lower_bound``: the highest lower end of selectivity's 95%
    interval among the points meeting the Confidence and general-accuracy gates."""
    def lo(p):
        return -2.0 if p.get("selectivity_lo") is None else p["selectivity_lo"]

    def misses(p) -> list[str]:
        out = []
        if (p.get("confidence_right") or 0.0) < sweep.min_confidence:
            out.append(f"Confidence {_num(p.get('confidence_right'))} < "
                       f"{sweep.min_confidence:.2f}")
        if sweep.max_general_drop is not None:
            g, g0 = p.get("general"), base.get("general")
            if g is None or g0 is None or g < g0 - sweep.max_general_drop - 1e-9:
                out.append(f"general {_num(g)} vs the base's {_num(g0)} (at most "
                           f"{sweep.max_general_drop:.3f} lower)")
        return out

    def said(p) -> str:
        return (f"{p['name']}: selectivity {_num(p.get('selectivity'))}, 95% interval from "
                f"{_num(p.get('selectivity_lo'))}, {p.get('n_known', 0)} known items")
    ok = [p for p in scored if not misses(p)]
    if ok:
        best = max(ok, key=lambda p: (lo(p), p.get("selectivity") or -2.0))
        gates = f"Confidence >= {sweep.min_confidence:.2f}" + (
            "" if sweep.max_general_drop is None else
            f" and general within {sweep.max_general_drop:.3f} of the base's "
            f"{_num(base.get('general'))}")
        return best, (f"shipped {said(best)}: the highest lower end among the {len(ok)} of "
                      f"{len(scored)} points with {gates}.")
    best = max(scored, key=lambda p: (lo(p), p.get("selectivity") or -2.0))
    return best, (f"no point met the gates; shipped {said(best)}, the highest lower end "
                  f"({'; '.join(misses(best))}). The goal is missed.")


MIN_SELECTION_ITEMS = 4


def selection_items(recipe: Recipe) -> list:
    """The items the sweep chooses a point on, first ``sweep.n_items``: ``data.confirm``
    (seeded order), else ``data.eval`` after the ones the report reads (``eval.n_items``,
    or ``eval.pool`` with scope known); minus any sharing an id or text with those."""
    from headsurgeon.data.datasets import load_stage
    from headsurgeon.evaluate.run import load_eval_items

    report = load_eval_items(recipe)
    if recipe.data.confirm:
        pool = load_stage(recipe.data.confirm, "confirm", seed=recipe.data.seed,
                          balance=recipe.data.balance_letters)
    else:
        pool = load_stage(recipe.data.eval, "eval", seed=recipe.data.seed,
                          balance=recipe.data.balance_letters)[len(report):]
    ids = {q.id for q in report}
    texts = {q.question.strip().lower() for q in report}
    items = [q for q in pool if q.id not in ids and q.question.strip().lower() not in texts]
    if len(items) < MIN_SELECTION_ITEMS and recipe.data.confirm:
        raise recipe.error("data.confirm", (
            f"the sweep needs at least {MIN_SELECTION_ITEMS} validation items, and "
            f"data.confirm has {len(items)} that the report does not read"))
    if len(items) < MIN_SELECTION_ITEMS:
        raise recipe.error("sweep.n_items", (
            f"the sweep needs at least {MIN_SELECTION_ITEMS} validation items beyond the "
            f"{len(report)} the report reads ("
            f"{'eval.pool' if recipe.eval.scope == 'known' else 'eval.n_items'}), and "
            f"data.eval has "
            f"{len(items)} more; give data.eval more items"))
    return items[: recipe.sweep.n_items]


def run_sweep(recipe: Recipe, run_dir: Path, heads: list, *, progress: bool = True) -> dict:
    """Train and measure every point (on :func:`selection_items`); write each delta under
    ``sweep/`` and ``sweep.json``."""
    from headsurgeon.data.questions import data_hash
    from headsurgeon.evaluate.run import belief_known, evaluate_model, make_judge
    from headsurgeon.model.sources import load_model
    from headsurgeon.train.run import train_in_memory, write_outputs

    sw = recipe.sweep
    pool = selection_items(recipe)
    eval_recipe = recipe.model_copy(update={"eval": recipe.eval.model_copy(
        update={"modes": ["correct", "wrong"]})})
    eval_recipe._path, eval_recipe._text = recipe._path, recipe._text
    judge = make_judge(recipe)
    from headsurgeon.model.placement import recipe_placement
    from headsurgeon.model.sources import resolve_model

    rm = resolve_model(recipe.model.source, allow_pickle=recipe.model.allow_pickle)
    model, tok, _ = load_model(rm, placement=recipe_placement(recipe, rm.path))
    # eval.known read from beliefs: only the known items are scored, so only they are run
    known_set, beliefs = belief_known(recipe, model, tok, pool, progress)
    items = pool if known_set is None else [q for q in pool if q.id in known_set]
    general = None
    if sw.max_general_drop is not None:  # the general-accuracy gate: every point runs it
        from headsurgeon.evaluate.general import load_general_sets
        general = load_general_sets(recipe)

    def measure(m, base_known=None) -> dict:
        if not items:
            return {"keeps_right": None, "confidence_right": None, "correction": None,
                    "kept_wrong": None, "selectivity": None, "selectivity_lo": None,
                    "n_known": 0, "general": None}
        return _scores(evaluate_model(m, tok, eval_recipe, items, judge=judge,
                                      base_known=base_known, known_items=known_set,
                                      general=general, progress=progress))

    progress_note(f"[sweep] base ({len(items)} of {len(pool)} validation items measured)")
    if items and known_set is None:
        res = evaluate_model(model, tok, eval_recipe, items, judge=judge, general=general,
                             progress=progress)
        known, base_scores = set(res["known_ids"]), _scores(res)
    else:
        known, base_scores = known_set or set(), measure(model)
    points = [{"name": "base", **base_scores, "trained": False}]
    out_dir = run_dir / "sweep"
    out_dir.mkdir(parents=True, exist_ok=True)
    for point in sw.points:
        name = point.label()
        progress_note(f"[sweep] {name}")
        r = recipe.with_train(**point.train_overrides)
        result = train_in_memory(r, heads=heads[: point.top_k] if point.top_k else heads,
                                 model=model, tokenizer=tok, progress=progress)
        scores = measure(result.model, base_known=known)
        delta_path = out_dir / f"{_safe(name)}.safetensors"
        write_outputs(result, delta_path)
        result.trainable.detach()
        points.append({"name": name, "overrides": point.model_dump(exclude_none=True),
                       **scores, "trained": True,
                       "delta": str(delta_path.relative_to(run_dir))})
    chosen, why = choose([p for p in points if p["trained"]], base_scores, sw)
    doc = {"n_items": len(pool), "n_measured": len(items), "n_known": len(known),
           "known_by": recipe.eval.known.by, "beliefs": beliefs, "points": points,
           "chosen": chosen and chosen["name"], "decision": why,
           "choose_by": sw.choose_by,
           "selection": {"source": "data.confirm" if recipe.data.confirm else (
                             "data.eval after the first eval.n_items (disjoint from the "
                             "items the report evaluates)"),
                         "items_hash": data_hash(pool), "ids": [q.id for q in pool],
                         "measured_ids": [q.id for q in items]}}
    atomic_write_json(run_dir / SWEEP_FILE, doc)
    return doc


def ship_chosen(run_dir: Path, doc: dict, out: Path) -> Path:
    """Copy the chosen point's delta (and its log and loss curve) to ``out``."""
    chosen = next(p for p in doc["points"] if p["name"] == doc["chosen"])
    src = run_dir / chosen["delta"]
    for suffix in (".train.json", ".loss.png"):
        side = src.with_name(src.stem + suffix)
        if side.exists():
            atomic_write_bytes(out.with_name(out.stem + suffix), side.read_bytes())
    tmp = out.with_name(f".{out.name}.copy")
    shutil.copyfile(src, tmp)
    tmp.replace(out)
    return out


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]


def frontier_points(metrics: Optional[dict], sweep: Optional[dict],
                    groups: Optional[dict[str, list[str]]] = None) -> list[tuple]:
    """(label, Correction, keeps-right, shipped?, (x sd, y sd) or None) of every sweep point,
    every evaluated model (base, SPT, each baseline run) and each group of seeded runs
    (``groups``: label -> runs) as its mean with its sample standard deviations."""
    from headsurgeon.report.rows import group_row, model_row

    pts = []
    for p in (sweep or {}).get("points", []):
        if p.get("keeps_right") is not None and p.get("correction") is not None:
            pts.append((f"sweep {p['name']}", p["correction"], p["keeps_right"],
                        p["name"] == (sweep or {}).get("chosen"), None))
    rows = {name: model_row(res) for name, res in ((metrics or {}).get("models") or {}).items()}
    for name, row in rows.items():
        if row["keeps_right_known"] is not None and row["correction_known"] is not None:
            pts.append((name, row["correction_known"], row["keeps_right_known"],
                        name == "spt", None))
    for label, runs in (groups or {}).items():
        g = group_row(rows, runs, ("correction_known", "keeps_right_known"))
        (x, x_sd), (y, y_sd) = g["correction_known"], g["keeps_right_known"]
        if x is not None and y is not None:
            pts.append((label, x, y, False, (x_sd, y_sd)))
    return pts


def plot_frontier(run_dir: Path, metrics: Optional[dict], sweep: Optional[dict], *,
                  groups: Optional[dict[str, list[str]]] = None) -> Optional[Path]:
    """Keeps-right (prefilled right, known items) vs Correction (prefilled wrong, known
    items): the :func:`frontier_points`, groups with +- sd bars."""
    pts = frontier_points(metrics, sweep, groups)
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    shapes = ("o", "^", "v", "P", "X", "D", "<", ">", "h", "p")
    for i, (label, x, y, shipped, sd) in enumerate(pts):
        style = (dict(marker="*", s=220, color="tab:red", zorder=4) if shipped else
                 dict(marker="s", s=70, color="grey", zorder=3) if label == "base" else
                 dict(marker=shapes[i % len(shapes)], s=40 + 12 * (i % 4), linewidths=1.5,
                      facecolors="none", edgecolors=f"C{i % 10}"))
        if sd is not None:
            ax.errorbar([x], [y], xerr=[sd[0]], yerr=[sd[1]], fmt="none", capsize=4,
                        ecolor="black", elinewidth=1)
        ax.scatter([x], [y], label=label, **style)
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("Correction: accepts a correction of a wrong answer (known items)")
    ax.set_ylabel("Truthfulness: keeps a right answer (known items)")
    ax.plot([0, 1], [1, 1], ":", color="grey")
    ax.plot([0, 1], [1, 0], "--", color="lightgrey", zorder=1)  # keeps right = 1 - Correction
    ax.set_title("honest = top right; stubborn = top left; sycophant = bottom right\n"
                 "dashed: keeps right = 1 - Correction (selectivity about 0); "
                 "sweep points: validation items", fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False,
              title="star = shipped; bars = ± sd over seeds", title_fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(run_dir / "frontier.png", buf.getvalue())
