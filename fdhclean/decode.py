"""Decode and encode the members of one FDH sample (shared docs `fdh-format.md`).

Every decoder takes the raw member bytes and returns a numpy array in one fixed layout, whatever
storage variant the shard used (masks 0/1 or 0/255, vertices (H, W) or (1, H, W) in any integer
dtype). Anything else is a ValueError, so a caller can turn it into a per-sample error code.
`.npy` members are loaded with `allow_pickle=False`: a shard must never run code.
"""

from __future__ import annotations

import functools
import io
import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from fdhclean.fdh import (
    IMAGE_H,
    IMAGE_W,
    NUM_KEYPOINTS,
    PIXEL_UNITS_THRESHOLD,
    UNITS_NORMALIZED,
    UNITS_PIXELS,
)
from fdhclean.mask_png import grey_values

FDH_SHAPE: tuple[int, int] = (IMAGE_H, IMAGE_W)
KEYPOINTS_SHAPE: tuple[int, int] = (NUM_KEYPOINTS, 3)
UNITS: tuple[str, ...] = (UNITS_NORMALIZED, UNITS_PIXELS)

__all__ = [
    "FDH_SHAPE",
    "KEYPOINTS_SHAPE",
    "UNITS",
    "UnitsDecision",
    "UnitsTally",
    "check_png",
    "decode_image",
    "decode_keypoints",
    "decode_mask",
    "decode_npy",
    "decode_vertices",
    "decide_units",
    "detect_units",
    "encode_npy",
    "encode_png",
    "png_header",
    "from_normalized",
    "to_normalized",
]


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> allowed bit depths (PNG spec, IHDR)
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
PNG_GREY, PNG_RGB, PNG_PALETTE = 0, 2, 3


def png_header(data: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) of a PNG, from its signature and IHDR chunk
    alone (33 bytes, no decompression); ValueError when they are not a valid PNG start.

    Cheap enough for every member refine does not decode, and it sees a decompression bomb's
    dimensions before any decoder allocates them.
    """
    if len(data) < 33 or data[:8] != PNG_SIGNATURE:
        raise ValueError(f"not a PNG ({len(data)} bytes, no PNG signature)")
    length, kind = int.from_bytes(data[8:12], "big"), data[12:16]
    if kind != b"IHDR" or length != 13:
        raise ValueError("not a PNG (the first chunk is not a 13-byte IHDR)")
    if zlib.crc32(data[12:29]) != int.from_bytes(data[29:33], "big"):
        raise ValueError("corrupt PNG header (IHDR CRC mismatch)")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    depth, colour = data[24], data[25]
    if width == 0 or height == 0 or depth not in _PNG_DEPTHS.get(colour, ()):
        raise ValueError(f"invalid PNG header ({width}x{height}, depth {depth}, colour {colour})")
    return width, height, depth, colour


def check_png(data: bytes, shape: tuple[int, int], colours: tuple[int, ...]) -> None:
    """ValueError unless `data` starts as a PNG of `shape` (H, W) with one of `colours`."""
    width, height, _, colour = png_header(data)
    if (height, width) != tuple(shape):
        raise ValueError(f"PNG is {height}x{width} (HxW), expected {shape[0]}x{shape[1]}")
    if colour not in colours:
        raise ValueError(f"PNG has colour type {colour}, expected one of {colours}")


def _open_png(data: bytes, shape: tuple[int, int] | None = None) -> Image.Image:
    """Decode a PNG; with `shape`, its header is checked first, so a PNG of another size
    (a decompression bomb included) is refused before anything is decompressed."""
    try:
        if shape is not None:
            width, height, _, _ = png_header(data)
            _check_shape("PNG", (height, width), shape)
        image = Image.open(io.BytesIO(data), formats=["PNG"])  # no format probing: PNG only
        image.load()
    except Image.DecompressionBombError as exc:  # any size allowed, but past PIL's limit
        raise ValueError(f"decompression bomb refused ({len(data)} bytes): {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"undecodable image ({len(data)} bytes): {exc}") from exc
    return image


def _check_shape(what: str, shape: tuple[int, ...], expected: tuple[int, ...] | None) -> None:
    if expected is not None and tuple(shape) != tuple(expected):
        raise ValueError(f"{what} has shape {tuple(shape)}, expected {tuple(expected)}")


def decode_image(data: bytes, shape: tuple[int, int] | None = FDH_SHAPE) -> np.ndarray:
    """`image.png` -> uint8 (H, W, 3) RGB. `shape=None` accepts any size (resampled copies)."""
    image = _open_png(data, shape)
    if image.mode != "RGB":
        # Grey or palette PNGs are still images; alpha would be silently dropped, so refuse it.
        if "A" in image.getbands() or image.mode in ("I", "I;16", "F"):
            raise ValueError(f"image has mode {image.mode!r}, expected RGB")
        image = image.convert("RGB")
    array = np.asarray(image, dtype=np.uint8)
    expected = None if shape is None else (*shape, 3)
    _check_shape("image", array.shape, expected)
    return array


def decode_mask(data: bytes, shape: tuple[int, int] | None = FDH_SHAPE) -> np.ndarray:
    """A 1-channel mask PNG -> bool (H, W), `value > 0` (stored 0/1 or 0/255, fdh-format.md)."""
    values = grey_values(data, shape)  # plain grey PNGs without PIL (same values, faster)
    if values is not None:
        return values > 0
    image = _open_png(data, shape)
    if len(image.getbands()) != 1:
        raise ValueError(f"mask has mode {image.mode!r}, expected a 1-channel PNG")
    if image.mode == "P":
        # A palette index is not a value: read what the palette says (still 1 channel).
        image = image.convert("L")
    array = np.asarray(image)
    _check_shape("mask", array.shape, shape)
    return array > 0


@functools.lru_cache(maxsize=64)
def _npy_header(prefix: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, data offset) of a `.npy` header, parsed once per layout.

    Parsing the header (a Python literal) costs more than reading a 288x160 array, and every
    sample of a shard repeats the same few headers, so parsed headers are cached.
    """
    fp = io.BytesIO(prefix)
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    return shape, fortran, dtype, fp.tell()


