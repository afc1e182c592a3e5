"""Does the edit do the job on a model that knows more? `headsurgeon run` on the Qwen recipe
(and SmolLM2's for contrast), knowledge-aware data vs the paper's, then one line per run:

    BENCH science model=... data=... seed=... confidence=... truthfulness=... correction=...
          kept_wrong=... selectivity=... selectivity_lo=... top_letter_share=...
          worst_template=... worst_selectivity=... worst_truthfulness=...
          general_delta=... general_delta_lo=... general_delta_hi=... kl_ratio=... ceiling=...

confidence / truthfulness: right answer prefilled (all eval items); correction, kept_wrong,
selectivity (with the lower end of its 95% family-bootstrap interval): on the base's known
items (eval.known), in the recipe's own templates; top_letter_share: the largest share of
one letter among SPT's final answers, over every rendering; worst_*: the rendering
(eval.templates, which training never used: ``--templates``) where SPT's selectivity is
lowest, and its numbers; general_delta: SPT minus base MC general accuracy (_lo/_hi: its
paired 95% interval over items); kl_ratio:
KL(SPT) / KL(full SFT) (goal <= 0.2); ceiling: the self-knowledge probe's best CV AUC on
known items (heads.json). ``--seeds`` trains once per seed on the same located heads and
ends with the mean +- sd of every number over the seeds. Not in CI (tens of minutes on
two cores). ``--scale`` shrinks every size (e.g. 0.3 for a quick look).

    python bench/science.py                       # Qwen, knowledge-aware, full recipe
    python bench/science.py --models qwen smollm2 --data knowledge paper --scale 0.3
    python bench/science.py --seeds 0 1 2 --templates exam tutor casual
    python bench/science.py --recipe examples/qwen-1.5b-real-parts.yaml --seeds 0 1 2

``--recipe`` runs any recipe as written (``--data recipe``: its own training data and
baselines). Every seed after the first starts from the first run's measurement of the
base (metrics.json's base entry: reused while the eval configuration and the base's files
are unchanged, evaluate/base_reuse.py), so a seed costs its training and one evaluation;
``--base-from RUN_DIR`` starts every run from an earlier run's base. ``--set KEY=YAML``
changes the recipe (``--tag`` names the variant):

    python bench/science.py --recipe examples/qwen-1.5b-real-parts.yaml --tag anchor \
        --heads RUN/heads.json --base-from RUN \
        --set "train.objective={name: sft_anchor}" --set "train.knowledge={by: letter}"
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
RECIPES = {"qwen": ROOT / "recipes" / "qwen-coder-sycophancy.yaml",
           "smollm2": ROOT / "recipes" / "smollm2-sycophancy.yaml"}
KNOWLEDGE = {"by": "either", "unknown": "drop"}


def _scaled(n: int, scale: float, low: int) -> int:
    return max(low, int(round(n * scale)))


def derive(model: str, data: str, scale: float, out: Path, heads_from: Path | None = None,
           baselines: bool = True, seed: int | None = None,
           templates: tuple[str, ...] = (), sets: tuple[str, ...] = (),
           tag: str = "") -> Path:
    """The recipe of one run: knowledge-aware or paper data (or the recipe's own: ``data``
    "recipe"), sizes scaled, the same known-items definition and self-knowledge probe for
    both models. ``model``: a key of RECIPES or a recipe's path; ``heads_from``: the
    heads.json of an earlier run of the same model (no second locate); ``seed``: the
    training seed (default: the recipe's); ``templates``: eval.templates; ``sets``:
    ``KEY=YAML`` overrides (dotted keys, list indices as numbers), applied last; ``tag``:
    a suffix of the run's name."""
    source = RECIPES.get(model) or Path(model)
    doc = yaml.safe_load(source.read_text())
    model = model if model in RECIPES else doc["name"]
    doc["name"] = (f"science-{model}-{data}" + (f"-{tag}" if tag else "")
                   + ("" if seed is None else f"-s{seed}"))
    if seed is not None:
        doc["train"]["seed"] = seed
    if templates:
        doc["eval"]["templates"] = list(templates)
    doc["output_dir"] = str(out / doc["name"])
    tr, ev, loc = doc["train"], doc["eval"], doc["locate"]
    if data != "recipe":
        knowledge = tr.pop("knowledge", None) or dict(KNOWLEDGE)
        if data == "knowledge":  # the recipe's rule (paper: the same recipe without it)
            tr["knowledge"] = knowledge
        ev.setdefault("known", {"by": knowledge["by"],
                                "margin": knowledge.get("margin", 0.0)})
        ev.setdefault("baselines", ["full_sft"])
    if not baselines:
        ev["baselines"] = []
    if heads_from is not None:
        doc["heads"] = {"from": str(heads_from)}
    loc.setdefault("self_knowledge", {"n_items": 96, "by": "either"})
    if scale != 1.0:
        tr["steps"] = _scaled(tr["steps"], scale, 4)
        tr["n_examples"] = _scaled(tr.get("n_examples", 256), scale, 16)
        ev["n_items"] = _scaled(ev["n_items"], scale, 8)
        if "pool" in ev:
            ev["pool"] = _scaled(ev["pool"], scale, ev["n_items"])
        ev["n_general"] = _scaled(ev.get("n_general", 100), scale, 20)
        ev["kl_passages"] = _scaled(ev.get("kl_passages", 16), scale, 4)
        loc["self_knowledge"]["n_items"] = _scaled(loc["self_knowledge"]["n_items"], scale, 20)
        for stage in ("eval", "general"):
            for ref in doc["data"].get(stage, []):
                if "n" in ref:
                    ref["n"] = _scaled(ref["n"], scale, 8)
    for item in sets:
        override(doc, item)
    path = out / f"{doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def override(doc: dict, item: str) -> None:
    """Set ``KEY=YAML`` in ``doc``: ``train.objective={name: sft_anchor}``,
    ``data.train.0.limit=150`` (a number walks into a list)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
    *path, last = key.split(".")
    node = doc
    for part in path:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(last)] = yaml.safe_load(value)
    else:
        node[last] = yaml.safe_load(value)


def worst_rendering(models: dict) -> dict:
    """SPT's rendering with the lowest selectivity (the recipe's own when none other was
    evaluated), its numbers, and the top final-letter share over every rendering."""
    from headsurgeon.report.template_section import RECIPE, rows_in, template_names

    spt = {n: rows_in(models, n)["spt"] for n in [RECIPE] + template_names(models)}
    name = min(spt, key=lambda n: -2.0 if spt[n]["selectivity"] is None
               else spt[n]["selectivity"])
    shares = [(r.get("letters") or {}).get("top_final_share") for r in spt.values()]
    return {"worst_template": name, "worst_selectivity": spt[name]["selectivity"],
            "worst_truthfulness": spt[name]["truth_correct"],
            "top_letter_share": max((x for x in shares if x is not None), default=None)}


def carry_base(first_run: Path, run_dir: Path) -> None:
    """Start ``run_dir``'s metrics.json with the base's entry of ``first_run``'s: eval
    keeps it only while its configuration and the base's files are unchanged."""
    src = first_run / "metrics.json"
    if not src.is_file() or (run_dir / "metrics.json").exists():
        return
    doc = json.loads(src.read_text())
    doc["models"] = {k: v for k, v in doc.get("models", {}).items() if k == "base"}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps(doc))


