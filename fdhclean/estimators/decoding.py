"""Heatmaps -> keypoints: argmax + DARK-UDP, in three modes named after what they reproduce.

All three take the argmax of each heatmap (a map whose maximum is <= 0 starts from (-1, -1), as
mmpose's `_get_max_preds` marks it), blur, clip to [1e-3, 50], take the log, and move by one
Newton step on edge-padded finite differences read from the FLATTENED padded maps, exactly as
`post_dark_udp` indexes them (so a (-1, -1) start reads the previous map's last padded row, as
the official code does). They differ only in the blur (and, for `transformers`, the crop; see
`topdown`):
- `vitpose` (default): the official ViTPose / mmpose 0.x `post_dark_udp`:
  `cv2.GaussianBlur(h, (11, 11), 0)` in place, i.e. sigma 2.0, BORDER_REFLECT_101, float32, no
  rescale;
- `mmpose1`: mmpose 1.x `refine_keypoints_dark_udp` -> `gaussian_blur`: each map zero-padded by
  5, blurred with the same kernel, cropped back and rescaled to keep its maximum (an all-zero
  map keeps gain 1 here where mmpose 1.x divides 0 by 0 into NaN);
- `transformers`: transformers 5.x `post_process_pose_estimation` (scipy `gaussian_filter`,
  sigma 0.8, radius 5, reflect border, no rescale).
Then the UDP transform: x = px * sw / 47 + cx - sw / 2 (sw = scale * 200), likewise y; the score
is the map's maximum. Arithmetic is float32 as in the official code.

Maps are flattened per sample (17 maps) behind one empty map (log 1e-3 everywhere), not per
batch as mmpose does for one image's boxes, so results do not depend on how samples are
batched. The two differ only where a sample's first map has maximum <= 0 (score <= 0, never a
visible keypoint) and the previous box's last map has mass on its last rows; the official
vectors (which avoid that case) are reproduced exactly.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from fdhclean.estimators.topdown import frame_offset

DECODINGS = ("vitpose", "mmpose1", "transformers")
DARK_KERNEL = 11


def cv2_gaussian_kernel(size: int) -> np.ndarray:
    """cv2.getGaussianKernel(size, 0, CV_32F): sigma = 0.3 * ((size - 1) / 2 - 1) + 0.8,
    computed in float64, normalised, stored float32."""
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    x = np.arange(size) - (size - 1) * 0.5
    k = np.exp((-0.5 / (sigma * sigma)) * x * x)
    return (k / k.sum()).astype(np.float32)


def _blur_reflect101(maps: np.ndarray) -> np.ndarray:
    """cv2.GaussianBlur(float32 map, (11, 11), 0): rows then columns, reflect-101 border
    (scipy's `mirror`), float32 between the passes."""
    kernel = cv2_gaussian_kernel(DARK_KERNEL).astype(np.float64)
    out = ndimage.correlate1d(maps, kernel, axis=-1, mode="mirror", output=np.float32)
    return ndimage.correlate1d(out, kernel, axis=-2, mode="mirror", output=np.float32)


def _blur_zero_rescale(maps: np.ndarray) -> np.ndarray:
    """mmpose 1.x `gaussian_blur`: zero border, then each map rescaled to its own maximum."""
    kernel = cv2_gaussian_kernel(DARK_KERNEL).astype(np.float64)
    out = ndimage.correlate1d(maps, kernel, axis=-1, mode="constant", output=np.float32)
    out = ndimage.correlate1d(out, kernel, axis=-2, mode="constant", output=np.float32)
    before = maps.max(axis=(-2, -1), keepdims=True)
    after = out.max(axis=(-2, -1), keepdims=True)
    gain = np.divide(before, after, out=np.ones_like(after), where=after != 0)
    return (out * gain).astype(np.float32)


def _blur_scipy(maps: np.ndarray) -> np.ndarray:
    radius = (DARK_KERNEL - 1) // 2
    return np.stack(
        [ndimage.gaussian_filter(h, sigma=0.8, radius=radius, mode="reflect") for h in maps]
    ).astype(np.float32)


_BLURS = {"vitpose": _blur_reflect101, "mmpose1": _blur_zero_rescale, "transformers": _blur_scipy}


def check_decoding(decoding: str) -> str:
    """The mode, or a ValueError listing the modes."""
    if decoding not in DECODINGS:
        raise ValueError(f"unknown decoding {decoding!r}; expected one of {DECODINGS}")
    return decoding


def max_preds(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`_get_max_preds` for (K, H, W): float32 (K, 2) argmax (x, y), (-1, -1) where the maximum
    is <= 0; float32 (K,) maxima. np.argmax takes the first maximum, as the official code."""
    k, _, w = maps.shape
    flat = maps.reshape(k, -1)
    idx = flat.argmax(-1)
    maxvals = flat[np.arange(k), idx].astype(np.float32)
    preds = np.stack([idx % w, idx // w], -1).astype(np.float32)
    preds[maxvals <= 0] = -1.0
    return preds, maxvals


def dark_udp(coords: np.ndarray, maps: np.ndarray, decoding: str = "vitpose") -> np.ndarray:
    """One sample's official `post_dark_udp`: float32 coords (K, 2), maps (K, H, W) -> (K, 2)."""
    k, h, w = maps.shape
    logh = np.log(np.clip(_BLURS[check_decoding(decoding)](maps), 0.001, 50.0))
    pad = np.pad(logh, ((0, 0), (1, 1), (1, 1)), mode="edge")
    # one empty map in front: what a (-1, -1) start of map 0 reads instead of another sample's
    pad = np.concatenate([np.full_like(pad[:1], np.log(np.float32(0.001))), pad]).reshape(-1)
    index = coords[:, 0] + 1 + (coords[:, 1] + 1) * (w + 2)
    index = (index + (w + 2) * (h + 2) * np.arange(1, k + 1)).astype(int)
    i_, ix1, ix1_ = pad[index], pad[index + 1], pad[index - 1]
    iy1, iy1_ = pad[index + w + 2], pad[index - 2 - w]
    ix1y1, ix1_y1_ = pad[index + w + 3], pad[index - w - 3]
    dx = 0.5 * (ix1 - ix1_)
    dy = 0.5 * (iy1 - iy1_)
    dxx = ix1 - 2 * i_ + ix1_
    dyy = iy1 - 2 * i_ + iy1_
    dxy = 0.5 * (ix1y1 - ix1 - iy1 + i_ + i_ - ix1_ - iy1_ + ix1_y1_)
    hessian = np.stack([dxx, dxy, dxy, dyy], -1).reshape(k, 2, 2)
    hessian = np.linalg.inv(hessian + np.finfo(np.float32).eps * np.eye(2))
    step = np.einsum("kmn,kn->km", hessian, np.stack([dx, dy], -1))
    out = coords.astype(np.float32).copy()
    out -= step  # float64 step subtracted into float32, as the official in-place `-=`
    return out


def transform_preds(coords: np.ndarray, meta: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Official `transform_preds(..., use_udp=True)`, float32: heatmap px -> image px."""
    center = np.asarray(meta[:2], dtype=np.float32)
    scale = np.asarray(meta[2:], dtype=np.float32) * np.float32(200.0)
    scale_x = scale[0] / (hw[1] - 1.0)
    scale_y = scale[1] / (hw[0] - 1.0)
    out = np.ones_like(coords)
    out[:, 0] = coords[:, 0] * scale_x + center[0] - scale[0] * 0.5
    out[:, 1] = coords[:, 1] * scale_y + center[1] - scale[1] * 0.5
    return out


def decode(
    heatmaps: np.ndarray, metas: np.ndarray, decoding: str = "vitpose", frame: str = "official"
) -> np.ndarray:
    """Heatmaps (N, 17, 64, 48) + metas (N, 4) (centre, scale: `topdown.box_meta`) -> float32
    (N, 17, 3): x, y in pixels of the full image (in `frame`), score = heatmap maximum."""
    check_decoding(decoding)
    shift = np.float32(frame_offset(frame))
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    n, k, hh, hw = heatmaps.shape
    out = np.zeros((n, k, 3), dtype=np.float32)
    for i in range(n):
        coords, scores = max_preds(heatmaps[i])
        coords = dark_udp(coords, heatmaps[i], decoding)
        out[i, :, :2] = transform_preds(coords, metas[i], (hh, hw)) + shift
        out[i, :, 2] = scores
    return out
