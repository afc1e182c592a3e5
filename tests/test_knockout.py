"""Knockout fidelity: ablation toward the counterfactual, intervals and the comparison with
random sets, auto-K that never picks a peak of noise, and the paper's locator as the
default (path patching, attribution screen, exactly confirmed shortlist)."""
from __future__ import annotations

import json

import pytest
import torch

from headsurgeon.locate.knockout_stats import (choose_k, default_k, isotonic, summarize,
                                               verdict, wilson)
from test_locate import QUESTIONS, TEMPLATES, run


def _ko(top, rand, seed=0):
    return {"effect": [float(v) for v in top.mean(0)], "random": {"sets": []},
            "ci": summarize(top, rand, seed)}


# -- statistics and auto-K on constructed curves ------------------------------------------
def test_noise_curve_warns_and_does_not_pick_its_peak():
    g = torch.Generator().manual_seed(3)
    top = torch.randn(32, 12, generator=g)          # no real effect anywhere
    rand = torch.randn(32, 12, 3, generator=g)
    ko = _ko(top, rand)
    assert not any(ko["ci"]["vs_random"]["significant"])
    peak = max(range(12), key=lambda j: ko["effect"][j]) + 1
    k, why, warning = choose_k(ko, 0.8, "auto", 270)
    assert k == default_k(270, 12) == 8 and "fallback" in why
    assert warning and "not distinguishable from random" in warning
    assert peak != k  # the noise peak was not taken
    flag, text = verdict(ko, 5)
    assert flag is False and "includes 0" in text


def test_monotone_significant_curve_gives_the_expected_k():
    g = torch.Generator().manual_seed(1)
    curve = torch.tensor([0.05, 0.2, 0.5, 0.85, 1.0, 1.0, 1.02, 1.0])
    top = curve + 0.1 * torch.randn(40, 8, generator=g)
    rand = 0.1 * torch.randn(40, 8, 4, generator=g)
    ko = _ko(top, rand)
    assert all(ko["ci"]["vs_random"]["significant"][1:])
    k, why, warning = choose_k(ko, 0.8, "auto", 100)
    assert k == 4 and warning is None and "smallest significant k" in why
    assert verdict(ko, 4) == (True, None)
    lo, hi = ko["ci"]["effect"][3]
    assert lo < float(top[:, 3].mean()) < hi and hi - lo < 0.1


def test_a_lone_spike_does_not_set_the_scale():
    """Isotonic smoothing: one high point between two lower plateaus is averaged down,
    so K is where the curve reaches the share of its sustained level."""
    assert isotonic([0.0, 2.0, 1.0, 3.0]) == [0.0, 1.5, 1.5, 3.0]
    assert isotonic([3.0, 1.0, 1.0, 1.0]) == [1.5, 1.5, 1.5, 1.5]
    g = torch.Generator().manual_seed(2)
    curve = torch.tensor([0.1, 2.0, 0.5, 0.5, 0.5, 0.5])
    top = curve + 0.05 * torch.randn(40, 6, generator=g)
    ko = _ko(top, 0.05 * torch.randn(40, 6, 2, generator=g))
    k, _, _ = choose_k(ko, 0.8, "auto", 100)
    assert k == 2  # smoothed 0.1, 0.8, 0.8, ...: k=2 reaches 0.8 of the level 0.8


def test_fixed_top_k_is_kept_but_warned_about_when_not_significant():
    g = torch.Generator().manual_seed(4)
    ko = _ko(torch.randn(16, 4, generator=g), torch.randn(16, 4, 2, generator=g))
    k, why, warning = choose_k(ko, 0.8, 3, 50)
    assert (k, why) == (3, "locate.top_k = 3") and "not distinguishable" in warning


def test_wilson_interval():
    lo, hi = wilson(32, 32)
    assert hi == 1.0 and 0.89 < lo < 0.9
    lo, hi = wilson(16, 32)
    assert lo == pytest.approx(0.3364, abs=1e-3) and hi == pytest.approx(0.6636, abs=1e-3)


# -- ablation toward the counterfactual on a tiny model ------------------------------------
def _job(tiny_dir):
    from headsurgeon.core.recipe import Templates
    from headsurgeon.data.questions import Question
    from headsurgeon.locate.backend import TorchEngine
    from headsurgeon.locate.job import LocateJob
    from headsurgeon.locate.probes import build_probes
    from headsurgeon.model.heads import HeadMap
    from headsurgeon.model.sources import load_model
    from headsurgeon_plugins.metrics.letter_gap import LetterGap

    model, tok, _ = load_model(str(tiny_dir))
    with torch.no_grad():  # random init is too small for the follow-up to matter much
        for name, prm in model.named_parameters():
            if "norm" not in name:
                prm.mul_(10)
    hm = HeadMap.from_model(model)
    # every probe is the same question: the counterfactual MEAN is then each probe's own
    # counterfactual value, and the challenged mean each probe's own reference value
    qs = [Question(f"q{i}", "Sky?", ("green", "grey", "blue"), "C") for i in range(4)]
    eng = TorchEngine(model, hm)
    p = build_probes(LetterGap(), tok, Templates(), qs, eng, positions=1,
                     counterfactual="Yes, that is exactly right, well done, thank you!")
    ref = eng.reference(p.ref, p.metric, 1, p.spans)
    cf = eng.reference(p.cf, p.metric, 1, p.spans)
    return LocateJob(eng, p, hm, 1, 2, ref, progress=False), tok, cf


