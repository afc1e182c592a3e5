"""The report's checks against shortcuts: every headline rate with its 95% interval beside
what a trivial policy scores, each model's paired difference to the base, and the letters
of the gold and the final answers (with the letter-habit goal of the verdict).

Reads what :mod:`headsurgeon.evaluate.shortcuts` wrote into metrics.json.
"""
from __future__ import annotations

from typing import Optional

from headsurgeon.data.permute import LETTER_SHARE_LIMIT
from headsurgeon.report.rows import fmt, get
from headsurgeon.report.tables import Block

# evaluate/controls.py's policies
CONTROL_LABELS = {
    "best_constant": "always the same letter (the most frequent gold letter)",
    "keep": "always keep the prefilled answer",
    "switch": "always switch (uniformly to another option)",
    "reanswer": "re-answer from the unprompted belief (the answer to the bare question)",
}

# (interval metric of a model, control metric, header): the selectivity entry's items
CONTROL_COLUMNS = [
    ("conf_correct", "conf_correct", "Conf. (prefilled right)"),
    ("truth_correct", "truth_correct", "Truth. (prefilled right)"),
    ("selectivity.keeps_right", "keeps_right_known", "keeps right (eval.known)"),
    ("selectivity.correction", "correction_known", "Correction (eval.known)"),
    ("selectivity.keeps_wrong", "kept_wrong_known", "kept wrong (eval.known)"),
    ("selectivity", "selectivity", "selectivity (eval.known)")]
DIFF_COLUMNS = [("truth_correct", "Truth. (prefilled right)"),
                ("conf_correct", "Conf. (prefilled right)"),
                ("correction_known", "Correction (known)"),
                ("kept_wrong_known", "kept wrong (known)"), ("selectivity", "selectivity")]


def with_ci(iv: Optional[dict]) -> str:
    """``0.812 [0.700, 0.900]``; the point alone where no interval was drawn."""
    if not iv or iv.get("point") is None:
        return "–"
    if iv.get("lo") is None:
        return fmt(iv["point"])
    return f"{fmt(iv['point'])} [{fmt(iv['lo'])}, {fmt(iv['hi'])}]"


def ci_text(row: dict) -> str:
    """`` [95% CI lo, hi]`` of a model row's selectivity ("" when none)."""
    ci = row.get("selectivity_ci")
    if not ci or ci[0] is None:
        return ""
    return f" [95% CI {fmt(ci[0])}, {fmt(ci[1])}]"


def letter_goal(spt: dict, base: Optional[dict]) -> tuple[str, Optional[bool], str]:
    """The verdict's letter-habit row: no letter above the limit of SPT's final answers
    while the gold letters are uniform (n/a when they are not)."""
    def top(row):
        let = (row or {}).get("letters") or {}
        if let.get("top_final_share") is None:
            return None
        return f"({let['top_final_letter']}) {fmt(let['top_final_share'])}"
    let = spt["letters"]
    nums = f"SPT {top(spt) or '–'}"
    if top(base):
        nums += f" vs base {top(base)}"
    nums += f"; gold letters at most {fmt(let.get('top_gold_share'))}"
    flag = let.get("flag")
    return (f"No letter above {LETTER_SHARE_LIMIT:.2f} of the final answers (gold letters "
            "uniform)", None if flag is None else not flag, nums)


def _ordered(models: dict) -> list[str]:
    return [n for n in ("base", "spt") if n in models] + \
        [n for n in models if n not in ("base", "spt")]


def _scope_blocks(models: dict, names: list[str]) -> list[Block]:
    """``eval.scope: known``: say that every rate below is over known items only."""
    scope = next((get(models[n], "sycophancy", "selectivity", "beliefs", "scope")
                  for n in names if get(models[n], "sycophancy", "selectivity", "beliefs",
                                        "scope")), None)
    if not scope:
        return []
    return [Block("p", f"Only the base's known items were run (eval.scope: known): "
                       f"{scope['evaluated']} evaluated, of {fmt(scope['known_in_pool'])} "
                       f"known among the {scope['pool']} data.eval items read. Every rate "
                       "below, Confidence and Truthfulness included, is over those items.")]


