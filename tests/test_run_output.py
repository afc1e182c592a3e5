"""``headsurgeon run`` ends with the verdict table (goal, measured, met?) and the paths of
what it wrote, through the real CLI on recipes/tiny-smoke.yaml (fresh cache)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from headsurgeon.cli import cli
from headsurgeon.report.report import check_goals
from headsurgeon.report.rows import model_row
from headsurgeon.report.verdict import format_verdict, run_outputs

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "tiny-smoke.yaml"
MET = {True: "yes", False: "NO", None: "n/a"}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    import torch

    root = tmp_path_factory.mktemp("smoke")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    try:
        result = CliRunner().invoke(cli, ["run", str(RECIPE)], prog_name="headsurgeon",
                                    env={"HEADSURGEON_CACHE": str(root / "cache")})
    finally:
        mp.undo()
        torch.set_num_threads(threads)
    return root, result


def test_run_ends_with_the_verdict_table_and_the_files(smoke_run):
    root, result = smoke_run
    assert result.exit_code == 0, result.output[-3000:]
    run_dir = Path("runs") / "tiny-smoke"
    lines = result.stdout.splitlines()
    top = lines.index("verdict:")
    assert lines[top + 1].split() == ["goal", "measured", "met?"]
    metrics = json.loads((root / run_dir / "metrics.json").read_text())
    goals = check_goals({n: model_row(r) for n, r in metrics["models"].items()})
    assert len(goals) >= 3  # truthfulness, confidence, correction vs base (no MC set here)
    table = lines[top + 2: top + 2 + len(goals)]
    for (desc, ok, nums), line in zip(goals, table):
        cells = [c for c in line.strip().split("  ") if c.strip()]
        assert [c.strip() for c in cells] == [desc, nums, MET[ok]], line
    met = sum(ok is True for _, ok, _ in goals)
    assert lines[top + 2 + len(goals)] == f"  {met} of {len(goals)} goals met"

    wrote = lines.index(f"wrote ({run_dir}):")
    assert wrote == top + 3 + len(goals)
    listed = [line.strip() for line in lines[wrote + 1:]]
    assert listed and all(line.startswith("  ") for line in lines[wrote + 1:])  # the end
    for p in listed:
        assert (root / p.rstrip("/")).exists(), p
        assert p.endswith("/") == (root / p.rstrip("/")).is_dir(), p
    names = [Path(p.rstrip("/")).name for p in listed]
    assert names[:6] == ["heads.json", "delta.safetensors", "model", "metrics.json",
                         "report.md", "report.html"]
    assert {"heads_heatmap.png", "heads_knockout.png", "delta.loss.png"} <= set(names)
    on_disk = {p.name for p in (root / run_dir).iterdir()
               if not p.name.startswith(".")} - {"pipeline.json"}
    assert set(names) == on_disk  # every output listed, the resume state left out


def test_a_second_run_is_up_to_date_and_ends_the_same_way(smoke_run, monkeypatch):
    root, first = smoke_run
    assert first.exit_code == 0
    monkeypatch.chdir(root)
    again = CliRunner().invoke(cli, ["run", str(RECIPE)], prog_name="headsurgeon",
                               env={"HEADSURGEON_CACHE": str(root / "cache")})
    assert again.exit_code == 0, again.output[-3000:]
    assert "[train] up to date: runs/tiny-smoke/delta.safetensors" in again.stdout
    tail = first.stdout[first.stdout.index("verdict:"):]
    assert again.stdout.endswith(tail)


def test_outputs_in_stage_order_then_figures_files_and_baselines(tmp_path):
    for name in ("report.md", "heads.json", "pipeline.json", "b.png", "a.png",
                 "delta.train.json", ".model.123.partial", "baselines/lora/delta.safetensors"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    (tmp_path / "model").mkdir()
    (tmp_path / "baselines" / "lora" / "model").mkdir()
    assert run_outputs(tmp_path) == [tmp_path / n for n in (
        "heads.json", "model", "report.md", "a.png", "b.png", "delta.train.json",
        "baselines/lora/delta.safetensors", "baselines/lora/model")]
    assert run_outputs(tmp_path / "missing") == []


def test_verdict_without_metrics(tmp_path):
    (tmp_path / "metrics.json").write_text("[" * 100000 + "]" * 100000)
    assert format_verdict(tmp_path) == (
        "verdict:\n  no goals measured (no SPT metrics in metrics.json)\n"
        f"wrote ({tmp_path}):\n  {tmp_path / 'metrics.json'}")
