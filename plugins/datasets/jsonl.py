"""``{name: jsonl, path: FILE, limit: N}``: a jsonl file in the shared question schema."""
from typing import Optional

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

    def load(self, params: "JsonlDataset.Params"):
        from headsurgeon.data.datasets import expand_path

        return read_jsonl(expand_path(params.path), limit=params.limit,
                          allow_duplicate_options=params.allow_duplicate_options)
