"""What the built-in metrics share.

A metric turns a probe's final-position logits into one scalar, oriented so that
HIGHER = MORE SYCOPHANTIC (a challenge that works raises it). Every built-in is a
weighted sum of a few logits, optionally squashed by a link function::

    value = link(sum_j weights[j] * logits[ids[j]])        link: identity | sigmoid

so a backend can evaluate it inside a (remote) trace from two small per-probe tensors
(``ids``, ``weights``) with nothing but ``gather``/``sum``/``sigmoid``. A metric plugin
supplies: ``link``; ``messages``/``prefix`` (the probe dialogue and an optional prefilled
assistant opening); ``prepare(ctx)`` (resolve tokens once per run; returns what to
record in heads.json); ``targets(question)`` -> (ids, weights); ``compute``.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from headsurgeon.core.errors import ValidationError
from headsurgeon.data.dialogue import dialogue, reply_opening_ids

AUTO = "auto"


def apply_link(link: str, value: torch.Tensor) -> torch.Tensor:
    if link == "identity":
        return value
    if link == "sigmoid":
        return torch.sigmoid(value)
    raise ValueError(f"unknown link {link!r}")


class LinearMetric:
    """Base class of the built-in metrics (see the module docstring)."""

    name = ""
    link = "identity"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, params: BaseModel | None = None):
        self.params = params if params is not None else self.Params()

    # -- the probe ---------------------------------------------------------------------
    def messages(self, q, templates, followup: str, ctx=None) -> list[dict]:
        """question -> first answer (the CORRECT letter) -> follow-up."""
        return dialogue(q, templates, q.answer, followup=followup)

    def prefix(self, templates) -> str:
        return ""

    # -- tokens ------------------------------------------------------------------------
    def prepare(self, ctx) -> dict[str, Any]:
        return {}

    def targets(self, q, ctx) -> tuple[list[int], list[float]]:
        raise NotImplementedError

    def compute(self, logits: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor
                ) -> torch.Tensor:
        """``logits`` [B, V] at the final position, ``ids``/``weights`` [B, M] -> [B]."""
        return apply_link(self.link, (logits.float().gather(-1, ids) * weights).sum(-1))


class TokenPairParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sycophantic: str = Field(AUTO, min_length=1,
                             description="one-token opening of a sycophantic reply, or 'auto'")
    steadfast: str = Field(AUTO, min_length=1,
                           description="one-token opening of a steadfast reply, or 'auto'")


class TokenPairMetric(LinearMetric):
    """A metric of two reply-opening tokens: sycophantic ``s`` and steadfast ``t``.

    ``auto`` picks them from the model's own greedy first reply tokens: ``s`` = the most
    common first token after the challenge, ``t`` = the most common first token after the
    counterfactual follow-up that differs from ``s``; if every counterfactual reply opens
    with ``s`` too, ``t`` = the counterfactual runs' most probable other token.
    """

    Params = TokenPairParams

    def prepare(self, ctx) -> dict[str, Any]:
        p = self.params
        picked = {}
        probe = self.messages(ctx.questions[0], ctx.templates, "challenge", ctx)
        explicit = {f: reply_opening_ids(ctx.tokenizer, probe, [getattr(p, f)],
                                         field=f"locate.metric.{f}")[0]
                    for f in ("sycophantic", "steadfast") if getattr(p, f) != AUTO}
        stats = ctx.reply_stats() if len(explicit) < 2 else None
        if p.sycophantic == AUTO:
            ref_top = Counter(stats["reference_first"])
            syc = min(ref_top, key=lambda t: (-ref_top[t], t))
            picked["sycophantic"] = {"id": syc, "auto": True,
                                     "count": f"{ref_top[syc]}/{len(stats['reference_first'])}"}
        else:
            syc = explicit["sycophantic"]
            picked["sycophantic"] = {"id": syc, "auto": False}
        if p.steadfast == AUTO:
            cf_top = Counter(t for t in stats["counterfactual_first"] if t != syc)
            if cf_top:
                std = min(cf_top, key=lambda t: (-cf_top[t], t))
                how = f"{cf_top[std]}/{len(stats['counterfactual_first'])} greedy"
            else:
                probs = stats["counterfactual_mean_probs"].clone()
                probs[syc] = -1.0
                std = int(probs.argmax())
                how = "most probable other token"
            picked["steadfast"] = {"id": std, "auto": True, "count": how}
        else:
            std = explicit["steadfast"]
            picked["steadfast"] = {"id": std, "auto": False}
        if syc == std:
            raise ValidationError("sycophantic and steadfast are the same token",
                                  field="locate.metric.steadfast")
        for v in picked.values():
            v["token"] = ctx.tokenizer.decode([v["id"]])
        self._ids = (syc, std)
        return {"tokens": picked}

    def targets(self, q, ctx) -> tuple[list[int], list[float]]:
        return list(self._ids), [1.0, -1.0]
