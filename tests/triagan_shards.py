"""Tiny FDH-like shards for the triagan_model tests, written with Python's tarfile.

Each sample: noise image with a coloured 5x5 marker painted under every visible keypoint
(colour = MARKER_COLOURS[row]), mask 0/255 with an unknown rectangle (not aligned to any stage
grid), maskrcnn_mask 0/1, E_mask.png (original case) and vertices.npy that readers must skip,
keypoints.npy in the requested units. A manifest JSON is written beside the shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

H, W = 288, 160
# A distinct colour per keypoint row (first channel encodes the row: 10 * (row + 1)).
MARKER_COLOURS = [(10 * (r + 1), 255 - 10 * r, (37 * r) % 256) for r in range(17)]


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _sample(rng: np.random.Generator, units: str) -> dict[str, bytes]:
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    mask = np.full((H, W), 255, np.uint8)
    top, left = int(rng.integers(60, 120)), int(rng.integers(20, 60))
    mask[top : top + 101, left : left + 63] = 0
    maskrcnn = (mask > 0).astype(np.uint8)
    maskrcnn[top + 5 : top + 90, left + 5 : left + 50] = 0
    # Keypoints at pixel centres of distinct 8x8 cells, so the 5x5 markers never overlap.
    cells = rng.choice((H // 8) * (W // 8), size=17, replace=False)
    rows, cols = (cells // (W // 8)) * 8 + 4, (cells % (W // 8)) * 8 + 4
    vis = np.full(17, 2.0, np.float32)
    vis[rng.integers(0, 17)] = 0.0  # one invisible keypoint
    for r in range(17):
        if vis[r] > 0:
            img[rows[r] - 2 : rows[r] + 3, cols[r] - 2 : cols[r] + 3] = MARKER_COLOURS[r]
    kp = np.stack([(cols + 0.5) / W, (rows + 0.5) / H, vis], axis=1).astype(np.float32)
    if units == "pixels":
        kp[:, 0] *= W
        kp[:, 1] *= H
    return {
        "image.png": png_bytes(img),
        "mask.png": png_bytes(mask),
        "maskrcnn_mask.png": png_bytes(maskrcnn),
        "E_mask.png": png_bytes(np.zeros((H, W), np.uint8)),
        "vertices.npy": npy_bytes(np.zeros((1, H, W), np.int16)),
        "keypoints.npy": npy_bytes(kp),
    }


def make_shards(
    directory: Path,
    n_shards: int = 3,
    per_shard: int = 4,
    units: str = "normalized",
    seed: int = 0,
    name: str = "train.json",
) -> Path:
    """Write `n_shards` tars of `per_shard` samples (keys 1000, 1001, ...) and a manifest."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shards = []
    for s in range(n_shards):
        path = directory / f"out-{s:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                key = str(1000 + s * per_shard + i)
                for suffix, data in _sample(rng, units).items():
                    info = tarfile.TarInfo(f"{key}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        shards.append({"path": path.name, "samples": per_shard, "bytes": len(data),
                       "sha256": digest, "keypoint_units": units})  # fmt: skip
    manifest = {"format": "fdh-manifest", "version": 1, "split": "train", "root": None,
                "shards": shards, "provenance": {"parent": None}}  # fmt: skip
    out = directory / name
    out.write_text(json.dumps(manifest))
    return out


def read_member(shard: Path, key: str, suffix: str) -> bytes:
    with tarfile.open(shard) as tar:
        return tar.extractfile(f"{key}.{suffix}").read()
