"""Plots of a run's report (matplotlib, Agg backend, PNG): fracs and per-keypoint correctness."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fdhclean.shards import atomic_write_bytes

PLOT_FILES = ("frac_hist.png", "frac_2d.png", "keypoint_correct.png")
BINS = np.linspace(0.0, 1.0, 21)


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless; no pyplot state is kept
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, path: Path) -> Path:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def frac_histograms(orig_frac: np.ndarray, new_frac: np.ndarray, path: Path) -> Path:
    fig = _figure(8, 3)
    for ax, values, name, color in zip(
        fig.subplots(1, 2, sharey=True),
        (orig_frac, new_frac),
        ("orig_frac (original annotation)", "new_frac (estimate)"),
        ("tab:red", "tab:blue"),
        strict=True,
    ):
        ax.hist(values, bins=BINS, color=color)
        ax.set_xlabel(name)
    fig.axes[0].set_ylabel("samples")
    return _save(fig, path)


def frac_2d(orig_frac: np.ndarray, new_frac: np.ndarray, path: Path) -> Path:
    fig = _figure(4.5, 4)
    ax = fig.subplots()
    counts, _, _ = np.histogram2d(orig_frac, new_frac, bins=[BINS, BINS])
    image = ax.imshow(
        np.ma.masked_equal(counts.T, 0),
        origin="lower",
        extent=(0, 1, 0, 1),
        cmap="viridis",
        norm="log" if counts.max() > 10 else None,
    )
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
    ax.set_xlabel("orig_frac")
    ax.set_ylabel("new_frac")
    ax.set_title("estimate better above the diagonal", fontsize=9)
    fig.colorbar(image, ax=ax, label="samples")
    return _save(fig, path)


def keypoint_correct(keypoints: dict[str, dict[str, Any]], path: Path) -> Path:
    """Per keypoint: share of samples where it is considered and correct, original vs estimate."""
    names = list(keypoints)
    fig = _figure(8, 3.5)
    ax = fig.subplots()
    x = np.arange(len(names))
    for offset, side, color in ((-0.2, "orig", "tab:red"), (0.2, "new", "tab:blue")):
        rate = [
            _rate(keypoints[n][f"{side}_correct"], keypoints[n][f"{side}_considered"])
            for n in names
        ]
        ax.bar(x + offset, rate, width=0.4, color=color, label=f"{side}: correct / considered")
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def _rate(correct: int, considered: int) -> float:
    return correct / considered if considered else 0.0


def write_plots(summary, out_dir: Path) -> list[Path]:
    """The three PNGs of a `ReportSummary` into `out_dir` (created)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = dict(zip(("hist", "2d", "kp"), PLOT_FILES, strict=True))
    return [
        frac_histograms(summary.orig_frac, summary.new_frac, out_dir / names["hist"]),
        frac_2d(summary.orig_frac, summary.new_frac, out_dir / names["2d"]),
        keypoint_correct(summary.data["keypoints"], out_dir / names["kp"]),
    ]
