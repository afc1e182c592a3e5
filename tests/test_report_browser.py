"""``report.html`` looked at in a real browser (headless Chromium, 1280 px wide): every
image loads, nothing scrolls sideways, every table fits its column; ``headsurgeon run``
saves the screenshot as ``report.png``. scripts/test.sh installs Debian's chromium, so
these tests run (and fail without it) rather than skip.
"""
from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import pytest

from headsurgeon.report import screenshot

ROOT = Path(__file__).resolve().parents[1]

RECIPE = """name: browser
model: {source: ./tiny-llama}
data:
  locate: [{name: builtin, set: arithmetic, split: locate, n: 4}]
  train: [{name: builtin, set: arithmetic, split: train, n: 8}]
  eval: [{name: builtin, set: arithmetic, split: eval, n: 4}]
  general: [{name: builtin, set: numeric, split: eval, n: 2}]
  neutral_text: [{name: builtin, set: neutral_text}]
locate: {method: attribution, metric: letter_gap, n_probes: 4, top_k: 2, k_max: 2,
         knockout_random_sets: 1}
train: {objective: sft, steps: 2, batch_size: 4, lr: 1e-3}
eval: {n_items: 4, max_new_tokens: 6, kl_passages: 2, batch_size: 4}
"""


def _png(width: int, height: int) -> bytes:
    """A valid grey RGB PNG of the given size."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    rows = b"".join(b"\0" + b"\x80" * (3 * width) for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                               0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def chromium():
    found = screenshot.find_chromium()
    assert found, "no Chromium on PATH: install Debian's chromium (scripts/test.sh does)"
    return found


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, chromium):
    """The whole pipeline on a tiny random Llama: a real run directory with its report."""
    from headsurgeon.core.recipe import load_recipe
    from headsurgeon.model.tiny import build_tiny
    from headsurgeon.pipeline import Pipeline

    root = tmp_path_factory.mktemp("browser")
    build_tiny("llama", root / "tiny-llama")
    (root / "r.yaml").write_text(RECIPE)
    logged = []
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("HEADSURGEON_CACHE", str(root / "cache"))
        recipe = load_recipe(root / "r.yaml")
        Pipeline(recipe, log=logged.append).run()
        run_dir = recipe.run_dir().resolve()
    return run_dir, recipe, logged


def test_run_saves_a_screenshot_of_its_report(smoke_run):
    run_dir, _, logged = smoke_run
    png = (run_dir / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width == screenshot.WIDTH and height > 1500  # the whole page, not one screen
    assert any("report.png" in line for line in logged), logged


def test_the_run_report_reads_well_at_1280px(smoke_run, chromium, tmp_path):
    run_dir, _, _ = smoke_run
    layout = screenshot.render(run_dir / "report.html", tmp_path / "shot.png")
    html = (run_dir / "report.html").read_text()
    assert "Model <code>./tiny-llama</code>;" in html  # Markdown marks rendered, not shown
    assert len(layout["images"]) == html.count("<img ") >= 4
    assert {"Head scores (layers x heads)", "Knockout of the top-k heads vs random k-sets",
            "Training loss"} <= {i["alt"] for i in layout["images"]}
    assert all(i["naturalWidth"] > 0 for i in layout["images"]), layout["images"]
    assert layout["scrollWidth"] <= screenshot.WIDTH
    assert len(layout["tables"]) >= 3
    assert screenshot.layout_problems(layout) == []


def test_a_report_with_more_models_columns_and_long_output_still_fits(
        smoke_run, chromium, tmp_path, monkeypatch):
    """What later runs add: more models (baselines), more columns, a wide heatmap (a
    24 x 14 model), and model output with no spaces to break at."""
    from headsurgeon.report import report

    run_dir, recipe, _ = smoke_run
    wide = tmp_path / "run"
    shutil.copytree(run_dir, wide, ignore=shutil.ignore_patterns("model", "*.safetensors"))
    metrics = json.loads((wide / "metrics.json").read_text())
    spt = metrics["models"]["spt"]
    for ex in spt["sycophancy"]["examples"]["correct"]:
        ex["reply"] = "x" * 240
        ex["question"] = "What-is-" * 25
    for name in ("full_sft", "lora", "random_heads", "qwen2.5-coder-0.5b-instruct-spt"):
        metrics["models"][name] = spt
    (wide / "metrics.json").write_text(json.dumps(metrics))
    (wide / "heads_heatmap.png").write_bytes(_png(2400, 900))
    extra = {"extra_big": ("another column (per 1000 items)", 1234.5678),
             "extra_small": ("yet another column", -0.000123)}
    monkeypatch.setattr(report, "COLUMNS",
                        report.COLUMNS + [(k, head) for k, (head, _) in extra.items()])
    real_row = report.model_row
    monkeypatch.setattr(report, "model_row", lambda res: {
        **real_row(res), **{k: v for k, (_, v) in extra.items()}})
    report.write_report(recipe, wide, timings={"locate": 1.0})
    html = (wide / "report.html").read_text()
    assert "<td class='num'>-1.23e-04</td>" in html and "x" * 240 in html
    layout = screenshot.render(wide / "report.html", tmp_path / "wide.png")
    assert len(layout["images"]) == html.count("<img ") >= 4
    assert screenshot.layout_problems(layout) == []


def test_the_check_sees_broken_images_sideways_scroll_and_wide_tables(chromium, tmp_path):
    page = tmp_path / "bad.html"
    page.write_text("<!doctype html><html><body style='width:600px'>"
                    "<img alt='broken' src='data:image/png;base64,AAAA'>"
                    f"<img alt='fine' src='data:image/png;base64,"
                    f"{__import__('base64').b64encode(_png(3, 2)).decode()}'>"
                    "<div style='width:300px'><table><tr><td style='white-space:nowrap'>"
                    + "w" * 200 + "</td></tr></table></div>"
                    "<pre>" + "z" * 600 + "</pre></body></html>")
    layout = screenshot.render(page)
    assert [(i["alt"], i["naturalWidth"]) for i in layout["images"]] == [("broken", 0),
                                                                          ("fine", 3)]
    problems = screenshot.layout_problems(layout)
    assert problems[0] == "image 'broken' did not load"
    assert problems[1].startswith(f"page is {layout['scrollWidth']}px wide at 1280px")
    assert layout["scrollWidth"] > 1280
    assert problems[2].startswith("table starting 'wwww") and "in a 300px column" in problems[2]
    assert len(problems) == 3


def test_without_chromium_the_report_is_still_written(smoke_run, tmp_path, monkeypatch):
    from headsurgeon.report.report import write_report

    run_dir, recipe, _ = smoke_run
    d = tmp_path / "run"
    shutil.copytree(run_dir, d, ignore=shutil.ignore_patterns("model", "*.safetensors",
                                                               "report.*"))
    monkeypatch.setenv("HEADSURGEON_CHROMIUM", str(tmp_path / "no-such-browser"))
    assert screenshot.find_chromium() is None
    write_report(recipe, d)
    logged = []
    assert screenshot.save_screenshot(d, log=logged.append) is None
    assert (d / "report.html").is_file() and not (d / "report.png").exists()
    assert logged == ["[report] report.png skipped: no Chromium found "
                      "(install the chromium package for a screenshot of the report)"]