def bench_line(model: str, data: str, run_dir: Path, seconds: float,
               seed: int | None = None) -> str:
    sys.path.insert(0, str(ROOT))
    from headsurgeon.report.rows import model_row

    models = json.loads((run_dir / "metrics.json").read_text())["models"]
    rows = {name: model_row(res) for name, res in models.items()}
    base, spt, sft = rows["base"], rows["spt"], rows.get("full_sft", {})
    known = models["spt"]["sycophancy"]["selectivity"]
    heads_file = run_dir / "heads.json"
    recipe = yaml.safe_load((run_dir.parent / f"{run_dir.name}.yaml").read_text())
    if isinstance(recipe.get("heads"), dict):
        heads_file = Path(recipe["heads"]["from"])
    heads = json.loads(heads_file.read_text())
    best = (heads.get("self_knowledge", {}).get("best") or {}).get("known") or {}

    def num(v):
        return "nan" if v is None else f"{v:.3f}"

    delta = (None if spt["mc_accuracy"] is None or base["mc_accuracy"] is None
             else spt["mc_accuracy"] - base["mc_accuracy"])
    ratio = (None if not sft.get("kl") or spt["kl"] is None else spt["kl"] / sft["kl"])
    worst = worst_rendering(models)
    paired = (models["spt"].get("general") or {}).get("minus_base") or {}
    ci = spt.get("selectivity_ci") or [None, None]
    parts = {"model": model, "data": data, "seed": "recipe" if seed is None else seed,
             "confidence": num(spt["conf_correct"]),
             "truthfulness": num(spt["truth_correct"]), "correction": num(known["correction"]),
             "kept_wrong": num(known["keeps_wrong"]), "selectivity": num(spt["selectivity"]),
             "selectivity_lo": num(ci[0]),
             "top_letter_share": num(worst["top_letter_share"]),
             "worst_template": worst["worst_template"],
             "worst_selectivity": num(worst["worst_selectivity"]),
             "worst_truthfulness": num(worst["worst_truthfulness"]),
             "base_selectivity": num(base["selectivity"]),
             "sft_selectivity": num(sft.get("selectivity")),
             "general_delta": num(delta),
             "general_delta_lo": num(paired.get("lo")), "general_delta_hi": num(paired.get("hi")),
             "kl_ratio": num(ratio),
             "ceiling": num(best.get("auc")), "n_known": known["n_known"],
             "seconds": f"{seconds:.0f}"}
    return "BENCH science " + " ".join(f"{k}={v}" for k, v in parts.items())


