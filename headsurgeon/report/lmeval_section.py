"""The report's lm-evaluation-harness section (``eval.general_engine: lmeval``): every
model's acc and acc_norm with their standard errors, and each edit's paired difference
to the base in points."""
from __future__ import annotations

from headsurgeon.report.rows import fmt, get


def _with_se(value, se, scale: float = 1.0, digits: int = 3) -> str:
    if value is None:
        return "–"
    shown = fmt(value * scale, digits)
    return shown if se is None else f"{shown} ± {fmt(se * scale, digits)}"


def lmeval_rows(models: dict) -> list[list[str]]:
    """One row per model scored by lm-eval: acc, acc_norm (± standard error), n, and the
    paired difference to the base in points (± its standard error)."""
    rows = []
    for name, res in models.items():
        lm = res.get("general_lmeval") if isinstance(res, dict) else None
        if not lm:
            continue
        row = [name, _with_se(lm.get("acc"), lm.get("acc_stderr")),
               _with_se(lm.get("acc_norm"), lm.get("acc_norm_stderr")), fmt(lm.get("n"))]
        for m in ("acc", "acc_norm"):
            d = get(lm, "vs_base", m) or {}
            row.append(_with_se(d.get("diff"), d.get("stderr"), 100.0, 1))
        rows.append(row)
    return rows


def lmeval_blocks(models: dict) -> list[tuple]:
    """(kind, text, rows, header) blocks; none when no model was scored by lm-eval."""
    rows = lmeval_rows(models)
    if not rows:
        return []
    engine = next(res["general_lmeval"].get("engine", "lm-eval")
                  for res in models.values()
                  if isinstance(res, dict) and res.get("general_lmeval"))
    text = (f"Scored by {engine} on the multiple-choice items of data.general, zero-shot, "
            "prompt `Question: ...` / `Answer:` with every option scored as a continuation: "
            "acc picks the option with the highest log-likelihood, acc_norm the highest per "
            "character. ± is lm-eval's standard error. Δ is the edited model minus the base "
            "on the same items, in points, ± the standard error of the paired differences.")
    return [("h2", "General ability (lm-evaluation-harness)"), ("p", text),
            ("table", "", rows, ["model", "acc", "acc_norm", "n", "Δ acc (points)",
                                 "Δ acc_norm (points)"])]
