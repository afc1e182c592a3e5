"""``activation_patching``: each head's output (its slice of the o_proj INPUT) at the last
``locate.positions`` positions is taken from the counterfactual run and put into the
reference run; everything downstream recomputes. Exact, one batch row per head."""
from pydantic import BaseModel, ConfigDict

from headsurgeon.locate.job import LocatorResult, exact_effects, rank_heads


class ActivationPatching:
    name = "activation_patching"
    path = False

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, params=None):
        self.params = params if params is not None else self.Params()

    def score(self, job) -> LocatorResult:
        heads = job.hm.all_heads()
        eff = exact_effects(job, heads, path=self.path, desc=self.name)
        scores = eff.mean(0).view(job.hm.n_layers, job.hm.n_heads)
        return LocatorResult({self.name: scores}, rank_heads(scores, job.hm), self.name,
                             {"per_probe_sd": eff.std(0).view_as(scores)
                              if eff.shape[0] > 1 else None})
