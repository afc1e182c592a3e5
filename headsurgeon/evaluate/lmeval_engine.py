"""General ability through lm-evaluation-harness (``eval.general_engine: lmeval``).

The multiple-choice items of each ``data.general`` set become a local lm-eval task: a
jsonl file and a task YAML (``dataset_path: json``) in the run directory, ARC's prompt
(``Question: ...\\nAnswer:``, every option scored as a continuation). lm-eval runs on the
model already in memory, offline, and reports ``acc`` (the option with the highest summed
log-likelihood) and ``acc_norm`` (the same divided by the option's length in characters),
each with its standard error. Every model is scored on the same items, so an edit's cost
is the paired difference against the base: the mean of the per-item differences, with
their sample standard deviation over sqrt(n).

lm-eval is the optional ``lmeval`` extra (``pip install 'headsurgeon[lmeval]'``); the
default engine stays headsurgeon's forced-letter accuracy (:mod:`.general`).
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Sequence

import yaml

from headsurgeon.core.atomic import atomic_write_text
from headsurgeon.core.errors import RuntimeFailure
from headsurgeon.data.questions import Question

TASK_PREFIX = "headsurgeon_general"
DOC_TO_TEXT = "Question: {{question}}\nAnswer:"
METRICS = ("acc", "acc_norm")


def task_yaml(task: str, data_file: Path) -> str:
    """The lm-eval task config of one set (a standalone file: ``lm_eval --include_path``
    runs it too)."""
    config = {
        "task": task,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": DOC_TO_TEXT,
        "doc_to_choice": "choices",
        "doc_to_target": "gold",
        "target_delimiter": " ",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                        for m in METRICS],
        "metadata": {"version": 1.0},
    }
    return ("# written by headsurgeon (eval.general_engine: lmeval)\n"
            + yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


def write_tasks(sets: dict[str, list[Question]], task_dir: Path) -> dict[str, str]:
    """One task per set with multiple-choice items: set name -> task name. Files are only
    rewritten when their content changes."""
    task_dir = Path(task_dir).resolve()
    tasks: dict[str, str] = {}
    for k, (name, items) in enumerate(sets.items()):
        mc = [q for q in items if q.is_mc]
        if not mc:
            continue
        task = f"{TASK_PREFIX}_{k}"
        data_file = task_dir / f"{task}.jsonl"
        rows = "".join(json.dumps({"id": q.id, "question": q.question,
                                   "choices": list(q.choices), "gold": q.answer_index},
                                  ensure_ascii=False) + "\n" for q in mc)
        for path, text in ((data_file, rows), (task_dir / f"{task}.yaml",
                                               task_yaml(task, data_file))):
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                atomic_write_text(path, text)
        tasks[name] = task
    return tasks


@contextmanager
def _offline_and_unseeded():
    """Offline for the run; lm-eval reseeds the global RNGs: give them back afterwards.
    Its log lines (warnings about an in-memory model) are kept down to errors."""
    import numpy as np
    import torch

    env = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    log = logging.getLogger("lm_eval")
    level = log.level
    os.environ.update({k: "1" for k in env})
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])


def run_tasks(model, tokenizer, task_dir: Path, tasks: Sequence[str], *,
              batch_size: int) -> dict:
    """lm-eval's ``simple_evaluate`` on the in-memory model: its whole result dict (with
    the per-item samples)."""
    import copy

    with _offline_and_unseeded():
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        manager = TaskManager(include_path=str(Path(task_dir).resolve()),
                              include_defaults=False)
        # lm-eval may give the tokenizer a pad token: it works on its own copy
        lm = HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer),
                  batch_size=batch_size)
        return lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager,
                                       num_fewshot=0, log_samples=True)


def mean_stderr(xs: Sequence[float]) -> Optional[float]:
    """lm-eval's standard error of a mean: sample standard deviation / sqrt(n)."""
    n = len(xs)
    if n < 2:
        return None
    mu = sum(xs) / n
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (n - 1)) / math.sqrt(n)


