"""What a locator plugin receives (:class:`LocateJob`) and returns (:class:`LocatorResult`).

A locator scores every head: score = metric(reference with the head patched) -
metric(reference), mean over probes, every metric oriented higher = more sycophantic, so
the most NEGATIVE score is the head whose counterfactual output removes the most
sycophancy. ``ranking`` lists heads best-first.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Optional

import torch

from headsurgeon.locate.backend import RefRun
from headsurgeon.model.heads import HeadMap
from headsurgeon.locate.probes import ProbeSet


@dataclass
class LocateJob:
    engine: object
    probes: ProbeSet
    hm: HeadMap
    positions: int
    batch_size: int
    reference: RefRun
    confirm_top: int = 0
    progress: bool = True

    def bar(self, desc: str, total: int):
        from headsurgeon.core.progress import progress_bar

        return progress_bar(total=total, desc=desc, unit="probe", leave=False,
                            file=sys.stderr, disable=not self.progress)


@dataclass
class LocatorResult:
    scores: dict[str, torch.Tensor]          # name -> [L, H] (NaN = not measured)
    ranking: list[tuple[int, int]]
    primary: str                             # which entry of ``scores`` ranked the heads
    notes: dict = field(default_factory=dict)


def rank_heads(scores: torch.Tensor, hm: HeadMap,
               first: Optional[list[tuple[int, int]]] = None) -> list[tuple[int, int]]:
    """Heads by ascending score (most sycophancy-reducing first), ties by (layer, head);
    ``first`` (already ordered) goes ahead of the rest."""
    first = list(first or [])
    seen = set(first)
    rest = [h for h in hm.all_heads() if h not in seen]
    rest.sort(key=lambda h: (float(scores[h]), h))
    return first + rest


def one_hot_masks(hm: HeadMap, heads) -> torch.Tensor:
    masks = torch.zeros(len(heads), hm.n_layers, hm.n_heads, dtype=torch.bool)
    for r, (l, h) in enumerate(heads):
        masks[r, l, h] = True
    return masks


def set_masks(hm: HeadMap, sets) -> torch.Tensor:
    masks = torch.zeros(len(sets), hm.n_layers, hm.n_heads, dtype=torch.bool)
    for r, heads in enumerate(sets):
        for l, h in heads:
            masks[r, l, h] = True
    return masks


def path_freeze(hm: HeadMap, heads) -> torch.Tensor:
    """[R, L]: attention outputs of every layer after the patched head's are held fixed."""
    layers = torch.tensor([l for l, _ in heads])
    return torch.arange(hm.n_layers)[None] > layers[:, None]


def exact_effects(job: LocateJob, heads, *, path: bool, desc: str) -> torch.Tensor:
    """[N, len(heads)]: metric(patched) - metric(reference), one head per row."""
    masks = one_hot_masks(job.hm, heads)
    freeze = path_freeze(job.hm, heads) if path else None
    p = job.probes
    out = []
    with job.bar(desc, len(p)) as bar:
        for a, z in p.batches(job.batch_size):
            vals = job.engine.patch(p.ref[a:z], p.metric.take(slice(a, z)), job.positions,
                                    masks, cf_seqs=p.cf[a:z], freeze=freeze, progress=bar)
            out.append(vals - job.reference.metric[a:z, None])
    return torch.cat(out)


def spearman(a, b) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(x):
        x = torch.as_tensor(x, dtype=torch.float64).flatten()
        order = x.argsort()
        r = torch.empty_like(x)
        r[order] = torch.arange(len(x), dtype=torch.float64)
        for v in x.unique():  # average ties
            idx = (x == v).nonzero().flatten()
            if len(idx) > 1:
                r[idx] = r[idx].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def attribution_scores(job: LocateJob, *, path: bool, desc: str) -> torch.Tensor:
    """[N, L, H] attribution estimates of every head's patching effect, per probe."""
    p, parts = job.probes, []
    with job.bar(desc, len(p)) as bar:
        for a, z in p.batches(job.batch_size):
            _, s = job.engine.attribution(p.ref[a:z], p.cf[a:z], p.metric.take(slice(a, z)),
                                          job.positions, path=path)
            parts.append(s)
            bar.update(z - a)
    return torch.cat(parts)


def screened(job: LocateJob, screen: torch.Tensor, *, path: bool, screen_name: str,
             exact_name: str) -> LocatorResult:
    """Rank by the ``screen`` scores [L, H], exact-patch the top ``job.confirm_top`` and
    rank those first by their exact scores. ``notes`` record the screen, how many heads
    were confirmed and whether every head's score is exact."""
    hm = job.hm
    out = {screen_name: screen}
    ranking = rank_heads(screen, hm)
    n = min(job.confirm_top, hm.n_total_heads)
    notes = {"screen": screen_name, "confirmed": n, "exact": n == hm.n_total_heads}
    if not n:
        return LocatorResult(out, ranking, screen_name, notes)
    short = ranking[:n]
    eff = exact_effects(job, short, path=path, desc="confirm")
    exact = torch.full_like(screen, float("nan"))
    for (l, h), v in zip(short, eff.mean(0)):
        exact[l, h] = v
    out[exact_name] = exact
    confirmed = sorted(short, key=lambda h: (float(exact[h]), h))
    return LocatorResult(out, rank_heads(screen, hm, first=confirmed), exact_name, notes)
