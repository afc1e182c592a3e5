"""What the torch engine's forward hooks do during one forward."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch


def uses_sliding_window(config, length: int) -> bool:
    types = getattr(config, "layer_types", None) or ()
    if any(t != "full_attention" for t in types):
        return True
    sw = getattr(config, "sliding_window", None)
    return bool(sw) and length > sw


@dataclass
class HookState:
    """What the torch hooks do during one forward. Edits and captures act on the last
    ``n`` positions of every row; with ``rows`` set, the forward is *packed*: its one
    sequence holds ``rows`` rows of equal length side by side (see ``_packed``)."""

    n: int
    rows: Optional[int] = None
    masks: Optional[torch.Tensor] = None    # [R, L, H] bool
    src: Optional[torch.Tensor] = None      # [R|1, L, n, H*d]
    freeze: Optional[torch.Tensor] = None   # [R, L] bool
    ref_out: Optional[torch.Tensor] = None  # [R|1, L, n, D]
    capture: bool = False
    spans: Optional[torch.Tensor] = None    # [1, T_keys]
    head_out: dict = field(default_factory=dict)
    attn_out: dict = field(default_factory=dict)
    attn: dict = field(default_factory=dict)

    def view(self, t):
        return t[0].unflatten(0, (self.rows, -1)) if self.rows else t
