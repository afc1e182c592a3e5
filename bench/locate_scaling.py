"""Locate's cost per head as the model grows: the attribution screen vs exact path
patching (every head, and a 3 x K shortlist), on random models with real geometries.

A model of the full depth is not needed: per probe, exact patching costs
``alpha + beta * rows`` (alpha: the prefix, counterfactual and reference runs; beta: one
packed patched row) and attribution ``A``, all three linear in the number of layers. We
time a few layers, fit alpha and beta from two row counts, and extrapolate to the full
depth (rows = every head, or 3 x K with K = 3% of the heads, the paper's share).

Usage: python bench/locate_scaling.py [--probes 3] [--tokens 120]
Times are CPU seconds of this process (OMP_NUM_THREADS=1 recommended on a shared box).
"""
from __future__ import annotations

import argparse
import time

import torch

# name: (transformers config class, kwargs, full depth, measured depth)
GEOMETRIES = {
    "qwen2.5-0.5b (336 heads)": ("Qwen2Config", dict(
        hidden_size=896, intermediate_size=4864, num_attention_heads=14,
        num_key_value_heads=2), 24, 4),
    "7b geometry (1,024 heads)": ("LlamaConfig", dict(
        hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
        num_key_value_heads=8), 32, 2),
}


def random_model(cls_name: str, kw: dict, n_layers: int, vocab: int = 2048):
    import transformers as tf

    cfg = getattr(tf, cls_name)(num_hidden_layers=n_layers, vocab_size=vocab,
                                max_position_embeddings=4096, **kw)
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    return model.eval()


def random_probes(n: int, tokens: int, vocab: int, seed: int = 0):
    """Reference / counterfactual pairs differing in a 'challenge' span 8-20 tokens before
    the end (as the real probes do), a letter-gap-like metric over four ids."""
    from headsurgeon.locate.backend import MetricBatch
    from headsurgeon.locate.probes import ProbeSet

    g = torch.Generator().manual_seed(seed)
    ref, cf = [], []
    for _ in range(n):
        s = torch.randint(10, vocab, (tokens,), generator=g).tolist()
        c = list(s)
        c[tokens - 20:tokens - 12] = torch.randint(10, vocab, (8,), generator=g).tolist()
        ref.append(s)
        cf.append(c)
    ids = torch.tensor([[5, 6, 7, 8]] * n)
    w = torch.tensor([[-1.0, 1 / 3, 1 / 3, 1 / 3]] * n)
    spans = [(tokens - 20, tokens - 12)] * n
    return ProbeSet([], ref, cf, ref, spans, MetricBatch(ids, w), {}, cf)


def costs(model, probes, batch_size: int = 4, rows_per_pass: int = 128) -> dict:
    """CPU seconds per probe: attribution (path), exact path patching of every head and of
    a quarter of them (for the linear fit)."""
    from headsurgeon.locate.backend import TorchEngine
    from headsurgeon.locate.job import LocateJob, attribution_scores, exact_effects
    from headsurgeon.model.heads import HeadMap

    hm = HeadMap.from_model(model)
    eng = TorchEngine(model, hm, rows_per_pass=rows_per_pass)
    ref = eng.reference(probes.ref, probes.metric, 1)
    job = LocateJob(eng, probes, hm, 1, batch_size, ref, progress=False)
    heads = hm.all_heads()
    few = heads[::4]
    out = {"heads": len(heads), "few": len(few)}
    for name, fn in (("attribution", lambda: attribution_scores(job, path=True, desc="a")),
                     ("exact_all", lambda: exact_effects(job, heads, path=True, desc="e")),
                     ("exact_few", lambda: exact_effects(job, few, path=True, desc="f"))):
        c = time.process_time()
        fn()
        out[name] = (time.process_time() - c) / len(probes)
    eng.close()
    return out


def extrapolate(m: dict, n_layers: int, measured_layers: int, n_heads: int) -> dict:
    """Per-probe costs at the full depth from a measurement on ``measured_layers``."""
    beta = (m["exact_all"] - m["exact_few"]) / max(1, m["heads"] - m["few"])
    alpha = max(0.0, m["exact_all"] - beta * m["heads"])
    scale = n_layers / measured_layers
    total = n_heads * n_layers
    k = max(1, round(0.03 * total))
    attr = m["attribution"] * scale
    exact = (alpha + beta * total) * scale
    confirm = (alpha + beta * 3 * k) * scale
    return {"heads": total, "k": k, "attribution_s": attr, "exact_s": exact,
            "confirm_s": confirm, "attr_per_head_ms": 1e3 * attr / total,
            "exact_per_head_ms": 1e3 * exact / total,
            "attribution_vs_exact": exact / attr, "confirm_vs_attribution": confirm / attr,
            "alpha_s": alpha * scale, "beta_ms": 1e3 * beta * scale}


def run(n_probes: int, tokens: int) -> dict:
    results = {}
    for name, (cls, kw, full, measured) in GEOMETRIES.items():
        model = random_model(cls, kw, measured)
        m = costs(model, random_probes(n_probes, tokens, model.config.vocab_size))
        del model
        r = extrapolate(m, full, measured, kw["num_attention_heads"])
        results[name] = r
        print(f"  {name}: measured {measured} of {full} layers ({m['heads']} heads); "
              f"per probe at full depth: attribution {r['attribution_s']:.2f} s, exact (all "
              f"{r['heads']}) {r['exact_s']:.2f} s, confirm 3 x K = {3 * r['k']} heads "
              f"{r['confirm_s']:.2f} s; per head {r['attr_per_head_ms']:.2f} ms vs "
              f"{r['exact_per_head_ms']:.2f} ms -> attribution {r['attribution_vs_exact']:.1f}x "
              f"faster; confirm / screen {r['confirm_vs_attribution']:.2f}; exact = "
              f"{r['alpha_s']:.2f} s (prefix, counterfactual, reference runs) + "
              f"{r['beta_ms']:.1f} ms per patched row", flush=True)
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probes", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=120)
    a = ap.parse_args(argv)
    r = run(a.probes, a.tokens)
    big = r["7b geometry (1,024 heads)"]
    print(f"BENCH locate_scaling attribution_vs_exact_at_1k_heads="
          f"{big['attribution_vs_exact']:.2f} confirm_vs_attribution_at_1k_heads="
          f"{big['confirm_vs_attribution']:.2f}")


if __name__ == "__main__":
    main()
