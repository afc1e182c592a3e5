"""Built-in dataset loaders: jsonl files (the shared schema), Hugging Face datasets,
SycophancyEval's are_you_sure.jsonl, and headsurgeon's own generated question sets."""
from headsurgeon import hookimpl

from .jsonl import JsonlDataset


@hookimpl
def register_datasets(register):
    register(JsonlDataset)
    for extra in ("hf_datasets", "sycophancy_eval", "builtin"):
        try:
            module = __import__(f"{__name__}.{extra}", fromlist=["DATASETS"])
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{extra}":
                raise
            continue
        for cls in module.DATASETS:
            register(cls)
