"""``path_patching``: the paper's procedure (IOI-style path patching to the final residual
stream). Like activation patching, the head's counterfactual output replaces its
reference output at the last position(s), but every LATER layer's attention output is
held at its reference value there, so the head acts on the logits only through the
residual stream and the MLPs, not by changing what later heads read.

By default (``screen: attribution``) every head is first scored by the linearisation of
path patching (attribution with attention inputs detached) and the top
``locate.confirm_top`` heads (auto: 3 x K) are then path-patched exactly and ranked
first; ``screen: none`` path-patches every head exactly."""
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .activation_patching import ActivationPatching


class PathPatching(ActivationPatching):
    name = "path_patching"
    path = True

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        screen: Literal["none", "attribution"] = Field("attribution", description=(
            "attribution: screen every head by attribution, path-patch the top "
            "locate.confirm_top exactly; none: path-patch every head exactly"))
