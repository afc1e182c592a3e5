#!/usr/bin/env bash
# The main job: the whole pipeline (locate -> train -> apply -> eval -> report) on the
# bundled SmolLM2-135M-Instruct with headsurgeon's built-in data. Output: runs/smollm2-sycophancy/
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
start=$(date +%s)
headsurgeon run recipes/smollm2-sycophancy.yaml "$@"
echo "total time: $(( $(date +%s) - start )) s"
