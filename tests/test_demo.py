"""`python pipelines/demo.py --out DIR`: synthetic FDH -> parts -> refine -> report -> a two-stage
tiny CPU training run -> generated samples (about 40 s on 2 idle cores)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, str(ROOT / "pipelines" / "demo.py"), "--out", str(out)],
                          capture_output=True, text=True, check=False, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "(missing!)" not in proc.stdout
    run = json.loads((out / "run" / "run.json").read_text())
    assert run["manifest"]["path"] == str(out / "clean" / "train" / "manifest.json")
    for stage in ("18x10", "36x20"):
        assert (out / "run" / stage / "stage-complete.json").is_file()
        assert (out / "run" / stage / "loss.png").is_file()
    assert (out / "samples" / "grids" / "grid-0000.png").is_file()
    assert len(json.loads((out / "samples" / "index.json").read_text())["images"]) == 8
    assert (out / "contact_sheet.png").is_file()
    registered = json.loads((out / "data_manifests" / "synthetic-demo" / "train.json").read_text())
    assert registered["root"] == "$FDH_ROOT"
