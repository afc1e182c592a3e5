"""``path_patching``: the paper's procedure (IOI-style path patching to the final residual
stream). Like activation patching, the head's counterfactual output replaces its
reference output at the last position(s), but every LATER layer's attention output is
held at its reference value there, so the head acts on the logits only through the
residual stream and the MLPs, not by changing what later heads read."""
from .activation_patching import ActivationPatching


class PathPatching(ActivationPatching):
    name = "path_patching"
    path = True
