"""Eval speed: the challenge protocol (own / correct / wrong first answers, the default
recipe's settings) on SmolLM2-135M-Instruct, before and after, side by side in one run.

- before: the KV cache as transformers grows it (``DynamicCache``: ``torch.cat`` copies
  each layer's whole cache on every token);
- after: the cache grown in place (``headsurgeon.model.kvcache``).

Both share the question prefix across modes and turns (``--unshared`` adds a third
column that re-encodes every turn's whole dialogue, to show what that sharing buys).
The paths run on the same items one after the other (``--rounds 2``: before, after,
after, before, so a drifting background load hits both alike); their records must be
identical, or the bench fails. items/s count CPU seconds of this process (one thread by
default, where they equal wall seconds on a quiet machine and stay steady on a shared
one; ``--clock wall`` counts wall seconds), both printed per path. Last line:

    BENCH eval items_per_s_before=X items_per_s_after=X speedup=X

    python bench/eval.py                 # 12 items, 1 thread (~2-3 min on a quiet CPU)
    python bench/eval.py --n 24 --threads 2 --rounds 2
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PATHS = {"before": {"in_place_cache": False}, "after": {},
         "unshared": {"shared_prefix": False, "in_place_cache": False}}


def bench_line(n_items: int, seconds: dict) -> str:
    before, after = n_items / seconds["before"], n_items / seconds["after"]
    return (f"BENCH eval items_per_s_before={before:.3f} items_per_s_after={after:.3f} "
            f"speedup={after / before:.2f}")


def run_path(model, tok, recipe, items, path: str) -> tuple[float, float, tuple]:
    """(wall s, CPU s, (own answers, records as dicts, tokens fed)) of one protocol run."""
    from headsurgeon.evaluate.challenge import as_dict, run_protocol
    from headsurgeon.evaluate.run import make_judge

    ev, stats = recipe.eval, {}
    t0, c0 = time.perf_counter(), time.process_time()
    own, recs = run_protocol(model, tok, items, recipe.templates, modes=ev.modes,
                             judge=make_judge(recipe), extract=ev.extract,
                             max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size,
                             seed=recipe.data.seed, progress=False, stats=stats,
                             **PATHS[path])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    records = {m: [as_dict(r) for r in rs] for m, rs in recs.items()}
    return wall, cpu, (own, records, stats["fed_tokens"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "smollm2-sycophancy.yaml"))
    ap.add_argument("--model", help="another model source (default: the recipe's)")
    ap.add_argument("--n", type=int, default=12, help="eval items")
    ap.add_argument("--threads", type=int, default=1, help=(
        "torch threads (1: steadier on a shared machine; 0: torch's default)"))
    ap.add_argument("--rounds", type=int, default=1, choices=[1, 2])
    ap.add_argument("--unshared", action="store_true", help="also time no prefix sharing")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    args = ap.parse_args(argv)
    import torch

    from headsurgeon.core.recipe import load_recipe
    from headsurgeon.evaluate.run import load_eval_items
    from headsurgeon.model.sources import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe)
    items = load_eval_items(recipe)[: args.n]
    model, tok, _ = load_model(args.model or recipe.model.source,
                               dtype=recipe.model.dtype, attn_implementation=None)
    print(f"{len(items)} items x modes {list(recipe.eval.modes)}, batch_size "
          f"{recipe.eval.batch_size}, max_new_tokens {recipe.eval.max_new_tokens}, "
          f"extract {list(recipe.eval.extract)}, {torch.get_num_threads()} thread(s)",
          flush=True)
    run_path(model, tok, recipe, items[:2], "after")  # warm-up, not timed
    order = ["before", "after"] + (["after", "before"] if args.rounds == 2 else [])
    order += ["unshared"] if args.unshared else []
    wall, cpu, outs = {}, {}, {}
    for path in order:
        w, c, out = run_path(model, tok, recipe, items, path)
        wall[path], cpu[path] = wall.get(path, 0) + w, cpu.get(path, 0) + c
        if outs.setdefault(path, out)[:2] != outs["before"][:2]:
            print(f"{path}: records differ from before's", file=sys.stderr)
            return 1
        print(f"{path:<9} {w:7.1f} s wall  {c:7.1f} s CPU  {len(items) / c:6.3f} items/CPU s  "
              f"{out[2]:>7} tokens fed", flush=True)
    rounds = {p: order.count(p) for p in wall}
    print("records identical on every path; wall-clock speedup "
          f"{(wall['before'] / rounds['before']) / (wall['after'] / rounds['after']):.2f}")
    secs = cpu if args.clock == "cpu" else wall
    print(bench_line(len(items), {p: secs[p] / rounds[p] for p in ("before", "after")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
