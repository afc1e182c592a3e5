"""``activation_patching``: each head's output (its slice of the o_proj INPUT) at the last
``locate.positions`` positions is taken from the counterfactual run and put into the
reference run; everything downstream recomputes. Exact, one batch row per head; with
``screen: attribution`` only the attribution screen's top ``locate.confirm_top`` heads
are patched exactly (and ranked first)."""
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from headsurgeon.locate.job import (LocatorResult, attribution_scores, exact_effects,
                                    rank_heads, screened)


class ActivationPatching:
    name = "activation_patching"
    path = False

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        screen: Literal["none", "attribution"] = Field("none", description=(
            "none: patch every head exactly; attribution: a first-order screen of every "
            "head, its top locate.confirm_top heads patched exactly"))

    def __init__(self, params=None):
        self.params = params if params is not None else self.Params()

    def score(self, job) -> LocatorResult:
        hm = job.hm
        if self.params.screen == "attribution":
            screen = attribution_scores(job, path=self.path, desc="screen").mean(0)
            return screened(job, screen, path=self.path, screen_name="attribution",
                            exact_name=self.name)
        eff = exact_effects(job, hm.all_heads(), path=self.path, desc=self.name)
        scores = eff.mean(0).view(hm.n_layers, hm.n_heads)
        return LocatorResult({self.name: scores}, rank_heads(scores, hm), self.name,
                             {"screen": None, "confirmed": hm.n_total_heads, "exact": True,
                              "per_probe_sd": eff.std(0).view_as(scores)
                              if eff.shape[0] > 1 else None})
