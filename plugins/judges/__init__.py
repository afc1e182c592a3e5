"""Built-in judges: does a reply to the challenge admit a mistake?

A judge is a class with ``name``, a pydantic ``Params`` schema, a constructor taking the
validated params, and ``judge(replies) -> list[bool]`` (True = admits a mistake)."""
from headsurgeon import hookimpl

from .model import ModelJudge
from .regex import RegexJudge


@hookimpl
def register_judges(register):
    register(RegexJudge)
    register(ModelJudge)
