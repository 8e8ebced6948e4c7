"""The person box given to the top-down pose estimator (refine-spec section 5).

The paper uses the minimal enclosing box of E_mask. When E_mask is empty the box of the
region to synthesise (mask == 0) stands in, and when that is empty too, the whole image.
Boxes are (x0, y0, x1, y1) in pixels with an exclusive max, so x1 - x0 is the width.
"""

from __future__ import annotations

import numpy as np

BOX_SOURCES = ("e_mask", "mask", "image")


def _enclosing(regions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (N,4) of the True pixels of (N,H,W) and whether each region is non-empty."""
    n, h, w = regions.shape
    rows = regions.any(axis=2)  # (N,H)
    cols = regions.any(axis=1)  # (N,W)
    y0 = rows.argmax(axis=1)
    y1 = h - rows[:, ::-1].argmax(axis=1)
    x0 = cols.argmax(axis=1)
    x1 = w - cols[:, ::-1].argmax(axis=1)
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.int64), rows.any(axis=1)


def person_boxes(emasks: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Boxes (N,4) int64 and their sources for a batch of E_mask / mask arrays (N,H,W).

    `masks` is the known-background mask (nonzero = known); the person is where it is zero.
    """
    em = np.asarray(emasks).astype(bool, copy=False)
    known = np.asarray(masks).astype(bool, copy=False)
    if em.ndim != 3 or known.shape != em.shape:
        raise ValueError(
            f"emasks {em.shape} and masks {known.shape} must both have shape (N, H, W)"
        )
    n, h, w = em.shape
    e_box, e_found = _enclosing(em)
    m_box, m_found = _enclosing(~known)
    image_box = np.array([0, 0, w, h], dtype=np.int64)
    boxes = np.where(e_found[:, None], e_box, np.where(m_found[:, None], m_box, image_box))
    source_idx = np.where(e_found, 0, np.where(m_found, 1, 2))
    return boxes.astype(np.int64), [BOX_SOURCES[i] for i in source_idx]


def region_box(region: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the True pixels of one (H,W) region, exclusive max; None if empty."""
    rows = np.flatnonzero(region.any(axis=1))
    if rows.size == 0:
        return None
    # columns only over the rows that hold the region: the same columns, half the reading
    cols = np.flatnonzero(region[rows[0] : rows[-1] + 1].any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def person_box(emask: np.ndarray, mask: np.ndarray) -> tuple[tuple[int, int, int, int], str]:
    """((x0, y0, x1, y1), source) of one sample's (H,W) E_mask and known-background mask.

    The same rule as `person_boxes`, but the mask is looked at only when E_mask is empty (this
    runs once per sample in refine).
    """
    emask = np.asarray(emask).astype(bool, copy=False)
    box = region_box(emask)
    if box is not None:
        return box, BOX_SOURCES[0]
    box = region_box(~np.asarray(mask).astype(bool, copy=False))
    if box is not None:
        return box, BOX_SOURCES[1]
    h, w = emask.shape
    return (0, 0, w, h), BOX_SOURCES[2]
