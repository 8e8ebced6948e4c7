#!/usr/bin/env bash
# Regenerate the figures of docs/inspecting-a-run.md from the synthetic demo:
# synth -> parts build -> refine -> report -> inspect in a temporary directory, then copy the
# contact sheet and one plot to docs/images/ (palette PNGs, each well under 300 KB).
#   bash docs/make_figures.sh            (from the repository root; uses .venv/bin/fdhclean)
set -euo pipefail
cd "$(dirname "$0")/.."
FDH="${FDHCLEAN:-.venv/bin/fdhclean}"
PY="${PYTHON:-.venv/bin/python}"
D="$(mktemp -d)"
trap 'rm -rf "$D"' EXIT
export COLUMNS=100 MPLBACKEND=Agg

"$FDH" synth --out "$D/data" --shards 2 --samples-per-shard 32 --seed 0
"$FDH" parts build --segmentation "$D/data/segmentation.json" --cse-mesh "$D/data/mesh.pkl" \
    --out "$D/parts.npz"
"$FDH" refine --split val --data-root "$D/data" --out "$D/clean" --part-table "$D/parts.npz" \
    --predictions "$D/data/predictions_val.json"
"$FDH" report "$D/clean" --split val
"$FDH" inspect "$D/clean" --split val --where "updated and new_frac - orig_frac > 0.1" \
    --limit 4 --columns 4 --out "$D/sheet.png"

"$PY" - "$D" docs/images <<'PYEOF'
import sys
from pathlib import Path

from PIL import Image

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir(parents=True, exist_ok=True)
for name, source in (
    ("inspect_sheet.png", src / "sheet.png"),
    ("inspect_frac_2d.png", src / "clean/val/plots/frac_2d.png"),
    ("inspect_keypoint_correct.png", src / "clean/val/plots/keypoint_correct.png"),
):
    with Image.open(source) as image:
        small = image.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
        small.save(dst / name, optimize=True)
    print(f"{dst / name}: {(dst / name).stat().st_size // 1024} KB")
PYEOF
