#!/usr/bin/env bash
# The README's main-job command: set up (idempotent), then run the whole toolkit on a small
# synthetic FDH set made on the spot: synth -> parts table -> refine (train, val) -> report ->
# contact sheet -> a short two-stage CPU training run of a tiny TriA-GAN -> samples + loss plot.
# Outputs go to ./demo-out (or the directory given as the first argument).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
exec .venv/bin/python pipelines/demo.py --out "${1:-demo-out}"
