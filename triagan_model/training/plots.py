"""Pictures of a run: sample grids (condition | generated | real) and loss curves (Agg)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from triagan_model.atomic import atomic_path


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """(B,3,H,W) in [-1, 1] -> (B,H,W,3) uint8."""
    x = ((img.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def _atomic_save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp)


def grid_rows(columns: Sequence[torch.Tensor], pad: int = 2) -> np.ndarray:
    """One row per sample with the given image columns side by side, white padding."""
    cols = [to_uint8(c) for c in columns]
    b, h, w, _ = cols[0].shape
    n = len(cols)
    out = np.full((b * (h + pad) + pad, n * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(b):
        for j, c in enumerate(cols):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y : y + h, x : x + w] = c[i]
    return out


def save_grid(columns: Sequence[torch.Tensor], path: str | os.PathLike, scale: int = 1) -> Path:
    """Write a grid PNG: rows = samples, columns = e.g. condition | generated | real."""
    grid = grid_rows(columns)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    out = Path(path)
    _atomic_save_png(grid, out)
    return out


def save_loss_plot(records: list[dict[str, Any]], path: str | os.PathLike, title: str) -> Path:
    """Loss curves (D real/fake terms, G) over kimg from ``stats.jsonl`` records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    kimg = [r["kimg"] for r in records]
    for key, label in (("loss/D", "D"), ("loss/D_real", "D real term"),
                       ("loss/D_fake", "D fake term"), ("loss/G", "G")):  # fmt: skip
        ys = [r.get(key) for r in records]
        if any(y is not None for y in ys):
            ax.plot(kimg, [np.nan if y is None else y for y in ys], marker=".", label=label)
    ax.set_xlabel("kimg (images shown to D in this stage / 1000)")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
    return out
