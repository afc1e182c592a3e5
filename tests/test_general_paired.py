"""MC general accuracy minus the base's, with a paired 95% interval over items: the
"general within 1.5 points" goal is read against it."""
from __future__ import annotations

import json

import pytest

from headsurgeon.evaluate.general import general_minus_base


def _res(hits: str, kind: str = "mc") -> dict:
    return {"general": {"sets": {"arc": {"kind": kind, "n": len(hits), "hits": hits,
                                         "accuracy": hits.count("1") / len(hits)}}}}


def test_a_drop_on_the_same_items_and_its_interval():
    base = "1" * 60 + "0" * 40
    edited = "1" * 50 + "0" * 50           # ten items lost, none gained
    results = {"base": _res(base), "spt": _res(edited), "same": _res(base)}
    general_minus_base(results, seed=0)
    d = results["spt"]["general"]["minus_base"]
    assert d["point"] == pytest.approx(-0.10) and d["n"] == 100
    assert -0.17 < d["lo"] < -0.10 < d["hi"] < -0.04   # paired: only the ten pairs vary
    same = results["same"]["general"]["minus_base"]
    assert same["point"] == same["lo"] == same["hi"] == 0.0
    assert "minus_base" not in results["base"]["general"]
    again = {"base": _res(base), "spt": _res(edited)}
    general_minus_base(again, seed=0)
    assert again["spt"]["general"]["minus_base"] == d   # seeded


def test_swapped_items_are_no_difference_and_mismatches_are_skipped():
    base, swapped = "10" * 50, "01" * 50   # as many right, different items
    results = {"base": _res(base), "spt": _res(swapped), "short": _res("1" * 10),
               "open": _res("1" * 100, kind="numeric")}
    general_minus_base(results, seed=1)
    d = results["spt"]["general"]["minus_base"]
    assert d["point"] == 0.0 and d["lo"] < -0.1 and d["hi"] > 0.1  # unpaired noise is wide
    assert "minus_base" not in results["short"]["general"]   # another item count
    assert "minus_base" not in results["open"]["general"]    # not an MC set


def test_evaluate_records_hits_and_the_difference(tiny_dirs, tmp_path):
    import shutil

    import headsurgeon.evaluate.run as ev
    from headsurgeon.core.recipe import load_recipe

    edited = shutil.copytree(tiny_dirs["llama"], tmp_path / "edited")
    p = tmp_path / "g.yaml"
    p.write_text(f"""name: g
model: {{source: {tiny_dirs['llama']}}}
data:
  eval: [{{name: builtin, set: arithmetic, split: eval, n: 6}}]
  general: [{{name: builtin, set: arithmetic, split: locate, n: 12}}]
eval: {{n_items: 6, max_new_tokens: 4, modes: [correct], kl_passages: 0, n_general: 12}}
output_dir: {tmp_path / 'run'}
""")
    doc = json.loads(ev.evaluate(load_recipe(p), models=[str(tiny_dirs["llama"]),
                                                          str(edited)],
                                 progress=False).read_text())
    sets = doc["models"]["base"]["general"]["sets"]
    (only,) = sets.values()
    assert len(only["hits"]) == 12 and only["hits"].count("1") == round(only["accuracy"] * 12)
    d = doc["models"]["edited"]["general"]["minus_base"]
    assert d == {"point": 0.0, "lo": 0.0, "hi": 0.0, "n": 12, "n_boot": 2000, "seed": 0}


def test_the_verdict_line_carries_the_paired_difference():
    from headsurgeon.report.report import check_goals
    from headsurgeon.report.rows import model_row

    results = {"base": _res("1" * 60 + "0" * 40), "spt": _res("1" * 50 + "0" * 50)}
    for r in results.values():
        r["general"]["mc_accuracy"] = r["general"]["sets"]["arc"]["accuracy"]
    general_minus_base(results, seed=0)
    d = results["spt"]["general"]["minus_base"]
    goals = {g: (ok, nums) for g, ok, nums in check_goals(
        {n: model_row(r) for n, r in results.items()})}
    ok, nums = goals["MC general accuracy within 1.5 points of base"]
    assert ok is False
    assert nums == (f"SPT 0.500 vs base 0.600; difference -0.100 [{d['lo']:+.3f}, "
                    f"{d['hi']:+.3f}] (paired, 100 items)")
