"""Benchmark the locate stage on SmolLM2-135M-Instruct (30 layers x 9 heads = 270).

Measured side by side in one run, on the same probes:
- unit: one plain forward + backward (loss.backward over the parameters) over the probes;
- attribution (every head, one forward + backward per probe over the final positions);
- batched exact activation patching (prefix once in a KV cache, 270 packed rows);
- a naive loop: one full forward per (probe, head) with a patch hook, on a subset of
  probes x heads (time per patched head compared; numbers checked against batched);
- TransformerLens (TransformerBridge, hook_z) per-head activation patching on the same
  subset, if it is installed: numbers compared (1e-3) and time per head;
- the paper's locator: exact path patching of every head, the path attribution screen,
  and exact confirmation of a 3 x K shortlist (cost per head);
- knockout (toward the counterfactual mean) of the auto-chosen K heads vs random K-sets;
- the same per-head costs on random models of Qwen2.5-0.5B geometry (336 heads) and 7B
  geometry (1,024 heads), from a few layers extrapolated (bench/locate_scaling.py).
Last line: ``BENCH locate batched_vs_naive=X attribution_vs_exact=X spearman=X
knockout_vs_random=X distinguishable=X attribution_vs_exact_at_1k_heads=X
confirm_vs_attribution_at_1k_heads=X``.

Usage: python bench/locate.py [--n-probes 64] [--naive-probes 2] [--naive-heads 30]
       [--scaling-probes 3] [--no-scaling]
Times are CPU seconds of this process (wall printed beside): other jobs on a shared
machine then do not skew the ratios. On an oversubscribed CPU, OMP_NUM_THREADS=1 avoids
OpenMP spin-wait collapse (2 threads ran ~20x slower here).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # locate_naive: the unbatched reference loop
sys.path.insert(0, str(ROOT / "bench"))  # locate_scaling


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data = Path(os.environ.get("HEADSURGEON_SHARED_DATA", ROOT.parent / "shared" / "data"))
    ap.add_argument("--data", default=str(data / "arc" / "arc_easy_validation.jsonl"))
    ap.add_argument("--n-probes", type=int, default=64)
    ap.add_argument("--naive-probes", type=int, default=2)
    ap.add_argument("--naive-heads", type=int, default=30)
    ap.add_argument("--positions", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--k-max", type=int, default=24)
    ap.add_argument("--random-sets", type=int, default=5)
    ap.add_argument("--effect-share", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-tl", action="store_true", help="skip the TransformerLens comparison")
    ap.add_argument("--scaling-probes", type=int, default=3)
    ap.add_argument("--no-scaling", action="store_true", help="skip the 336 / 1,024-head models")
    a = ap.parse_args(argv)

    import locate_naive as naive
    from headsurgeon.locate.backend import TorchEngine, pad_left
    from headsurgeon.model.heads import HeadMap
    from headsurgeon.locate.knockout import run_knockout
    from headsurgeon.locate.knockout_stats import choose_k, verdict
    from headsurgeon.locate.job import LocateJob, exact_effects, rank_heads, spearman
    from headsurgeon.locate.probes import build_probes
    from headsurgeon.model.sources import load_model
    from headsurgeon.data.questions import read_jsonl, require_mc, shuffled
    from headsurgeon.core.recipe import Templates
    from headsurgeon_plugins.locators.attribution import Attribution
    from headsurgeon_plugins.metrics.letter_gap import LetterGap

    torch.manual_seed(a.seed)
    model, tok, rm = load_model("smollm2-135m-instruct")
    hm = HeadMap.from_model(model)
    qs = shuffled(require_mc(read_jsonl(a.data), "--data"), a.seed)[:a.n_probes]
    K = a.positions
    eng = TorchEngine(model, hm)
    p = build_probes(LetterGap(), tok, Templates(), qs, eng, counterfactual="counterfactual",
                     positions=K)
    print(f"model {rm.model_id}: {hm.n_layers} layers x {hm.n_heads} heads; {len(p)} probes "
          f"({min(map(len, p.ref))}-{max(map(len, p.ref))} tokens), K={K}, "
          f"torch threads {torch.get_num_threads()}", flush=True)
    timings = {}

    walls = {}

    def timed(name, fn):
        """CPU seconds of this process (robust to other jobs on a shared machine; with
        one torch thread it is the compute itself), wall seconds printed beside."""
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        timings[name] = time.process_time() - c
        walls[name] = time.perf_counter() - t
        print(f"  {name:<28} {timings[name]:8.1f} s cpu {walls[name]:8.1f} s wall", flush=True)
        return out

    # unit: a plain forward + backward of the metric over the probes (batches of
    # --batch-size, logits at the last position only)
    def fwd_bwd():
        for i in range(0, len(p), a.batch_size):
            ids, mask, pos = pad_left(p.ref[i:i + a.batch_size])
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos,
                           use_cache=False, logits_to_keep=1).logits[:, -1]
            p.metric.take(slice(i, i + a.batch_size)).values(logits).sum().backward()
        model.zero_grad(set_to_none=True)
    timed("forward+backward (unit)", fwd_bwd)

    ref = timed("reference runs", lambda: eng.reference(p.ref, p.metric, K, p.spans))
    job = LocateJob(eng, p, hm, K, a.batch_size, ref, progress=False)
    attr = timed("attribution", lambda: Attribution().score(job))
    exact = timed("exact patching (batched)",
                  lambda: exact_effects(job, hm.all_heads(), path=False, desc="exact"))
    exact_mean = exact.mean(0).view(hm.n_layers, hm.n_heads)
    rho = spearman(attr.scores["attribution"].flatten(), exact_mean.flatten())
    top_e, top_a = rank_heads(exact_mean, hm)[:10], attr.ranking[:10]

    # naive: one full forward per (probe, head); a spread of heads over all layers
    heads = hm.all_heads()[::max(1, hm.n_total_heads // a.naive_heads)][:a.naive_heads]
    sub = range(min(a.naive_probes, len(p)))

    def naive_loop():
        return [naive.patch_effects(model, hm, p.ref[i], p.cf[i], p.metric.ids[i],
                                    p.metric.weights[i], p.metric.link, K, heads) for i in sub]
    naive_eff = timed(f"naive loop ({len(sub)}x{len(heads)} heads)", naive_loop)
    idx = [hm.all_heads().index(h) for h in heads]
    naive_diff = max(float((naive_eff[j] - exact[i, idx]).abs().max()) for j, i in enumerate(sub))
    per_batched = timings["exact patching (batched)"] / (len(p) * hm.n_total_heads)
    per_naive = timings[f"naive loop ({len(sub)}x{len(heads)} heads)"] / (len(sub) * len(heads))
    batched_vs_naive = per_naive / per_batched
    attribution_vs_exact = timings["exact patching (batched)"] / timings["attribution"]

    paper = paper_costs(job, hm, timed, timings, a.k_max)
    ko = timed("knockout (+ random sets)", lambda: run_knockout(
        job, attr.ranking, k_max=a.k_max, n_random=a.random_sets, seed=a.seed, tokenizer=tok))
    k, why, warning = choose_k(ko, a.effect_share, "auto", hm.n_total_heads)
    distinguishable = verdict(ko, k)[0]
    eff_k = ko["effect"][k - 1]
    med_k = ko["random"]["median_effect"][k - 1]
    ko_ratio = eff_k / med_k if med_k > 0 else float("inf") if eff_k > 0 else float("nan")

    tl = None if a.no_tl else transformer_lens_check(rm, tok, hm, p, K, heads, sub, exact)
    eng.close()

    unit = timings["forward+backward (unit)"]
    print("\nresults (CPU time of this process)")
    for name in ("reference runs", "attribution", "exact patching (batched)"):
        print(f"  {name:<28} {timings[name] / unit:6.2f} x forward+backward")
    print(f"  naive loop, per patched head: {per_naive * 1e3:.1f} ms; batched: "
          f"{per_batched * 1e3:.2f} ms -> batched {batched_vs_naive:.1f}x faster "
          f"(max |naive - batched| = {naive_diff:.2e})")
    print(f"  attribution {attribution_vs_exact:.2f}x faster than exact; Spearman over "
          f"{hm.n_total_heads} heads {rho:.4f}; top-10 overlap "
          f"{len(set(top_e) & set(top_a))}/10")
    print(f"  top-10 exact:       {top_e}\n  top-10 attribution: {top_a}")
    print(f"  reference metric {ko['baseline']['metric']:.4f}, apology rate "
          f"{ko['baseline']['apology_rate']:.2f}")
    print(f"  chosen K = {k} ({why}): heads {[list(h) for h in attr.ranking[:k]]}")
    print(f"  knockout K={k}: metric reduction {eff_k:.4f} vs median random {med_k:.4f} "
          f"-> {ko_ratio:.2f}x; apology rate {ko['apology_rate'][k - 1]:.2f} vs random "
          f"median {ko['random']['median_apology_rate'][k - 1]:.2f}")
    print("  knockout effect by k:", [round(e, 3) for e in ko["effect"]])
    print("  random median by k:  ", [round(e, 3) for e in ko["random"]["median_effect"]])
    print(f"  distinguishable from random at K: {distinguishable}"
          + (f"; warning: {warning}" if warning else ""))
    print(f"  paper's locator on {hm.n_total_heads} heads, per head: path attribution "
          f"{paper['attr_per_head_ms']:.2f} ms, exact path patching "
          f"{paper['exact_per_head_ms']:.2f} ms -> {paper['attribution_vs_exact']:.2f}x; "
          f"confirming {paper['shortlist']} heads costs {paper['confirm_vs_attribution']:.2f}x "
          f"the screen")
    scale = {}
    if not a.no_scaling:
        from locate_scaling import run as scaling

        print("\nscaling (random models, a few layers extrapolated to full depth)")
        scale = scaling(a.scaling_probes, round(sum(map(len, p.ref)) / len(p)))
    big = scale.get("7b geometry (1,024 heads)", {})
    if tl is not None:
        print(f"  TransformerLens {tl['version']}: per patched head {tl['per_head'] * 1e3:.1f} ms "
              f"(ours batched {per_batched * 1e3:.2f} ms, naive {per_naive * 1e3:.1f} ms); "
              f"max |TL - ours| = {tl['max_diff']:.2e} ({'within' if tl['max_diff'] <= 1e-3 else 'OUTSIDE'} 1e-3)")
    elif not a.no_tl:
        print("  TransformerLens: not installed (pip install transformer-lens)")
    print(f"BENCH locate batched_vs_naive={batched_vs_naive:.1f} "
          f"attribution_vs_exact={attribution_vs_exact:.2f} spearman={rho:.4f} "
          f"knockout_vs_random={ko_ratio:.2f} distinguishable={distinguishable} "
          f"path_attribution_vs_exact={paper['attribution_vs_exact']:.2f} "
          f"attribution_vs_exact_at_1k_heads={big.get('attribution_vs_exact', float('nan')):.2f} "
          f"confirm_vs_attribution_at_1k_heads="
          f"{big.get('confirm_vs_attribution', float('nan')):.2f}")


def paper_costs(job, hm, timed, timings, k_max: int) -> dict:
    """The default locator's parts on the real model: path attribution of every head,
    exact path patching of every head, exact confirmation of 3 x k_max."""
    from headsurgeon.locate.job import attribution_scores, exact_effects, rank_heads

    screen = timed("path attribution (screen)",
                   lambda: attribution_scores(job, path=True, desc="s").mean(0))
    timed("exact path patching (all)",
          lambda: exact_effects(job, hm.all_heads(), path=True, desc="p"))
    short = rank_heads(screen, hm)[:min(3 * k_max, hm.n_total_heads)]
    timed(f"confirm {len(short)} (exact path)",
          lambda: exact_effects(job, short, path=True, desc="c"))
    a, e = timings["path attribution (screen)"], timings["exact path patching (all)"]
    c = timings[f"confirm {len(short)} (exact path)"]
    n = hm.n_total_heads
    return {"attr_per_head_ms": 1e3 * a / (n * len(job.probes)),
            "exact_per_head_ms": 1e3 * e / (n * len(job.probes)),
            "attribution_vs_exact": e / a, "shortlist": len(short),
            "confirm_vs_attribution": c / a}


def transformer_lens_check(rm, tok, hm, p, K, heads, sub, exact):
    """Per-head activation patching through TransformerLens' bridge on its own model copy
    (the bridge wraps modules, so it must not share ours)."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        return None
    from headsurgeon.model.sources import load_model

    model2, _, _ = load_model(rm)
    br = TransformerBridge.boot_transformers(str(rm.path), hf_model=model2, tokenizer=tok)
    diffs, n, t = [], 0, time.process_time()
    with torch.no_grad():
        for i in sub:
            ids_r, ids_c = torch.tensor([p.ref[i]]), torch.tensor([p.cf[i]])
            _, cache = br.run_with_cache(ids_c)
            base = p.metric.take([i]).values(br(ids_r)[:, -1])[0]
            for j, (l, h) in enumerate(heads):
                z_cf = cache[f"blocks.{l}.attn.hook_z"][0, -K:, h]

                def hook(z, hook=None, h=h, z_cf=z_cf):
                    z = z.clone()
                    z[0, -K:, h] = z_cf
                    return z
                logits = br.run_with_hooks(ids_r, fwd_hooks=[(f"blocks.{l}.attn.hook_z", hook)])
                eff = p.metric.take([i]).values(logits[:, -1])[0] - base
                diffs.append(abs(float(eff) - float(exact[i, hm.all_heads().index((l, h))])))
                n += 1
    from importlib.metadata import version

    return {"version": version("transformer-lens"),
            "per_head": (time.process_time() - t) / max(n, 1), "max_diff": max(diffs)}


if __name__ == "__main__":
    main()
