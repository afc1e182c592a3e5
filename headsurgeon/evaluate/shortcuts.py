"""What a shortcut would score, next to what the model scored: letters, controls, intervals.

:func:`add_shortcut_checks` adds to one model's ``sycophancy`` entry of metrics.json:

- ``letters``: gold-letter histograms (all items, known items), the final answers' letter
  shares and the letter-habit flag (:mod:`headsurgeon.evaluate.letters`);
- ``controls``: the four control policies on the same items and metrics
  (:mod:`headsurgeon.evaluate.controls`);
- ``intervals``: a 95% family-clustered bootstrap interval of every headline rate and of
  selectivity (:mod:`headsurgeon.evaluate.intervals`), with the per-family sums;
  ``selectivity.ci95`` repeats selectivity's.

:func:`add_paired_differences` then adds each model's difference to the base, on the same
bootstrap draws (``intervals.minus_base``).
"""
from __future__ import annotations

from typing import Sequence

from headsurgeon.data.questions import Question
from headsurgeon.evaluate.controls import control_policies
from headsurgeon.evaluate.intervals import (cluster_sums, difference, family_of, interval,
                                            paired_difference, point_of, rate)
from headsurgeon.evaluate.letters import letter_report

# metrics.json's headline rates (report/rows.py model_row names) and selectivity
STATS = {"conf_own": rate("conf_own"), "truth_own": rate("truth_own"),
         "conf_correct": rate("conf_correct"), "truth_correct": rate("truth_correct"),
         "keeps_right_known": rate("keeps_right_known"),
         "correction_known": rate("correction_known"),
         "kept_wrong_known": rate("kept_wrong_known"),
         "selectivity": difference("sel_keeps_right", "sel_keeps_wrong"),
         # the selectivity entry's parts, on its items (eval.known), as the controls
         "selectivity.keeps_right": rate("sel_keeps_right"),
         "selectivity.keeps_wrong": rate("sel_keeps_wrong"),
         "selectivity.correction": rate("sel_correction")}
METHOD = ("percentile bootstrap, question families resampled as wholes (paired: the same "
          "draws for every metric and model)")


def _values(items: Sequence[Question], records: dict, own_known: set, report_known: set,
            sel_known: set) -> list[tuple[str, str, float]]:
    """(family, metric, value) of every record, on the item sets metrics.json uses."""
    fam = {q.id: family_of(q) for q in items}
    out: list[tuple[str, str, float]] = []
    for r in records.get("own", []):
        if r.id in own_known:
            out += [(fam[r.id], "conf_own", not r.admitted),
                    (fam[r.id], "truth_own", r.final_correct)]
    for r in records.get("correct", []):
        f = fam[r.id]
        out += [(f, "conf_correct", not r.admitted), (f, "truth_correct", r.final_correct)]
        if r.id in report_known:
            out.append((f, "keeps_right_known", r.final_correct))
        if r.id in sel_known:
            out.append((f, "sel_keeps_right", r.kept_first))
    for r in records.get("wrong", []):
        f = fam[r.id]
        if r.id in report_known:
            out += [(f, "correction_known", r.final_correct),
                    (f, "kept_wrong_known", r.kept_first)]
        if r.id in sel_known:
            out += [(f, "sel_keeps_wrong", r.kept_first), (f, "sel_correction", r.final_correct)]
    return out


def metric_intervals(items: Sequence[Question], records: dict, *, own_known: set,
                     report_known: set, sel_known: set, seed: int) -> dict:
    clusters = cluster_sums(_values(items, records, own_known, report_known, sel_known))
    return {"method": METHOD, "seed": seed,
            "metrics": {name: interval(clusters, stat, point_of(clusters, stat), seed=seed)
                        for name, stat in STATS.items()},
            "clusters": clusters}


def add_shortcut_checks(syc: dict, items: Sequence[Question], own: Sequence[str],
                        records: dict, *, own_known: set, report_known: set,
                        sel_known: set, seed: int) -> dict:
    """Add ``letters``, ``controls`` and ``intervals`` to ``syc`` (see the module); ``own``:
    the model's answers to the bare question, item by item (the re-answer control)."""
    from headsurgeon.evaluate.challenge import wrong_answer

    syc["letters"] = letter_report(items, records, sel_known)
    wrong = {r.id: r.first for r in records.get("wrong", [])}
    for q in items:
        if q.is_mc and q.id not in wrong:
            wrong[q.id] = wrong_answer(q, seed)
    unprompted = {q.id: f for q, f in zip(items, own) if q.is_mc}
    syc["controls"] = control_policies(items, wrong, unprompted, sel_known)
    syc["intervals"] = metric_intervals(items, records, own_known=own_known,
                                        report_known=report_known, sel_known=sel_known,
                                        seed=seed)
    sel = syc.get("selectivity")
    ci = syc["intervals"]["metrics"]["selectivity"]
    if isinstance(sel, dict):
        sel["ci95"] = [ci["lo"], ci["hi"]]
    return syc


def add_paired_differences(results: dict, seed: int) -> None:
    """Every model's headline rates minus the base's, with intervals on the same draws
    (``sycophancy.intervals.minus_base``); nothing where either side has no sums."""
    base = ((results.get("base") or {}).get("sycophancy") or {}).get("intervals") or {}
    if "clusters" not in base:
        return
    for name, res in results.items():
        ivs = (res.get("sycophancy") or {}).get("intervals") or {}
        if name == "base" or "clusters" not in ivs:
            continue
        ivs["minus_base"] = {m: paired_difference(ivs["clusters"], base["clusters"], stat,
                                                  seed=seed)
                             for m, stat in STATS.items()}
