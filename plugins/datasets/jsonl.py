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

    def load(self, params: "JsonlDataset.Params"):
        from headsurgeon.data.datasets import expand_path

        return read_jsonl(expand_path(params.path), limit=params.limit)
