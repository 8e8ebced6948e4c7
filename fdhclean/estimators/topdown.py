"""Top-down pose maths shared by the ViTPose backends (refine-spec section 7), numpy + scipy only.

Everything here runs in DataLoader-style worker processes, so it imports neither torch nor
transformers.

Coordinate frames. The project's convention: pixel i covers [i, i+1), so its centre is i + 0.5.
ViTPose, mmpose and transformers put pixel centres on integers (cv2 / scipy sampling). A box
(x0, y0, x1, y1) with exclusive max therefore spans [x0 - 0.5, x1 - 0.5) in the library frame,
and a library coordinate becomes a project coordinate by adding 0.5. With this shift the whole
pipeline is exactly mirror-equivariant (a mirrored image and box give the mirrored crop).

Geometry is the "unbiased data processing" (UDP) one that ViTPose uses: the padded box (x1.25,
aspect 3:4) maps its edges onto the centres of the first and last input pixels (192x256), and
heatmap column j (of 48) maps to u = j * 191 / 47. Flip test: the crop is mirrored, its heatmaps
are mirrored back and left/right channels swapped, without the one-pixel heatmap shift (mmpose's
ViTPose configs use `shift_heatmap=False`; with UDP the flip is exact).

Sub-pixel refinement is mmpose's DARK-UDP (`refine_keypoints_dark_udp`): blur each heatmap with
an 11-tap Gaussian, clip to [1e-3, 50], take the log, and move from the argmax by one Newton step.
Two blur variants exist and both are implemented:
- "mmpose" (default, what `vitpose-mmpose` computes): zero-padded cv2 Gaussian, kernel 11
  (sigma 2.0 by cv2's rule), rescaled so each heatmap keeps its maximum (mmpose 1.x
  `gaussian_blur`);
- "transformers": transformers 5.x `post_process_pose_estimation` (scipy `gaussian_filter`,
  sigma 0.8, radius 5, reflect border, no rescale). Used to prove equality with the library.
"""

from __future__ import annotations

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
DARK_KERNEL = 11
BLUR_MODES = ("mmpose", "transformers")
_FLIP = np.asarray(fdh.FLIP_PERMUTATION)


def box_center_scale(box: np.ndarray) -> np.ndarray:
    """(x0, y0, x1, y1) exclusive max -> (cx, cy, w, h) of the padded 3:4 crop, library frame.

    Same arithmetic as mmpose's `bbox_xyxy2cs` + `_fix_aspect_ratio` and transformers'
    `box_to_center_and_scale` (scale x 200 undone); the -0.5 moves the centre into the frame
    where pixel centres are integers.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    if w <= 0 or h <= 0:
        raise ValueError(f"empty person box {tuple(box)}")
    aspect = INPUT_W / INPUT_H
    if w > aspect * h:
        h = w / aspect
    elif w < aspect * h:
        w = h * aspect
    cx, cy = (x0 + x1) / 2 - 0.5, (y0 + y1) / 2 - 0.5
    return np.array([cx, cy, w * BOX_PADDING, h * BOX_PADDING], dtype=np.float64)


def warp_crop(image: np.ndarray, meta: np.ndarray) -> np.ndarray:
    """Bilinear UDP crop of a uint8 (H, W, 3) image to uint8 (256, 192, 3); zeros outside.

    Output pixel (v, u) samples the image at x = cx - w/2 + u * w / 191 (same for y), the
    inverse of mmpose's `get_udp_warp_matrix`. Rounded back to uint8 like cv2.warpAffine.
    """
    cx, cy, w, h = (float(v) for v in meta)
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


def normalize(crop: np.ndarray) -> np.ndarray:
    """uint8 (256, 192, 3) RGB -> float32 (3, 256, 192), ImageNet mean/std."""
    x = crop.astype(np.float32) / np.float32(255.0)
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One sample -> (model input float32 (3, 256, 192), meta float64 (4,) = cx, cy, w, h)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}")
    meta = box_center_scale(np.asarray(box))
    return normalize(warp_crop(image, meta)), meta


def unflip_heatmaps(heatmaps: np.ndarray) -> np.ndarray:
    """Heatmaps of a mirrored crop (N, 17, H, W) -> the original crop's frame (swap + mirror)."""
    return heatmaps[:, _FLIP, :, ::-1]


