"""``{name: regex}``: the documented patterns of :mod:`headsurgeon.evaluate.admission` (default)."""
from typing import Sequence

from pydantic import BaseModel, ConfigDict

from headsurgeon.evaluate.admission import admits_mistake


class RegexJudge:
    name = "regex"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, params: "RegexJudge.Params | None" = None):
        self.params = params or self.Params()

    def judge(self, replies: Sequence[str]) -> list[bool]:
        return [admits_mistake(r) for r in replies]
