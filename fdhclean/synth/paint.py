"""Turn a figure's label map into the FDH pixel members: image, masks and CSE vertex ids.

Masks follow fdh-format.md: E_mask = body surface, maskrcnn_mask = 1 where there is no person
(undilated), mask = 1 on known background (the person dilated by MASK_DILATION_PX is unknown).
Vertex ids are drawn per pixel from the pool of the pixel's part (`mesh.part_pools`), so a
correct keypoint is correct through the part table as well; background ids are uniform.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from fdhclean.fdh import IMAGE_H, IMAGE_W, PART_NAMES
from fdhclean.synth.body import Figure

H, W = IMAGE_H, IMAGE_W
MASK_DILATION_PX = 4
_GRID = (7, 5)  # coarse background colour grid, interpolated to the image


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Linear interpolation weights (n_out, n_in) between evenly spaced grid nodes."""
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    lo = np.minimum(pos.astype(np.int64), n_in - 2)
    frac = pos - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] = 1.0 - frac
    m[np.arange(n_out), lo + 1] = frac
    return m


_ROWS, _COLS = _interp_matrix(H, _GRID[0]), _interp_matrix(W, _GRID[1])
_Y, _X = np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64)

# Colour groups: skin, shirt, trousers, shoes (each part gets its group's colour, shaded).
_GROUP = {
    "head": 0, "neck": 0, "leftHand": 0, "rightHand": 0, "leftHandIndex1": 0,
    "rightHandIndex1": 0, "leftForeArm": 0, "rightForeArm": 0, "leftShoulder": 1,
    "rightShoulder": 1, "leftArm": 1, "rightArm": 1, "spine": 1, "spine1": 1, "spine2": 1,
    "hips": 2, "leftUpLeg": 2, "rightUpLeg": 2, "leftLeg": 2, "rightLeg": 2, "leftFoot": 3,
    "rightFoot": 3, "leftToeBase": 3, "rightToeBase": 3,
}  # fmt: skip
_PART_GROUP = np.array([_GROUP[name] for name in PART_NAMES])
_SKIN = np.array([[241, 194, 167], [224, 172, 105], [198, 134, 66], [141, 85, 36], [92, 58, 33]])


