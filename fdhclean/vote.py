"""Scoring an annotation against the body-part map, and the vote (refine-spec sections 3, 4, 6).

Pure functions over arrays (style.md item 3): given keypoints, E_mask, the per-pixel CSE
vertex ids and the part table, `score_keypoints` counts keypoints that land on an accepted part,
for a whole batch at once; `decide` compares two scorings. All arithmetic is float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fdhclean.fdh import IMAGE_H, IMAGE_W, NUM_KEYPOINTS, UNITS_NORMALIZED, UNITS_PIXELS

TIE_POLICIES = ("new", "original")
_KEYPOINT_BITS = np.left_shift(np.int64(1), np.arange(NUM_KEYPOINTS, dtype=np.int64))


@dataclass(frozen=True)
class Scores:
    """Per-sample scores, arrays of shape (N,); masks have bit k set for keypoint k."""

    correct_mask: np.ndarray
    considered_mask: np.ndarray
    correct: np.ndarray
    considered: np.ndarray
    frac: np.ndarray

    def __len__(self) -> int:
        return int(self.frac.shape[0])

    def row(self, i: int) -> dict[str, int | float]:
        """Plain Python values of sample i (for report rows)."""
        return {
            "correct_mask": int(self.correct_mask[i]),
            "considered_mask": int(self.considered_mask[i]),
            "correct": int(self.correct[i]),
            "considered": int(self.considered[i]),
            "frac": float(self.frac[i]),
        }


def _as_batch(keypoints: np.ndarray, emask: np.ndarray, vertices: np.ndarray):
    kp = np.asarray(keypoints, dtype=np.float64)
    em = np.asarray(emask)
    vx = np.asarray(vertices)
    if kp.ndim == 2:  # one sample
        kp, em, vx = kp[None], em[None], vx[None]
    if kp.ndim != 3 or kp.shape[1:] != (NUM_KEYPOINTS, 3):
        raise ValueError(f"keypoints must have shape (N, 17, 3), got {np.shape(keypoints)}")
    if em.ndim != 3 or vx.shape != em.shape or em.shape[0] != kp.shape[0]:
        raise ValueError(
            f"emask {np.shape(emask)} and vertices {np.shape(vertices)} must both be (N, H, W) "
            f"with N = {kp.shape[0]}"
        )
    if not np.issubdtype(vx.dtype, np.integer):
        raise ValueError(f"vertices must be integer vertex ids, got dtype {vx.dtype}")
    return kp, em.astype(bool, copy=False), vx


def score_keypoints(
    keypoints: np.ndarray,
    min_score: float,
    emask: np.ndarray,
    vertices: np.ndarray,
    vertex_parts: np.ndarray,
    accepted: np.ndarray,
) -> Scores:
    """Score normalised keypoints (N,17,3) on E_mask / vertex maps (N,H,W); spec section 3.

    A keypoint is considered when v > min_score and 0 <= x < 1 and 0 <= y < 1 (NaN fails every
    comparison, so it is not considered). Its pixel is (floor(x*W), floor(y*H)); it is correct
    when E_mask is set there and the part mask of the vertex there intersects `accepted[k]`.
    A single sample (17,3) with (H,W) maps is accepted too (the result still has N = 1).
    """
    kp, em, vx = _as_batch(keypoints, emask, vertices)
    n, h, w = em.shape
    considered, px, py = keypoint_pixels(kp, min_score, h, w)
    rows = np.arange(n)[:, None]
    return score_lookups(considered, em[rows, py, px], vx[rows, py, px], vertex_parts, accepted)


def keypoint_pixels(
    kp: np.ndarray, min_score: float, h: int, w: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(considered, px, py) of normalised keypoints (N,17,3): which keypoints count, and the
    pixel each one lies in (0 where not considered)."""
    x, y, v = kp[..., 0], kp[..., 1], kp[..., 2]
    considered = (v > min_score) & (x >= 0) & (x < 1) & (y >= 0) & (y < 1)
    # floor(x*W) < W for every float64 x < 1 with W = 160 or 288; the clip only guards
    # against rounding for other sizes (the pixel that contains the point).
    px = np.where(considered, np.minimum(np.floor(np.where(considered, x, 0) * w), w - 1), 0)
    py = np.where(considered, np.minimum(np.floor(np.where(considered, y, 0) * h), h - 1), 0)
    return considered, px.astype(np.intp), py.astype(np.intp)


