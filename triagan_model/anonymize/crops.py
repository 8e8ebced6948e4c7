"""288x160 crops, masks and keypoints of a person (anonymize-spec 3.4; DP2
`dp2/detection/utils.py:cut_pad_resize` and `structures.py:PersonDetection.pre_process`).

A crop is the expanded box cut from the frame, zero-padded where the box leaves the image, then
resized: NEAREST when the crop is smaller than 288x160 in both dimensions, else BICUBIC with
antialias, rounded to uint8; masks NEAREST. The person mask is dilated by a disk of radius
`int(sqrt(288*160) * 0.02)` = 4, the dilation is removed again in the padding (which stays
known), and the known mask is its complement.

Interpolation rule (`rule`): "reference" decides NEAREST vs BICUBIC on the box clamped to the
image, as DP2 does when the box leaves the image; "padded" decides on the padded crop's size
(the whole box), the anonymize-spec's fix. Only boxes that leave the image can differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from triagan_model.anonymize.boxes import TARGET_HW

DILATION_PERCENTAGE = 0.02
INTERPOLATION_RULES = ("reference", "padded")


def dilation_radius(target_hw: tuple[int, int] = TARGET_HW) -> int:
    return int(math.sqrt(target_hw[0] * target_hw[1]) * DILATION_PERCENTAGE)


def disk(radius: int) -> np.ndarray:
    """Boolean disk footprint x^2 + y^2 <= r^2 (scikit-image's `morphology.disk`)."""
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return xx * xx + yy * yy <= radius * radius


def _pad_cut(x: torch.Tensor, box) -> tuple[torch.Tensor, tuple[int, int]]:
    """The box's pixels of (C, H, W) `x`, zeros outside the image; and the size used for the
    reference's interpolation choice (the clamped box when the box leaves the image)."""
    _, h, w = x.shape
    x0, y0, x1, y1 = (int(v) for v in box)
    if y0 > 0 and x0 > 0 and x1 <= w and y1 <= h:
        return x[:, y0:y1, x0:x1], (y1 - y0, x1 - x0)
    out = torch.zeros((x.shape[0], y1 - y0, x1 - x0), dtype=x.dtype)
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(x1, w), min(y1, h)
    if cx1 > cx0 and cy1 > cy0:
        out[:, cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = x[:, cy0:cy1, cx0:cx1]
    return out, (cy1 - cy0, cx1 - cx0)


def resize_u8(x: torch.Tensor, size: tuple[int, int], nearest: bool) -> torch.Tensor:
    """(C, h, w) uint8 -> (C, *size) uint8 as torchvision's tensor resize (float, rounded)."""
    xf = x.float()[None]
    if nearest:
        y = F.interpolate(xf, size=size, mode="nearest")
    else:
        y = F.interpolate(xf, size=size, mode="bicubic", align_corners=False, antialias=True)
    return y[0].round().clamp(0, 255).to(torch.uint8)


def resize_bool(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x.float()[None], size=size, mode="nearest")[0] > 0.5


def cut_pad_resize(
    x: torch.Tensor, box, target_hw: tuple[int, int] = TARGET_HW, rule: str = "reference"
) -> torch.Tensor:
    """Crop (C, H, W) uint8 or bool `x` to `box` (zero padding outside) at `target_hw`."""
    cut, clamped_hw = _pad_cut(x, box)
    if tuple(cut.shape[-2:]) == tuple(target_hw):
        return cut.clone()
    if x.dtype == torch.bool:
        return resize_bool(cut, target_hw)
    hw = clamped_hw if rule == "reference" else tuple(cut.shape[-2:])
    nearest = hw[0] < target_hw[0] and hw[1] < target_hw[1]
    return resize_u8(cut, target_hw, nearest)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a disk, zeros outside the array (DP2's conv2d > 0.5)."""
    from scipy.ndimage import binary_dilation

    if radius < 1:
        return mask.copy()
    return binary_dilation(mask, structure=disk(radius))


def remove_dilation_in_pad(dilated: np.ndarray, box, image_hw: tuple[int, int]) -> None:
    """Clear the dilated person mask in the crop's padding (DP2 `remove_dilate_in_pad`): the
    padding is zeros that must stay known; both axes use the vertical scale, as DP2."""
    x0, y0, x1, y1 = box
    h, w = image_hw
    ratio = np.float32(dilated.shape[0]) / np.float32(y1 - y0)
    pads = [int(np.floor(np.float32(p) * ratio)) for p in
            (max(0, -x0), max(0, -y0), max(x1 - w, 0), max(y1 - h, 0))]  # fmt: skip
    px0, py0, px1, py1 = pads
    dilated[:py0, :] = False
    dilated[:, :px0] = False
    if py1:
        dilated[dilated.shape[0] - py1 :, :] = False
    if px1:
        dilated[:, dilated.shape[1] - px1 :] = False


@dataclass
class CropMasks:
    """Masks of one person's crop at the target size: `mask` 1 = known (NOT the dilated
    person), `maskrcnn_mask` 1 = not person (FDH's convention), `person` the undilated crop."""

    mask: np.ndarray
    maskrcnn_mask: np.ndarray
    person: np.ndarray


def crop_masks(segmentation: np.ndarray, box, target_hw: tuple[int, int] = TARGET_HW) -> CropMasks:
    """The person's crop masks from its full-frame boolean mask and expanded box."""
    seg = torch.from_numpy(np.ascontiguousarray(segmentation, dtype=bool))[None]
    person = cut_pad_resize(seg, box, target_hw)[0].numpy()
    dilated = dilate(person, dilation_radius(target_hw))
    remove_dilation_in_pad(dilated, box, segmentation.shape)
    return CropMasks(mask=~dilated, maskrcnn_mask=~person, person=person)


def crop_keypoints(keypoints: np.ndarray, box, threshold: float) -> np.ndarray:
    """(17, 3) frame-pixel keypoints with scores -> normalised to the box, v in {0, 1}:
    visible iff the score passes `threshold`, finite, and inside the box (DP2
    `shift_and_preprocess_keypoints`, in float32 as DP2)."""
    src = np.asarray(keypoints, np.float32).reshape(17, 3)
    kp = src.copy()
    x0, y0, x1, y1 = (np.float32(v) for v in box)
    finite = np.isfinite(kp).all(1)
    kp[~finite] = 0
    kp[:, 0] = (kp[:, 0] - x0) / (x1 - x0)
    kp[:, 1] = (kp[:, 1] - y0) / (y1 - y0)
    inside = (kp[:, 0] >= 0) & (kp[:, 0] <= 1) & (kp[:, 1] >= 0) & (kp[:, 1] <= 1)
    kp[:, 2] = (finite & (src[:, 2] >= threshold) & inside).astype(np.float32)
    return kp
