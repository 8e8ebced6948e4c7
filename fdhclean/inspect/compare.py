"""`fdhclean compare`: agreement with the authors' published refined keypoints (refine-spec 8).

Per sample: which of our two annotations the authors' keypoints are closer to (mean pixel
distance over the keypoints *they* mark visible, v > 0: `original`, `estimate`, `both` when the
two distances are within `tie_px` of each other or they mark nothing visible, `missing` when
the key is not in their file), which one we chose, whether that agrees (`both` agrees with
either), and the mean pixel distance between their keypoints and our chosen ones over the
keypoints visible (v > 0) in both. Keys are matched as integers (str(int(key))).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fdhclean.estimators.predictions import canonical_key
from fdhclean.fdh import NUM_KEYPOINTS
from fdhclean.inspect.common import (
    bool_column,
    chosen_keypoints,
    keypoint_array,
    pixel_xy,
    read_report,
    read_run_record,
)
from fdhclean.shards import atomic_write_bytes

COMPARE_FILE = "compare.parquet"
COMPARE_SUMMARY = "compare_summary.json"
TIE_PX = 0.5


def load_authors(path: Path) -> dict[str, np.ndarray]:
    """`{key: [[x, y, v] x 17]}` (normalised) -> canonical key -> float64 (17, 3)."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{key: [[x, y, v] x 17]}}")
    out = {}
    for key, value in data.items():
        kp = np.asarray(value, dtype=np.float64)
        if kp.shape != (NUM_KEYPOINTS, 3):
            raise ValueError(f"{path}: key {key} has keypoints of shape {kp.shape}, not (17, 3)")
        out[canonical_key(key)] = kp
    return out


def _mean_distance(a: np.ndarray, b: np.ndarray, use: np.ndarray) -> np.ndarray:
    """Mean pixel distance over the keypoints flagged in `use` (N, 17); NaN where none.
    A non-finite coordinate on the other side counts as infinitely far."""
    dist = np.linalg.norm(pixel_xy(a) - pixel_xy(b), axis=-1)
    dist = np.where(np.isfinite(dist), dist, np.inf)
    n = use.sum(axis=1)
    with np.errstate(invalid="ignore"):
        total = np.where(use, dist, 0.0).sum(axis=1)
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def closer_to(d_orig: np.ndarray, d_est: np.ndarray, present: np.ndarray, tie_px: float):
    """Per sample: "original" / "estimate" (the closer one), "both" (within `tie_px`),
    "no-visible" (no distance to either: the authors mark nothing visible, or we have neither
    annotation) or "missing" (not in the authors' file). A side without a distance (e.g. no
    estimate for an error row) loses to the side with one."""
    orig_ok, est_ok = np.isfinite(d_orig), np.isfinite(d_est)
    with np.errstate(invalid="ignore"):
        tie = orig_ok & est_ok & ((np.abs(d_orig - d_est) <= tie_px) | (d_orig == d_est))
        original = orig_ok & (~est_ok | (d_orig < d_est))
    result = np.where(original, "original", "estimate").astype(object)
    result[tie] = "both"
    result[~orig_ok & ~est_ok] = "no-visible"
    result[~present] = "missing"
    return result


def compare_split(split: Path, authors_path: Path, tie_px: float = TIE_PX):
    """(per-sample DataFrame, summary dict) of `OUT/S` against the authors' keypoints."""
    import pandas as pd

    authors = load_authors(authors_path)
    record = read_run_record(split)
    table = read_report(split, ["key", "updated", "orig_keypoints", "new_keypoints"])
    keys = [canonical_key(k) for k in table.column("key").to_pylist()]
    orig = keypoint_array(table.column("orig_keypoints")).astype(np.float64)
    new = keypoint_array(table.column("new_keypoints")).astype(np.float64)
    updated = bool_column(table, "updated")
    ours = chosen_keypoints(orig, new, updated, float(record["settings"]["new_min_score"]))
    present = np.array([k in authors for k in keys], dtype=bool)
    theirs = np.full((len(keys), NUM_KEYPOINTS, 3), np.nan)
    if present.any():
        theirs[present] = np.stack([authors[k] for k, p in zip(keys, present, strict=True) if p])
    their_visible = np.nan_to_num(theirs[..., 2], nan=0.0) > 0
    d_orig = _mean_distance(theirs, orig, their_visible)
    d_est = _mean_distance(theirs, new, their_visible)
    closer = closer_to(d_orig, d_est, present, tie_px)
    ours_label = np.where(updated, "estimate", "original").astype(object)
    decidable = present & (closer != "no-visible")
    agree = decidable & ((closer == ours_label) | (closer == "both"))
    visible_both = their_visible & (np.nan_to_num(ours[..., 2], nan=0.0) > 0)
    distance = _mean_distance(theirs, ours, visible_both)
    frame = pd.DataFrame(
        {
            "key": table.column("key").to_pylist(),
            "authors_closer_to": closer,
            "ours": ours_label,
            "agree": agree,
            "distance_px": distance,
            "authors_to_original_px": d_orig,
            "authors_to_estimate_px": d_est,
        }
    )
    summary = _summary(frame, decidable, updated, len(set(authors) - set(keys)), tie_px)
    summary["missing"] = int((~present).sum())
    summary["no_visible"] = int((present & ~decidable).sum())
    summary.update(split=split.name, authors_file=str(authors_path))
    return frame, summary


def _summary(frame, present, updated, extra: int, tie_px: float) -> dict[str, Any]:
    """`present`: the samples that can be compared (in the authors' file, with a distance)."""
    compared = int(present.sum())
    sub = frame[present]
    distance = sub["distance_px"].to_numpy(dtype=np.float64)
    distance = distance[np.isfinite(distance)]

    def share(n: int) -> float | None:
        return 100.0 * n / compared if compared else None

    return {
        "samples": len(frame),
        "compared": compared,
        "missing": int((~present).sum()),
        "authors_keys_not_in_run": extra,
        "tie_px": tie_px,
        "agree": int(sub["agree"].sum()),
        "agreement_pct": share(int(sub["agree"].sum())),
        "mean_distance_px": float(distance.mean()) if distance.size else None,
        "authors_closer_to": {
            name: int((sub["authors_closer_to"] == name).sum())
            for name in ("original", "estimate", "both")
        },
        "updated_pct_ours": share(int(updated[present].sum())),
        "updated_pct_authors": share(int((sub["authors_closer_to"] == "estimate").sum())),
    }


def write_comparison(split: Path, frame, summary: dict[str, Any]) -> tuple[Path, Path]:
    """`OUT/S/compare.parquet` and `OUT/S/compare_summary.json`, atomically."""
    import io

    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    table_path, summary_path = split / COMPARE_FILE, split / COMPARE_SUMMARY
    atomic_write_bytes(table_path, buffer.getvalue())
    atomic_write_bytes(summary_path, (json.dumps(summary, indent=1) + "\n").encode())
    return table_path, summary_path
