"""``{name: jsonl, path: FILE, limit: N, part: report}``: a jsonl file in the shared
question schema, or one of its disjoint parts (data/splits.py)."""
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from headsurgeon.data.questions import read_jsonl


class JsonlDataset:
    name = "jsonl"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        path: str = Field(min_length=1, description="a .jsonl file in the shared question schema")
        limit: Optional[int] = Field(None, ge=1, description="read at most this many questions")
        allow_duplicate_options: bool = Field(False, description=(
            "keep items two of whose options are the same text (some public sets have a "
            "few, e.g. MMLU, CommonsenseQA); by default such an item is an error naming "
            "its line"))
        part: Optional[Literal["choose", "confirm", "report"]] = Field(None, description=(
            "keep one of three disjoint parts, split by question family (seeded hash): "
            "choose settings on one, confirm on another, report the third"))
        part_seed: int = Field(0, ge=0, description="seed of the parts")

    def load(self, params: "JsonlDataset.Params"):
        from headsurgeon.data.datasets import expand_path
        from headsurgeon.data.splits import take_split

        items = read_jsonl(expand_path(params.path),
                           limit=None if params.part else params.limit,
                           allow_duplicate_options=params.allow_duplicate_options)
        if params.part:
            items = take_split(items, params.part, params.part_seed)[:params.limit]
            if not items:
                from headsurgeon.core.errors import ValidationError

                raise ValidationError(f"part {params.part} holds no items (all of the file's "
                                      f"question families fall in the other parts)",
                                      file=params.path, field="part")
        return items
