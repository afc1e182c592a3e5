#!/usr/bin/env bash
# Test-only dependencies of the loopback NDIF server (tests/ndif_server.py, docs/remote.md):
# Debian's redis-server, and ndif's API + worker packages in the ACTIVE virtual environment.
# Idempotent. Never touches torch: every pip call is constrained to the installed version.
# Users of `locate --remote` need none of this (nnsight is the whole client), and neither
# does the main job: scripts/setup.sh runs this only with --tests.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup-lib.sh

apt_install redis-server redis-server

if [ -z "${VIRTUAL_ENV:-}" ] && [ "${SETUP_DRY_RUN:-0}" != 1 ]; then
  echo "install-ndif-test-deps.sh: activate the project venv first (. .venv/bin/activate)" >&2
  exit 1
fi
torch_constraint

# ndif declares Python >= 3.12 but runs on 3.11; its own dependency resolution picks a
# numpy sdist that does not build, so: no metadata check, then the dependencies as wheels.
if [ "${SETUP_DRY_RUN:-0}" = 1 ] || ! python -m pip show ndif 2>/dev/null | grep -q "^Version: 0.1.2$"; then
  pip_q --no-deps --ignore-requires-python ndif==0.1.2
fi
# ray (+ grpcio) only because ndif's worker modules import it: it is never started.
# moto[server] is the S3 object store ndif needs for non-blocking jobs.
pip_q --only-binary=:all: pydantic redis python-dotenv boto3 fastapi "uvicorn[standard]" \
  python-multipart ray grpcio zstandard "moto[server]"

[ "${SETUP_DRY_RUN:-0}" = 1 ] && exit 0
python - <<'PY'
import importlib.util, shutil, sys
missing = [m for m in ("ndif", "redis", "fastapi", "uvicorn", "multipart", "boto3", "moto",
                       "ray", "grpc", "zstandard") if importlib.util.find_spec(m) is None]
if missing or not shutil.which("redis-server"):
    sys.exit(f"install-ndif-test-deps.sh: still missing: {missing or ['redis-server']}")
PY
