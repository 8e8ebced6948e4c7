"""Person boxes: tight mask boxes, DeepPrivacy2's expansion to a 288x160 crop box, the filter.

Reference-exact (anonymize-spec 3.3; DP2 `dp2/detection/box_utils.py`): the expansion adds
`int(sqrt(H*W) * 0.1)` to both sides (capped at the image), grows the short axis to the
288/160 aspect, then grows both axes until at least 30 % of the box is background. DP2 does the
background test and the growth factor in float32 (torch long / int division), so they are
float32 here too: float64 moves a few boxes by one pixel.
"""

from __future__ import annotations

import math

import numpy as np

TARGET_HW = (288, 160)
PERCENTAGE_BACKGROUND = 0.3
AXIS_MINIMUM_EXPANSION = 0.1
MIN_BOX_AREA = 32 * 32


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight (x0, y0, x1, y1) of a boolean mask, max exclusive; None for an empty mask."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not rows.size:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def expand_axis(start: int, end: int, target: int, limit: int) -> tuple[int, int]:
    """Grow [start, end) to `target` around its centre, then shift it back inside [0, limit)
    where the other side has room (it may stay outside when it is larger than the image)."""
    grow = (target - (end - start)) // 2
    start, end = start - grow, end + grow
    if end - start != target:  # odd growth: the extra pixel goes to the end
        end += 1
    if start < 0 and end < limit:
        shift = min(-start, limit - end)
        start, end = start + shift, end + shift
    if end > limit and start > 0:
        shift = min(end - limit, start)
        start, end = start - shift, end - shift
    return start, end


def _by_percentage(box, hw, percentage: float):
    x0, y0, x1, y1 = box
    h, w = y1 - y0, x1 - x0
    e = int(math.sqrt(h * w) * percentage)
    x0, x1 = expand_axis(x0, x1, min(w + e, hw[1]), hw[1])
    y0, y1 = expand_axis(y0, y1, min(h + e, hw[0]), hw[0])
    return x0, y0, x1, y1


def _to_ratio(box, hw, ratio: float):
    x0, y0, x1, y1 = box
    h, w = y1 - y0, x1 - x0
    if h / w == ratio:
        return box
    if h / w < ratio:
        y0, y1 = expand_axis(y0, y1, int(w * ratio), hw[0])
    else:
        x0, x1 = expand_axis(x0, x1, int(h / ratio), hw[1])
    return x0, y0, x1, y1


def _to_background(box, hw, mask_pixels: int, background: float):
    x0, y0, x1, y1 = box
    h, w = y1 - y0, x1 - x0
    f32 = np.float32
    covered = f32(mask_pixels) / f32(h * w)
    if f32(1) - covered > f32(background):
        return box
    p = np.sqrt(f32(f32(mask_pixels) / f32(1 - background)) / f32(h * w))
    tw, th = int(np.ceil(p * f32(w))), int(np.ceil(p * f32(h)))
    x0, x1 = expand_axis(x0, x1, tw, hw[1])
    y0, y1 = expand_axis(y0, y1, th, hw[0])
    return x0, y0, x1, y1


def expand_box(
    tight: tuple[int, int, int, int],
    image_hw: tuple[int, int],
    mask_pixels: int,
    target_hw: tuple[int, int] = TARGET_HW,
    background: float = PERCENTAGE_BACKGROUND,
    min_expansion: float = AXIS_MINIMUM_EXPANSION,
) -> tuple[int, int, int, int]:
    """DP2's `get_expanded_bbox`: the crop box of a person (may extend outside the image)."""
    box = _by_percentage(tight, image_hw, min_expansion)
    box = _to_ratio(box, image_hw, target_hw[0] / target_hw[1])
    return tuple(int(v) for v in _to_background(box, image_hw, mask_pixels, background))


def box_area(box) -> int:
    return int((box[2] - box[0]) * (box[3] - box[1]))


def boxes_intersect(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of x0, y0, x1, y1 boxes."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    union = area_a[:, None] + area_b[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
