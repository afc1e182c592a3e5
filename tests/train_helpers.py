"""Shared helpers for the train tests: tiny recipes and question files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from headsurgeon.core import plugins
from headsurgeon.core.recipe import load_recipe

def write_questions(path: Path, n: int, prefix: str = "q", offset: int = 0) -> Path:
    """``n`` small 4-option questions (short: the tiny tokenizer is byte-level)."""
    with open(path, "w") as fh:
        for i in range(offset, offset + n):
            opts = [str(i + 1), str(i + 2), str(i), str(i + 3)]
            k = i % 4  # rotate so the gold letter varies
            opts = opts[-k:] + opts[:-k] if k else opts
            fh.write(json.dumps({"id": f"{prefix}{i}", "question": f"What is {i} plus 1?",
                                 "choices": opts, "answer": "ABCD"[k]}) + "\n")
    return path


def recipe_text(model_dir: Path, train_file: Path, *, heads="[[0, 1], [2, 3]]", extra_train="",
                extra_data="", out_dir: Path | None = None, steps: int = 4, lr: float = 0.01) -> str:
    lines = [
        "name: t",
        f"model: {{source: {model_dir}}}",
        "data:",
        f"  train: [{{name: jsonl, path: {train_file}}}]",
    ]
    if extra_data:
        lines.append(extra_data)
    if heads is not None:
        lines.append(f"heads: {heads}")
    lines += ["train:", f"  steps: {steps}", "  batch_size: 4", "  n_examples: 12", f"  lr: {lr}",
              "  weight_decay: 0.1"]
    if extra_train:
        lines += ["  " + x for x in extra_train.strip().splitlines()]
    if out_dir is not None:
        lines.append(f"output_dir: {out_dir}")
    return "\n".join(lines) + "\n"


def available_plugin_fields():
    """Recipe plugin fields whose defaults are registered (other stages' plugins may not be
    installed in a partial checkout; objectives and datasets always are)."""
    from headsurgeon.core import recipe as r

    out = []
    for fpath, kind, is_list in r.PLUGIN_FIELDS:
        if kind in ("objectives", "datasets") or plugins.registry(kind):
            out.append((fpath, kind, is_list))
    return out


def load(path: Path):
    return load_recipe(path, check_plugins=False)


def state_copy(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


def tiny_recipe(tmp_path: Path, model_dir: Path, model_keys: str = "", **kw):
    """A loaded recipe that trains ``model_dir`` on 24 small questions into
    ``tmp_path/run``; ``model_keys`` adds keys to its model mapping (``dtype: float32``)."""
    data = write_questions(tmp_path / "train.jsonl", 24)
    path = tmp_path / "r.yaml"
    text = recipe_text(model_dir, data, out_dir=tmp_path / "run", **kw)
    if model_keys:
        text = text.replace(f"model: {{source: {model_dir}}}",
                            f"model: {{source: {model_dir}, {model_keys}}}")
    path.write_text(text)
    return load(path)


@pytest.fixture(autouse=True)
def one_thread():
    """Import into a test module to run it on one torch thread (tiny models: threads
    only add contention on shared cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
