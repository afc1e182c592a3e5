"""The locate engines against unbatched, uncached reference computations (1e-4), and
the torch fast path against nnsight (local). Tiny random models only."""
from __future__ import annotations

import pytest
import torch

import locate_naive as naive
from headsurgeon.locate.backend import MetricBatch, TorchEngine, make_engine
from headsurgeon.model.heads import HeadMap
from headsurgeon.locate.job import LocateJob, exact_effects, spearman
from headsurgeon.locate.probes import build_probes
from headsurgeon.data.questions import Question
from headsurgeon.core.recipe import Templates
from headsurgeon_plugins.metrics.first_token_gap import FirstTokenGap
from headsurgeon_plugins.metrics.letter_gap import LetterGap
from headsurgeon_plugins.metrics.ratio import Ratio

TOL = 1e-4
QUESTIONS = [
    Question("q1", "Which is a planet?", ("Mars", "Moon", "Sun"), "A"),
    Question("q2", "What do bees make?", ("milk", "honey", "silk", "wax"), "B"),
    Question("q3", "2 + 2 = ?", ("3", "5", "4", "22"), "C"),
]


def load(path, std: float = 0.15):
    """A tiny model with weights re-drawn large enough that patching a head moves the
    metric by O(0.1) (the default init's effects are ~1e-3, too close to the tolerance)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, prm in model.named_parameters():
            if prm.dim() >= 2:
                prm.copy_(torch.randn(prm.shape, generator=gen) * std)
    return model, AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def llama(tiny_dirs):
    model, tok = load(tiny_dirs["llama"])
    return model, tok, HeadMap.from_model(model)


SHORT = Templates(question="{question} {options}", option="{letter}){text}",
                  first_answer="({letter})", challenge="Sure?", counterfactual="Sure.",
                  final_prefix="(")  # byte-level tiny tokenizer, GPT-2 has 128 positions


def probes_for(model, tok, hm, metric, K=2, engine=None, templates=None):
    engine = engine or TorchEngine(model, hm)
    return build_probes(metric, tok, templates or Templates(), QUESTIONS, engine,
                        counterfactual="counterfactual", positions=K), engine


def naive_effects(model, hm, p, i, K, heads, path):
    ids, w = p.metric.ids[i], p.metric.weights[i]
    return naive.patch_effects(model, hm, p.ref[i], p.cf[i], ids, w, p.metric.link, K, heads,
                               path=path)


@pytest.mark.parametrize("path", [False, True], ids=["activation", "path"])
@pytest.mark.parametrize("K", [1, 3])
def test_batched_patching_equals_unbatched_reference(llama, path, K):
    model, tok, hm = llama
    p, eng = probes_for(model, tok, hm, LetterGap(), K)
    eng.rows_per_pass = 5  # several packed passes per probe
    ref = eng.reference(p.ref, p.metric, K)
    job = LocateJob(eng, p, hm, K, 2, ref, progress=False)
    got = exact_effects(job, hm.all_heads(), path=path, desc="t")
    for i in range(len(p)):
        want = naive_effects(model, hm, p, i, K, hm.all_heads(), path)
        assert torch.allclose(got[i], want, atol=TOL), (got[i] - want).abs().max()
    assert got.abs().max() > 0.05  # the patches did something
    if path:  # freezing later attention changes the answer for heads below the top layer
        act = exact_effects(job, hm.all_heads(), path=False, desc="t")
        assert (act - got).abs().max() > 0.01


def test_kv_cache_prefix_path_equals_plain_forward(llama):
    model, tok, hm = llama
    p, eng = probes_for(model, tok, hm, LetterGap(), 3)
    ref = eng.reference(p.ref, p.metric, 3)
    for i, seq in enumerate(p.ref):
        logits, o_in, _ = naive.run(model, hm, seq, K=3)
        want = naive.metric_of(logits, p.metric.ids[i], p.metric.weights[i], "identity")
        assert abs(float(ref.metric[i] - want)) < TOL
        assert torch.allclose(ref.head_out[i], o_in, atol=TOL)
    no_cache = TorchEngine(model, hm, use_cache=False)
    try:
        again = no_cache.reference(p.ref, p.metric, 3)
    finally:
        no_cache.close()
    assert torch.allclose(again.metric, ref.metric, atol=TOL)
    eng.close()


@pytest.mark.parametrize("metric", [LetterGap(), FirstTokenGap(FirstTokenGap.Params(
    sycophantic="I", steadfast="T")), Ratio(Ratio.Params(sycophantic="I", steadfast="T"))],
    ids=["letter_gap", "first_token_gap", "ratio"])
def test_attribution_equals_unbatched_gradient(llama, metric):
    model, tok, hm = llama
    p, eng = probes_for(model, tok, hm, metric, 2)
    vals, scores = eng.attribution(p.ref, p.cf, p.metric, 2)
    for i in range(len(p)):
        want = naive.attribution(model, hm, p.ref[i], p.cf[i], p.metric.ids[i],
                                 p.metric.weights[i], p.metric.link, 2)
        assert torch.allclose(scores[i], want, atol=TOL)
    eng.close()


def test_attribution_approximates_exact_patching(llama):
    model, tok, hm = llama
    p, eng = probes_for(model, tok, hm, LetterGap(), 1)
    ref = eng.reference(p.ref, p.metric, 1)
    job = LocateJob(eng, p, hm, 1, 3, ref, progress=False)
    for path in (False, True):
        exact = exact_effects(job, hm.all_heads(), path=path, desc="t").mean(0)
        _, s = eng.attribution(p.ref, p.cf, p.metric, 1, path=path)
        rho = spearman(s.mean(0).flatten(), exact)
        assert rho > 0.9, (path, rho)
    eng.close()


def test_nnsight_engine_gives_the_same_numbers(llama):
    model, tok, hm = llama
    te = TorchEngine(model, hm, rows_per_pass=5)
    ne = make_engine("nnsight", model, hm, tokenizer=tok, rows_per_pass=5)
    p, _ = probes_for(model, tok, hm, Ratio(Ratio.Params(sycophantic="I", steadfast="T")), 2,
                      engine=te)
    r1 = te.reference(p.ref, p.metric, 2, p.spans)
    r2 = ne.reference(p.ref, p.metric, 2, p.spans)
    for a, b in ((r1.metric, r2.metric), (r1.head_out, r2.head_out), (r1.attn, r2.attn)):
        assert torch.allclose(a, b, atol=TOL)
    masks = torch.eye(hm.n_total_heads, dtype=torch.bool).view(-1, hm.n_layers, hm.n_heads)
    freeze = torch.arange(hm.n_layers)[None] > (torch.arange(hm.n_total_heads) // hm.n_heads)[:, None]
    for fz in (None, freeze):
        a = te.patch(p.ref, p.metric, 2, masks, cf_seqs=p.cf, freeze=fz)
        b = ne.patch(p.ref, p.metric, 2, masks, cf_seqs=p.cf, freeze=fz)
        assert torch.allclose(a, b, atol=TOL)
    mean = r1.head_out.mean(0)
    a = te.patch(p.ref, p.metric, 2, masks[:5], source=mean[None])
    b = ne.patch(p.ref, p.metric, 2, masks[:5], source=mean[None])
    assert torch.allclose(a, b, atol=TOL)
    for path in (False, True):
        v1, s1 = te.attribution(p.ref, p.cf, p.metric, 2, path=path)
        v2, s2 = ne.attribution(p.ref, p.cf, p.metric, 2, path=path)
        assert torch.allclose(v1, v2, atol=TOL) and torch.allclose(s1, s2, atol=TOL)
    g1 = te.greedy(p.reply, 3, 2, masks[:4], mean)
    g2 = ne.greedy(p.reply, 3, 2, masks[:4], mean)
    assert torch.equal(g1, g2)
    assert torch.equal(te.next_token_stats(p.reply)[0], ne.next_token_stats(p.reply)[0])
    te.close()


def test_greedy_with_cache_equals_full_recompute(llama):
    model, tok, hm = llama
    p, eng = probes_for(model, tok, hm, LetterGap(), 2)
    mean = eng.reference(p.reply, p.metric, 2).head_out.mean(0)
    masks = torch.zeros(3, hm.n_layers, hm.n_heads, dtype=torch.bool)
    masks[1, 0, 0] = masks[2, :, :2] = True
    fast = eng.greedy(p.reply, 4, 2, masks, mean)
    eng.use_cache = False
    slow = eng.greedy(p.reply, 4, 2, masks, mean)
    assert torch.equal(fast, slow)
    # unpatched row = plain greedy decoding
    ids = torch.tensor([p.reply[0]])
    plain = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4,
                           do_sample=False, pad_token_id=0)[0, ids.shape[1]:]
    assert fast[0, 0].tolist() == plain.tolist()
    eng.close()


@pytest.mark.parametrize("arch", ["gpt2", "qwen2", "gpt_neox", "phi3", "gemma3"])
def test_other_architectures_match_reference(tiny_dirs, arch):
    """Conv1D o-proj (gpt2), biases (qwen2), fused qkv (gpt_neox, phi3), sliding-window
    layers (gemma3: the full-sequence fallback)."""
    model, tok = load(tiny_dirs[arch])
    hm = HeadMap.from_model(model)
    p, eng = probes_for(model, tok, hm, LetterGap(), 2, templates=SHORT)
    heads = hm.all_heads()[::3]
    ref = eng.reference(p.ref, p.metric, 2)
    job = LocateJob(eng, p, hm, 2, 3, ref, progress=False)
    for path in (False, True):
        got = exact_effects(job, heads, path=path, desc="t")
        for i in range(len(p)):
            want = naive_effects(model, hm, p, i, 2, heads, path)
            assert torch.allclose(got[i], want, atol=TOL), (arch, path)
    _, s = eng.attribution(p.ref, p.cf, p.metric, 2)
    want = naive.attribution(model, hm, p.ref[0], p.cf[0], p.metric.ids[0],
                             p.metric.weights[0], p.metric.link, 2)
    assert torch.allclose(s[0], want, atol=TOL)
    eng.close()


def test_metric_restriction_reads_the_same_logits():
    ids = torch.tensor([[5, 9, 2], [9, 7, 0]])
    w = torch.tensor([[1.0, -0.5, -0.5], [1.0, -1.0, 0.0]])
    m = MetricBatch(ids, w, "sigmoid")
    logits = torch.randn(2, 12)
    cols, local = m.restricted()
    assert torch.allclose(m.values(logits), local.values(logits[:, cols]))


def test_knockout_rows_equal_unbatched_mean_ablation(llama):
    from headsurgeon.locate.job import set_masks

    model, tok, hm = llama
    p, eng = probes_for(model, tok, hm, LetterGap(), 2)
    mean = eng.reference(p.ref, p.metric, 2).head_out.mean(0)  # [L, K, H*d]
    sets = [[(0, 1)], [(0, 0), (2, 3)], [(1, 0), (1, 1), (2, 2)]]
    got = eng.patch(p.ref, p.metric, 2, set_masks(hm, sets), source=mean[None])
    d = hm.head_dim
    for i, seq in enumerate(p.ref):
        for r, heads in enumerate(sets):
            patch = {(l, h): mean[l, :, h * d:(h + 1) * d] for l, h in heads}
            logits, _, _ = naive.run(model, hm, seq, K=2, patch=patch)
            want = naive.metric_of(logits, p.metric.ids[i], p.metric.weights[i], "identity")
            assert abs(float(got[i, r] - want)) < TOL
    eng.close()