def _cv2_gaussian_kernel(size: int) -> np.ndarray:
    """cv2.getGaussianKernel(size, 0): sigma = 0.3 * ((size - 1) / 2 - 1) + 0.8."""
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    x = np.arange(size) - (size - 1) / 2
    k = np.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def _blur(heatmaps: np.ndarray, mode: str) -> np.ndarray:
    """Blur (K, H, W) heatmaps as the chosen library does before DARK (see module docstring)."""
    if mode == "transformers":
        radius = (DARK_KERNEL - 1) // 2
        return np.stack(
            [ndimage.gaussian_filter(h, sigma=0.8, radius=radius, mode="reflect") for h in heatmaps]
        )
    if mode != "mmpose":
        raise ValueError(f"unknown DARK blur mode {mode!r}; expected one of {BLUR_MODES}")
    kernel = _cv2_gaussian_kernel(DARK_KERNEL)
    out = ndimage.correlate1d(heatmaps.astype(np.float64), kernel, axis=1, mode="constant")
    out = ndimage.correlate1d(out, kernel, axis=2, mode="constant")
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = heatmaps.reshape(len(heatmaps), -1).max(1) / out.reshape(len(out), -1).max(1)
    return (out * gain[:, None, None]).astype(np.float32)


def dark_udp(coords: np.ndarray, heatmaps: np.ndarray, mode: str) -> np.ndarray:
    """One Newton step on the log of the blurred heatmap at integer coords (K, 2) -> (K, 2)."""
    logh = np.log(np.clip(_blur(heatmaps, mode), 1e-3, 50.0))
    pad = np.pad(logh, ((0, 0), (1, 1), (1, 1)), mode="edge")
    k = np.arange(len(coords))
    x = coords[:, 0].astype(int) + 1
    y = coords[:, 1].astype(int) + 1
    c = pad[k, y, x]
    xp, xm = pad[k, y, x + 1], pad[k, y, x - 1]
    yp, ym = pad[k, y + 1, x], pad[k, y - 1, x]
    dx, dy = 0.5 * (xp - xm), 0.5 * (yp - ym)
    dxx, dyy = xp - 2 * c + xm, yp - 2 * c + ym
    dxy = 0.5 * (pad[k, y + 1, x + 1] - xp - yp + 2 * c - xm - ym + pad[k, y - 1, x - 1])
    hessian = np.stack([np.stack([dxx, dxy], -1), np.stack([dxy, dyy], -1)], -2)
    hessian = hessian + np.finfo(np.float32).eps * np.eye(2)
    step = np.einsum("kmn,kn->km", np.linalg.inv(hessian), np.stack([dx, dy], -1))
    return coords - step


def decode(heatmaps: np.ndarray, metas: np.ndarray, blur: str = "mmpose") -> np.ndarray:
    """Heatmaps (N, 17, 64, 48) + crop metas (N, 4) -> float32 (N, 17, 3): x, y (project frame,
    pixels of the full image), score = heatmap maximum.

    Keypoints whose maximum is <= 0 keep their argmax location unrefined (mmpose marks them -1
    and refines garbage; their score already says they are not found).
    """
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    n, k, hh, hw = heatmaps.shape
    flat = heatmaps.reshape(n, k, -1)
    idx = flat.argmax(-1)
    scores = np.take_along_axis(flat, idx[..., None], -1)[..., 0]
    out = np.zeros((n, k, 3), dtype=np.float32)
    for i in range(n):
        coords = np.stack([idx[i] % hw, idx[i] // hw], -1).astype(np.float64)
        refined = dark_udp(coords, heatmaps[i], blur)
        good = scores[i] > 0
        coords[good] = refined[good]
        cx, cy, w, h = metas[i]
        out[i, :, 0] = coords[:, 0] * w / (hw - 1) + cx - w / 2 + 0.5
        out[i, :, 1] = coords[:, 1] * h / (hh - 1) + cy - h / 2 + 0.5
        out[i, :, 2] = scores[i]
    return out