def background(rng: np.random.Generator) -> np.ndarray:
    """float32 (H, W, 3) texture: a smooth colour field, oriented stripes and a checker.

    Everything is separable (outer products, two 2-D matmuls) and float32: the background is
    most of the drawing time, and einsum or batched matmuls are ten times slower.
    """
    grid = rng.uniform(20.0, 235.0, size=(*_GRID, 3))
    across = grid.transpose(0, 2, 1).reshape(-1, _GRID[1]) @ _COLS.T  # (gy * 3, W)
    field = (_ROWS @ across.reshape(_GRID[0], -1)).astype(np.float32).reshape(H, 3, W)
    angle, period = rng.uniform(0.0, np.pi), rng.uniform(6.0, 30.0)
    fx = (_X * np.cos(angle) * 2 * np.pi / period).astype(np.float32)
    fy = (_Y * np.sin(angle) * 2 * np.pi / period).astype(np.float32)
    # sin(a + b) = sin a cos b + cos a sin b: stripes as two outer products.
    stripes = np.sin(fy)[:, None] * np.cos(fx)[None, :] + np.cos(fy)[:, None] * np.sin(fx)[None]
    cell = int(rng.integers(8, 24))
    checker = ((np.arange(H)[:, None] // cell + np.arange(W)[None, :] // cell) % 2).astype(
        np.float32
    )
    texture = stripes * np.float32(rng.uniform(10.0, 35.0)) + checker * np.float32(
        rng.uniform(-25.0, 25.0)
    )
    tint = rng.uniform(0.3, 1.0, size=3).astype(np.float32)
    field += texture[:, None, :] * tint[None, :, None]
    return np.ascontiguousarray(field.transpose(0, 2, 1))


def paint_image(figure: Figure, rng: np.random.Generator) -> np.ndarray:
    """uint8 (H, W, 3): textured background, hair, the figure's parts in shaded group colours."""
    image = background(rng)
    colours = np.concatenate([_SKIN[rng.integers(len(_SKIN))][None], rng.uniform(0, 255, (3, 3))])
    part_colour = colours[_PART_GROUP] * rng.uniform(0.85, 1.1, size=(len(PART_NAMES), 1))
    hair_only = figure.hair & (figure.labels < 0)
    image[hair_only] = rng.uniform(10.0, 120.0, size=3)
    body = figure.labels >= 0
    image[body] = part_colour[figure.labels[body]]
    return np.clip(image, 0.0, 255.0).astype(np.uint8)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation with a disc of `radius` pixels (numpy only, on the mask's bounding box)."""
    rows, cols = np.nonzero(mask)
    out = np.zeros_like(mask)
    if rows.size == 0:
        return out
    r0, r1 = max(rows.min() - radius, 0), min(rows.max() + radius + 1, mask.shape[0])
    c0, c1 = max(cols.min() - radius, 0), min(cols.max() + radius + 1, mask.shape[1])
    src = np.pad(mask[r0:r1, c0:c1], radius)
    # Horizontal dilations by 0..radius (incremental), then one vertical shift per disc row:
    # 2 * radius + (2 * radius + 1) array ORs instead of one per disc pixel.
    wide = [src]
    for d in range(1, radius + 1):
        prev = wide[-1]
        step = prev.copy()
        step[:, d:] |= src[:, :-d]
        step[:, :-d] |= src[:, d:]
        wide.append(step)
    view = out[r0:r1, c0:c1]
    h, w = view.shape
    for dy in range(-radius, radius + 1):
        half = int(np.floor(np.sqrt(radius * radius - dy * dy)))
        view |= wide[half][radius + dy : radius + dy + h, radius : radius + w]
    return out


def masks(figure: Figure) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(E_mask, mask, maskrcnn_mask) as bool (H, W), meanings as in fdh-format.md."""
    e_mask = figure.labels >= 0
    person = e_mask | figure.hair
    return e_mask, ~dilate(person, MASK_DILATION_PX), ~person


@dataclass(frozen=True)
class VertexPools:
    """Flattened per-part id pools (PART_NAMES order) plus a last pool of every id."""

    flat: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray

    @classmethod
    def build(cls, pools: list[np.ndarray], num_vertices: int) -> VertexPools:
        sizes = np.array([p.size for p in pools] + [num_vertices], dtype=np.int64)
        if (sizes == 0).any():
            raise RuntimeError("a body part has no vertex to paint with")
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        flat = np.concatenate([*pools, np.arange(num_vertices, dtype=np.int64)])
        return cls(flat, offsets, sizes)

    def draw(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """int64 (H, W) CSE ids: from the pixel's part pool on the body, uniform elsewhere."""
        part = np.where(labels >= 0, labels, self.sizes.size - 1).astype(np.int64)
        size = self.sizes[part]
        pick = np.minimum((rng.random(labels.shape) * size).astype(np.int64), size - 1)
        return self.flat[self.offsets[part] + pick]


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_bytes(array: np.ndarray) -> bytes:
    """uint8 (H, W) grey or (H, W, 3) RGB -> PNG with the Sub filter and zlib level 1.

    Same pixels as `fdhclean.decode.encode_png` (any PNG reader decodes them), three times
    faster on these images: encoding is the largest cost of generating a sample.
    """
    array = np.ascontiguousarray(array, dtype=np.uint8)
    h, w = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    if array.ndim not in (2, 3) or channels not in (1, 3):
        raise ValueError(f"cannot encode an array of shape {array.shape} as PNG")
    rows = array.reshape(h, w * channels)
    filtered = rows.copy()
    filtered[:, channels:] -= rows[:, :-channels]  # filter type 1 (Sub), modulo 256
    raw = np.concatenate([np.ones((h, 1), dtype=np.uint8), filtered], axis=1).tobytes()
    header = struct.pack(">IIBBBBB", w, h, 8, 0 if channels == 1 else 2, 0, 0, 0)
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(raw, 1)),
            _chunk(b"IEND", b""),
        ]
    )
