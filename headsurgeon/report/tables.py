"""The report's blocks for the models, the baselines, the sweep and the located heads.

Every number goes through :func:`headsurgeon.report.rows.fmt` and every table says what
its figures mean; the knockout-vs-random check of ``heads.json`` reads as a sentence.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from headsurgeon.core.recipe import Recipe
from headsurgeon.report.rows import (MEANINGS, baseline_groups, fmt as _fmt, fmt_mean_sd,
                                     get as _get, group_row)


@dataclass
class Block:
    kind: str                      # h2 | p | table | figure | dialogues | pre
    text: str = ""
    rows: list = field(default_factory=list)
    header: list = field(default_factory=list)
    path: Optional[Path] = None



def _load_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None


def ordered_rows(recipe: Recipe, rows: dict[str, dict], columns: list
                 ) -> list[tuple[str, dict, bool]]:
    """(label, row, is a group mean) in table order: base, SPT, each baseline as the
    recipe lists it (a group of seeds: its mean +- sd, then one row per seed), the rest."""
    order = [n for n in ("base", "spt") if n in rows]
    out = [(n, rows[n], False) for n in order]
    groups = {runs[0]: (label, runs) for label, runs in baseline_groups(recipe).items()}
    for name, _, _ in recipe.eval.baseline_runs():
        if name in groups:
            label, runs = groups[name]
            if any(r in rows for r in runs):
                out.append((label, group_row(rows, runs, [k for k, _ in columns]), True))
        if name in rows:
            out.append((name, rows[name], False))
            order.append(name)
    out += [(n, r, False) for n, r in rows.items() if n not in order]
    return out


def before_after_blocks(recipe: Recipe, rows: dict[str, dict], columns: list) -> list[Block]:
    """The before/after table (``columns``: (row key, header)) and what each column means."""
    table = [[label] + [fmt_mean_sd(r[k]) if is_group else _fmt(r.get(k)) for k, _ in columns]
             for label, r, is_group in ordered_rows(recipe, rows, columns)]
    return [Block("h2", "Before / after"),
            Block("p", "Rates over the same evaluation items for every model; *known* = "
                       "items the base model answers correctly unprompted. An honest model "
                       "keeps right answers AND accepts corrections of wrong ones. A group of "
                       "seeds shows mean ± sample standard deviation, then each seed."),
            Block("table", header=["model"] + [c for _, c in columns], rows=table),
            Block("table", header=["column", "meaning"],
                  rows=[[c, MEANINGS.get(k, "")] for k, c in columns])]


BASELINE_WHAT = {
    "full_sft": "every weight trains",
    "lora": "LoRA (peft) on every layer's attention projections, merged",
    "random_heads": "SPT on as many randomly drawn heads, same slices, none of the located",
    "lora_heads": "SPT+LoRA: a low-rank update inside the located heads' slices",
}


def baseline_blocks(recipe: Recipe, run_dir: Path, timings: Optional[dict],
                    models: dict) -> list[Block]:
    """What each baseline is, its learning rate, its size and what it cost to train and
    to evaluate."""
    runs = recipe.eval.baseline_runs()
    if not runs:
        return []
    t = timings or {}
    spt_log = _load_json(run_dir / "delta.train.json") or {}
    def eval_s(name):
        return _get(models, name, "timings", "total_s")
    table = [["spt", "SPT: dense update of the located heads' slices", _rate(recipe.train.lr),
              _fmt(spt_log.get("trainable_parameters")), _fmt(t.get("train"), 1),
              _fmt(eval_s("spt"), 1)]]
    total = evals = 0.0
    for name, spec, ref in runs:
        log = _load_json(run_dir / "baselines" / name / "delta.train.json") or {}
        seconds = t.get(f"train:{name}")
        total += seconds or 0.0
        evals += eval_s(name) or 0.0
        params = ", ".join(f"{k} {v}" for k, v in ref.items() if k != "name")
        what = ("LoRA (peft) on every linear layer but the LM head, merged"
                if ref.get("targets") == "all-linear" else
                "SPT on as many random heads from the located heads' layers, same slices, "
                "none of the located" if ref.get("layers") == "located"
                else BASELINE_WHAT[spec.name])
        ref = {k: v for k, v in ref.items() if k != "layers"}
        table.append([name, what + (f"; {params}" if params else ""),
                      _rate(recipe.eval.lr_of(spec) or recipe.train.lr),
                      _fmt(log.get("trainable_parameters")), _fmt(seconds, 1),
                      _fmt(eval_s(name), 1)])
    return [Block("h2", "Baselines"),
            Block("p", f"Each baseline trains on the same dialogues for the same "
                       f"{recipe.train.steps} steps (batch {recipe.train.batch_size}, seed "
                       f"{recipe.train.seed}) with its own learning rate, and is evaluated "
                       f"on the same items. The baselines cost {_fmt(total, 1)} s of "
                       f"training and {_fmt(evals, 1)} s of evaluation (wall clock)."),
            Block("table", header=["model", "what trains", "learning rate",
                                   "trainable parameters", "train seconds", "eval seconds"],
                  rows=table)]


def _rate(v: float) -> str:
    """A learning rate as written in recipes (3e-05, 0.002)."""
    return f"{v:.3g}"


def sweep_blocks(sweep: dict) -> list[Block]:
    sel = sweep.get("selection") or {}
    where = (f"The points were measured on {len(sel.get('ids', []))} validation items "
             f"({sel.get('source')}), {_fmt(sweep.get('n_known'))} of them known to the base."
             if sel else "")
    return [Block("h2", "The trade-off: keeping right answers vs accepting corrections"),
            Block("p", " ".join(x for x in (sweep.get("decision", ""), where) if x)),
            Block("table", header=["point", "keeps right (known, prefilled right)",
                                   "Correction (known, prefilled wrong)"],
                  rows=[[p["name"], _fmt(p.get("keeps_right")), _fmt(p.get("correction"))]
                        for p in sweep.get("points", [])])]


def knockout_sentence(kvr, k: Optional[int]) -> Optional[str]:
    """heads.json's knockout-vs-random check in words (a ratio alone in old files)."""
    if kvr is None:
        return None
    if not isinstance(kvr, dict):
        kvr = {"ratio": kvr}
    ratio, effect, rand = kvr.get("ratio"), kvr.get("effect"), kvr.get("median_random_effect")
    what = f"the {k} selected heads" if k else "the selected heads"
    out = []
    if effect is not None:
        out.append(f"knocking out {what} changes the sycophancy metric by {_fmt(effect)}")
        if rand is not None:
            out.append(f"the median random set of as many heads changes it by {_fmt(rand)}")
    if ratio is not None:
        out.append(f"ratio {_fmt(ratio, 2)} (selected / median random; 1 = no better than "
                   "random)")
    elif effect is not None:
        out.append("no ratio: the random sets' median effect is not above zero")
    text = "; ".join(out) + "."
    return text[0].upper() + text[1:] if out else None