def decode_npy(data: bytes) -> np.ndarray:
    """Load one `.npy` member without pickle; ValueError when it is not a plain array."""
    return _npy_view(data).copy()  # writable, and independent of the member's bytes


def _npy_view(data: bytes) -> np.ndarray:
    """`decode_npy` without the copy: a read-only view of the member's bytes."""
    try:
        if data[:6] != b"\x93NUMPY" or len(data) < 10:
            raise ValueError("not a .npy file (bad magic)")
        header_len = int.from_bytes(data[8:10] if data[6] == 1 else data[8:12], "little")
        end = (10 if data[6] == 1 else 12) + header_len
        shape, fortran, dtype, offset = _npy_header(bytes(data[:end]))
        if dtype.hasobject:
            raise ValueError("object arrays (pickled .npy) are refused")
        count = math.prod(shape)
        flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
        return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
    except (ValueError, OSError, EOFError, TypeError) as exc:
        raise ValueError(f"undecodable .npy ({len(data)} bytes): {exc}") from exc


def decode_vertices(data: bytes, shape: tuple[int, int] | None = FDH_SHAPE) -> np.ndarray:
    """`vertices.npy` -> int32 (H, W) CSE vertex ids; (1, H, W) and any integer dtype accepted."""
    return vertex_map(data, shape).astype(np.int32)


def vertex_map(data: bytes, shape: tuple[int, int] | None = FDH_SHAPE) -> np.ndarray:
    """`vertices.npy` as a read-only (H, W) view in its stored integer dtype, with every check
    of `decode_vertices` (so the same members are refused, with the same messages), but no
    copy and no int32 conversion: refine reads only a few pixels of it.

    The int32 range is checked over the whole map only for dtypes that can exceed it (uint32,
    (u)int64): for the others every value fits, so the check could not fail.
    """
    array = _npy_view(data)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"vertices have shape {array.shape}, expected (H, W) or (1, H, W)")
    _check_shape("vertices", array.shape, shape)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"vertices have dtype {array.dtype}, expected an integer dtype")
    info, own = np.iinfo(np.int32), np.iinfo(array.dtype)
    wide = own.min < info.min or own.max > info.max
    if wide and array.size and (int(array.min()) < info.min or int(array.max()) > info.max):
        raise ValueError(f"vertex ids outside the int32 range (dtype {array.dtype})")
    return array


def decode_keypoints(data: bytes) -> np.ndarray:
    """`keypoints.npy` -> the stored (17, 3) array unchanged (dtype kept for writing back)."""
    array = decode_npy(data)
    _check_shape("keypoints", array.shape, KEYPOINTS_SHAPE)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"keypoints have dtype {array.dtype}, expected a numeric dtype")
    return array


def encode_npy(array: np.ndarray) -> bytes:
    """`np.save` to bytes (no pickle), the inverse of `decode_npy`: the same bytes as
    `np.save`, with the header of each (shape, dtype, order) built once (refine writes three
    small arrays per sample; `np.save` rebuilds and re-validates the header every time)."""
    array = np.asarray(array)
    if array.dtype.hasobject:
        raise ValueError("object arrays are not written (no pickle)")
    fortran = bool(array.flags.f_contiguous and not array.flags.c_contiguous)
    header = _npy_save_header(array.shape, array.dtype, fortran)
    return header + array.tobytes(order="F" if fortran else "C")


