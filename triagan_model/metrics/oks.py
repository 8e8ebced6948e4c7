"""Object keypoint similarity between conditioning and estimated keypoints (triagan-spec.md).

`oks` follows pycocotools `COCOeval.computeOks` term for term, for one ground truth and one
detection per image: var = (2 sigma)^2, e = d^2 / var / (area + eps) / 2, averaged as exp(-e)
over the visible ground-truth keypoints (v > 0); with no visible ground-truth keypoint COCO
measures the distance to a box twice the size of the gt box instead (the box defaults to the
whole crop). Ground truth is ALWAYS the conditioning keypoints and the detection the keypoints
estimated on the generated image: the reference swapped the two (so it took visibility and the
object from the estimate). Area defaults to the whole crop (H * W = 288 * 160), as the
reference and the paper's figures; `region_area` gives the region-to-generate alternative.
All coordinates here are pixels of the 288x160 crop.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from triagan_model.data.fdh import COCO_SIGMAS, IMAGE_H, IMAGE_W, NUM_KEYPOINTS

CROP_AREA = float(IMAGE_H * IMAGE_W)


def normalized_to_pixels(keypoints: np.ndarray) -> np.ndarray:
    """(..., 17, >=2) normalised (x/W, y/H) -> pixels of the 288x160 crop; other columns kept."""
    kp = np.array(keypoints, dtype=np.float64, copy=True)
    kp[..., 0] *= IMAGE_W
    kp[..., 1] *= IMAGE_H
    return kp


def region_area(mask: np.ndarray) -> float:
    """Area (pixels) of the region to generate: mask == 0 (mask: 1 = known background)."""
    return float(np.count_nonzero(np.asarray(mask) <= 0))


def oks(
    gt_keypoints: np.ndarray,
    dt_keypoints: np.ndarray,
    area: float | np.ndarray = CROP_AREA,
    sigmas: tuple[float, ...] | np.ndarray = COCO_SIGMAS,
    gt_bbox: np.ndarray | None = None,
) -> np.ndarray | float:
    """OKS (N,) for gt (N,17,3) pixels with v and dt (N,17,>=2) pixels; a scalar for (17,3).

    `area` is a scalar or (N,); `gt_bbox` (N,4) or (4,) [x, y, w, h] is used only when a
    ground truth has no visible keypoint (COCO's rule), default the whole crop.
    """
    gt = np.asarray(gt_keypoints, dtype=np.float64)
    dt = np.asarray(dt_keypoints, dtype=np.float64)
    single = gt.ndim == 2
    if single:
        gt, dt = gt[None], dt[None]
    if gt.shape[1:] != (NUM_KEYPOINTS, 3) or dt.shape[:2] != gt.shape[:2] or dt.shape[2] < 2:
        raise ValueError(f"gt must be (N,17,3) and dt (N,17,>=2); got {gt.shape}, {dt.shape}")
    n = gt.shape[0]
    variances = (np.asarray(sigmas, dtype=np.float64) * 2) ** 2
    areas = np.broadcast_to(np.asarray(area, dtype=np.float64), (n,))
    box = np.array([0.0, 0.0, IMAGE_W, IMAGE_H]) if gt_bbox is None else gt_bbox
    boxes = np.broadcast_to(np.asarray(box, dtype=np.float64), (n, 4))
    out = np.empty(n)
    for i in range(n):
        xg, yg, vg = gt[i, :, 0], gt[i, :, 1], gt[i, :, 2]
        xd, yd = dt[i, :, 0], dt[i, :, 1]
        visible = vg > 0
        if visible.any():
            dx, dy = xd - xg, yd - yg
        else:  # COCO: distance to the box [x0, x1] x [y0, y1] twice the gt box's size
            bx, by, bw, bh = boxes[i]
            x0, x1, y0, y1 = bx - bw, bx + bw * 2, by - bh, by + bh * 2
            zero = np.zeros(NUM_KEYPOINTS)
            dx = np.max((zero, x0 - xd), axis=0) + np.max((zero, xd - x1), axis=0)
            dy = np.max((zero, y0 - yd), axis=0) + np.max((zero, yd - y1), axis=0)
        e = (dx**2 + dy**2) / variances / (areas[i] + np.spacing(1)) / 2
        if visible.any():
            e = e[visible]
        out[i] = np.sum(np.exp(-e)) / e.shape[0]
    return out[0] if single else out


def read_coco_results(path: str | os.PathLike) -> dict[int, np.ndarray]:
    """A COCO keypoint results file -> {image_id: (17,3) pixels}, highest score per image.

    Pose estimators write [{"image_id", "category_id", "keypoints": [x, y, s] * 17, "score"}]
    in pixel coordinates of the 288x160 image; image_id is int(sample key).
    """
    path = Path(path)
    try:
        records = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"COCO results file not found: {path}") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a list of COCO keypoint results")
    best: dict[int, tuple[float, np.ndarray]] = {}
    for i, rec in enumerate(records):
        try:
            image_id, kp = int(rec["image_id"]), np.asarray(rec["keypoints"], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: record {i} lacks an integer image_id or keypoints") from None
        if kp.size != NUM_KEYPOINTS * 3:
            raise ValueError(f"{path}: record {i} has {kp.size} keypoint values, expected 51")
        score = float(rec.get("score", 0.0))
        if image_id not in best or score > best[image_id][0]:
            best[image_id] = (score, kp.reshape(NUM_KEYPOINTS, 3))
    return {k: v for k, (_, v) in best.items()}


def conditioning_visible(keypoints: np.ndarray) -> np.ndarray:
    """The keypoints the generator was conditioned on: v > 0 and inside the crop (normalised
    x, y in [0, 1]), the rule `build_condition` draws by. (N,17) bool."""
    kp = np.asarray(keypoints, dtype=np.float64)
    x, y, v = kp[..., 0], kp[..., 1], kp[..., 2]
    return (v > 0) & (x >= 0) & (x <= 1) & (y >= 0) & (y <= 1)


def mean_oks(
    conditioning: dict[str, np.ndarray],
    detections: dict[int, np.ndarray],
    areas: dict[str, float] | None = None,
) -> tuple[float, int]:
    """Mean OKS over the conditioning's keys. conditioning: {key: (17,3) NORMALISED} (as in
    the shards); detections: read_coco_results output; areas: per-key area (default: the crop).

    Only keypoints the generator saw count as ground truth (`conditioning_visible`); a sample
    with none is left out, as COCOeval ignores a ground truth without keypoints. A sample the
    estimator found no person in scores 0 (one generated image per real one: a miss is a miss).
    Returns (mean, number of samples scored)."""
    keys = list(conditioning)
    if not keys:
        return float("nan"), 0
    norm = np.stack([conditioning[k] for k in keys]).astype(np.float64)
    visible = conditioning_visible(norm)
    norm[..., 2] = np.where(visible, np.maximum(norm[..., 2], 1.0), 0.0)
    scored = [i for i, k in enumerate(keys) if visible[i].any()]
    found = [i for i in scored if int(keys[i]) in detections]
    if not scored:
        return float("nan"), 0
    total = 0.0
    if found:
        gt = normalized_to_pixels(norm[found])
        dt = np.stack([detections[int(keys[i])] for i in found])
        area = CROP_AREA if areas is None else np.array([areas[keys[i]] for i in found])
        total = float(oks(gt, dt, area).sum())
    return total / len(scored), len(scored)
