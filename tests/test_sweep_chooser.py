"""The sweep's chooser on a confirm split: ``data.confirm`` holds the questions a point is
chosen on, and ``choose_by: selectivity_lower_bound`` ships the point whose selectivity
interval starts highest among those keeping Confidence and general accuracy."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from headsurgeon.core.errors import ValidationError
from headsurgeon.sweep import choose

RULE = SimpleNamespace(choose_by="selectivity_lower_bound", min_confidence=0.8,
                       max_general_drop=0.015, max_correction_drop=0.05)


def _pt(name, lo, sel, conf=0.9, general=0.50, keeps=0.9, corr=0.5):
    return {"name": name, "selectivity_lo": lo, "selectivity": sel, "confidence_right": conf,
            "general": general, "keeps_right": keeps, "correction": corr, "n_known": 40}


def test_the_highest_lower_bound_among_the_points_that_pass_the_gates():
    base = {"general": 0.50, "correction": 0.3}
    points = [_pt("wide", 0.10, 0.70),            # best selectivity, widest interval
              _pt("tight", 0.40, 0.55),           # the one to ship
              _pt("pushover", 0.60, 0.65, conf=0.79),       # Confidence under 0.8
              _pt("forgets", 0.65, 0.70, general=0.480)]    # 2 points of general lost
    chosen, why = choose(points, base, RULE)
    assert chosen["name"] == "tight"
    assert why.startswith("shipped tight: selectivity 0.55, 95% interval from 0.40, 40 known")
    assert "among the 2 of 4 points with Confidence >= 0.80 and general within 0.015" in why
    # exactly at the general gate (0.485 = 0.50 - 0.015) still passes
    chosen, _ = choose(points + [_pt("edge", 0.45, 0.5, general=0.485)], base, RULE)
    assert chosen["name"] == "edge"


def test_no_point_passes_the_gates_the_goal_is_missed():
    base = {"general": 0.50}
    points = [_pt("a", 0.2, 0.4, conf=0.5), _pt("b", 0.3, 0.5, general=0.40)]
    chosen, why = choose(points, base, RULE)
    assert chosen["name"] == "b"
    assert why.endswith("(general 0.40 vs the base's 0.50 (at most 0.015 lower)). "
                        "The goal is missed.")
    assert why.startswith("no point met the gates; shipped b: selectivity 0.50")


def test_an_unmeasured_interval_ranks_last_and_keeps_right_is_unchanged():
    base = {"general": None, "correction": 0.5}
    rule = SimpleNamespace(**{**vars(RULE), "max_general_drop": None, "min_confidence": 0.0})
    chosen, _ = choose([_pt("none", None, 0.9), _pt("some", -0.1, 0.2)], base, rule)
    assert chosen["name"] == "some"
    keep = SimpleNamespace(**{**vars(RULE), "choose_by": "keeps_right"})
    chosen, why = choose([_pt("a", 0.5, 0.5, keeps=0.8, corr=0.50),
                          _pt("b", 0.1, 0.1, keeps=0.95, corr=0.46),
                          _pt("c", 0.1, 0.1, keeps=0.99, corr=0.40)], base, keep)
    assert chosen["name"] == "b" and "keeps the most right answers (0.95)" in why


SWEEP = """name: ch
model: {{source: {model}}}
data:
  train: [{{name: builtin, set: arithmetic, split: train, n: 8}}]
  eval: [{{name: builtin, set: arithmetic, split: eval, n: 8}}]
  confirm: [{{name: builtin, set: arithmetic, split: locate, n: 30}}]
  general: [{{name: builtin, set: arithmetic, split: locate, n: 6}}]
heads: [[0, 1], [1, 2]]
train: {{steps: 1, batch_size: 2}}
eval: {{n_items: 6, max_new_tokens: 4, n_general: 6,
       known: {{by: letter, permutations: 1}}}}
sweep:
  n_items: 30
  choose_by: selectivity_lower_bound
  min_confidence: 0.0
  max_general_drop: 1.0
  points: [{{name: a}}, {{name: b, revise_ratio: 0.2}}]
"""


def _recipe(tmp_path, model, text=SWEEP):
    from headsurgeon.core.recipe import load_recipe

    p = tmp_path / "ch.yaml"
    p.write_text(text.format(model=model))
    return load_recipe(p)


def test_the_sweep_reads_data_confirm_and_ships_by_the_lower_bound(tiny_dirs, tmp_path):
    from headsurgeon.data.datasets import load_stage
    from headsurgeon.sweep import run_sweep, selection_items

    recipe = _recipe(tmp_path, tiny_dirs["llama"])
    confirm = {q.id for q in load_stage(recipe.data.confirm, "confirm")}
    items = selection_items(recipe)
    assert {q.id for q in items} == confirm and len(items) == 30
    doc = run_sweep(recipe, tmp_path / "run", [[0, 1], [1, 2]], progress=False)
    assert doc["selection"]["source"] == "data.confirm"
    assert doc["choose_by"] == "selectivity_lower_bound"
    trained = [p for p in doc["points"] if p["trained"]]
    assert all(p["general"] is not None for p in doc["points"])  # the gate was measured
    assert doc["points"][0]["name"] == "base" and doc["n_known"] > 0
    expected, _ = choose(trained, doc["points"][0], recipe.sweep)
    assert doc["chosen"] == expected["name"]
    assert doc["decision"].startswith(f"shipped {expected['name']}: selectivity")


@pytest.mark.parametrize("change, where, message", [
    (("split: locate, n: 30}]", "split: eval, n: 30}]"), "data.confirm",
     "overlap"),
    (("  points: [{name: a}, {name: b, revise_ratio: 0.2}]\n", ""), "data.confirm",
     "only the sweep reads it, and sweep.points is empty"),
    (("  choose_by: selectivity_lower_bound\n", ""), "sweep.max_general_drop",
     "applies only with choose_by: selectivity_lower_bound"),
    (("  general: [{name: builtin, set: arithmetic, split: locate, n: 6}]\n", ""),
     "sweep.max_general_drop", "needs data.general"),
])
def test_confirm_and_chooser_errors_name_the_field(tiny_dirs, tmp_path, change, where,
                                                   message):
    from headsurgeon.data.check import check_data

    old, new = change
    text = SWEEP.replace(old.replace("{", "{{").replace("}", "}}"),
                         new.replace("{", "{{").replace("}", "}}"))
    assert text != SWEEP
    with pytest.raises(ValidationError) as e:
        check_data(_recipe(tmp_path, tiny_dirs["llama"], text))
    assert "ch.yaml:" in str(e.value) and f" {where}" in str(e.value)
    assert message in str(e.value)
