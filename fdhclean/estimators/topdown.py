"""Top-down crop geometry shared by the ViTPose backends (refine-spec section 7), numpy + scipy.

Everything here runs in DataLoader-style worker processes, so it imports neither torch nor
transformers (nor OpenCV, which this environment does not have: its warp is reproduced below).

The default reproduces the official ViTPose test pipeline (ViTAE-Transformer/ViTPose, mmpose
0.x) number for number, checked against `shared/data/vitpose_reference_vectors.npz`:
- box -> centre/scale: `_xywh2cs` (test mode) = `apis/inference.py` `_box2cs`: centre
  float32(x + w/2, y + h/2); the box is widened or heightened to 3:4; scale = float32(w/200,
  h/200) * 1.25 (mmpose keeps the box side as scale * 200);
- warp matrix: `get_warp_matrix(0, centre*2, image_size-1, scale*200)` (UDP, float32);
- crop: `cv2.warpAffine(img, M, (192, 256), flags=INTER_LINEAR)`, constant-0 border, which
  `warp_crop_cv2` reproduces bit for bit in numpy (fixed-point positions and weights);
- flip test: the crop is mirrored, its heatmaps mirrored back with left/right channels swapped,
  without the one-pixel heatmap shift (ViTPose's configs set `shift_heatmap=False`).

Frames. `frame="official"` (default): box numbers go to the official rule unchanged and
keypoints come back in the official frame, where integer coordinates are pixel CENTRES (pixel c
covers [c - 0.5, c + 0.5]). `frame="half-pixel"`: the project's earlier frame, where pixel c
covers [c, c + 1): boxes are moved by -0.5 before the rule and keypoints by +0.5 after it, which
makes the whole pipeline exactly mirror-equivariant for integer exclusive-max boxes.

The `transformers` decoding mode also crops as transformers' `VitPoseImageProcessor` does
(`scipy.ndimage.affine_transform`, order 1), so that mode equals that library's pipeline.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from fdhclean import fdh

INPUT_W = 192
INPUT_H = 256
HEATMAP_W = 48
HEATMAP_H = 64
BOX_PADDING = 1.25
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
FRAMES = ("official", "half-pixel")
# The frame of everything fdhclean writes for FDH: its stored keypoints (flip x -> 1 - x,
# visible iff 0 <= x <= 1), the COCO results refine-spec reads (pixel i covers [i, i+1)) and
# the vote's floor(x * W) pixel. `refine` and `estimate` ask the estimator for it by default
# (`--estimator-option frame=official` keeps ViTPose's own frame, 0.5 px smaller).
FDH_FRAME = "half-pixel"
# cv2's warpAffine fixed point (imgwarp.cpp): positions in 1/32 px (INTER_BITS = 5) computed
# with AB_BITS = 10 bits; bilinear weights in 1/32768 (INTER_REMAP_COEF_BITS = 15).
_INTER_BITS = 5
_AB_BITS = 10
_TAB = 1 << _INTER_BITS
_FLIP = np.asarray(fdh.FLIP_PERMUTATION)


def frame_offset(frame: str) -> float:
    """What to add to an official-frame coordinate to get one in `frame`."""
    if frame not in FRAMES:
        raise ValueError(f"unknown keypoint frame {frame!r}; expected one of {FRAMES}")
    return 0.0 if frame == "official" else 0.5


def center_scale_xywh(box_xywh) -> tuple[np.ndarray, np.ndarray]:
    """Official `_xywh2cs` (test mode): (x, y, w, h) -> float32 centre (2,), scale (2,) in
    mmpose units (box side / 200), padded 1.25 and fixed to the 192:256 aspect."""
    x, y, w, h = (float(v) for v in box_xywh[:4])
    aspect = INPUT_W / INPUT_H
    center = np.array([x + w * 0.5, y + h * 0.5], dtype=np.float32)
    if w > aspect * h:
        h = w * 1.0 / aspect
    elif w < aspect * h:
        w = h * aspect
    scale = np.array([w / 200.0, h / 200.0], dtype=np.float32) * np.float32(BOX_PADDING)
    return center, scale


def box_meta(box, frame: str = "official") -> np.ndarray:
    """A (x0, y0, x1, y1) box -> float32 meta (4,) = centre x, y, scale x, y (official units).

    The box is converted to xywh as mmpose's `bbox_xyxy2xywh` does (w = x1 - x0, no +1). A box
    with no width or no height has no person in it and is refused (ValueError).
    """
    x0, y0, x1, y1 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(-1)[:4])
    if not (x1 > x0 and y1 > y0) or not all(map(math.isfinite, (x0, y0, x1, y1))):
        raise ValueError(f"empty or non-finite person box {(x0, y0, x1, y1)}")
    shift = frame_offset(frame)  # half-pixel boxes live 0.5 px right/down of official ones
    center, scale = center_scale_xywh((x0 - shift, y0 - shift, x1 - x0, y1 - y0))
    return np.concatenate([center, scale])


def warp_matrix(center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Official `get_warp_matrix(0, centre * 2, image_size - 1, scale * 200)`: float32 (2, 3),
    image -> crop. The float32/float64 mix follows the official expression term by term."""
    size_input = np.asarray(center, dtype=np.float32) * np.float32(2.0)
    size_target = np.asarray(scale, dtype=np.float32) * np.float32(200.0)
    size_dst = np.array([INPUT_W, INPUT_H], dtype=np.int64) - 1.0  # float64, as image_size - 1.0
    scale_x = size_dst[0] / size_target[0]
    scale_y = size_dst[1] / size_target[1]
    m = np.zeros((2, 3), dtype=np.float32)
    m[0, 0] = 1.0 * scale_x
    m[1, 1] = 1.0 * scale_y
    # cos(0) = 1 and sin(0) = 0 terms kept so the float32 rounding happens where it does there
    m[0, 2] = scale_x * (-0.5 * size_input[0] * 1.0 + 0.5 * size_input[1] * 0.0
                         + 0.5 * size_target[0])  # fmt: skip
    m[1, 2] = scale_y * (-0.5 * size_input[0] * 0.0 - 0.5 * size_input[1] * 1.0
                         + 0.5 * size_target[1])  # fmt: skip
    return m