def score_lookups(
    considered: np.ndarray,
    emask_at: np.ndarray,
    vertex_at: np.ndarray,
    vertex_parts: np.ndarray,
    accepted: np.ndarray,
) -> Scores:
    """Scores from the maps' values at each keypoint's pixel (N,17): all the rule reads of
    E_mask and the vertex map, so a caller can look them up without stacking whole maps."""
    n = considered.shape[0]
    on_surface = considered & np.asarray(emask_at, dtype=bool)
    vid = np.where(on_surface, vertex_at, 0)
    table = np.asarray(vertex_parts, dtype=np.uint32)
    bad = on_surface & ((vid < 0) | (vid >= table.shape[0]))
    if bad.any():
        s, k = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"sample {s}, keypoint {k}: vertex id {int(vid[s, k])} under E_mask is outside the "
            f"part table's 0..{table.shape[0] - 1}"
        )
    parts = table[np.where(on_surface, vid, 0)]
    accepted = np.asarray(accepted, dtype=np.uint32).reshape(1, NUM_KEYPOINTS)
    correct = on_surface & ((parts & accepted) != 0)
    n_correct = correct.sum(axis=1, dtype=np.int64)
    n_considered = considered.sum(axis=1, dtype=np.int64)
    frac = np.divide(
        n_correct.astype(np.float64),
        n_considered.astype(np.float64),
        out=np.zeros(n, dtype=np.float64),
        where=n_considered > 0,
    )
    return Scores(
        correct_mask=(correct * _KEYPOINT_BITS).sum(axis=1, dtype=np.int64),
        considered_mask=(considered * _KEYPOINT_BITS).sum(axis=1, dtype=np.int64),
        correct=n_correct,
        considered=n_considered,
        frac=frac,
    )


def score_one(
    keypoints: np.ndarray,
    min_score: float,
    emask: np.ndarray,
    vertices: np.ndarray,
    vertex_parts: np.ndarray,
    accepted: np.ndarray,
) -> dict[str, int | float]:
    """`score_keypoints` of one sample (17,3), (H,W), as plain Python values."""
    return score_keypoints(keypoints, min_score, emask, vertices, vertex_parts, accepted).row(0)


def decide(orig: Scores, new: Scores, tie_policy: str = "new") -> tuple[np.ndarray, np.ndarray]:
    """(updated, tie) per sample; spec section 4.

    The estimate wins when (new_frac, new_correct) > (orig_frac, orig_correct) as tuples; on
    equality (a tie) `tie_policy` decides: "new" takes the estimate, "original" keeps it.
    """
    if tie_policy not in TIE_POLICIES:
        raise ValueError(f"unknown tie policy {tie_policy!r}; choose one of {TIE_POLICIES}")
    of, nf = np.asarray(orig.frac), np.asarray(new.frac)
    oc, nc = np.asarray(orig.correct), np.asarray(new.correct)
    better = (nf > of) | ((nf == of) & (nc > oc))
    tie = (nf == of) & (nc == oc)
    updated = better | (tie & (tie_policy == "new"))
    return updated, tie


def chosen_keypoints(
    original: np.ndarray,
    estimate_norm: np.ndarray,
    updated: bool,
    new_min_score: float,
    units: str,
) -> np.ndarray:
    """The `keypoints.npy` content to write (spec section 6).

    Not updated: a copy of the original (same dtype, shape, units). Updated: the normalised
    estimate converted to `units` (pixels: x*160, y*288), the original's dtype and shape, with
    v = score where score > new_min_score else 0 (so "v > 0 is visible" agrees with the vote).
    """
    if units not in (UNITS_NORMALIZED, UNITS_PIXELS):
        raise ValueError(f"unknown keypoint units {units!r}")
    original = np.asarray(original)
    if not updated:
        return original.copy()
    est = np.asarray(estimate_norm, dtype=np.float64).reshape(NUM_KEYPOINTS, 3)
    if original.size != est.size:
        raise ValueError(f"original keypoints have shape {original.shape}, expected 17x3 values")
    out = est.copy()
    if units == UNITS_PIXELS:
        out[:, 0] *= IMAGE_W
        out[:, 1] *= IMAGE_H
    score = est[:, 2]
    with np.errstate(invalid="ignore"):
        out[:, 2] = np.where(score > new_min_score, score, 0.0)
    if np.issubdtype(original.dtype, np.integer):
        out = np.rint(out)  # integer storage (pixels): round, as `from_normalized` does
    return out.astype(original.dtype).reshape(original.shape)
