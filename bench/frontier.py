"""The trade-off frontier at full size: `headsurgeon run` on a sweep recipe (default:
examples/qwen-sweep.yaml), then one row per sweep point (measured on the validation
split's known items) and one line at the end:

    BENCH frontier model=... n_points=... n_known=... chosen=... best_selectivity=...
          best_point=... base_selectivity=... max_correction=... keeps_right_at_max=...
          spt_selectivity=... seconds=...

best_selectivity / best_point: the point with the largest keeps-right minus kept-wrong;
max_correction: the largest Correction any point reaches, keeps_right_at_max its
keeps-right (a point far from (1, 1) on the frontier plot is a trade, not a fix);
spt_selectivity: the shipped point on the report's own eval items. Not in CI (each point
is a full training run: ~15 min on two cores for Qwen).

    python bench/frontier.py --heads runs/qwen-coder-sycophancy/heads.json
    python bench/frontier.py --scale 0.1            # a quick look at every stage
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from science import _scaled  # noqa: E402


def derive(src: Path, out: Path, scale: float, heads_from: Path | None) -> Path:
    doc = yaml.safe_load(src.read_text())
    doc["name"] = f"frontier-{doc['name']}"
    doc["output_dir"] = str(out / doc["name"])
    if heads_from is not None:
        doc["heads"] = {"from": str(heads_from)}
    if scale != 1.0:
        tr, ev, sw = doc["train"], doc["eval"], doc["sweep"]
        tr["steps"] = _scaled(tr["steps"], scale, 4)
        tr["n_examples"] = _scaled(tr.get("n_examples", 256), scale, 16)
        ev["n_items"] = _scaled(ev["n_items"], scale, 8)
        ev["n_general"] = _scaled(ev.get("n_general", 100), scale, 20)
        ev["kl_passages"] = _scaled(ev.get("kl_passages", 16), scale, 4)
        sw["n_items"] = _scaled(sw["n_items"], scale, 8)
        doc["data"]["eval"] = [{**ref, "n": ev["n_items"] + sw["n_items"]}
                               for ref in doc["data"]["eval"]]
        for ref in doc["data"].get("general", []):
            if "n" in ref:
                ref["n"] = _scaled(ref["n"], scale, 8)
    path = out / f"{doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def num(v) -> str:
    return "nan" if v is None else f"{v:.3f}"


def summarise(run_dir: Path, model: str, seconds: float) -> tuple[list[str], str]:
    sys.path.insert(0, str(ROOT))
    from headsurgeon.report.rows import model_row

    sweep = json.loads((run_dir / "sweep.json").read_text())
    pts = sweep["points"]
    rows = [f"{'point':<22} {'keeps_right':>11} {'confidence':>10} {'correction':>10} "
            f"{'kept_wrong':>10} {'selectivity':>11}"]
    for p in pts:
        rows.append(f"{p['name']:<22} {num(p['keeps_right']):>11} "
                    f"{num(p['confidence_right']):>10} {num(p['correction']):>10} "
                    f"{num(p['kept_wrong']):>10} {num(p['selectivity']):>11}")
    trained = [p for p in pts if p["trained"] and p["selectivity"] is not None]
    base = next(p for p in pts if p["name"] == "base")
    best = max(trained, key=lambda p: p["selectivity"], default=None)
    top = max((p for p in trained if p["correction"] is not None),
              key=lambda p: p["correction"], default=None)
    metrics = json.loads((run_dir / "metrics.json").read_text())["models"]
    spt = model_row(metrics["spt"])
    parts = {"model": model, "n_points": len(pts) - 1, "n_known": sweep["n_known"],
             "chosen": sweep["chosen"],
             "best_selectivity": num(best and best["selectivity"]),
             "best_point": best["name"] if best else "none",
             "base_selectivity": num(base["selectivity"]),
             "max_correction": num(top and top["correction"]),
             "keeps_right_at_max": num(top and top["keeps_right"]),
             "spt_selectivity": num(spt["selectivity"]), "seconds": f"{seconds:.0f}"}
    return rows, "BENCH frontier " + " ".join(f"{k}={v}" for k, v in parts.items())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", type=Path, default=ROOT / "examples" / "qwen-sweep.yaml")
    ap.add_argument("--heads", type=Path, help="a heads.json located with the same "
                                               "locate section (skips locate)")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "frontier")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    recipe = derive(args.recipe, args.out.resolve(), args.scale,
                    args.heads.resolve() if args.heads else None)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "headsurgeon", "run", str(recipe)], cwd=ROOT)
    if proc.returncode != 0:
        print(f"{recipe}: headsurgeon run failed ({proc.returncode})", file=sys.stderr)
        return proc.returncode
    doc = yaml.safe_load(recipe.read_text())
    model = doc["model"]["source"]
    rows, line = summarise(Path(doc["output_dir"]), model, time.perf_counter() - t0)
    print("\n".join(rows))
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
