"""Recipe validation: every malformed fixture fails with its one-line message and exit 2."""
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from headsurgeon.core import plugins
from headsurgeon.cli import cli

BAD = sorted((Path(__file__).parent / "fixtures" / "recipes" / "bad").glob("*.yaml"))


@pytest.fixture(scope="module")
def env(tiny_dirs):
    return {"TINY_LLAMA": str(tiny_dirs["llama"])}


def _expected(path: Path) -> re.Pattern:
    first = path.read_text(encoding="utf-8", errors="replace").splitlines()[0]
    assert first.startswith("# expect: "), path
    text = first.removeprefix("# expect: ")
    subs = {"{file}": str(path)}
    for kind in ("objectives", "locators", "datasets"):
        subs["{%s}" % kind] = ", ".join(sorted(plugins.registry(kind)))
    pattern = re.escape(text)
    for key, value in subs.items():
        pattern = pattern.replace(re.escape(key), re.escape(value))
    return re.compile(pattern.replace(re.escape("{any}"), ".+"))


def test_there_are_enough_bad_recipes():
    assert len(BAD) >= 12


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_recipe_fails_with_one_line_and_exit_2(path, env, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    message = lines[0].removeprefix("error: ")
    assert _expected(path).fullmatch(message), f"\n got: {message}\nwant: {_expected(path).pattern}"


def test_non_utf8_recipe(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_bytes(b"model:\n  source: \xff\xfe\n")
    result = CliRunner().invoke(cli, ["validate", str(p)])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {p}: not UTF-8 (byte 17)"


def test_missing_recipe_file(tmp_path):
    result = CliRunner().invoke(cli, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'nope.yaml'}: no such file"


def test_scientific_floats_are_floats():
    from headsurgeon.core.recipe import recipe_from_data
    from headsurgeon.core.yamlfile import load_yaml_text

    data, _ = load_yaml_text("model: {source: x}\ntrain:\n  lr: 5e-4\n  weight_decay: 1E-2\n"
                             "  steps: 30\n")
    r = recipe_from_data(data, check_plugins=False)
    assert r.train.lr == 0.0005 and isinstance(r.train.lr, float)
    assert r.train.weight_decay == 0.01 and r.train.steps == 30 and isinstance(r.train.steps, int)


def test_good_recipe_validates_and_prints_summary(env, monkeypatch, tmp_path):
    monkeypatch.setenv("TINY_LLAMA", env["TINY_LLAMA"])
    p = tmp_path / "ok.yaml"
    p.write_text("name: ok\nmodel: {source: $TINY_LLAMA}\nheads: [[0, 1], [2, 3]]\n"
                 "train: {lr: 1e-3, steps: 4, kv: group}\n")
    result = CliRunner().invoke(cli, ["validate", str(p), "--json"])
    assert result.exit_code == 0, result.output
    import json

    summary = json.loads(result.stdout)
    assert summary["heads"] == [[0, 1], [2, 3]]
    assert summary["train"]["lr"] == 0.001 and summary["train"]["kv"] == "group"
    assert summary["model_geometry"].startswith("3 layers x 4 heads (2 KV), head_dim 8")
    assert summary["run_dir"] == "runs/ok"


def test_baseline_gets_its_own_learning_rate():
    from headsurgeon.pipeline import with_objective
    from headsurgeon.core.recipe import recipe_from_data
    from headsurgeon.core.yamlfile import load_yaml_text

    data, _ = load_yaml_text("model: {source: x}\ntrain: {lr: 2e-3}\n"
                             "eval: {baselines: [full_sft, lora], baseline_lr: {full_sft: 3e-5}}\n")
    r = recipe_from_data(data, check_plugins=False)
    full, lora = with_objective(r, "full_sft"), with_objective(r, "lora")
    assert (full.train.objective.name, full.train.lr) == ("full_sft", 3e-5)
    assert (lora.train.objective.name, lora.train.lr) == ("lora", 2e-3)
    assert r.train.lr == 2e-3  # the SPT recipe itself is untouched


@pytest.mark.parametrize("point,field,message", [
    ("{revise_ratio: 1.7}", "sweep.points.1.revise_ratio",
     "Input should be less than or equal to 1"),
    ("{stepz: 3}", "sweep.points.1.stepz", "unknown key"),
    ("{objective: {name: sft_kl, kl_wieght: 0.5}}", "sweep.points.1.objective.kl_wieght",
     "unknown key"),
    ("{objective: nosuch}", "sweep.points.1.objective.name", "no plugin registers objective"),
])
def test_sweep_points_are_checked_at_their_own_line(point, field, message, tmp_path):
    from headsurgeon.core.errors import ValidationError
    from headsurgeon.core.recipe import load_recipe

    p = tmp_path / "r.yaml"
    p.write_text("model: {source: x}\nsweep:\n  points:\n    - {revise_ratio: 0.3}\n"
                 f"    - {point}\n")
    with pytest.raises(ValidationError) as e:
        load_recipe(p)
    assert str(e.value).startswith(f"{p}:5: {field}: {message}"), str(e.value)
