"""Helper of the inspect tests: one `fdhclean refine` run of the synthetic set's val split."""

from __future__ import annotations

from pathlib import Path

from fdhclean.cli import main


def refine_val(root: Path, out: Path, *extra: str) -> Path:
    """Refine `root`'s val split into `out`; returns `out / "val"`."""
    args = ["refine", "--split", "val", "--data-root", str(root), "--out", str(out)]
    args += ["--part-table", str(root / "parts.npz")]
    args += ["--predictions", str(root / "predictions_val.json"), *extra]
    assert main(args) == 0
    return out / "val"
