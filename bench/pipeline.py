"""Where the time of a `headsurgeon run` goes: one row per stage (seconds, share of the
total, peak resident memory), measured alone, before anything is optimised.

Runs ``headsurgeon run --force`` on a copy of the recipe (default: the default recipe,
about 30 minutes on two cores) whose output goes under ``--out``. Stage seconds are the
ones the run records in its ``pipeline.json``; peak RSS per stage is sampled from
``/proc`` every ``--interval`` seconds over the run's process tree, plus the main
process's high-water mark (``VmHWM``) whenever it rose, so a short spike inside a stage
still counts. ``--reduced`` scales every size down (steps, items, probes, random-head
seeds) for a quick check. Last line:

    BENCH pipeline total_s=X locate_s=X train_s=X baselines_s=X eval_s=X report_s=X apply_s=X

(train_s: SPT's training or sweep; apply_s: SPT's merge; baselines_s: every baseline's
training and merge; total_s: the whole command, start-up and data checks included.)

    python bench/pipeline.py                         # the default recipe, full size
    python bench/pipeline.py --reduced               # a few minutes
    python bench/pipeline.py --recipe recipes/tiny-smoke.yaml --reduced
    python bench/pipeline.py --from-run runs/smollm2-sycophancy   # a finished run's figures

``--from-run`` reads a finished run's ``pipeline.json`` instead of running (e.g. the main
job's on a fresh clone): its stage seconds and the run's own per-stage high-water marks;
total_s is then the sum of the stages (start-up is not recorded there).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGE_LINE = re.compile(r"^\[([^\]\s]+)\] (running|up to date)")
# per-field caps of --reduced: (section, field, cap)
REDUCED = [("train", "steps", 4), ("train", "n_examples", 32), ("eval", "n_items", 8),
           ("eval", "n_general", 10), ("eval", "kl_passages", 4),
           ("locate", "n_probes", 8), ("locate", "knockout_random_sets", 1),
           ("locate", "k_max", 4)]
DATA_CAP = {"locate": 8, "train": 32, "eval": 8, "general": 10}


def derive(recipe: Path, out: Path, reduced: bool) -> Path:
    """A copy of ``recipe`` writing under ``out`` (sizes capped with ``reduced``)."""
    doc = yaml.safe_load(Path(recipe).read_text())
    doc["name"] = f"bench-pipeline-{doc.get('name') or Path(recipe).stem}"
    doc["output_dir"] = str(out / doc["name"])
    if reduced:
        for section, key, cap in REDUCED:
            sec = doc.setdefault(section, {})
            sec[key] = min(sec[key], cap) if isinstance(sec.get(key), int) else cap
        if doc["locate"].get("top_k") not in (None, "auto"):
            doc["locate"]["top_k"] = min(int(doc["locate"]["top_k"]), 4)
        for stage, cap in DATA_CAP.items():
            refs = doc.get("data", {}).get(stage) or []
            for ref in refs if isinstance(refs, list) else [refs]:
                ref["n"] = min(ref.get("n", cap), cap)
        for spec in doc.get("eval", {}).get("baselines", []):
            if isinstance(spec, dict) and spec.get("seeds"):
                spec["seeds"] = spec["seeds"][:1]
    path = out / f"{doc['name']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            kids = []
        todo.extend(int(k) for k in kids)
    return pids


class Watch:
    """Follows a running ``headsurgeon run``: the stage its output last announced, and per
    stage the peak RSS (MiB) of its process tree."""

    def __init__(self, proc: subprocess.Popen, interval: float, echo):
        self.proc, self.interval, self.echo = proc, interval, echo
        self.stage, self.order, self.peak_mb = "start-up", ["start-up"], {"start-up": 0.0}
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._read, daemon=True),
                        threading.Thread(target=self._poll, daemon=True)]
        for t in self.threads:
            t.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.echo(line.rstrip("\n"))
            m = STAGE_LINE.match(line)
            if m and m.group(2) == "running":
                with self.lock:
                    self.stage = m.group(1)
                    if self.stage not in self.peak_mb:
                        self.order.append(self.stage)
                        self.peak_mb[self.stage] = 0.0

    def _poll(self) -> None:
        hwm = 0
        while self.proc.poll() is None:
            rss = sum(_status_kb(p, "VmRSS") for p in _tree(self.proc.pid))
            now_hwm = _status_kb(self.proc.pid, "VmHWM")
            with self.lock:
                kb = max(rss, now_hwm if now_hwm > hwm else 0)
                self.peak_mb[self.stage] = max(self.peak_mb[self.stage], kb / 1024)
            hwm = max(hwm, now_hwm)
            time.sleep(self.interval)

    def join(self) -> None:
        for t in self.threads:
            t.join()


def group(timings: dict) -> dict:
    """The BENCH line's stage groups from ``pipeline.json``'s ``_timings``."""
    def total(pred):
        return sum(v for k, v in timings.items() if pred(k))
    return {"locate_s": total(lambda k: k == "locate"),
            "train_s": total(lambda k: k in ("train", "sweep+train")),
            "baselines_s": total(lambda k: k.startswith(("train:", "apply:"))),
            "eval_s": total(lambda k: k == "eval"),
            "report_s": total(lambda k: k == "report"),
            "apply_s": total(lambda k: k == "apply")}


def summarise(timings: dict, order: list, peak_mb: dict, total_s: float
              ) -> tuple[list[str], str]:
    """Table rows (stage, seconds, share, peak RSS) and the BENCH line."""
    rows = [f"{'stage':<24} {'seconds':>9} {'share':>7} {'peak RSS MiB':>13}"]
    stages = [s for s in order if s in timings]
    outside = total_s - sum(timings[s] for s in stages)
    for name, sec in [(s, timings[s]) for s in stages] + [("(outside stages)", outside)]:
        peak = max(peak_mb.get(name, 0.0), peak_mb.get("start-up", 0.0)
                   if name == "(outside stages)" else 0.0)
        rows.append(f"{name:<24} {sec:9.1f} {sec / total_s:7.1%} {peak:13.0f}")
    parts = {"total_s": total_s, **group({s: timings[s] for s in stages})}
    return rows, "BENCH pipeline " + " ".join(f"{k}={v:.1f}" for k, v in parts.items())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "smollm2-sycophancy.yaml")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-pipeline")
    ap.add_argument("--reduced", action="store_true", help="scale every size down")
    ap.add_argument("--interval", type=float, default=0.2, help="RSS sampling period (s)")
    ap.add_argument("--quiet", action="store_true", help="do not echo the run's output")
    ap.add_argument("--from-run", type=Path, help="summarise this finished run instead")
    args = ap.parse_args(argv)
    if args.from_run:
        state = json.loads((args.from_run / "pipeline.json").read_text())
        timings = state["_timings"]
        peaks = {k: float(v) for k, v in state.get("_peak_rss_mb", {}).items()}
        rows, line = summarise(timings, list(timings), peaks, sum(timings.values()))
        print("\n".join(rows[:-1]))  # no "(outside stages)" row: nothing was outside
        print(line)
        return 0
    recipe = derive(args.recipe, args.out.resolve(), args.reduced)
    run_dir = Path(yaml.safe_load(recipe.read_text())["output_dir"])
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "headsurgeon", "run", str(recipe), "--force"],
                            stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    watch = Watch(proc, args.interval,
                  (lambda line: None) if args.quiet else
                  (lambda line: print(line, file=sys.stderr, flush=True)))
    code = proc.wait()
    total_s = time.perf_counter() - t0
    watch.join()
    if code != 0:
        print(f"{recipe}: headsurgeon run failed ({code})", file=sys.stderr)
        return code
    state = json.loads((run_dir / "pipeline.json").read_text())
    timings = state["_timings"]
    # a stage shorter than the sampling period has no sample: the run's own high-water
    # mark at that stage's end stands in for it
    for name, mb in state.get("_peak_rss_mb", {}).items():
        if not watch.peak_mb.get(name):
            watch.peak_mb[name] = float(mb)
    rows, line = summarise(timings, watch.order, watch.peak_mb, total_s)
    print("\n".join(rows))
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS of the run's largest process: {peak:.0f} MiB")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
