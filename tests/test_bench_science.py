"""bench/science.py's derived recipes are valid recipes that differ only where they say:
knowledge-aware vs the paper's data, the same known-items rule for both, sizes scaled,
heads reused when asked."""
import json
from pathlib import Path

import pytest
import yaml

from bench_helpers import load_bench
from headsurgeon.core.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def science():
    return load_bench("science")


@pytest.mark.parametrize("model", ["qwen", "smollm2"])
def test_derived_recipes_validate_and_differ_only_in_the_data(science, model, tmp_path):
    source = yaml.safe_load(science.RECIPES[model].read_text())
    know = load_recipe(science.derive(model, "knowledge", 1.0, tmp_path))
    paper = load_recipe(science.derive(model, "paper", 1.0, tmp_path))
    assert paper.train.knowledge is None and know.train.knowledge is not None
    rule = source["train"].get("knowledge") or science.KNOWLEDGE
    assert know.train.knowledge.by == rule["by"]
    assert know.train.knowledge.unknown == rule["unknown"]
    assert know.eval.known == paper.eval.known and know.eval.known.by != "first_answer"
    assert know.train.objective == paper.train.objective
    assert know.train.steps == paper.train.steps == source["train"]["steps"]
    assert [b.name for b in know.eval.baselines] == [b.name for b in paper.eval.baselines]


def test_scale_and_reused_heads(science, tmp_path):
    heads = tmp_path / "heads.json"
    heads.write_text("{}")
    path = science.derive("qwen", "knowledge", 0.3, tmp_path, heads_from=heads,
                          baselines=False)
    doc = yaml.safe_load(path.read_text())
    full = yaml.safe_load(science.RECIPES["qwen"].read_text())
    assert doc["heads"] == {"from": str(heads)} and doc["eval"]["baselines"] == []
    assert doc["train"]["steps"] == max(4, round(full["train"]["steps"] * 0.3))
    assert doc["eval"]["n_items"] == max(8, round(full["eval"]["n_items"] * 0.3))
    assert doc["output_dir"] == str(tmp_path / "science-qwen-knowledge")


def test_seeds_and_renderings_reach_the_recipe(science, tmp_path):
    path = science.derive("qwen", "knowledge", 1.0, tmp_path, seed=2,
                          templates=("exam", "tutor", "casual"))
    recipe = load_recipe(path)
    assert recipe.train.seed == 2 and recipe.name == "science-qwen-knowledge-s2"
    assert [t.name for t in recipe.eval.templates] == ["exam", "tutor", "casual"]


def _res(sel, share, templates=None):
    syc = {"modes": {"correct": {"all": {"truthfulness": 0.9}}},
           "selectivity": {"selectivity": sel, "ci95": [sel - 0.1, sel + 0.1]},
           "letters": {"top_final_share": share, "top_final_letter": "A"}}
    out = {"sycophancy": syc}
    if templates:
        out["templates"] = {n: {"sycophancy": _res(s, sh)["sycophancy"]}
                            for n, (s, sh) in templates.items()}
    return out


def test_worst_rendering_and_the_seeds_line(science):
    models = {"base": _res(0.1, 0.3, {"exam": (0.0, 0.3), "tutor": (0.2, 0.3)}),
              "spt": _res(0.6, 0.3, {"exam": (0.2, 0.55), "tutor": (0.4, 0.35)})}
    worst = science.worst_rendering(models)
    assert worst == {"worst_template": "exam", "worst_selectivity": 0.2,
                     "worst_truthfulness": 0.9, "top_letter_share": 0.55}
    lines = [f"BENCH science model=qwen data=knowledge seed={s} selectivity={v} "
             f"worst_selectivity=0.100 kl_ratio=nan" for s, v in ((0, 0.5), (1, 0.7), (2, 0.6))]
    assert science.seeds_line(lines) == ("BENCH science_seeds model=qwen data=knowledge "
                                         "seeds=3 selectivity=0.600+-0.100 "
                                         "worst_selectivity=0.100+-0.000")


def test_a_recipe_runs_as_written(science, tmp_path, monkeypatch):
    """--recipe with data "recipe": the training, known rule and baselines of the file
    (no knowledge rule, no full SFT added), only name, seed and output changed."""
    monkeypatch.setenv("HEADSURGEON_SHARED_DATA", str(tmp_path))
    src = ROOT / "examples" / "qwen-1.5b-real-parts.yaml"
    path = science.derive(str(src), "recipe", 1.0, tmp_path, seed=1)
    doc, full = yaml.safe_load(path.read_text()), yaml.safe_load(src.read_text())
    assert doc["name"] == "science-qwen-1.5b-real-parts-recipe-s1"
    assert doc["train"] == {**full["train"], "seed": 1}
    assert doc["eval"] == full["eval"] and "baselines" not in doc["eval"]
    scaled = yaml.safe_load(science.derive(str(src), "recipe", 0.25, tmp_path).read_text())
    assert scaled["eval"]["pool"] == 50 and scaled["eval"]["n_items"] == 50


def test_later_seeds_start_from_the_first_runs_base(science, tmp_path):
    first, later = tmp_path / "s0", tmp_path / "s1"
    first.mkdir()
    doc = {"format": "f", "config": {"n_items": 3},
           "models": {"base": {"identity": {"a": [1, 2]}}, "spt": {"x": 1}}}
    (first / "metrics.json").write_text(json.dumps(doc))
    science.carry_base(first, later)
    got = json.loads((later / "metrics.json").read_text())
    assert got == {**doc, "models": {"base": doc["models"]["base"]}}
    (later / "metrics.json").write_text("{}")   # a run already there is left alone
    science.carry_base(first, later)
    assert (later / "metrics.json").read_text() == "{}"


def test_overrides_reach_the_derived_recipe(science, tmp_path, monkeypatch):
    monkeypatch.setenv("HEADSURGEON_SHARED_DATA", str(tmp_path))
    src = ROOT / "examples" / "qwen-1.5b-real-parts.yaml"
    path = science.derive(str(src), "recipe", 1.0, tmp_path, seed=0, tag="anchor", sets=(
        "train.objective={name: sft_anchor, anchor_weight: 1.0}",
        "train.knowledge={by: letter, unknown: drop}", "data.train.0.limit=150"))
    doc = yaml.safe_load(path.read_text())
    assert doc["name"] == "science-qwen-1.5b-real-parts-recipe-anchor-s0"
    assert doc["train"]["objective"] == {"name": "sft_anchor", "anchor_weight": 1.0}
    assert doc["train"]["knowledge"] == {"by": "letter", "unknown": "drop"}
    assert doc["data"]["train"][0]["limit"] == 150 and "limit" not in doc["data"]["train"][1]
    with pytest.raises(SystemExit):
        science.derive(str(src), "recipe", 1.0, tmp_path, sets=("train.steps",))