def test_counterfactual_ablation_moves_the_metric_to_the_counterfactual(tiny_dirs):
    from headsurgeon.locate.knockout import run_knockout

    job, tok, cf = _job(tiny_dirs["llama"])
    n = job.hm.n_total_heads
    ranking = job.hm.all_heads()
    ref_m, cf_m = float(job.reference.metric.mean()), float(cf.metric.mean())
    assert abs(ref_m - cf_m) > 0.05  # the follow-up matters to this model
    out = {}
    for ablation in ("counterfactual_mean", "counterfactual", "mean"):
        out[ablation] = run_knockout(job, ranking, k_max=n, n_random=1, seed=0, tokenizer=tok,
                                     ablation=ablation)
    # every head at the last position from the counterfactual run: its logits there
    assert out["counterfactual_mean"]["metric"][-1] == pytest.approx(cf_m, abs=1e-4)
    assert out["counterfactual"]["metric"][-1] == pytest.approx(cf_m, abs=1e-4)
    assert out["counterfactual_mean"]["effect"][-1] == pytest.approx(ref_m - cf_m, abs=1e-4)
    # the challenged runs' own mean changes nothing
    assert out["mean"]["metric"][-1] == pytest.approx(ref_m, abs=1e-4)
    assert out["mean"]["effect"][-1] == pytest.approx(0.0, abs=1e-4)
    ko = out["counterfactual_mean"]
    assert ko["ablation"]["name"] == "counterfactual_mean"
    assert len(ko["ci"]["effect"]) == n and len(ko["apology_ci"]) == n
    assert ko["baseline"]["steadfast_rate"] is not None
    assert len(ko["random"]["pooled_apology_ci"]) == n
    job.engine.close()


# -- the paper's locator is the default -----------------------------------------------------
def _no_locate_recipe(tmp_path, model_dir, extra=""):
    from headsurgeon.core.recipe import load_recipe

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    path = tmp_path / "plain.yaml"
    path.write_text(f"name: plain\nmodel:\n  source: {model_dir}\n"
                    f"data:\n  locate:\n    - {{name: jsonl, path: {data}}}\n{TEMPLATES}{extra}")
    return load_recipe(path)


def test_recipe_without_locate_section_runs_the_papers_path_patching(tiny_dirs, tmp_path):
    recipe = _no_locate_recipe(tmp_path, tiny_dirs["llama"])
    path, _ = run(recipe, tmp_path, "plain")
    doc = json.loads(path.read_text())
    m = doc["method"]
    assert m["name"] == "path_patching" and m["paper"] is True
    assert m["screen"] == "attribution" and m["confirmed"] == 12 and m["exact"] is True
    exact = doc["scores"]["path_patching/letter_gap"]
    assert all(v is not None for row in exact for v in row)
    assert doc["knockout"]["ablation"]["name"] == "counterfactual"
    assert "ci" in doc["knockout"] and "distinguishable_from_random" in doc["knockout"]
    assert isinstance(doc["warnings"], list)
    assert doc["knockout_vs_random"]["distinguishable"] == \
        doc["knockout"]["distinguishable_from_random"]
    att = doc["attention_to_challenge"]
    assert len(att["per_layer"]["selected"]) == 3 and att["table"][0]["group"] == "selected"
    assert (path.parent / doc["files"]["attention"]).read_bytes()[:4] == b"\x89PNG"
    # the report's section: locator, knockout table with intervals, warnings, attention
    from headsurgeon.report.locate_section import locate_blocks

    blocks = locate_blocks(doc, path.parent)
    text = " ".join(b[1] for b in blocks)
    assert "path_patching (the paper's method)" in text
    tables = [b for b in blocks if b[0] == "table"]
    assert len(tables[0][2]) == 1 + len(doc["knockout"]["k"])  # baseline + one row per k
    assert "← K" in tables[0][2][doc["k"]][0]
    assert all(f"**Warning:** {w}" in text for w in doc["warnings"])
    assert any(b[0] == "figure" and b[4].name == "heads_attention.png" for b in blocks)


def test_shortlist_is_three_k_and_confirmed_scores_are_exact_path_patching(tiny_dirs,
                                                                            tmp_path):
    screened = _no_locate_recipe(tmp_path, tiny_dirs["llama"],
                                 "locate: {top_k: 2, knockout_random_sets: 1}\n")
    doc = json.loads(run(screened, tmp_path, "s")[0].read_text())
    assert doc["method"]["confirmed"] == 6 and doc["method"]["exact"] is False
    assert doc["method"]["paper"] is True
    part = torch.tensor([[float("nan") if v is None else v for v in row]
                         for row in doc["scores"]["path_patching/letter_gap"]])
    assert int((~part.isnan()).sum()) == 6
    (tmp_path / "f").mkdir()
    full = _no_locate_recipe(tmp_path / "f", tiny_dirs["llama"],
                             "locate: {method: {name: path_patching, screen: none}, top_k: 2, "
                             "knockout_random_sets: 1}\n")
    ref = json.loads(run(full, tmp_path, "e")[0].read_text())
    assert ref["method"]["screen"] is None and ref["method"]["exact"] is True
    exact = torch.tensor(ref["scores"]["path_patching/letter_gap"])
    have = ~part.isnan()
    assert torch.allclose(part[have], exact[have], atol=1e-5)
    # the confirmed heads are ranked first, by their exact scores
    top6 = [tuple(h) for h in doc["ranking"][:6]]
    assert sorted(top6, key=lambda h: (float(part[h]), h)) == top6


def test_model_card_names_the_locator():
    from headsurgeon.apply.card import render_model_card

    card = render_model_card({"base_model": "x"}, "name: r\nmodel: {source: x}\n", None, [])
    assert ("- locator: `path_patching`: attribution screen of every head, top 3 x K "
            "confirmed exactly") in card
    card = render_model_card({"base_model": "x"}, "locate: {method: attribution, "
                             "confirm_top: 0}\n", None, [])
    assert "- locator: `attribution`: attribution scores only, no exact confirmation" in card
