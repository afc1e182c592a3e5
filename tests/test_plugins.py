"""Plugins: an inline plugin registered at run time is driven through the CLI, and
entry-point discovery honours HEADSURGEON_PLUGINS."""
import json
import os
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner
from pydantic import BaseModel, ConfigDict, Field

from headsurgeon import hookimpl
from headsurgeon.core import plugins
from headsurgeon.cli import cli
from headsurgeon.data.questions import Question


class CountingQuestions:
    """A dataset plugin that makes ``count`` two-option questions."""

    name = "counting"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        count: int = Field(ge=1, le=50)

    def load(self, params):
        return [Question(f"c{i}", f"Is {i} even?", ("yes", "no"), "A" if i % 2 == 0 else "B")
                for i in range(params.count)]


class InlinePlugin:
    @hookimpl
    def register_datasets(self, register):
        register(CountingQuestions)

    @hookimpl
    def register_commands(self, cli):
        @cli.command(name="count-questions")
        @click.argument("n", type=int)
        def count_questions(n):
            """Print how many questions the counting dataset yields."""
            from headsurgeon.data.datasets import load_stage
            from headsurgeon.core.recipe import PluginRef

            qs = load_stage([PluginRef(name="counting", count=n)], "locate")
            click.echo(f"{len(qs)} questions, {sum(q.answer == 'A' for q in qs)} even")


@pytest.fixture
def inline_plugin():
    plugins.register_plugin(InlinePlugin(), name="inline-test")
    plugins.add_plugin_commands(cli)
    yield
    plugins.unregister_plugin("inline-test")
    cli.commands.pop("count-questions", None)


def _recipe(tmp_path, tiny_dirs, count):
    p = tmp_path / "r.yaml"
    p.write_text(f"model: {{source: {tiny_dirs['llama']}}}\n"
                 f"data:\n  locate:\n    - name: counting\n      count: {count}\n")
    return p


def test_inline_plugin_through_cli(inline_plugin, tmp_path, tiny_dirs):
    runner = CliRunner()
    ok = runner.invoke(cli, ["validate", "--json", str(_recipe(tmp_path, tiny_dirs, 7))])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["data"]["locate"] == [{"name": "counting", "count": 7}]
    bad = runner.invoke(cli, ["validate", str(_recipe(tmp_path, tiny_dirs, 0))])
    assert bad.exit_code == 2
    assert bad.stderr.strip().endswith(
        ":5: data.locate.0.count: Input should be greater than or equal to 1")
    out = runner.invoke(cli, ["count-questions", "9"])
    assert out.exit_code == 0 and out.stdout.strip() == "9 questions, 5 even"


def test_unregistered_plugin_is_unknown(tmp_path, tiny_dirs):
    result = CliRunner().invoke(cli, ["validate", str(_recipe(tmp_path, tiny_dirs, 3))])
    assert result.exit_code == 2
    assert "data.locate.0.name: no plugin registers dataset 'counting'" in result.stderr


def _registry_in_subprocess(allowed):
    env = dict(os.environ)
    env.pop("HEADSURGEON_PLUGINS", None)
    if allowed is not None:
        env["HEADSURGEON_PLUGINS"] = allowed
    code = ("import json; from headsurgeon import plugins; "
            "print(json.dumps({k: sorted(plugins.registry(k)) for k in plugins.KINDS}))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


def test_entry_points_and_restriction():
    everything = _registry_in_subprocess(None)
    assert {"llama", "gpt2", "gpt_neox", "phi3"} <= set(everything["architectures"])
    assert "jsonl" in everything["datasets"]
    only_arch = _registry_in_subprocess("builtin-architectures")
    assert only_arch["architectures"] == everything["architectures"]
    assert only_arch["datasets"] == []
    assert _registry_in_subprocess("")["architectures"] == []
