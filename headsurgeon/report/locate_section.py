"""The report's "How the heads were located" section from ``heads.json``: the locator, the
knockout curve against random head sets with intervals (or the warning that it cannot be
told from them), and whether the selected heads read the challenge (per layer, per head,
against the random sets).

Returns plain ``(kind, text, rows, header, path)`` tuples; the report turns them into
its blocks."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from headsurgeon.report.rows import fmt as _f, get as _get

FIGURES = (("heads_attention.png", "Attention to the challenge per layer: selected heads, "
                                   "random K-sets' heads, all other heads"),)


def _ci(c) -> str:
    return "–" if not c or None in c else f"[{c[0]:.2f}, {c[1]:.2f}]"


def locator_text(method: dict) -> str:
    """One sentence: which locator ran, screened or exact, how many heads confirmed."""
    if not method:
        return "locator: unknown"
    name, screen = method.get("name", "?"), method.get("screen")
    if method.get("exact"):
        how = "every head scored exactly"
    elif screen and method.get("confirmed"):
        how = (f"{screen} screen of every head, top {method['confirmed']} confirmed by exact "
               f"{method.get('approximates') or name}")
    elif screen:
        how = f"{screen} scores only, no exact confirmation"
    else:
        how = "exact"
    paper = " (the paper's method)" if method.get("paper") else ""
    return f"locator: {name}{paper}: {how}"


def _at(seq, i):
    return seq[i] if isinstance(seq, list) and i < len(seq) else None


def _rate(v, c) -> str:
    return f"{_f(v, 2)} {_ci(c)}"


def _knockout_rows(ko: dict, K: int) -> list[list[str]]:
    rnd = ko.get("random") or {}
    vr = _get(ko, "ci", "vs_random") or {}
    eff_ci = _get(ko, "ci", "effect")
    base = ko.get("baseline") or {}
    rows = [["0 (none)", _f(base.get("metric")), "–", "–", "–",
             _rate(base.get("apology_rate"), base.get("apology_ci")), "–",
             _rate(base.get("steadfast_rate"), base.get("steadfast_ci"))]]
    for i, k in enumerate(ko.get("k") or []):
        star = " *" if _at(vr.get("significant"), i) else ""
        rows.append([
            f"{k} ← K" if k == K else str(k), _f(ko["metric"][i]),
            f"{_f(ko['effect'][i])} {_ci(_at(eff_ci, i))}",
            _f(_at(rnd.get("median_effect"), i)),
            f"{_f(_at(vr.get('mean'), i))} {_ci(_at(vr.get('ci'), i))}{star}",
            _rate(_at(ko.get("apology_rate"), i), _at(ko.get("apology_ci"), i)),
            _f(_at(rnd.get("median_apology_rate"), i), 2),
            _rate(_at(ko.get("steadfast_rate"), i), _at(ko.get("steadfast_ci"), i))])
    return rows


def _attention_blocks(att: dict) -> list[tuple]:
    if not att.get("available"):
        return [("p", f"Attention to the challenge: not measured ({att.get('why', '')}).",
                 [], [], None)]
    out = [("p", (f"Attention to the challenge ({att.get('definition', '')}): selected heads "
                  f"{_f(att.get('selected_mean'))}, the knockout's random K-sets "
                  f"{_f(att.get('random_sets_mean'))}, all other heads "
                  f"{_f(att.get('other_mean'))} (the paper: 0.46 selected vs 0.15)."),
            [], [], None)]
    table = att.get("table") or []
    if table:
        out.append(("table", "", [[r["group"], f"L{r['layer']}H{r['head']}",
                                   _f(r["attention"]), str(r["rank"])] for r in table],
                    ["group", "head", "attention to the challenge", "rank (1 = most)"], None))
    per = att.get("per_layer") or {}
    if per.get("all"):
        rows = [[str(l), _f(per["selected"][l]), _f(per["random"][l]), _f(per["others"][l])]
                for l in range(len(per["all"]))
                if per["selected"][l] is not None or per["random"][l] is not None]
        if rows:
            out.append(("table", "", rows, ["layer", "selected", "random sets", "others"],
                        None))
    return out


def locate_blocks(heads: dict, run_dir: Optional[Path] = None) -> list[tuple]:
    """The section as (kind, text, rows, header, path) tuples; [] without heads.json."""
    if not heads:
        return []
    K = heads.get("k") or len(heads.get("selected") or [])
    ko = heads.get("knockout") or {}
    out = [("h2", "How the heads were located", [], [], None),
           ("p", f"{locator_text(heads.get('method') or {})}. K = {K}: "
                 f"{heads.get('k_reason') or ''}.", [], [], None)]
    for w in heads.get("warnings") or []:
        out.append(("p", f"**Warning:** {w}", [], [], None))
    if ko.get("k"):
        abl = ko.get("ablation") or {}
        abl_text = abl.get("source", abl) if isinstance(abl, dict) else abl
        flag = ko.get("distinguishable_from_random")
        verdict = {True: "distinguishable from random k-sets",
                   False: "NOT distinguishable from random k-sets",
                   None: "not compared with random k-sets"}[flag]
        out.append(("p", (f"Knockout ({ko.get('n_probes', '?')} probes): the top-k heads' "
                          f"outputs are replaced by {abl_text}. At K = {K} the effect is "
                          f"{verdict}. Intervals are 95% (bootstrap for effects, Wilson for "
                          f"rates); * = the paired difference vs random is above 0 at the "
                          f"family-wise level."), [], [], None))
        out.append(("table", "", _knockout_rows(ko, K),
                    ["k", "metric", "effect [95%]", "random median effect",
                     "top - random (paired) [95%]", "apology rate [95%]",
                     "random median apology", "steadfast letter [95%]"], None))
    out += _attention_blocks(heads.get("attention_to_challenge") or {})
    for png, caption in FIGURES:
        if run_dir is not None and (Path(run_dir) / png).is_file():
            out.append(("figure", caption, [], [], Path(run_dir) / png))
    return out
