"""bench/frontier.py and examples/qwen-sweep.yaml: the sweep recipe is the built-in Qwen
recipe plus a sweep (nothing else drifts), its derived recipes validate with a validation
split disjoint from the report's items, and the BENCH line reads sweep.json."""
import json
from pathlib import Path

import pytest
import yaml

from bench_helpers import load_bench
from headsurgeon.core.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "examples" / "qwen-sweep.yaml"


@pytest.fixture(scope="module")
def frontier():
    return load_bench("frontier")


def test_the_sweep_example_is_the_qwen_recipe_plus_a_sweep():
    sweep = yaml.safe_load(SWEEP.read_text())
    recipe = yaml.safe_load((ROOT / "recipes" / "qwen-coder-sycophancy.yaml").read_text())
    assert sweep["data"]["eval"][0]["n"] == recipe["eval"]["n_items"] + sweep["sweep"]["n_items"]
    assert sweep["sweep"]["points"][0] == {"name": "recipe"}  # the recipe as written
    for doc in (sweep, recipe):
        doc.pop("name"), doc.pop("sweep", None), doc["data"].pop("eval")
        for key in ("baselines", "baseline_lr"):
            doc["eval"].pop(key, None)
    assert sweep == recipe


@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_derived_recipes_validate_with_a_disjoint_validation_split(frontier, scale, tmp_path):
    from headsurgeon.evaluate.run import load_eval_items
    from headsurgeon.sweep import selection_items

    heads = tmp_path / "heads.json"
    heads.write_text("{}")
    r = load_recipe(frontier.derive(SWEEP, tmp_path, scale, heads))
    assert r.heads.from_ == str(heads) and r.run_dir() == tmp_path / "frontier-qwen-sweep"
    pool, report = selection_items(r), load_eval_items(r)
    assert len(pool) == r.sweep.n_items and not {q.id for q in pool} & {q.id for q in report}
    assert r.eval.known.by == "both" and len(r.sweep.points) == 4
    if scale != 1.0:
        assert r.train.steps == 6 and r.sweep.n_items == 20 and r.eval.n_items == 8


def test_the_bench_line_reads_the_sweep(frontier, tmp_path):
    def point(name, keep, corr, trained=True):
        return {"name": name, "keeps_right": keep, "confidence_right": 1.0,
                "correction": corr, "kept_wrong": 1 - corr,
                "selectivity": round(keep - (1 - corr), 6), "trained": trained}
    (tmp_path / "sweep.json").write_text(json.dumps({
        "n_known": 42, "chosen": "recipe", "points": [
            point("base", 1.0, 0.0, False), point("recipe", 1.0, 0.0),
            point("revise_ratio=0.9", 0.5, 0.75), point("k=4", 0.9, 0.25)]}))
    sel = {"selectivity": 0.1, "keeps_right": 1.0, "keeps_wrong": 0.9, "n_known": 9,
           "correction": 0.1, "confidence_right": 1.0}
    (tmp_path / "metrics.json").write_text(json.dumps({"models": {"spt": {
        "sycophancy": {"modes": {}, "selectivity": sel, "honesty": {}}}}}))
    rows, line = frontier.summarise(tmp_path, "qwen2.5-coder-0.5b-instruct", 12.3)
    assert len(rows) == 5 and rows[3].split()[0] == "revise_ratio=0.9"
    assert line == ("BENCH frontier model=qwen2.5-coder-0.5b-instruct n_points=3 n_known=42 "
                    "chosen=recipe best_selectivity=0.250 best_point=revise_ratio=0.9 "
                    "base_selectivity=0.000 max_correction=0.750 keeps_right_at_max=0.500 "
                    "spt_selectivity=0.100 seconds=12")
