#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: a virtual environment in .venv with torch/torchvision
# from the wheels on this disk (pip only: uv and poetry download multi-GB CUDA builds instead),
# then this project with every extra. Re-running it only checks that everything is present.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
stamp="$VENV/.setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"

if [ -f "$stamp" ]; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
# This machine's pip configuration names local index folders that do not always exist; pip
# warns once per package about them. Keep the log readable: drop exactly those lines.
quiet_pip() { "$VENV/bin/pip" "$@" 2> >(grep -v "^WARNING: Location 'file:.*' is ignored" >&2); }
echo "[setup] installing $TORCH_SPEC (local wheels, ~2 min on a fresh machine)"
# shellcheck disable=SC2086
quiet_pip install -q $TORCH_SPEC
echo "[setup] installing triagan-toolkit[all,dev]"
quiet_pip install -q -e ".[all,dev]"
rm -f "$VENV"/.setup-*
touch "$stamp"
echo "[setup] done: $("$VENV/bin/python" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)')"
