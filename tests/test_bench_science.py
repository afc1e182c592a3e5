"""bench/science.py's derived recipes are valid recipes that differ only where they say:
knowledge-aware vs the paper's data, the same known-items rule for both, sizes scaled,
heads reused when asked."""
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
