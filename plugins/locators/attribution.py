"""``attribution``: first-order estimate of patching, every head in one forward + backward
per probe batch: score = sum over the last K positions of (counterfactual - reference
head output) . d metric / d head output. ``approximates: path_patching`` detaches the
attention inputs so gradients flow through residual + MLP paths only (the linearisation
of path patching). With ``locate.confirm_top`` > 0 the top heads are re-scored by exact
patching and ranked first by their exact scores."""
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from headsurgeon.locate.job import LocatorResult, exact_effects, rank_heads


class Attribution:
    name = "attribution"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        approximates: Literal["activation_patching", "path_patching"] = Field(
            "activation_patching", description="the exact locator the scores estimate")

    def __init__(self, params=None):
        self.params = params if params is not None else self.Params()

    def score(self, job) -> LocatorResult:
        path = self.params.approximates == "path_patching"
        p, hm = job.probes, job.hm
        parts = []
        with job.bar(self.name, len(p)) as bar:
            for a, z in p.batches(job.batch_size):
                _, s = job.engine.attribution(p.ref[a:z], p.cf[a:z], p.metric.take(slice(a, z)),
                                              job.positions, path=path)
                parts.append(s)
                bar.update(z - a)
        per_probe = torch.cat(parts)
        scores = per_probe.mean(0)
        out = {self.name: scores}
        ranking = rank_heads(scores, hm)
        notes = {"approximates": self.params.approximates}
        if job.confirm_top:
            short = ranking[:min(job.confirm_top, hm.n_total_heads)]
            eff = exact_effects(job, short, path=path, desc="confirm")
            exact = torch.full_like(scores, float("nan"))
            for (l, h), v in zip(short, eff.mean(0)):
                exact[l, h] = v
            out[self.params.approximates] = exact
            confirmed = sorted(short, key=lambda h: (float(exact[h]), h))
            ranking = rank_heads(scores, hm, first=confirmed)
            notes["confirmed"] = len(short)
        return LocatorResult(out, ranking, self.params.approximates if job.confirm_top
                             else self.name, notes)