@functools.lru_cache(maxsize=64)
def _npy_save_header(shape: tuple[int, ...], dtype: np.dtype, fortran: bool) -> bytes:
    """The header `np.save` writes for such an array: `np.save` of a zero array of the same
    shape, dtype and order, its data cut off (so it is `np.save`'s own header, exactly)."""
    template = np.zeros(shape, dtype=dtype, order="F" if fortran else "C")
    buffer = io.BytesIO()
    np.save(buffer, template, allow_pickle=False)
    saved = buffer.getvalue()
    return saved[: len(saved) - template.nbytes]


def encode_png(array: np.ndarray) -> bytes:
    """uint8 (H, W) or (H, W, 3) array -> PNG bytes (bool masks are stored 0/1)."""
    array = np.asarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ValueError(f"cannot encode {array.dtype} {array.shape} as PNG (uint8 2-D or 3-D)")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _check_units(units: str) -> None:
    if units not in UNITS:
        raise ValueError(f"unknown keypoint units {units!r}, expected one of {UNITS}")


@dataclass(frozen=True)
class UnitsDecision:
    """How a shard's units were decided: each sample with a visible keypoint votes pixels
    (some visible |x| or |y| > 1.5) or normalised; samples without one abstain."""

    units: str
    pixel_votes: int = 0
    normalized_votes: int = 0
    basis: str = "visible"  # "visible": voted; "all": no visible keypoint, every finite value

    @property
    def dissent(self) -> int:
        """Voting samples that disagree with the decision (> 0: an ambiguous shard)."""
        if self.units == UNITS_PIXELS:
            return self.normalized_votes
        return self.pixel_votes


def decide_units(keypoint_arrays: Iterable[np.ndarray]) -> UnitsDecision:
    """Units of a shard's keypoints, decided by what can decide them.

    fdh-format.md: the reference loader reads x/W, y/H, a copy script implies pixels; a value
    above 1.5 means pixels. Only visible keypoints (finite, v > 0) count: an invisible point's
    coordinates are often junk (one invisible x = 1.6 once flipped a whole normalised shard to
    pixels). The majority of voting samples decides; a tie goes to pixels (the old rule: any
    pixel evidence); with no visible keypoint at all, every finite value counts as before.
    """
    tally = UnitsTally()
    for kp in keypoint_arrays:
        tally.add(kp)
    return tally.decision()


class UnitsTally:
    """`decide_units`, one array at a time (refine counts while it streams the shard)."""

    def __init__(self) -> None:
        self.pixel_votes = self.normalized_votes = 0
        self.any_large = False

    def add(self, kp: np.ndarray) -> None:
        self.add_many(np.asarray(kp, dtype=np.float64).reshape(1, -1, 3))

    def add_many(self, kps: np.ndarray) -> None:
        """Add a stack of (N, K, 3) arrays at once: one vote per array, as `add` gives."""
        kps = np.asarray(kps, dtype=np.float64)
        xy = np.abs(kps[..., :2])
        finite = np.isfinite(xy).all(axis=-1)
        large = (xy > PIXEL_UNITS_THRESHOLD).any(axis=-1)  # (NaN compares False)
        self.any_large = self.any_large or bool((large & finite).any())
        visible = finite & np.isfinite(kps[..., 2]) & (kps[..., 2] > 0)
        voting = visible.any(axis=-1)
        pixels = (large & visible).any(axis=-1)  # max |visible x or y| > threshold
        self.pixel_votes += int((voting & pixels).sum())
        self.normalized_votes += int((voting & ~pixels).sum())

    def decision(self) -> UnitsDecision:
        """The decision over every array added so far."""
        pixel, normalized = self.pixel_votes, self.normalized_votes
        if pixel == normalized == 0:
            units = UNITS_PIXELS if self.any_large else UNITS_NORMALIZED
            return UnitsDecision(units, basis="all")
        units = UNITS_PIXELS if pixel >= normalized else UNITS_NORMALIZED
        return UnitsDecision(units, pixel, normalized)


def detect_units(keypoint_arrays: Iterable[np.ndarray]) -> str:
    """Units of a shard's keypoints (`decide_units(...).units`)."""
    return decide_units(keypoint_arrays).units


def to_normalized(kp: np.ndarray, units: str) -> np.ndarray:
    """float64 copy with x/W, y/H when `units` is pixels; v is never touched."""
    _check_units(units)
    out = np.array(kp, dtype=np.float64, copy=True)
    if units == UNITS_PIXELS:
        out[..., 0] /= IMAGE_W
        out[..., 1] /= IMAGE_H
    return out


def from_normalized(kp: np.ndarray, units: str, dtype: np.dtype | type) -> np.ndarray:
    """Inverse of `to_normalized`: back to `units` and `dtype` (the input's, refine-spec 6)."""
    _check_units(units)
    out = np.array(kp, dtype=np.float64, copy=True)
    if units == UNITS_PIXELS:
        out[..., 0] *= IMAGE_W
        out[..., 1] *= IMAGE_H
    if np.issubdtype(np.dtype(dtype), np.integer):
        out = np.rint(out)  # integer storage: round, never truncate towards zero
    return out.astype(dtype)