def seeds_line(lines: list[str]) -> str:
    """Mean +- sample sd over the seeds of every number of the runs' BENCH lines."""
    import statistics

    runs = [dict(kv.split("=", 1) for kv in ln.split()[2:]) for ln in lines]
    out = {"model": runs[0]["model"], "data": runs[0]["data"], "seeds": len(runs)}
    for key in ("confidence", "truthfulness", "correction", "kept_wrong", "selectivity",
                "selectivity_lo", "top_letter_share", "worst_selectivity",
                "worst_truthfulness", "general_delta", "general_delta_lo", "kl_ratio"):
        vals = [float(r[key]) for r in runs if r.get(key) not in (None, "nan")]
        if vals:
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            out[key] = f"{statistics.fmean(vals):.3f}+-{sd:.3f}"
    return "BENCH science_seeds " + " ".join(f"{k}={v}" for k, v in out.items())


def main() -> int:
    from headsurgeon.core.held_out_templates import HELD_OUT

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", choices=sorted(RECIPES), default=["qwen"])
    ap.add_argument("--recipe", type=Path, help=(
        "run this recipe instead of --models' (with --data recipe: its training as written)"))
    ap.add_argument("--data", nargs="+", choices=["knowledge", "paper", "recipe"],
                    default=None, help="default: knowledge; with --recipe: recipe")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "science")
    ap.add_argument("--heads", type=Path, help=(
        "a heads.json located with the same recipe (skips the first locate)"))
    ap.add_argument("--baselines-once", action="store_true", help=(
        "train full SFT only with the first --data and seed (and locate once per model)"))
    ap.add_argument("--seeds", nargs="+", type=int, default=[None], help=(
        "training seeds, one run each on the same located heads (default: the recipe's)"))
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=YAML",
                    help="override a recipe key in every run, e.g. train.steps=30")
    ap.add_argument("--tag", default="", help="a suffix of the runs' names")
    ap.add_argument("--base-from", type=Path, help=(
        "an earlier run directory of the same model and eval settings: every run starts "
        "from its measurement of the base"))
    ap.add_argument("--templates", nargs="*", default=list(HELD_OUT), help=(
        "renderings training never used, evaluated beside the recipe's (eval.templates)"))
    args = ap.parse_args()
    if args.recipe:
        args.models = [str(args.recipe.resolve())]
    args.data = args.data or (["recipe"] if args.recipe else ["knowledge"])
    args.out.mkdir(parents=True, exist_ok=True)
    lines, summaries = [], []
    if args.heads and len(args.models) != 1:
        ap.error("--heads belongs to one model: pass one --models")
    for model in args.models:
        first_heads = args.heads.resolve() if args.heads else None
        for i, data in enumerate(args.data):
            per_seed = []
            for j, seed in enumerate(args.seeds):
                reuse = first_heads is not None and (args.baselines_once or args.heads or j)
                first = i == 0 and j == 0
                recipe = derive(model, data, args.scale, args.out,
                                heads_from=first_heads if reuse else None,
                                baselines=first or not args.baselines_once, seed=seed,
                                templates=tuple(args.templates), sets=tuple(args.sets),
                                tag=args.tag)
                run_dir = Path(yaml.safe_load(recipe.read_text())["output_dir"])
                if j or args.base_from:
                    carry_base(args.base_from or first_run, run_dir)
                t0 = time.perf_counter()
                proc = subprocess.run([sys.executable, "-m", "headsurgeon", "run",
                                       str(recipe)], cwd=ROOT)
                if proc.returncode != 0:
                    print(f"{recipe}: headsurgeon run failed ({proc.returncode})",
                          file=sys.stderr)
                    return proc.returncode
                first_heads = first_heads or run_dir / "heads.json"
                first_run = run_dir if j == 0 else first_run
                label = model if model in RECIPES else Path(model).stem
                per_seed.append(bench_line(label, data, run_dir, time.perf_counter() - t0,
                                           seed))
                print(per_seed[-1], flush=True)
            lines += per_seed
            if len(per_seed) > 1:
                summaries.append(seeds_line(per_seed))
                print(summaries[-1], flush=True)
    final = lines + summaries
    print("\n".join(final[:-1]))  # every line again at the end; the last one is last
    print(final[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
