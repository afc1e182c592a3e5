"""How sure the knockout curve is, and which K it supports.

Per k the top-k knockout is compared with the random k-sets *probe by probe*: the paired
difference d_i = effect_i(top-k) - mean over the random sets of effect_i(random k-set)
(effect = reference metric - knocked-out metric, so > 0 means the heads carried the
sycophancy). A seeded bootstrap over probes gives its 95% interval; k is *significant*
when the interval at the family-wise level (Bonferroni over the k_max values of k, so a
noise curve is flagged at most 5% of the time, not at one k in twenty) lies above 0.
Behaviour rates (greedy apology, steadfast letter) get
Wilson intervals over probes.

Auto-K never picks a peak of noise: the curve is smoothed (isotonic, non-decreasing:
knocking out more of the ranked heads cannot be expected to remove less) and K is the
smallest significant k whose smoothed value reaches ``effect_share`` of the smoothed
maximum. When no k is significant, K falls back to the paper's share of heads, with a
warning that says so.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

LEVEL = 0.95
N_BOOT = 4000
PAPER_SHARE = 0.03  # the paper keeps 3-4% of the heads (32 of 1,024 on 7B)


def bootstrap_ci(x: torch.Tensor, seed: int, n_boot: int = N_BOOT,
                 level: float = LEVEL) -> list[list[float]]:
    """Percentile interval of the mean of each column of ``x`` [N, C] over probes (one
    set of resamples shared by all columns, seeded)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    n = x.shape[0]
    if n < 2:
        return [[float("nan"), float("nan")] for _ in range(x.shape[1])]
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (n_boot, n), generator=g)
    means = x[idx].mean(1)  # [n_boot, C]
    q = torch.tensor([(1 - level) / 2, 1 - (1 - level) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(means, q, dim=0)
    return [[float(a), float(b)] for a, b in zip(lo, hi)]


def wilson(successes: float, n: int, level: float = LEVEL) -> list[float]:
    """Wilson score interval of a rate."""
    if n <= 0:
        return [float("nan"), float("nan")]
    z = {0.95: 1.959964, 0.9: 1.644854, 0.99: 2.575829}[level]
    p = successes / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [max(0.0, mid - half), min(1.0, mid + half)]


def isotonic(values: list[float]) -> list[float]:
    """The least-squares non-decreasing fit (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, c2 = blocks.pop()
            m1, c1 = blocks.pop()
            blocks.append([(m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2])
    out: list[float] = []
    for m, c in blocks:
        out += [m] * int(c)
    return out


def summarize(top_effect: torch.Tensor, rand_effect: Optional[torch.Tensor], seed: int) -> dict:
    """``top_effect`` [N, k_max] per-probe effects of the top-k knockouts,
    ``rand_effect`` [N, k_max, n_random] (or None): intervals, the paired comparison with
    random sets, the smoothed curve and which k are significant."""
    ci_top = bootstrap_ci(top_effect, seed)
    if rand_effect is not None and rand_effect.shape[-1]:
        diff = top_effect - rand_effect.mean(-1)
        basis = "top-k effect minus the mean random k-set effect, paired by probe"
    else:
        diff = top_effect
        basis = "top-k effect (no random sets to compare with)"
    curve = [float(v) for v in diff.mean(0)]
    ci = bootstrap_ci(diff, seed + 1)
    family = 1 - (1 - LEVEL) / max(1, diff.shape[1])
    strict = bootstrap_ci(diff, seed + 1, level=family)
    return {"level": LEVEL, "method": f"bootstrap over probes ({N_BOOT} resamples, seeded)",
            "effect": ci_top,
            "vs_random": {"basis": basis, "mean": curve, "ci": ci,
                          "significance": f"the {family:.4g} interval (Bonferroni over "
                                          f"{diff.shape[1]} k) lies above 0",
                          "family_ci": strict,
                          "significant": [bool(lo > 0) for lo, _ in strict],
                          "smoothed": isotonic(curve)}}


def default_k(n_total: int, k_max: int) -> int:
    return max(1, min(k_max, round(PAPER_SHARE * n_total)))


def choose_k(ko: dict, share: float, top_k, n_total: int) -> tuple[int, str, Optional[str]]:
    """(K, why, warning or None) from a knockout with ``ci`` (see :func:`summarize`)."""
    vr = ko["ci"]["vs_random"]
    k_max = len(vr["mean"])
    if isinstance(top_k, int):
        return top_k, f"locate.top_k = {top_k}", verdict(ko, top_k)[1]
    smooth, sig = vr["smoothed"], vr["significant"]
    best = max(smooth) if smooth else 0.0
    ok = [k for k in range(1, k_max + 1) if sig[k - 1]]
    if best <= 0 or not ok:
        k = default_k(n_total, k_max)
        warn = (f"the knockout effect is not distinguishable from random head sets at any "
                f"k <= {k_max} (the family-wise interval of {vr['basis']} includes 0 "
                f"everywhere); "
                f"K = {k} is a stated default ({PAPER_SHARE:.0%} of {n_total} heads, the "
                f"paper's share), not a measured optimum")
        return k, f"fallback: {PAPER_SHARE:.0%} of the heads (no significant k)", warn
    reach = [k for k in ok if smooth[k - 1] >= share * best]
    k = reach[0] if reach else max(ok, key=lambda j: (smooth[j - 1], -j))
    why = (f"smallest significant k whose smoothed (isotonic) knockout effect vs random "
           f"({smooth[k - 1]:.4g}) reaches {share:g} of the largest ({best:.4g})")
    return k, why, verdict(ko, k)[1]


def verdict(ko: dict, k: int) -> tuple[Optional[bool], Optional[str]]:
    """(distinguishable from random sets at k, warning or None)."""
    vr = ko["ci"]["vs_random"]
    if k > len(vr["mean"]):
        return None, f"K = {k} is beyond the knockout curve (k_max = {len(vr['mean'])})"
    if not ko.get("random"):
        return None, ("no random head sets were knocked out (locate.knockout_random_sets: "
                      "0): the selected heads were not compared with random heads")
    lo, hi = vr["family_ci"][k - 1]
    if vr["significant"][k - 1]:
        return True, None
    return False, (f"at K = {k} the knockout effect is not distinguishable from random "
                   f"{k}-sets: {vr['basis']} = {vr['mean'][k - 1]:.4g}, family-wise "
                   f"interval [{lo:.4g}, {hi:.4g}] includes 0")


def versus_random(ko: dict, k: int) -> Optional[float]:
    """Effect of the top-k knockout / median effect of the random k-sets."""
    if not ko.get("random") or k > len(ko["effect"]):
        return None
    med = ko["random"]["median_effect"][k - 1]
    return ko["effect"][k - 1] / med if med > 0 else None