def _inverse_affine(m: np.ndarray) -> np.ndarray:
    """cv2.warpAffine's own inversion (float64, same operation order)."""
    a = m.astype(np.float64).reshape(-1).copy()
    d = a[0] * a[4] - a[1] * a[3]
    d = 1.0 / d if d != 0 else 0.0
    a11, a22 = a[4] * d, a[0] * d
    a[0], a[1], a[3], a[4] = a11, a[1] * -d, a[3] * -d, a22
    b1 = -a[0] * a[2] - a[1] * a[5]
    b2 = -a[3] * a[2] - a[4] * a[5]
    a[2], a[5] = b1, b2
    return a


def warp_crop_cv2(image: np.ndarray, m: np.ndarray, size=(INPUT_W, INPUT_H)) -> np.ndarray:
    """`cv2.warpAffine(image, m, size, flags=INTER_LINEAR)` (BORDER_CONSTANT 0) for uint8 RGB.

    cv2 maps each output pixel back with the inverted matrix in fixed point: per-column and
    per-row terms rounded to 1/1024 px (cvRound = round half to even), a rounding delta of
    1/64 px, then truncated to 1/32 px; the 2x2 neighbours get integer weights
    (32 - fy)(32 - fx) ... (sum 1024, exact: cv2's 1/32768 table is these times 32) and the
    sum is rounded to uint8. Neighbours outside the image count as 0. Reads `image` in place.
    """
    out_w, out_h = size
    a = _inverse_affine(m)
    scale = float(1 << _AB_BITS)
    xs, ys = np.arange(out_w, dtype=np.float64), np.arange(out_h, dtype=np.float64)
    round_delta = (1 << _AB_BITS) // _TAB // 2
    adelta = np.rint(a[0] * xs * scale).astype(np.int64)
    bdelta = np.rint(a[3] * xs * scale).astype(np.int64)
    x0 = np.rint((a[1] * ys + a[2]) * scale).astype(np.int64) + round_delta
    y0 = np.rint((a[4] * ys + a[5]) * scale).astype(np.int64) + round_delta
    shift = _AB_BITS - _INTER_BITS
    if a[1] == 0 and a[3] == 0:  # no rotation (always, at test time): x by column, y by row
        fx_all = ((x0[:1] + adelta) >> shift)[None, :]
        fy_all = ((y0 + bdelta[:1]) >> shift)[:, None]
    else:
        fx_all = (x0[:, None] + adelta[None, :]) >> shift
        fy_all = (y0[:, None] + bdelta[None, :]) >> shift
    sx, sy = fx_all >> _INTER_BITS, fy_all >> _INTER_BITS
    fx, fy = (fx_all & (_TAB - 1)).astype(np.int32), (fy_all & (_TAB - 1)).astype(np.int32)
    h, w, c = image.shape
    # a C-contiguous frame is read as a (H*W, C) view: np.take by pixel is ~3x faster than 3-d
    # fancy indexing; anything else (a strided view) is indexed in place, never copied
    flat = image.reshape(h * w, c) if image.flags.c_contiguous else None
    acc = np.zeros((out_h, out_w, c), dtype=np.int32)  # <= 255 * 1024
    for dy, wy in ((0, _TAB - fy), (1, fy)):
        py = sy + dy
        for dx, wx in ((0, _TAB - fx), (1, fx)):
            px = sx + dx
            inside = (px >= 0) & (px < w) & (py >= 0) & (py < h)
            cy, cx = np.clip(py, 0, h - 1), np.clip(px, 0, w - 1)
            if flat is not None:
                idx = np.broadcast_to(cy * w + cx, (out_h, out_w)).ravel()
                vals = np.take(flat, idx, axis=0).reshape(out_h, out_w, c)
            else:
                vals = image[cy, cx]
            acc += vals * (wy * wx * inside)[..., None]
    half = 1 << (2 * _INTER_BITS - 1)
    return np.clip((acc + half) >> (2 * _INTER_BITS), 0, 255).astype(np.uint8)


