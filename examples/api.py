"""The Python API, one stage at a time: validate -> locate -> train -> apply -> evaluate.

    python examples/api.py examples/arc-easy-shared-data.yaml
    python examples/api.py recipes/tiny-smoke.yaml --until train

Each stage reads what the previous one wrote under the run directory (``heads.json`` ->
``delta.safetensors`` -> ``model/`` -> ``metrics.json``), exactly as the CLI commands do
(``headsurgeon run`` adds the sweep, the baselines and the report). Errors are the CLI's
one-line messages; the exit code is the CLI's too (2: bad input, 1: the work failed).
"""
from __future__ import annotations

import argparse
import json
import sys

from headsurgeon import api
from headsurgeon.core.errors import HeadsurgeonError
from headsurgeon.core.recipe import load_recipe

STAGES = ("validate", "locate", "train", "apply", "evaluate")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", help="a recipe YAML file")
    ap.add_argument("--until", choices=STAGES, default="evaluate", help="last stage to run")
    args = ap.parse_args(argv)
    try:
        recipe = load_recipe(args.recipe)  # parsed once; every stage accepts it (or a path)
        summary = api.validate(recipe)  # schema, plugins, model files, heads: nothing runs
        print(f"{args.recipe}: ok, {summary['model_geometry']}, run dir {summary['run_dir']}")
        if args.until == "validate":
            return 0

        heads_json = api.locate(recipe)  # rank every head, choose K -> heads.json
        selected = json.loads(heads_json.read_text())["selected"]
        print(f"locate: {len(selected)} heads {selected} -> {heads_json}")
        if args.until == "locate":
            return 0

        delta = api.train(recipe)  # tune only those heads' slices -> delta.safetensors
        print(f"train: {delta}")
        if args.until == "train":
            return 0

        model_dir = api.apply(recipe)  # base + delta -> a plain safetensors checkpoint
        print(f"apply: {model_dir}")
        if args.until == "apply":
            return 0

        metrics = api.evaluate(recipe)  # base and edited model, same items -> metrics.json
        print(f"evaluate: {metrics}")
        return 0
    except HeadsurgeonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
