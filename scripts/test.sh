#!/usr/bin/env bash
# The README's test command: set up (idempotent), lint, then the test suite.
# GPU tests (marker `gpu`) and mmpose tests (marker `mmpose`) skip themselves with a reason
# where there is no CUDA device / no mmpose.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
