"""``attribution``: first-order estimate of patching, every head in one forward + backward
per probe batch: score = sum over the last K positions of (counterfactual - reference
head output) . d metric / d head output. ``approximates: path_patching`` detaches the
attention inputs so gradients flow through residual + MLP paths only (the linearisation
of path patching). With ``locate.confirm_top`` > 0 (auto: 3 x K) the top heads are
re-scored by the exact locator and ranked first by their exact scores."""
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from headsurgeon.locate.job import LocatorResult, attribution_scores, screened


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
        scores = attribution_scores(job, path=path, desc=self.name).mean(0)
        res = screened(job, scores, path=path, screen_name=self.name,
                       exact_name=self.params.approximates)
        res.notes["approximates"] = self.params.approximates
        return res
