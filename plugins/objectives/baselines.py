"""Baselines from the paper, run through the same trainer and delta format.

``full_sft``: every parameter trains; the delta holds whole tensors (axis 0, 0..rows).
``random_heads``: SPT on K heads drawn at random (seeded) instead of the located ones;
``layers: located`` draws them from the layers the located heads span, a stricter control
(depth alone cannot explain a difference) that also trains as fast as SPT, since the
frozen prefix below its lowest layer is as deep.
"""
import random
from typing import Literal, Optional

from pydantic import Field

from headsurgeon.train.objectives import CrossEntropyObjective, StrictParams
from headsurgeon.train.trainable import FullTrainable, slice_trainable


class FullSFT(CrossEntropyObjective):
    name = "full_sft"
    needs_heads = False

    def trainable(self, ctx, params):
        t = FullTrainable(ctx.model, ctx.checkpoint_names)
        t.touched_heads = [list(h) for h in ctx.hm.all_heads()]
        return t


def random_heads(hm, k: int, seed: int, exclude=(), layers=None) -> list[tuple[int, int]]:
    """``k`` seeded heads, none of ``exclude``, from ``layers`` (a range; default: all)."""
    exclude = {tuple(h) for h in exclude}
    pool = [h for h in hm.all_heads() if h not in exclude and (layers is None or h[0] in layers)]
    if k > len(pool):
        where = "" if layers is None else f" in layers {layers.start}-{layers.stop - 1}"
        raise ValueError(f"cannot draw {k} random heads from {len(pool)}{where}")
    return sorted(random.Random(seed).sample(pool, k))


def located_span(hm, located, k: int, exclude=()) -> range:
    """The layers from the lowest to the highest located head, widened one layer each way
    at a time until they hold ``k`` heads outside ``exclude``."""
    if not located:
        raise ValueError("random_heads layers: located needs located heads")
    lo, hi = min(h[0] for h in located), max(h[0] for h in located)
    skip = {tuple(h) for h in exclude}

    def room(a, b):
        return sum(1 for h in hm.all_heads() if a <= h[0] <= b and h not in skip)

    while room(lo, hi) < k and (lo > 0 or hi < hm.n_layers - 1):
        lo, hi = max(0, lo - 1), min(hm.n_layers - 1, hi + 1)
    return range(lo, hi + 1)


class RandomHeads(CrossEntropyObjective):
    name = "random_heads"
    needs_heads = True  # K and the excluded heads come from the selection

    class Params(StrictParams):
        k: Optional[int] = Field(None, ge=1, description="default: as many as selected")
        seed: Optional[int] = Field(None, description="default: train.seed")
        exclude_selected: bool = Field(True, description="never draw a located head")
        layers: Literal["all", "located"] = Field("all", description=(
            "draw from every layer (the paper), or from the lowest to the highest layer "
            "holding a located head"))

    def trainable(self, ctx, params):
        k = params.k or len(ctx.heads)
        seed = ctx.seed if params.seed is None else params.seed
        exclude = ctx.heads if params.exclude_selected else ()
        span = located_span(ctx.hm, ctx.heads, k, exclude) if params.layers == "located" else None
        heads = random_heads(ctx.hm, k, seed, exclude, span)
        return slice_trainable(ctx.model, ctx.hm, heads, ctx.kv, seed=ctx.seed)
