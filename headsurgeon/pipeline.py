"""``headsurgeon run``: locate -> train -> apply -> baselines -> eval -> report.

The baselines (``eval.baselines``: full SFT, LoRA, random heads per seed, SPT+LoRA) are
trained on the same dialogues with their own learning rates and evaluated on the same
items as SPT, so every row of the report compares like with like.

Each stage writes its output atomically under the run directory and records a key (a
hash of the recipe sections it depends on plus its upstream stage's key) in
``pipeline.json``. A stage whose output exists with the same key is skipped, so a run
interrupted anywhere (Ctrl-C, kill) resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable, Optional

from headsurgeon.core.atomic import atomic_write_json
from headsurgeon.core.recipe import Recipe

STATE_FILE = "pipeline.json"


def _hash(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _section(recipe: Recipe, *names: str) -> list:
    return [recipe.model_dump(mode="json", by_alias=True).get(n) for n in names]


def with_objective(recipe: Recipe, baseline, objective: Optional[dict] = None) -> Recipe:
    """A copy of ``recipe`` trained as the baseline ``baseline`` (a name or an
    ``eval.baselines`` entry): its objective (``objective``, default the entry's first run)
    and its own learning rate (the entry's ``lr``, else ``eval.baseline_lr``, else
    ``train.lr``). Data, steps, batch size and seed stay the SPT run's."""
    from headsurgeon.core.eval_sections import BaselineSpec

    spec = baseline if isinstance(baseline, BaselineSpec) else BaselineSpec(name=baseline)
    ref = objective or spec.runs()[0][1]
    lr = recipe.eval.lr_of(spec)
    return recipe.with_train(objective=ref, **({"lr": lr} if lr else {}))


class Pipeline:
    def __init__(self, recipe: Recipe, *, force: bool = False, log: Optional[Callable] = None):
        from headsurgeon.core.progress import progress_note

        self.recipe, self.force = recipe, force
        # stage lines are progress (--quiet hides them); the summary and verdict always print
        self.log = log or (lambda line: progress_note(line, err=False))
        self.say = log or print
        self.run_dir = recipe.run_dir()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.run_dir / STATE_FILE
        self.state = {}
        if self.state_path.exists():
            try:
                self.state = json.loads(self.state_path.read_text())
            except (OSError, ValueError, RecursionError):  # a damaged state: redo stages
                self.state = {}
        if not isinstance(self.state, dict):
            self.state = {}
        self.timings: dict[str, float] = dict(self.state.get("_timings", {}))

    def stage(self, name: str, key: str, output: Path, fn: Callable[[], object]) -> str:
        if not self.force and self.state.get(name) == key and output.exists():
            self.log(f"[{name}] up to date: {output}")
            return key
        self.log(f"[{name}] running -> {output}")
        t0 = time.perf_counter()
        fn()
        self.timings[name] = round(time.perf_counter() - t0, 1)
        self.state[name] = key
        self.state["_timings"] = self.timings
        # the process's peak memory so far (a high-water mark: it includes earlier stages)
        self.state.setdefault("_peak_rss_mb", {})[name] = _peak_rss_mb()
        atomic_write_json(self.state_path, self.state)
        return key

    def run(self) -> Path:
        from headsurgeon.apply.run import apply_recipe
        from headsurgeon.evaluate.run import evaluate
        from headsurgeon.locate.run import locate
        from headsurgeon.model.heads_file import selected_heads
        from headsurgeon.train.run import train

        r, d = self.recipe, self.run_dir
        if r.sweep.points:  # a bad validation split fails now, not after locate
            from headsurgeon.sweep import selection_items
            selection_items(r)
        base_key = _hash(_section(r, "model", "templates"))
        if r.heads is None:
            loc_key = _hash(base_key, _section(r, "locate"), r.data.model_dump(mode="json"))
            self.stage("locate", loc_key, d / "heads.json",
                       lambda: locate(r, d / "heads.json"))
        else:
            loc_key = _hash(base_key, _section(r, "heads"))
        train_key = _hash(loc_key, _section(r, "train", "data", "sweep"))
        if r.sweep.points:
            from headsurgeon.sweep import run_sweep, ship_chosen

            def sweep_and_ship():
                doc = run_sweep(r, d, selected_heads(r, run_dir=d))
                ship_chosen(d, doc, d / "delta.safetensors")
            self.stage("sweep+train", train_key, d / "delta.safetensors", sweep_and_ship)
        else:
            self.stage("train", train_key, d / "delta.safetensors",
                       lambda: train(r, d / "delta.safetensors"))
        apply_key = _hash(train_key, _section(r, "apply"))
        self.stage("apply", apply_key, d / "model",
                   lambda: apply_recipe(r, delta=d / "delta.safetensors", out=d / "model",
                                     force=True))
        keys = [apply_key]
        for name, spec, ref in r.eval.baseline_runs():
            bdir = d / "baselines" / name
            br = with_objective(r, spec, ref)
            k = self.stage(f"train:{name}", _hash(train_key, name, _section(br, "train")),
                           bdir / "delta.safetensors",
                           lambda br=br, bdir=bdir: train(br, bdir / "delta.safetensors"))
            k = self.stage(f"apply:{name}", _hash(k, "apply"), bdir / "model",
                           lambda br=br, bdir=bdir: apply_recipe(
                               br, delta=bdir / "delta.safetensors", out=bdir / "model",
                               force=True))
            keys.append(k)
        eval_key = _hash(keys, _section(r, "eval", "data"))
        models = [r.model.source, str(d / "model")] + [
            str(d / "baselines" / name / "model") for name, _, _ in r.eval.baseline_runs()]
        self.stage("eval", eval_key, d / "metrics.json", lambda: evaluate(r, models=models))
        from headsurgeon.report.report import baseline_groups, format_summary, write_report
        from headsurgeon.report.screenshot import save_screenshot
        from headsurgeon.sweep import plot_frontier

        def report():
            plot_frontier(d, _read(d / "metrics.json"), _read(d / "sweep.json"),
                          groups=baseline_groups(r))
            write_report(r, d, timings=self.timings)
            save_screenshot(d, log=self.log)  # report.png, when a Chromium is installed
        self.stage("report", _hash(eval_key, "report"), d / "report.html", report)
        from headsurgeon.report.verdict import format_verdict

        self.say(format_summary(d, goals=False))
        self.say(format_verdict(d))  # the last thing `run` prints: goals met, files written
        return d / "report.md"


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None


def run_pipeline(recipe: Recipe, *, force: bool = False, log: Optional[Callable] = None) -> Path:
    from headsurgeon.data.check import check_data

    check_data(recipe, command="run")  # every data source opens before anything is written
    return Pipeline(recipe, force=force, log=log).run()


def _peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux
