#!/usr/bin/env bash
# Test-only dependencies of the loopback NDIF server (tests/ndif_server.py, docs/remote.md):
# Debian's redis-server, and ndif's API + worker packages in the ACTIVE virtual environment.
# Idempotent. Never touches torch: every pip call is constrained to the installed version.
# Users of `locate --remote` need none of this (nnsight is the whole client).
set -euo pipefail

if ! command -v redis-server >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq redis-server
fi

if [ -z "${VIRTUAL_ENV:-}" ]; then
  echo "install-ndif-test-deps.sh: activate the project venv first (. .venv/bin/activate)" >&2
  exit 1
fi

constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
python - "$constraints" <<'PY'
import sys
try:
    import torch
except ImportError:
    sys.exit("install-ndif-test-deps.sh: install torch first (scripts/setup.sh does)")
open(sys.argv[1], "w").write(f"torch=={torch.__version__.split('+')[0]}\n")
PY

pip_q() {
  { python -m pip install -q --disable-pip-version-check -c "$constraints" "$@" 2>&1; } \
    | { grep -v "WARNING: Location" || true; }
}

# ndif declares Python >= 3.12 but runs on 3.11; its own dependency resolution picks a
# numpy sdist that does not build, so: no metadata check, then the dependencies as wheels.
if ! python -m pip show ndif 2>/dev/null | grep -q "^Version: 0.1.2$"; then
  pip_q --no-deps --ignore-requires-python ndif==0.1.2
fi
# ray (+ grpcio) only because ndif's worker modules import it: it is never started.
# moto[server] is the S3 object store ndif needs for non-blocking jobs.
pip_q --only-binary=:all: pydantic redis python-dotenv boto3 fastapi "uvicorn[standard]" \
  python-multipart ray grpcio zstandard "moto[server]"

python - <<'PY'
import importlib.util, shutil, sys
missing = [m for m in ("ndif", "redis", "fastapi", "uvicorn", "multipart", "boto3", "moto",
                       "ray", "grpc", "zstandard") if importlib.util.find_spec(m) is None]
if missing or not shutil.which("redis-server"):
    sys.exit(f"install-ndif-test-deps.sh: still missing: {missing or ['redis-server']}")
PY