def warp_crop_scipy(image: np.ndarray, meta: np.ndarray) -> np.ndarray:
    """transformers' crop: bilinear `scipy.ndimage.affine_transform` (float positions), zeros
    outside; output pixel (v, u) samples x = cx - sw/2 + u * sw / 191 (same for y)."""
    cx, cy, sx, sy = (float(v) for v in meta)
    w, h = sx * 200.0, sy * 200.0
    matrix = np.array([h / (INPUT_H - 1), w / (INPUT_W - 1)])
    offset = np.array([cy - h / 2, cx - w / 2])
    channels = [
        ndimage.affine_transform(
            image[..., c], matrix, offset=offset, output_shape=(INPUT_H, INPUT_W), order=1,
            mode="constant", cval=0.0,
        )
        for c in range(image.shape[-1])
    ]  # fmt: skip
    return np.stack(channels, axis=-1)


def crop(image: np.ndarray, meta: np.ndarray, method: str = "cv2") -> np.ndarray:
    """uint8 (H, W, 3) image + meta -> uint8 (256, 192, 3) crop by the chosen library's warp."""
    if method == "cv2":
        return warp_crop_cv2(image, warp_matrix(meta[:2], meta[2:]))
    if method == "scipy":
        return warp_crop_scipy(image, meta)
    raise ValueError(f"unknown crop method {method!r}; expected 'cv2' or 'scipy'")


def normalize(crop_rgb: np.ndarray) -> np.ndarray:
    """uint8 (256, 192, 3) RGB -> float32 (3, 256, 192): ToTensor (/255) + ImageNet mean/std."""
    x = crop_rgb.astype(np.float32) / np.float32(255.0)
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def check_image(image: np.ndarray) -> None:
    """ValueError unless `image` is a uint8 (H, W, 3) RGB array."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}")


def preprocess(
    image: np.ndarray, box, *, method: str = "cv2", frame: str = "official"
) -> tuple[np.ndarray, np.ndarray]:
    """One person -> (model input float32 (3, 256, 192), meta float32 (4,)). Picklable with
    functools.partial, so crop workers can run it."""
    check_image(image)
    meta = box_meta(box, frame)
    return normalize(crop(image, meta, method)), meta


def unflip_heatmaps(heatmaps: np.ndarray) -> np.ndarray:
    """Heatmaps of a mirrored crop (N, 17, H, W) -> the original crop's frame (swap + mirror),
    the official `flip_back` for GaussianHeatmap targets."""
    return heatmaps[:, _FLIP, :, ::-1]
