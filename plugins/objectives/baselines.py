"""Baselines from the paper, run through the same trainer and delta format.

``full_sft``: every parameter trains; the delta holds whole tensors (axis 0, 0..rows).
``random_heads``: SPT on K heads drawn at random (seeded) instead of the located ones.
"""
import random
from typing import Optional

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


def random_heads(hm, k: int, seed: int, exclude=()) -> list[tuple[int, int]]:
    exclude = {tuple(h) for h in exclude}
    pool = [h for h in hm.all_heads() if h not in exclude]
    if k > len(pool):
        raise ValueError(f"cannot draw {k} random heads from {len(pool)}")
    return sorted(random.Random(seed).sample(pool, k))


class RandomHeads(CrossEntropyObjective):
    name = "random_heads"
    needs_heads = True  # K and the excluded heads come from the selection

    class Params(StrictParams):
        k: Optional[int] = Field(None, ge=1, description="default: as many as selected")
        seed: Optional[int] = Field(None, description="default: train.seed")
        exclude_selected: bool = Field(True, description="never draw a located head")

    def trainable(self, ctx, params):
        k = params.k or len(ctx.heads)
        seed = ctx.seed if params.seed is None else params.seed
        heads = random_heads(ctx.hm, k, seed, ctx.heads if params.exclude_selected else ())
        return slice_trainable(ctx.model, ctx.hm, heads, ctx.kv, seed=ctx.seed)