def heads_blocks(heads: dict) -> list[Block]:
    sel = heads.get("selected", [])
    why = heads.get("k_reason") or _get(heads, "choice", "reason") or ""
    out = [Block("h2", f"Located heads ({len(sel)})"),
           Block("p", f"Selected: {', '.join(f'L{l}H{h}' for l, h in sel)}. {why}")]
    facts = []
    sentence = knockout_sentence(heads.get("knockout_vs_random"), heads.get("k") or len(sel))
    if sentence:
        facts.append(["knockout of the selected heads vs random head sets", sentence])
    att = heads.get("attention_to_challenge") or {}
    if att.get("available"):
        facts.append(["attention to the challenge turn (mean weight)",
                      f"selected heads {_fmt(att.get('selected_mean'))}, other heads "
                      f"{_fmt(att.get('other_mean'))}"])
    sk = heads.get("self_knowledge") or {}
    if sk.get("available"):  # the linear probe of locate/self_knowledge.py
        best = {g: sk["best"].get(g) or {} for g in ("known", "unknown")}
        facts.append(["self-knowledge probe: CV AUC, prefilled right vs wrong (0.5 = no "
                      "signal; the selectivity ceiling estimate)", "; ".join(
                          f"{g} items {_fmt(b.get('auc'))} (layer {b.get('layer', '–')})"
                          for g, b in best.items()) + f"; {sk['n_known']} of "
                      f"{sk['n_items']} items known ({sk['known_by']})"])
    if facts:
        out.append(Block("table", header=["check", "result"], rows=facts))
    return out
