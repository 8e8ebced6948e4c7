"""The one record type of the refine chain, and the decode step that fills it.

Decoding reads only what the vote needs: `keypoints.npy`, `vertices.npy`, `E_mask.png`, and
`mask.png` only when E_mask is empty (for the person box). The image is never decoded here: with
a model, `refine.estimates.ModelEstimates` decodes it for the `ok` samples, at this `Sample.box`.
A sample that cannot be voted gets a status code (refine-spec section 4) and is later copied
unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from fdhclean.box import BOX_SOURCES, person_box, region_box
from fdhclean.decode import PNG_GREY, PNG_PALETTE, PNG_RGB, check_png, vertex_map
from fdhclean.fdh import (
    IMAGE_H,
    IMAGE_W,
    MEMBER_EMASK,
    MEMBER_IMAGE,
    MEMBER_KEYPOINTS,
    MEMBER_MASK,
    MEMBER_MASKRCNN,
    MEMBER_VERTICES,
    NUM_KEYPOINTS,
)
from fdhclean.refine.report import empty_row, flat_keypoints
from fdhclean.shards import (
    RawSample,
    decode_keypoints,
    decode_mask,
    to_normalized,
)

T = TypeVar("T")

STATUS_OK = "ok"
STATUS_NO_ESTIMATE = "no-estimate"
STATUS_BAD_MEMBER = "bad-member"
STATUS_BAD_KEYPOINTS = "bad-keypoints"
ERROR_STATUSES = (STATUS_NO_ESTIMATE, STATUS_BAD_MEMBER, STATUS_BAD_KEYPOINTS)


@dataclass
class Sample:
    """One sample flowing through the chain: raw members in, decision and report fields out."""

    raw: RawSample
    status: str = STATUS_OK
    error: str | None = None
    keypoints: np.ndarray | None = None  # keypoints.npy exactly as stored
    orig_norm: np.ndarray | None = None  # (17,3) float64, normalised
    estimate_norm: np.ndarray | None = None  # (17,3) float64, normalised, v = score
    emask: np.ndarray | None = None
    vertices: np.ndarray | None = None
    box: tuple[int, int, int, int] | None = None
    box_source: str | None = None
    # keypoints.npy bytes to write when the vote keeps the original, where the stored member
    # is not the original (a revote of an updated sample); None: keep the stored bytes
    restore_keypoints: bytes | None = None
    # the decision (set by the vote on `ok` samples; error samples keep the defaults)
    updated: bool = False
    tie: bool = False
    orig_scores: dict[str, Any] | None = None  # Scores.row() of the original annotation
    new_scores: dict[str, Any] | None = None  # ... and of the estimate

    @property
    def key(self) -> str:
        return self.raw.key

    def normalised_original(self, units: str) -> np.ndarray | None:
        """The original annotation normalised: as voted, else as readable (error samples)."""
        if self.orig_norm is not None:
            return self.orig_norm
        if self.keypoints is None:
            return None
        kp = np.asarray(self.keypoints, dtype=np.float64).reshape(NUM_KEYPOINTS, 3)
        return to_normalized(kp, units)

    def report_row(self, units: str) -> dict[str, Any]:
        """This sample's row of the shard's report (`refine.report.REPORT_SCHEMA`)."""
        row = empty_row()
        row.update(
            key=self.key,
            shard=self.raw.shard,
            index=self.raw.index,
            status=self.status,
            error=self.error,
            updated=self.updated,
            tie=self.tie,
            orig_keypoints=flat_keypoints(self.normalised_original(units)),
            new_keypoints=flat_keypoints(self.estimate_norm),
            box=list(self.box) if self.box else None,
            box_source=self.box_source,
            keypoint_units=units,
        )
        for side, scores in (("orig", self.orig_scores), ("new", self.new_scores)):
            for name, value in (scores or {}).items():
                row[f"{side}_{name}"] = value
        return row

    def fail(self, status: str, error: str) -> None:
        """Record the first reason this sample cannot be voted (later ones are consequences)."""
        if self.status == STATUS_OK:
            self.status, self.error = status, error
        self.emask = self.vertices = None  # free the maps; they are not needed any more


# Every FDH member must be there (a cleaned sample is a training sample); the vote decodes
# only some of them. The others get their PNG signature and IHDR header checked (33 bytes, no
# decompression): a full decode would cost a 288x160 RGB PNG per sample, while a junk or
# wrong-sized image.png is still caught here instead of crashing training later.
REQUIRED_MEMBERS = (
    MEMBER_IMAGE, MEMBER_MASK, MEMBER_MASKRCNN, MEMBER_EMASK, MEMBER_VERTICES, MEMBER_KEYPOINTS,
)  # fmt: skip
_NOT_DECODED_PNGS = {
    MEMBER_IMAGE: (PNG_GREY, PNG_RGB, PNG_PALETTE),  # what decode_image accepts (no alpha)
    MEMBER_MASK: (PNG_GREY, PNG_PALETTE),  # 1-channel, as decode_mask requires
    MEMBER_MASKRCNN: (PNG_GREY, PNG_PALETTE),
}


def decode_sample(raw: RawSample, num_vertices: int) -> Sample:
    """Decode the members the vote needs; any failure becomes a `bad-member` status."""
    sample = Sample(raw=raw)
    if raw.problems:  # the reader could not take some member as stored (a link, a bad name)
        sample.fail(STATUS_BAD_MEMBER, "; ".join(raw.problems))
    try:  # the original annotation first: the report keeps it even when another member fails
        keypoints = decode_keypoints(raw.get(MEMBER_KEYPOINTS))
        if keypoints.size != NUM_KEYPOINTS * 3:
            raise ValueError(f"keypoints.npy has shape {keypoints.shape}, expected (17, 3)")
        sample.keypoints = keypoints
    except (KeyError, ValueError) as exc:
        sample.fail(STATUS_BAD_MEMBER, _message(exc))
        return sample
    missing = [name for name in REQUIRED_MEMBERS if raw.find(name) is None]
    if missing or raw.problems:
        sample.fail(STATUS_BAD_MEMBER, f"missing member(s): {', '.join(missing)}")
        return sample
    try:
        emask = _member(raw, MEMBER_EMASK, decode_mask)
        # the stored map, not copied or converted: the vote reads 2 x 17 of its pixels
        vertices = _member(raw, MEMBER_VERTICES, vertex_map)
        e_box = region_box(emask)
        if e_box is not None:
            _check_vertex_ids(vertices, emask, e_box, num_vertices)
            _member(raw, MEMBER_MASK, _png_check(MEMBER_MASK))  # not consulted: header only
            sample.box, sample.box_source = e_box, BOX_SOURCES[0]
        else:  # nothing under E_mask to check; the mask gives the box
            known = _member(raw, MEMBER_MASK, decode_mask)
            sample.box, sample.box_source = person_box(emask, known)
        for name in (MEMBER_IMAGE, MEMBER_MASKRCNN):
            _member(raw, name, _png_check(name))
        sample.emask, sample.vertices = emask, vertices
    except (KeyError, ValueError, OSError) as exc:  # missing / undecodable / wrong shape
        sample.fail(STATUS_BAD_MEMBER, _message(exc))
        return sample
    if not np.isfinite(np.asarray(keypoints, dtype=np.float64)).all():
        sample.fail(STATUS_BAD_KEYPOINTS, "original keypoints contain NaN or inf")
    return sample


def _member(raw: RawSample, name: str, decode: Callable[[bytes], T]) -> T:
    """`decode(bytes of member name)`, its ValueError naming the member as stored."""
    data = raw.get(name)
    try:
        return decode(data)
    except ValueError as exc:
        raise ValueError(f"{raw.find(name)}: {exc}") from exc


def _png_check(name: str) -> Callable[[bytes], None]:
    return lambda data: check_png(data, (IMAGE_H, IMAGE_W), _NOT_DECODED_PNGS[name])


def _check_vertex_ids(
    vertices: np.ndarray, emask: np.ndarray, box: tuple[int, int, int, int], num_vertices: int
) -> None:
    """Every vertex id under E_mask must index the part table. E_mask is empty outside its
    bounding box `box`, so only that window is looked at: the same ids, hence the same
    outcome and message, as checking the whole map."""
    x0, y0, x1, y1 = box
    window = vertices[y0:y1, x0:x1]
    low = 0 if window.dtype.kind == "u" else int(window.min())
    if low >= 0 and int(window.max()) < num_vertices:
        return  # every id of the window is valid, so those under E_mask are (8x cheaper)
    ids = window[emask[y0:y1, x0:x1]]
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= num_vertices):
        raise ValueError(
            f"vertices.npy holds ids {int(ids.min())}..{int(ids.max())} under E_mask, outside "
            f"the part table's 0..{num_vertices - 1}"
        )


def _message(exc: BaseException) -> str:
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return f"{type(exc).__name__}: {text}"
