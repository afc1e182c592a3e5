# Shared by the set-up scripts (sourced, not run). Every install goes through `run`, so
# SETUP_DRY_RUN=1 prints each command instead of running it (tests/test_setup.py reads
# that plan to prove what each set-up installs).

run() {
  if [ "${SETUP_DRY_RUN:-0}" = 1 ]; then
    echo "+ $*"
  else
    "$@"
  fi
}

# pip, quiet, with torch held at the version already installed (or the given pin):
# an unconstrained resolve may pull a multi-GB CUDA build of torch.
pip_q() {
  run python -m pip install -q --disable-pip-version-check -c "$TORCH_CONSTRAINT" "$@" 2>&1 \
    | { grep -v "WARNING: Location" || true; }
}

# apt_install COMMAND PACKAGE: install Debian's PACKAGE unless COMMAND is already on PATH.
apt_install() {
  if [ "${SETUP_DRY_RUN:-0}" != 1 ] && command -v "$1" >/dev/null 2>&1; then
    return 0
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  if [ -z "${APT_UPDATED:-}" ]; then
    run $sudo apt-get update -qq
    export APT_UPDATED=1  # once per set-up, scripts it calls included
  fi
  run $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2"
}

# A constraints file pinning torch to TORCH_PIN (default: what is installed).
torch_constraint() {
  if [ "${SETUP_DRY_RUN:-0}" = 1 ]; then  # the plan shows the pin itself
    TORCH_CONSTRAINT="<torch==${TORCH_PIN:-installed}>"
    return 0
  fi
  TORCH_CONSTRAINT=$(mktemp)
  trap 'rm -f "$TORCH_CONSTRAINT"' EXIT
  if [ -n "${TORCH_PIN:-}" ]; then
    echo "torch==$TORCH_PIN" > "$TORCH_CONSTRAINT"
  else
    python - "$TORCH_CONSTRAINT" <<'PY'
import sys
try:
    import torch
except ImportError:
    sys.exit("install torch first (scripts/setup.sh does)")
open(sys.argv[1], "w").write(f"torch=={torch.__version__.split('+')[0]}\n")
PY
  fi
}
