"""``{name: builtin, set: mixed, split: all, n: N, seed: 0}``: headsurgeon's own question
sets, generated deterministically (no files needed). See ``headsurgeon.data.builtin_sets``:
splits are disjoint by construction (a hash of the question text: train 50 %, locate 20 %,
eval 30 %); ``set: neutral_text`` gives plain passages (question = passage, choices [],
answer "-")."""
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from headsurgeon.data.builtin_sets import ALL_SETS, SPLITS, builtin_questions

SetName = Literal[ALL_SETS]  # type: ignore[valid-type]
SplitName = Literal[SPLITS + ("all",)]  # type: ignore[valid-type]


class BuiltinDataset:
    name = "builtin"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        set: SetName = Field("mixed", description="which generated question set")
        split: SplitName = Field("all", description=(
            "disjoint by construction: train 50 %, locate 20 %, eval 30 %"))
        n: Optional[int] = Field(None, ge=1, description="questions (default: the whole split)")
        seed: int = Field(0, description="generation seed")

    def load(self, params: "BuiltinDataset.Params"):
        return builtin_questions(params.set, params.split, params.n, params.seed)


DATASETS = [BuiltinDataset]
