"""The locate figures: a layers x heads score heatmap, the knockout curve with intervals
and the per-layer attention to the challenge (PNG bytes, matplotlib Agg; the caller
writes them atomically)."""
from __future__ import annotations

import io

import torch


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def heatmap_png(scores: torch.Tensor, selected, title: str) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = scores.float().numpy()
    L, H = s.shape
    lim = float(abs(s[~(s != s)]).max()) if (s == s).any() else 1.0
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * H + 2), max(3.0, 0.22 * L + 1.5)))
    im = ax.imshow(s, cmap="RdBu", vmin=-lim or -1, vmax=lim or 1, aspect="auto",
                   interpolation="nearest")
    for l, h in selected:
        ax.add_patch(plt.Rectangle((h - 0.5, l - 0.5), 1, 1, fill=False, lw=1.6, ec="black"))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(H))
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="metric(patched) - metric(reference); < 0: less sycophantic")
    fig.tight_layout()
    return _png(fig)


def _band(ax, xs, ci, color):
    pts = [(x, c) for x, c in zip(xs, ci) if c is not None and None not in c]
    if pts:
        ax.fill_between([x for x, _ in pts], [c[0] for _, c in pts], [c[1] for _, c in pts],
                        color=color, alpha=0.18, lw=0)


def knockout_png(ko: dict, k: int, title: str) -> bytes:
    """Left: metric reduction of the top-k knockout (95% band) vs each random k-set and
    their median. Right: greedy apology rate and steadfast letter rate (Wilson bands)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks, ci = ko["k"], ko.get("ci") or {}
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    a1.plot(ks, ko["effect"], "o-", color="C0", label="top-k heads (95% CI)")
    _band(a1, ks, ci.get("effect") or [], "C0")
    base = ko["baseline"]
    a2.plot([0] + ks, [base["apology_rate"]] + ko["apology_rate"], "o-", color="C0",
            label="apology, top-k")
    _band(a2, [0] + ks, [base.get("apology_ci")] + (ko.get("apology_ci") or []), "C0")
    if base.get("steadfast_rate") is not None:
        a2.plot([0] + ks, [base["steadfast_rate"]] + ko["steadfast_rate"], "^-", color="C2",
                label="steadfast letter, top-k")
        _band(a2, [0] + ks, [base.get("steadfast_ci")] + ko["steadfast_ci"], "C2")
    rnd = ko.get("random")
    if rnd:
        for j in range(len(rnd["effect"][0])):
            a1.plot(ks, [row[j] for row in rnd["effect"]], ".", color="gray", alpha=0.5,
                    label="random k-sets" if j == 0 else None)
        a1.plot(ks, rnd["median_effect"], "s--", color="gray", label="random median")
        a2.plot([0] + ks, [base["apology_rate"]] + rnd["median_apology_rate"], "s--",
                color="gray", label="apology, random median")
        if rnd.get("median_steadfast_rate"):
            a2.plot([0] + ks, [base["steadfast_rate"]] + rnd["median_steadfast_rate"], "v:",
                    color="gray", label="steadfast, random median")
    sig = (ci.get("vs_random") or {}).get("significant") or []
    for x, s in zip(ks, sig):
        if s:
            a1.plot([x], [ko["effect"][x - 1]], "*", color="black", ms=9)
    flag = ko.get("distinguishable_from_random")
    verdict = {True: "distinguishable from random", False: "NOT distinguishable from random",
               None: "no random comparison"}[flag]
    for ax in (a1, a2):
        ax.axvline(k, color="red", lw=0.8, ls=":", label=f"chosen K = {k}")
        ax.set_xlabel(f"heads knocked out ({(ko.get('ablation') or {}).get('name', 'mean')})")
        ax.legend(fontsize=6)
    a1.set_ylabel("metric reduction (* = above random, 95%)")
    a2.set_ylabel("rate over probes")
    a2.set_ylim(-0.05, 1.05)
    fig.suptitle(f"{title}; at K: {verdict}", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def attention_png(att: dict, title: str) -> bytes:
    """Per layer: mean attention to the challenge of the selected heads, the random
    K-sets' heads and all other heads."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = att["per_layer"]
    means = {"others": att.get("other_mean"), "random": att.get("random_sets_mean"),
             "selected": att.get("selected_mean")}
    names = {"others": "other heads", "random": "random K-sets' heads",
             "selected": "selected heads"}
    layers = list(range(len(per["all"])))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.25 * len(layers) + 2), 3.4))
    for key, style, color in (("others", "-", "gray"), ("random", "s", "C1"),
                              ("selected", "o", "C3")):
        pts = [(l, v) for l, v in zip(layers, per[key]) if v is not None]
        if pts:
            mean = "n/a" if means[key] is None else f"{means[key]:.3f}"
            ax.plot([l for l, _ in pts], [v for _, v in pts], style, color=color,
                    label=f"{names[key]} (mean {mean})")
    ax.set_xlabel("layer")
    ax.set_ylabel("attention to the challenge")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _png(fig)
