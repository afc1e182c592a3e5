"""What each baseline of the default recipe costs to train on SmolLM2-135M-Instruct.

Trains SPT and every ``eval.baselines`` run of ``recipes/smollm2-sycophancy.yaml`` in
memory for a few steps on the heads given (default: 9 heads spread over the layers, as
locate picks about that many), with the recipe's data, batch size and learning rates,
and reports seconds per optimizer step (median over the steps after the first), each run's
step cost over SPT's (the ratio holds on a busy machine, where absolute seconds do not)
and the trainable parameters. Multiply by ``train.steps`` for a run's cost. Last line:
``BENCH baseline_cost <run>_over_spt=X ... baselines_over_spt=X`` (the sum).

    python bench/baseline_cost.py            # 4 steps each
    python bench/baseline_cost.py --steps 6
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HEADS = [[3, 1], [6, 4], [9, 7], [12, 2], [15, 5], [18, 8], [21, 0], [24, 3], [27, 6]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "smollm2-sycophancy.yaml"))
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    args = ap.parse_args()
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)

    from headsurgeon.core.recipe import load_recipe
    from headsurgeon.model.sources import load_model
    from headsurgeon.pipeline import with_objective
    from headsurgeon.train.run import train_in_memory

    orig = load_recipe(args.recipe)
    recipe = orig.model_copy(update={"heads": [tuple(h) for h in HEADS]})
    recipe._path, recipe._text, recipe._lines = orig._path, orig._text, orig._lines
    model, tok, _ = load_model(recipe.model.source, dtype="float32")
    runs = [("spt", recipe)] + [(name, with_objective(recipe, spec, ref))
                                for name, spec, ref in recipe.eval.baseline_runs()]
    per_step, sizes = {}, {}
    for name, r in runs:
        r = r.with_train(steps=args.steps)
        t0 = time.perf_counter()
        res = train_in_memory(r, model=model, tokenizer=tok, progress=False)
        wall = time.perf_counter() - t0
        steps = [h["seconds"] for h in res.log["history"][1:]] or [wall]
        per_step[name] = statistics.median(steps)
        sizes[name] = res.log["trainable_parameters"]
        res.trainable.detach()
        print(f"{name:<18} lr {r.train.lr:<8g} {sizes[name]:>12,} trainable  "
              f"{per_step[name]:6.2f} s/step  ({wall:.1f} s for {args.steps} steps incl. "
              "setup)", flush=True)
    ratios = {n: v / per_step["spt"] for n, v in per_step.items() if n != "spt"}
    print("BENCH baseline_cost " + " ".join(f"{n}_over_spt={v:.2f}" for n, v in ratios.items())
          + f" baselines_over_spt={sum(ratios.values()):.2f}")


if __name__ == "__main__":
    main()
