"""What ``headsurgeon run`` prints last: the verdict on the goals and the files it wrote.

The goals are :func:`headsurgeon.report.report.check_goals`'s (the same rows as the
report's table); the files are every output a user may want to open or ship, with the
path to reach it, in the order the stages wrote them.
"""
from __future__ import annotations

import json
from pathlib import Path

from headsurgeon.report.report import ceiling_text, check_goals
from headsurgeon.report.template_section import worst_goals

# the stage outputs, in pipeline order; figures and other files follow
RUN_OUTPUTS = ("heads.json", "delta.safetensors", "model", "metrics.json", "sweep.json",
               "report.md", "report.html")
BOOKKEEPING = ("pipeline.json",)  # the resume state: not an output
MET = {True: "yes", False: "NO", None: "n/a"}


def goal_rows(run_dir: Path) -> list[tuple[str, str, str]]:
    """(goal, measured, met?) for every goal the run's metrics.json can decide."""
    try:
        metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    except (OSError, ValueError, RecursionError):
        return []
    models = metrics.get("models") if isinstance(metrics, dict) else None
    return [(desc, nums, MET[ok]) for desc, ok, nums in worst_goals(models or {}, check_goals)]


def run_outputs(run_dir: Path) -> list[Path]:
    """The outputs under ``run_dir``: stage outputs, figures, other files, baselines."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    first = [run_dir / n for n in RUN_OUTPUTS if (run_dir / n).exists()]
    figures = sorted(run_dir.glob("*.png"))
    rest = sorted(p for p in run_dir.iterdir()
                  if p not in first and p not in figures and p.name != "baselines"
                  and not p.name.startswith(".") and p.name not in BOOKKEEPING)
    baselines = [p for b in sorted((run_dir / "baselines").glob("*")) if b.is_dir()
                 for p in sorted(b.iterdir()) if not p.name.startswith(".")]
    return first + figures + rest + baselines


def format_verdict(run_dir: Path) -> str:
    """The goals table and the list of outputs, as plain text for the terminal."""
    rows = goal_rows(run_dir)
    lines = ["verdict:"]
    if rows:
        header = ("goal", "measured", "met?")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
        for r in [header, *rows]:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        lines.append(f"  {sum(r[2] == MET[True] for r in rows)} of {len(rows)} goals met")
    else:
        lines.append("  no goals measured (no SPT metrics in metrics.json)")
    try:
        heads = json.loads((Path(run_dir) / "heads.json").read_text())
    except (OSError, ValueError, RecursionError):
        heads = {}
    if isinstance(heads, dict) and ceiling_text(heads):
        lines.append("  " + ceiling_text(heads))
    lines.append(f"wrote ({run_dir}):")
    lines += [f"  {p}{'/' if p.is_dir() else ''}" for p in run_outputs(run_dir)]
    return "\n".join(lines)
