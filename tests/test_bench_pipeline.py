"""bench/pipeline.py: the reduced recipe is a valid, smaller copy of the default one; the
table and BENCH line are arithmetic over pipeline.json's timings; a reduced run of a tiny
recipe (with a baseline) ends in a BENCH line whose stage seconds are the run's own."""
import re
from pathlib import Path

import pytest
import yaml

from bench_helpers import load_bench
from headsurgeon.core.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^BENCH pipeline total_s=(\S+) locate_s=(\S+) train_s=(\S+) "
                  r"baselines_s=(\S+) eval_s=(\S+) report_s=(\S+) apply_s=(\S+)$")


@pytest.fixture(scope="module")
def pipeline():
    return load_bench("pipeline")


def test_reduced_default_recipe_is_smaller_and_valid(pipeline, tmp_path):
    full = yaml.safe_load((ROOT / "recipes" / "smollm2-sycophancy.yaml").read_text())
    path = pipeline.derive(ROOT / "recipes" / "smollm2-sycophancy.yaml", tmp_path, True)
    r = load_recipe(path)
    assert r.run_dir() == tmp_path / "bench-pipeline-smollm2-sycophancy"
    assert r.train.steps == 4 and r.eval.n_items == 8 and r.locate.n_probes == 8
    assert [ref.n for ref in r.data.train] == [32]
    assert [b.name for b in r.eval.baselines] == [b["name"] for b in full["eval"]["baselines"]]
    seeds = [len(b.get("seeds", [0])) for b in full["eval"]["baselines"]]
    assert len(list(r.eval.baseline_runs())) == len(seeds)  # one seed each
    same = load_recipe(pipeline.derive(ROOT / "recipes" / "smollm2-sycophancy.yaml",
                                       tmp_path / "full", False))
    assert same.train.steps == full["train"]["steps"] and same.eval.n_items == 80


def test_table_and_line_from_timings(pipeline):
    timings = {"locate": 30.0, "train": 20.0, "apply": 2.0, "train:full_sft": 10.0,
               "apply:full_sft": 3.0, "eval": 25.0, "report": 5.0, "stale": 99.0}
    order = ["start-up", "locate", "train", "apply", "train:full_sft", "apply:full_sft",
             "eval", "report"]
    peaks = {"start-up": 150.0, "locate": 900.4, "eval": 700.0}
    rows, line = pipeline.summarise(timings, order, peaks, 100.0)
    assert line == ("BENCH pipeline total_s=100.0 locate_s=30.0 train_s=20.0 "
                    "baselines_s=13.0 eval_s=25.0 report_s=5.0 apply_s=2.0")
    assert rows[1].split() == ["locate", "30.0", "30.0%", "900"]
    assert rows[-1].split() == ["(outside", "stages)", "5.0", "5.0%", "150"]
    assert len(rows) == 1 + 7 + 1  # header, the stages run (not "stale"), the rest


def test_reduced_tiny_run_ends_in_its_bench_line(pipeline, tmp_path, monkeypatch, capsys):
    import json

    monkeypatch.setenv("HEADSURGEON_CACHE", str(tmp_path / "cache"))  # tiny:llama built here
    doc = yaml.safe_load((ROOT / "recipes" / "tiny-smoke.yaml").read_text())
    doc["eval"]["baselines"] = [{"name": "full_sft", "lr": 1e-4}]
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(doc))
    assert pipeline.main(["--recipe", str(recipe), "--out", str(tmp_path / "out"),
                          "--reduced", "--quiet", "--interval", "0.05"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    m = LINE.match(out[-1])
    assert m, out[-1]
    total, locate, train, baselines, ev, report, apply_ = map(float, m.groups())
    run_dir = tmp_path / "out" / "bench-pipeline-tiny-smoke"
    timings = json.loads((run_dir / "pipeline.json").read_text())["_timings"]
    assert sorted(timings) == ["apply", "apply:full_sft", "eval", "locate", "report",
                               "train", "train:full_sft"]
    assert (locate, train, ev, report, apply_) == pytest.approx(
        (timings["locate"], timings["train"], timings["eval"], timings["report"],
         timings["apply"]), abs=0.051)
    assert baselines == pytest.approx(timings["train:full_sft"] + timings["apply:full_sft"],
                                      abs=0.051)
    assert total >= sum(timings.values()) - 0.5
    table = {r.rsplit(None, 3)[0]: r.rsplit(None, 3)[1:] for r in out if r.split()
             and r.split()[0] in timings}
    assert set(table) == set(timings)
    for name, (sec, share, peak) in table.items():
        assert float(sec) == pytest.approx(timings[name], abs=0.051)
        assert float(peak) > 50  # a Python process with torch loaded: MiB, not 0
    assert yaml.safe_load((tmp_path / "out" / "bench-pipeline-tiny-smoke.yaml").read_text()
                          )["train"]["steps"] == 3  # capped at 4: the smaller value stays


def test_from_run_reads_a_finished_runs_figures(pipeline, tmp_path, capsys):
    import json

    (tmp_path / "pipeline.json").write_text(json.dumps({
        "_timings": {"locate": 75.0, "train": 150.0, "apply": 1.0, "train:full_sft": 280.0,
                     "apply:full_sft": 5.0, "eval": 340.0, "report": 3.0},
        "_peak_rss_mb": {"locate": 1484.0, "train": 2281.0}}))
    assert pipeline.main(["--from-run", str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == ("BENCH pipeline total_s=854.0 locate_s=75.0 train_s=150.0 "
                       "baselines_s=285.0 eval_s=340.0 report_s=3.0 apply_s=1.0")
    assert out[1].split() == ["locate", "75.0", "8.8%", "1484"]
    assert not any("outside" in r for r in out)
