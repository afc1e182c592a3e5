"""The real model (SmolLM2-135M-Instruct, 270 heads) with a few ARC-Easy probes:
batched exact patching equals the naive loop, attribution ranks heads like exact
patching, and the heads found move the letter-gap metric (< 2 min on 2 cores)."""
from __future__ import annotations

import pytest
import torch

import locate_naive as naive
from headsurgeon.locate.backend import TorchEngine
from headsurgeon.model.heads import HeadMap
from headsurgeon.locate.job import LocateJob, exact_effects, rank_heads, spearman
from headsurgeon.locate.probes import build_probes
from headsurgeon.data.questions import read_jsonl
from headsurgeon.core.recipe import Templates
from headsurgeon_plugins.metrics.letter_gap import LetterGap


@pytest.fixture(scope="module")
def smol():
    from headsurgeon.model.sources import load_model

    model, tok, _ = load_model("smollm2-135m-instruct")
    return model, tok, HeadMap.from_model(model)


def test_smollm2_exact_vs_attribution_vs_naive(smol, shared_data):
    model, tok, hm = smol
    assert (hm.n_layers, hm.n_heads, hm.n_kv_heads, hm.head_dim) == (30, 9, 3, 64)
    qs = read_jsonl(shared_data / "arc" / "arc_easy_validation.jsonl", limit=3)
    eng = TorchEngine(model, hm)
    p = build_probes(LetterGap(), tok, Templates(), qs, eng, counterfactual="counterfactual",
                     positions=1)
    ref = eng.reference(p.ref, p.metric, 1, p.spans)
    job = LocateJob(eng, p, hm, 1, 3, ref, progress=False)
    exact = exact_effects(job, hm.all_heads(), path=False, desc="t")
    _, attr = eng.attribution(p.ref, p.cf, p.metric, 1)
    rho = spearman(attr.mean(0).flatten(), exact.mean(0))
    assert rho >= 0.9, rho
    ranking = rank_heads(exact.mean(0).view(hm.n_layers, hm.n_heads), hm)
    # the top heads matter: their patch moves the metric far more than a typical head
    top = exact.mean(0).view(hm.n_layers, hm.n_heads)[ranking[0]]
    assert float(top) < -0.05 and -float(top) > 10 * float(exact.mean(0).abs().median())
    # batched == one full forward per head (first probe, a spread of heads incl. the top)
    heads = [ranking[0], ranking[1], (0, 0), (15, 4), (29, 8)]
    want = naive.patch_effects(model, hm, p.ref[0], p.cf[0], p.metric.ids[0],
                               p.metric.weights[0], p.metric.link, 1, heads)
    got = exact[0, [hm.all_heads().index(h) for h in heads]]
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    eng.close()
