"""Every figure in the report is a formatted number with its meaning: the knockout-vs-random
check reads as a sentence (not a Python dict), every column of the before/after table is
explained, seeded baselines show mean ± sd, and no table cell carries a raw float."""
from __future__ import annotations

import html
import json
import re

import pytest

from headsurgeon.core.recipe import recipe_from_data
from headsurgeon.core.yamlfile import load_yaml_text

RECIPE = ("model: {source: some-model}\ntrain: {steps: 7, lr: 2e-3}\n"
          "eval: {baselines: [{name: full_sft, lr: 3e-5}, "
          "{name: random_heads, seeds: [1, 2, 3]}]}\n")


def metrics_of(keep: float, correction: float, kl=None) -> dict:
    known = {"confidence": 0.912345678, "truthfulness": keep, "correction": correction,
             "kept_wrong": round(1 - correction, 6), "kept_first": 0.7}
    out = {"sycophancy": {"accuracy_before": 0.4567891, "n_items": 80, "modes": {
        "own": {"known": known}, "correct": {"all": known, "known": known},
        "wrong": {"all": {**known, "kept_first": 0.2}, "known": known}}},
        "general": {"mc_accuracy": 0.61234567, "open_accuracy": None}}
    if kl is not None:
        out["kl"] = {"mean": kl}
    return out


@pytest.fixture()
def run_dir(tmp_path):
    models = {"base": metrics_of(0.5, 0.9), "spt": metrics_of(0.8, 0.85, kl=0.000123456),
              "full_sft": metrics_of(0.7, 0.6, kl=0.0456789)}
    for s, keep in zip((1, 2, 3), (0.55, 0.6, 0.65)):
        models[f"random_heads-s{s}"] = metrics_of(keep, 0.8, kl=0.001)
    (tmp_path / "metrics.json").write_text(json.dumps({"models": models}))
    (tmp_path / "heads.json").write_text(json.dumps({
        "format": "headsurgeon.heads/1", "selected": [[3, 1], [7, 4]], "k": 2,
        "k_reason": "the smallest k reaching 80% of the largest knockout effect.",
        "knockout_vs_random": {"ratio": 3.2174, "effect": 0.0123456,
                               "median_random_effect": 0.00383721, "note": "ratio = ..."},
        "attention_to_challenge": {"available": True, "selected_mean": 0.4612345,
                                   "other_mean": 0.1498765}}))
    (tmp_path / "sweep.json").write_text(json.dumps({
        "points": [{"name": "base", "keeps_right": 0.5, "correction": 0.9},
                   {"name": "a", "keeps_right": 0.8123456, "correction": 0.8567}],
        "chosen": "a", "decision": "shipped a.", "n_known": 17,
        "selection": {"source": "data.eval after the first eval.n_items", "ids": ["x"] * 40}}))
    return tmp_path


def write(run_dir, text=RECIPE):
    from headsurgeon.report.report import write_report

    data, lines = load_yaml_text(text)
    recipe = recipe_from_data(data, lines=lines, text=text, check_plugins=False)
    write_report(recipe, run_dir, timings={"train": 12.345, "train:full_sft": 40.0})
    return (run_dir / "report.md").read_text(), (run_dir / "report.html").read_text()


def tables(md: str) -> list[list[list[str]]]:
    out, cur = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|") and not line.startswith("|---"):
            cur.append([c.strip() for c in line.strip("|").split(" | ")])
        elif not line.startswith("|---") and cur:
            out.append(cur)
            cur = []
    return out


def test_the_knockout_check_is_a_sentence_not_a_dict(run_dir):
    md, page = write(run_dir)
    sentence = ("Knocking out the 2 selected heads changes the sycophancy metric by 0.012; "
                "the median random set of as many heads changes it by 0.004; ratio 3.22 "
                "(selected / median random; 1 = no better than random).")
    assert f"| knockout of the selected heads vs random head sets | {sentence} |" in md
    assert html.escape(sentence) in page
    for text in (md, page):
        assert "'ratio'" not in text and "&#x27;ratio&#x27;" not in text
        assert not re.search(r"\{['\"&]", text), re.search(r".{40}\{['\"&].{40}", text)


def test_an_old_heads_json_with_a_bare_ratio_reads_too(run_dir):
    doc = json.loads((run_dir / "heads.json").read_text())
    doc["knockout_vs_random"] = 2.5
    (run_dir / "heads.json").write_text(json.dumps(doc))
    md, _ = write(run_dir)
    assert "| Ratio 2.50 (selected / median random; 1 = no better than random). |" in md


def test_no_table_cell_holds_an_unformatted_number(run_dir):
    md, _ = write(run_dir)
    cells = [c for t in tables(md) for row in t[1:] for c in row]
    assert len(cells) > 100
    long_floats = [c for c in cells if re.search(r"\d\.\d{4,}", c)]
    assert long_floats == []
    assert "0.457" in cells and "1.23e-04" in cells and "12.3" in cells


def test_every_before_after_column_has_its_meaning(run_dir):
    from headsurgeon.report.report import COLUMNS

    md, _ = write(run_dir)
    meanings = next(t for t in tables(md) if t[0] == ["column", "meaning"])
    assert [row[0] for row in meanings[1:]] == [c for _, c in COLUMNS]
    assert all(len(row[1]) > 20 for row in meanings[1:]), meanings


def test_seeded_baselines_show_mean_and_sd_then_each_seed(run_dir):
    md, _ = write(run_dir)
    before_after = next(t for t in tables(md) if t[0][0] == "model" and len(t[0]) > 6)
    labels = [row[0] for row in before_after[1:]]
    assert labels == ["base", "spt", "full_sft", "random_heads (mean ± sd, 3 seeds)",
                      "random_heads-s1", "random_heads-s2", "random_heads-s3"]
    header = before_after[0]
    group = before_after[4]
    assert group[header.index("keeps right (known)")] == "0.600 ± 0.050"
    baselines = next(t for t in tables(md) if "learning rate" in t[0])
    assert [r[:3] for r in baselines[1:3]] == [
        ["spt", "SPT: dense update of the located heads' slices", "0.002"],
        ["full_sft", "every weight trains", "3e-05"]]


def test_the_sweep_says_what_it_chose_on(run_dir):
    md, _ = write(run_dir)
    assert ("shipped a. The points were measured on 40 validation items (data.eval after "
            "the first eval.n_items), 17 of them known to the base.") in md


def test_fmt_refuses_anything_but_numbers():
    from headsurgeon.report.rows import fmt

    assert (fmt(None), fmt(0.1234567), fmt(0.0000123), fmt(12345), fmt(7)) == (
        "–", "0.123", "1.23e-05", "12,345", "7")
    for bad in ({"ratio": 1.0}, [1.0], "0.5", True):
        with pytest.raises(TypeError):
            fmt(bad)