def set_result(raw: dict, task: str, items: Sequence[Question]) -> dict:
    """One set's figures as lm-eval reported them, plus every item's scores and the
    option each reading chose."""
    res = raw["results"][task]
    by_doc = {int(s["doc_id"]): s for s in raw["samples"][task]}  # doc_id: the jsonl row
    mc = [q for q in items if q.is_mc]
    per_item: dict = {"ids": [q.id for q in mc], "acc": [], "acc_norm": [], "choice": [],
                      "choice_norm": []}
    for k, q in enumerate(mc):
        s = by_doc.get(k)
        if s is None or str(s["doc"]["id"]) != q.id:
            raise RuntimeFailure(f"lm-eval returned no result for item {q.id!r} of {task}")
        lls = [float(r[0]) for r in s["filtered_resps"]]
        norm = [ll / len(c) for ll, c in zip(lls, q.choices)]
        per_item["acc"].append(int(s["acc"]))
        per_item["acc_norm"].append(int(s["acc_norm"]))
        per_item["choice"].append(q.letters[max(range(len(lls)), key=lls.__getitem__)])
        per_item["choice_norm"].append(q.letters[max(range(len(norm)), key=norm.__getitem__)])
    out = {"n": int(raw["n-samples"][task]["effective"])}
    for m in METRICS:
        out[m] = res[f"{m},none"]
        se = res.get(f"{m}_stderr,none")
        out[f"{m}_stderr"] = se if isinstance(se, (int, float)) else None
    out["n_open_skipped"] = len(items) - len(mc)
    out["per_item"] = per_item
    return out


def _pooled(sets: dict) -> dict:
    """All sets' items together: lm-eval's figures for one set, otherwise the mean and
    standard error of the pooled per-item scores (the same formulas)."""
    if len(sets) == 1:
        only = next(iter(sets.values()))
        return {k: only[k] for k in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n")}
    out: dict = {}
    for m in METRICS:
        xs = [x for s in sets.values() for x in s["per_item"][m]]
        out[m] = sum(xs) / len(xs) if xs else None
        out[f"{m}_stderr"] = mean_stderr(xs)
    out["n"] = sum(s["n"] for s in sets.values())
    return out


def general_lmeval(model, tokenizer, sets: dict[str, list[Question]], task_dir: Path, *,
                   batch_size: int) -> Optional[dict]:
    """lm-eval's acc / acc_norm of one model on every set (None: no multiple-choice item):
    the pooled figures, then ``sets`` (per set, with per-item scores)."""
    from importlib.metadata import version

    tasks = write_tasks(sets, task_dir)
    if not tasks:
        return None
    raw = run_tasks(model, tokenizer, task_dir, list(tasks.values()), batch_size=batch_size)
    per_set = {name: set_result(raw, task, sets[name]) for name, task in tasks.items()}
    return {**_pooled(per_set), "engine": f"lm-eval {version('lm_eval')}",
            "prompt": DOC_TO_TEXT, "num_fewshot": 0, "sets": per_set}


def paired_difference(base_items: dict, edited_items: dict) -> dict:
    """Edited minus base on the items both scored: per metric the mean difference, its
    standard error (sample sd of the differences / sqrt(n)) and n."""
    base_at = {i: k for k, i in enumerate(base_items["ids"])}
    pairs = [(base_at[i], k) for k, i in enumerate(edited_items["ids"]) if i in base_at]
    out: dict = {}
    for m in METRICS:
        diffs = [edited_items[m][k] - base_items[m][b] for b, k in pairs]
        out[m] = {"diff": sum(diffs) / len(diffs) if diffs else None,
                  "stderr": mean_stderr(diffs), "n": len(diffs)}
    return out


def add_paired(edited: Optional[dict], base: Optional[dict]) -> None:
    """Write ``vs_base`` (the paired difference) into an edited model's ``general_lmeval``,
    per set and over all sets' items together."""
    if not edited or not base:
        return
    common = [n for n in edited["sets"] if n in base["sets"]]
    for name in common:
        edited["sets"][name]["vs_base"] = paired_difference(base["sets"][name]["per_item"],
                                                            edited["sets"][name]["per_item"])
    if common:  # every set's items together, told apart by their set
        joined = [{"ids": [(n, i) for n in common for i in s["sets"][n]["per_item"]["ids"]],
                   **{m: [x for n in common for x in s["sets"][n]["per_item"][m]]
                      for m in METRICS}} for s in (base, edited)]
        edited["vs_base"] = paired_difference(*joined)


def add_paired_to_models(results: dict, base_source: str) -> None:
    """``vs_base`` for every model of ``metrics.json`` but the base (the entry whose source
    is the recipe's model), when both were scored by lm-eval."""
    base = next((r for r in results.values() if r.get("source") == base_source), None)
    if base is None:
        return
    for res in results.values():
        if res is not base:
            add_paired(res.get("general_lmeval"), base.get("general_lmeval"))
