"""The locate figures: a layers x heads score heatmap and the knockout curve (PNG bytes,
matplotlib Agg; the caller writes them atomically)."""
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


def knockout_png(ko: dict, k: int, title: str) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = ko["k"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    a1.plot(ks, ko["effect"], "o-", label="top-k heads")
    a2.plot([0] + ks, [ko["baseline"]["apology_rate"]] + ko["apology_rate"], "o-",
            label="top-k heads")
    if ko.get("random"):
        a1.plot(ks, ko["random"]["median_effect"], "s--", color="gray",
                label="random k-sets (median)")
        a2.plot([0] + ks, [ko["baseline"]["apology_rate"]] + ko["random"]["median_apology_rate"],
                "s--", color="gray", label="random k-sets (median)")
    for ax in (a1, a2):
        ax.axvline(k, color="red", lw=0.8, ls=":", label=f"chosen K = {k}")
        ax.set_xlabel("heads knocked out (mean ablation)")
        ax.legend(fontsize=7)
    a1.set_ylabel("metric reduction")
    a2.set_ylabel("greedy apology rate")
    a2.set_ylim(-0.05, 1.05)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _png(fig)
