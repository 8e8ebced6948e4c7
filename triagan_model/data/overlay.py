"""Refined-keypoint overlays: the reference's `fdh_keypoints_{train,val}.json` format.

The file maps sample key -> 17 rows of [x, y, v], normalised (fdh-format.md, "Refined keypoints
already published by the authors"). For keys present, the overlay replaces `keypoints.npy`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from triagan_model.data.fdh import NUM_KEYPOINTS


class OverlayError(ValueError):
    """An overlay file is missing or malformed."""


def load_overlay(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an overlay JSON into {key: float32 (17,3) normalised}; raise naming the bad key."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise OverlayError(f"keypoint overlay not found: {path}") from None
    except json.JSONDecodeError as exn:
        raise OverlayError(f"{path}: not valid JSON ({exn})") from None
    if not isinstance(raw, dict):
        raise OverlayError(f"{path}: expected an object mapping key -> 17 [x, y, v] rows")
    out: dict[str, np.ndarray] = {}
    for key, rows in raw.items():
        try:
            arr = np.asarray(rows, dtype=np.float32)
        except (TypeError, ValueError):
            raise OverlayError(f"{path}: key {key!r} does not hold numbers") from None
        if arr.shape != (NUM_KEYPOINTS, 3):
            raise OverlayError(f"{path}: key {key!r} has shape {arr.shape}, expected (17, 3)")
        if not np.isfinite(arr).all():
            raise OverlayError(f"{path}: key {key!r} holds non-finite values")
        out[str(key)] = arr
    return out


def apply_overlay(sample: dict, overlay: dict[str, np.ndarray] | None) -> dict:
    """Replace the sample's normalised `keypoints` when its key is in the overlay."""
    if overlay is None:
        return sample
    rows = overlay.get(str(sample["key"]))
    if rows is None:
        return sample
    out = dict(sample)
    out["keypoints"] = torch.from_numpy(rows.copy())
    return out