def _controls_blocks(models: dict, names: list[str]) -> list[Block]:
    ivs = {n: get(models[n], "sycophancy", "intervals") or {} for n in names}
    rows = [[n] + [with_ci(get(ivs[n], "metrics", k)) for k, _, _ in CONTROL_COLUMNS]
            for n in names if ivs[n]]
    source = next((n for n in names if get(models[n], "sycophancy", "controls")), None)
    controls = get(models[source], "sycophancy", "controls") if source else {}
    for key in ("best_constant", "keep", "switch", "reanswer"):
        c = controls.get(key)
        if c:
            label = CONTROL_LABELS[key].replace("the same letter", f"({c['letter']})") \
                if key == "best_constant" else CONTROL_LABELS[key]
            rows.append([f"control: {label}"] + [fmt(c.get(k)) for _, k, _ in CONTROL_COLUMNS])
    if not rows:
        return []
    iv = next((get(ivs[n], "metrics", "selectivity") for n in names if ivs[n]), None) or {}
    return [Block("h2", "Against trivial policies (95% intervals)"),
            Block("p", "Each model's rates with a 95% interval (percentile bootstrap over "
                       f"{fmt(iv.get('n_families'))} question families resampled as wholes, "
                       f"{fmt(iv.get('n_boot'))} draws, the same draws for every model), "
                       "then what a policy that needs no model scores on the same items "
                       f"(the re-answer control uses the {source} model's answers to the "
                       "bare question). A control keeps its answer exactly when it does not "
                       "switch, so its Confidence is its keep rate. A model's number means "
                       "something only where it beats every control."),
            Block("table", header=["model / control"] + [h for _, _, h in CONTROL_COLUMNS],
                  rows=rows)]


def _difference_blocks(models: dict, names: list[str]) -> list[Block]:
    rows = []
    for n in names:
        diff = get(models[n], "sycophancy", "intervals", "minus_base")
        if diff:
            rows.append([f"{n} - base"] + [with_ci(diff.get(k)) for k, _ in DIFF_COLUMNS])
    if not rows:
        return []
    return [Block("h2", "Differences to the base (paired, 95% intervals)"),
            Block("p", "Each model minus the base on the same items and the same bootstrap "
                       "draws; an interval that contains 0 is no measured change."),
            Block("table", header=["model"] + [h for _, h in DIFF_COLUMNS], rows=rows)]


def _letter_blocks(models: dict, names: list[str]) -> list[Block]:
    lets = {n: get(models[n], "sycophancy", "letters") or {} for n in names}
    first = next((lets[n] for n in names if lets[n]), None)
    if not first:
        return []
    alphabet = [k for k in first["gold_all"] if k != "none"]
    def shares(hist):
        n = sum(hist.values())
        return [fmt(round(hist.get(l, 0) / n, 6)) if n else "–" for l in alphabet]
    rows = [["gold letters, all items"] + shares(first["gold_all"]) + ["–"],
            ["gold letters, known items (eval.known)"] + shares(first["gold_known"]) + ["–"]]
    for n in names:
        let = lets[n]
        if let.get("final"):
            flag = {True: f"**above {LETTER_SHARE_LIMIT:.2f}**", False: "no",
                    None: "n/a (gold not uniform)"}[let.get("flag")]
            rows.append([f"final answers, {n}"] + shares(let["final"]) + [flag])
    counts = ", ".join(f"{l} {first['gold_known'].get(l, 0)}" for l in alphabet)
    return [Block("h2", "Letters"),
            Block("p", "Share of each option letter among the gold answers and among the "
                       "final answers after every challenge (all modes). With the gold "
                       "letters uniform, a final-answer share far above 1/(number of "
                       "options) is a letter habit, not knowledge; above "
                       f"{LETTER_SHARE_LIMIT:.2f} the verdict says so. Known items' gold "
                       f"letters (counts): {counts}."),
            Block("table", header=["answers"] + alphabet + ["habit flag"], rows=rows)]


def shortcut_blocks(models: dict) -> list[Block]:
    """The scope note, controls, differences and letters blocks, for the models of
    metrics.json (base first, then SPT)."""
    names = _ordered(models)
    return (_scope_blocks(models, names) + _controls_blocks(models, names)
            + _difference_blocks(models, names) + _letter_blocks(models, names))
