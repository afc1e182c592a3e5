"""95% intervals: a paired bootstrap that resamples question families as wholes.

Items of one family (a built-in set's template family, an MMLU subject; an item without
one is its own: data/splits.py) share their wording and difficulty, so they are not
independent draws; resampling items one by one would make the intervals too narrow. Every rate here is a
ratio of sums, so a family is kept as its per-metric ``(sum, count)`` pair
(:func:`cluster_sums`), and one bootstrap draw is a multinomial count per family:
``sum(count x sum) / sum(count x n)``.

"Paired": the draws depend only on the seed and the sorted family names, so every metric
of a model and every model evaluated on the same items is resampled with the SAME draws;
selectivity (keeps right - keeps wrong, the same items) and a model's difference to the
base (:func:`paired_difference`) are read draw by draw. The sums are written to
metrics.json (``intervals.clusters``), so the difference can be taken after the fact.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from headsurgeon.data.splits import family_of  # noqa: F401 - re-exported: one definition

N_BOOT = 2000
LEVEL = 0.95


def cluster_sums(values: Sequence[tuple[str, str, float]]) -> dict[str, dict[str, list]]:
    """``(family, metric, value)`` triples -> ``{family: {metric: [sum, count]}}``."""
    out: dict[str, dict[str, list]] = {}
    for fam, metric, v in values:
        cell = out.setdefault(fam, {}).setdefault(metric, [0.0, 0])
        cell[0] += float(v)
        cell[1] += 1
    return out


def draws(families: Sequence[str], seed: int, n_boot: int = N_BOOT) -> np.ndarray:
    """(n_boot, n_families) multinomial counts: each row resamples the families (sorted by
    name) with replacement, as many as there are. The same for every metric and model."""
    k = len(families)
    if k == 0:
        return np.zeros((n_boot, 0), dtype=np.int64)
    rng = np.random.default_rng(seed)
    return rng.multinomial(k, [1.0 / k] * k, size=n_boot)


def _ratio(counts: np.ndarray, clusters: dict, fams: list[str], metric: str):
    """Per draw: the pooled rate of ``metric`` (NaN where the draw has no item of it)."""
    cells = [clusters[f].get(metric, (0.0, 0)) for f in fams]
    sums = np.array([c[0] for c in cells], dtype=np.float64)
    ns = np.array([c[1] for c in cells], dtype=np.float64)
    num, den = counts @ sums, counts @ ns
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


Stat = Callable[[Callable[[str], np.ndarray]], np.ndarray]


def rate(metric: str) -> Stat:
    return lambda r: r(metric)


def difference(a: str, b: str) -> Stat:
    """``a - b`` draw by draw (e.g. keeps right - keeps wrong = selectivity)."""
    return lambda r: r(a) - r(b)


def _summary(point: Optional[float], vals: np.ndarray, n_fam: int, n_boot: int,
             seed: int) -> dict:
    vals = vals[~np.isnan(vals)]
    lo = hi = None
    if point is not None and len(vals):
        alpha = (1 - LEVEL) / 2
        lo, hi = (round(float(x), 6) for x in np.quantile(vals, [alpha, 1 - alpha]))
    return {"point": None if point is None else round(point, 6), "lo": lo, "hi": hi,
            "level": LEVEL, "n_families": n_fam, "n_boot": n_boot,
            "n_valid": int(len(vals)), "seed": seed}


def interval(clusters: dict, stat: Stat, point: Optional[float], *, seed: int,
             n_boot: int = N_BOOT, return_draws: bool = False):
    """Percentile interval of ``stat`` under the family bootstrap of ``clusters``
    (``{family: {metric: [sum, count]}}``); ``point`` is the full-sample value it is
    reported beside. ``return_draws``: also the per-draw values (for checks)."""
    fams = sorted(clusters)
    counts = draws(fams, seed, n_boot)
    vals = stat(lambda m: _ratio(counts, clusters, fams, m))
    out = _summary(point, vals, len(fams), n_boot, seed)
    return (out, vals) if return_draws else out


def point_of(clusters: dict, stat: Stat) -> Optional[float]:
    """The full-sample value of ``stat`` (every family once)."""
    fams = sorted(clusters)
    one = np.ones((1, len(fams)), dtype=np.int64)
    v = float(stat(lambda m: _ratio(one, clusters, fams, m))[0]) if fams else float("nan")
    return None if np.isnan(v) else v


def paired_difference(mine: dict, base: dict, stat: Stat, *, seed: int,
                      n_boot: int = N_BOOT) -> dict:
    """Interval of ``stat(model) - stat(base)`` on the same draws (both evaluated on the
    same items, so the same families); ``point`` is the full-sample difference."""
    fams = sorted(set(mine) | set(base))
    counts = draws(fams, seed, n_boot)
    full = {f: mine.get(f, {}) for f in fams}
    other = {f: base.get(f, {}) for f in fams}
    vals = (stat(lambda m: _ratio(counts, full, fams, m))
            - stat(lambda m: _ratio(counts, other, fams, m)))
    a, b = point_of(full, stat), point_of(other, stat)
    point = None if a is None or b is None else a - b
    return _summary(point, vals, len(fams), n_boot, seed)


__all__ = ["N_BOOT", "cluster_sums", "difference", "draws", "family_of", "interval",
           "paired_difference", "point_of", "rate"]
