"""A heads.json carries where it came from (model id, weights hash, probes hash), and the
standalone ``train`` and ``apply`` refuse one that does not belong to the recipe: a file
located on another model (two tiny Llamas that differ only in their random weights), or
a run's heads.json located on other probes. One line, exit 2, before any model loads."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from headsurgeon.cli import cli

DATA = """data:
  locate: [{name: builtin, set: arithmetic, split: locate, n: %d}]
  train: [{name: builtin, set: arithmetic, split: train, n: 8}]
  eval: [{name: builtin, set: arithmetic, split: eval, n: 4}]
locate: {method: attribution, metric: letter_gap, n_probes: 4, top_k: 2, k_max: 2,
         knockout_random_sets: 1}
train: {objective: sft, steps: 1, batch_size: 2, lr: 1e-3}
"""


def write_recipe(path: Path, name: str, model: Path, *, heads: str = "", n_locate: int = 4,
                 n_probes: int = 4) -> Path:
    text = (f"name: {name}\nmodel: {{source: {model}}}\n"
            + (DATA % n_locate).replace("n_probes: 4", f"n_probes: {n_probes}") + heads)
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """Model A and model B (same geometry, other weights) and a heads.json located on A."""
    from headsurgeon.core.recipe import load_recipe
    from headsurgeon.locate.run import locate
    from headsurgeon.model.tiny import build_tiny

    root = tmp_path_factory.mktemp("prov")
    a, b = build_tiny("llama", root / "model-a", seed=0), build_tiny("llama", root / "model-b",
                                                                     seed=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("HEADSURGEON_CACHE", str(root / "cache"))
        recipe = load_recipe(write_recipe(root / "a.yaml", "a", a))
        heads = locate(recipe, recipe.run_dir() / "heads.json", progress=False).resolve()
    return root, a, b, heads


@pytest.fixture()
def in_root(two_models, monkeypatch):
    root = two_models[0]
    monkeypatch.chdir(root)
    monkeypatch.setenv("HEADSURGEON_CACHE", str(root / "cache"))

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded before the heads.json check")
    monkeypatch.setattr("headsurgeon.model.sources.load_model", no_loading)
    return two_models


def invoke(*args):
    result = CliRunner().invoke(cli, list(map(str, args)), prog_name="headsurgeon")
    return result.exit_code, result.stderr


def test_heads_json_records_model_weights_and_probes(two_models):
    from headsurgeon.model.sources import weights_hash

    _, a, _, heads = two_models
    doc = json.loads(heads.read_text())
    assert doc["model"]["id"] == str(a.resolve())
    assert doc["model"]["weights_sha256"] == weights_hash(a)
    assert doc["probes"]["data_sha256"].startswith("sha256:")


def test_train_refuses_heads_located_on_another_model(in_root):
    root, a, b, heads = in_root
    recipe = write_recipe(root / "b.yaml", "b", b, heads=f"heads: {{from: {heads}}}\n")
    code, err = invoke("train", recipe)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"error: {heads}: model: located on model "
                                                   f"{a.resolve()} (weights sha256:")
    assert f"but the recipe's model.source {b} has weights sha256:" in err
    assert not (root / "runs" / "b" / "delta.safetensors").exists()


def test_train_refuses_a_stale_run_heads_json_from_another_model(in_root):
    """The silent case of the issue: a run directory keeps model A's heads.json and the
    recipe now names model B."""
    root, _, b, heads = in_root
    run = root / "runs" / "b2"
    run.mkdir(parents=True, exist_ok=True)
    shutil.copy(heads, run / "heads.json")
    code, err = invoke("train", write_recipe(root / "b2.yaml", "b2", b))
    assert code == 2, err
    assert err.startswith(f"error: {Path('runs/b2/heads.json')}: model: located on model ")
    assert not (run / "delta.safetensors").exists()


def test_train_refuses_a_run_heads_json_located_on_other_probes(in_root):
    root, a, _, heads = in_root
    run = root / "runs" / "a3"
    run.mkdir(parents=True, exist_ok=True)
    shutil.copy(heads, run / "heads.json")
    code, err = invoke("train", write_recipe(root / "a3.yaml", "a3", a, n_locate=6,
                                             n_probes=6))
    assert code == 2, err
    assert err.startswith(f"error: {Path('runs/a3/heads.json')}: probes: located on other "
                          "probes (sha256:")
    assert err.count("\n") == 1


def test_apply_refuses_heads_of_another_model(in_root):
    root, _, b, heads = in_root
    recipe = write_recipe(root / "b4.yaml", "b4", b, heads=f"heads: {{from: {heads}}}\n")
    code, err = invoke("apply", recipe)
    assert code == 2, err
    assert err.startswith(f"error: {heads}: model: located on model ")
    assert not (root / "runs" / "b4" / "model").exists()


def test_the_matching_model_and_probes_pass(in_root):
    from headsurgeon.core.recipe import load_recipe
    from headsurgeon.model.heads_file import selected_heads
    from headsurgeon.train.run import plan_training

    root, a, _, heads = in_root
    doc = json.loads(heads.read_text())
    run = root / "runs" / "a5"
    run.mkdir(parents=True, exist_ok=True)
    shutil.copy(heads, run / "heads.json")
    recipe = load_recipe(write_recipe(root / "a5.yaml", "a5", a))
    assert selected_heads(recipe) == [tuple(h) for h in doc["selected"]]
    by_file = load_recipe(write_recipe(root / "a6.yaml", "a6", a,
                                       heads=f"heads: {{from: {heads}}}\n", n_locate=6))
    assert plan_training(by_file).heads == sorted(tuple(h) for h in doc["selected"])
