"""Per-sample tensor operations of the training data path (fdh-format.md, triagan-spec.md).

A decoded sample is a dict of CPU tensors at its stored resolution:
  img (3,H,W) float32 in [0, 255]; mask (1,H,W) float32, 1 = known background;
  maskrcnn_mask (1,H,W) float32, 1 = not person; condition (3,H,W) float32 in [0, 255] or absent;
  keypoints (17,3) float32, normalised (x/W, y/H, v).
`to_model_space` maps images to [-1, 1] last. Resizing follows the reference's derived layouts:
image and condition bilinear (antialiased), mask "known only if every pixel under it is known",
maskrcnn_mask nearest; keypoints are normalised and need no change.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from triagan_model.data.fdh import (
    FLIP_PERMUTATION,
    IMAGE_H,
    IMAGE_W,
    MEMBER_CONDITION,
    MEMBER_IMAGE,
    MEMBER_KEYPOINTS,
    MEMBER_MASK,
    MEMBER_MASKRCNN,
    NUM_KEYPOINTS,
    UNITS_NORMALIZED,
    UNITS_PIXELS,
)

# [0, 255] value that maps to exactly 0 in [-1, 1]: the unknown region of an on-the-fly
# condition image ("image with the unknown region set to 0 in [-1, 1] space").
_ZERO_U8 = 127.5


class SampleError(ValueError):
    """A sample in a shard lacks a member or holds a malformed one."""


def _png(data: bytes, mode: str) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert(mode))


def keypoints_to_normalized(keypoints: np.ndarray, units: str) -> np.ndarray:
    """(17,3) keypoints in the recorded `units` -> normalised x/W, y/H (W=160, H=288)."""
    kp = np.asarray(keypoints, dtype=np.float32).reshape(NUM_KEYPOINTS, 3).copy()
    if units == UNITS_PIXELS:
        kp[:, 0] /= IMAGE_W
        kp[:, 1] /= IMAGE_H
    elif units != UNITS_NORMALIZED:
        raise ValueError(f"unknown keypoint units {units!r}")
    return kp


def decode_sample(sample: dict[str, Any], keypoint_units: str) -> dict[str, Any]:
    """Decode the members training needs (never vertices.npy / E_mask.png) into tensors."""
    key = sample.get("__key__", "?")
    missing = [m for m in (MEMBER_IMAGE, MEMBER_MASK, MEMBER_MASKRCNN, MEMBER_KEYPOINTS)
               if m not in sample]  # fmt: skip
    if missing:
        raise SampleError(f"sample {key} in {sample.get('__url__', '?')} lacks {missing}")
    img = torch.from_numpy(_png(sample[MEMBER_IMAGE], "RGB").copy()).permute(2, 0, 1).float()
    out: dict[str, Any] = {
        "key": key,
        "img": img,
        # Decoded as `> 0`: masks are stored 0/1 or 0/255 (fdh-format.md).
        "mask": torch.from_numpy(_png(sample[MEMBER_MASK], "L") > 0)[None].float(),
        "maskrcnn_mask": torch.from_numpy(_png(sample[MEMBER_MASKRCNN], "L") > 0)[None].float(),
    }
    if MEMBER_CONDITION in sample:
        cond = _png(sample[MEMBER_CONDITION], "RGB").copy()
        out["condition"] = torch.from_numpy(cond).permute(2, 0, 1).float()
    kp = np.load(io.BytesIO(sample[MEMBER_KEYPOINTS]), allow_pickle=False)
    if kp.size != NUM_KEYPOINTS * 3:
        raise SampleError(f"sample {key}: keypoints.npy has shape {kp.shape}, expected (17, 3)")
    out["keypoints"] = torch.from_numpy(keypoints_to_normalized(kp, keypoint_units))
    if img.shape[1:] != out["mask"].shape[1:] or img.shape[1:] != out["maskrcnn_mask"].shape[1:]:
        raise SampleError(f"sample {key}: image and masks differ in size")
    return out


def masked_condition(img: torch.Tensor, mask: torch.Tensor, fill: float = _ZERO_U8) -> torch.Tensor:
    """Image with the unknown region (mask == 0) set to `fill`, in [0, 255] space."""
    return img * mask + fill * (1.0 - mask)


def resize_image(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased resize of a (C,H,W) float tensor (reference: image, condition)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False,
                         antialias=True)[0]  # fmt: skip


def _factors(src: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    fh, fw = src[0] // size[0], src[1] // size[1]
    if fh < 1 or fw < 1 or fh * size[0] != src[0] or fw * size[1] != src[1]:
        raise ValueError(f"cannot reduce {src[0]}x{src[1]} to {size[0]}x{size[1]}: "
                         "the stage resolution must divide the stored one")  # fmt: skip
    return fh, fw


def resize_mask_known(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A low-resolution pixel is known (1) only if every pixel under it is known (min-pool)."""
    fh, fw = _factors(tuple(mask.shape[-2:]), size)
    if fh == fw == 1:
        return mask
    return -F.max_pool2d(-mask[None], kernel_size=(fh, fw), stride=(fh, fw))[0]


def resize_nearest(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize (reference: maskrcnn_mask), torch's legacy 'nearest' rule."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask[None], size=size, mode="nearest")[0]


def resize_sample(sample: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
    """Bring a decoded sample to the stage resolution `size` = (H, W); adds `condition`."""
    out = dict(sample)
    cond = sample.get("condition")
    if cond is None:
        cond = masked_condition(sample["img"], sample["mask"])
    out["condition"] = resize_image(cond, size)
    out["img"] = resize_image(sample["img"], size)
    out["mask"] = resize_mask_known(sample["mask"], size)
    out["maskrcnn_mask"] = resize_nearest(sample["maskrcnn_mask"], size)
    return out


def flip_keypoints(keypoints: torch.Tensor) -> torch.Tensor:
    """Horizontal flip of normalised (17,3) keypoints: x -> 1 - x where v > 0, swap left/right."""
    kp = keypoints.clone()
    visible = kp[:, 2] > 0
    kp[visible, 0] = 1.0 - kp[visible, 0]
    return kp[list(FLIP_PERMUTATION)]


def flip_sample(sample: dict[str, Any]) -> dict[str, Any]:
    out = dict(sample)
    for name in ("img", "mask", "maskrcnn_mask", "condition"):
        if name in sample:
            out[name] = torch.flip(sample[name], dims=(-1,))
    out["keypoints"] = flip_keypoints(sample["keypoints"])
    return out


def flip_draw(seed: int, epoch: int, key: str) -> bool:
    """The per-sample flip coin: a pure function of (seed, epoch, key).

    The reference draws one flip per batch (fdh-format.md, known problems); here every sample
    gets its own draw, reproducible whatever the rank/worker split or shuffle order.
    """
    digest = hashlib.blake2b(f"{seed}:{epoch}:{key}".encode(), digest_size=8).digest()
    return bool(digest[0] & 1)


def to_model_space(sample: dict[str, Any]) -> dict[str, Any]:
    """Images from [0, 255] to [-1, 1] (x / 127.5 - 1)."""
    out = dict(sample)
    for name in ("img", "condition"):
        if name in sample:
            out[name] = sample[name] / 127.5 - 1.0
    return out
