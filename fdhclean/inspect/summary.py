"""`fdhclean report`: what a cleaning run did, from its parquet report alone.

Counts (samples, updated, ties, errors by code, box sources, keypoint units) and, per COCO
keypoint, how often the original and the estimate had it *considered* and *correct* (the
report's per-keypoint bitmasks, refine-spec 3 and 6), plus the mean displacement in pixels
between original and estimate over updated samples where both consider the keypoint (a
keypoint that is not considered may sit at a placeholder such as (0, 0), which is no
displacement). Only the needed columns are read; everything is vectorised numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fdhclean.fdh import COCO_KEYPOINTS, IMAGE_H, IMAGE_W, NUM_KEYPOINTS
from fdhclean.inspect.common import (
    bool_column,
    int_column,
    keypoint_array,
    read_report,
    value_counts,
)
from fdhclean.refine.sample import ERROR_STATUSES, STATUS_OK

SUMMARY_FILE = "summary.json"
MASK_COLUMNS = tuple(
    f"{side}_{what}_mask" for side in ("orig", "new") for what in ("considered", "correct")
)
COLUMNS = (
    "status",
    "updated",
    "tie",
    "orig_frac",
    "new_frac",
    *MASK_COLUMNS,
    "orig_keypoints",
    "new_keypoints",
    "box_source",
    "keypoint_units",
)


@dataclass
class ReportSummary:
    """The numbers (`data`, written as summary.json) and the per-sample fracs for the plots."""

    data: dict[str, Any]
    orig_frac: np.ndarray  # of `ok` samples
    new_frac: np.ndarray


def keypoint_counts(masks: np.ndarray) -> np.ndarray:
    """How many masks have bit k set, for k = 0..16 (int64 (17,)).

    One `bincount` per low byte instead of 17 passes over the column: a 1.83M-row report
    takes milliseconds.
    """
    masks = np.ascontiguousarray(masks, dtype="<i8")
    as_bytes = masks.view(np.uint8).reshape(-1, 8)
    bit_of_value = (np.arange(256)[:, None] >> np.arange(8)) & 1  # (256, 8)
    counts = np.concatenate(
        [np.bincount(as_bytes[:, b], minlength=256) @ bit_of_value for b in range(3)]
    )
    return counts[:NUM_KEYPOINTS].astype(np.int64)


def displacement(orig: np.ndarray, new: np.ndarray, both: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per keypoint: (number of pairs, mean pixel distance) over the pairs flagged in `both`,
    and the flagged distances. `orig`, `new`: normalised (N, 17, >=2); `both`: bool (N, 17)."""
    # float32 differences of normalised coordinates are exact to ~1e-4 px: plenty for a mean
    dist = np.hypot((orig[..., 0] - new[..., 0]) * IMAGE_W, (orig[..., 1] - new[..., 1]) * IMAGE_H)
    counts = both.sum(axis=0)
    sums = np.where(both, dist, 0.0).sum(axis=0, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return counts, means, dist[both].astype(np.float64)


def summarise_table(table, split: str = "") -> ReportSummary:
    """Summary numbers of a report table (any row order; error rows have null scores)."""
    ok = _ok_rows(table)
    updated = bool_column(table, "updated") & ok
    tie = bool_column(table, "tie") & ok
    samples = int(table.num_rows)
    masks = {name: int_column(table, name)[ok] for name in MASK_COLUMNS}
    counts = {name: keypoint_counts(m) for name, m in masks.items()}
    orig = keypoint_array(table.column("orig_keypoints"), updated)
    new = keypoint_array(table.column("new_keypoints"), updated)
    upd = updated[ok]
    both_mask = masks["orig_considered_mask"][upd] & masks["new_considered_mask"][upd]
    both = (both_mask[:, None] >> np.arange(NUM_KEYPOINTS)) & 1 == 1
    pairs, means, all_dist = displacement(orig, new, both)
    errors = {code: 0 for code in ERROR_STATUSES}
    errors.update({k: v for k, v in value_counts(table, "status").items() if k != STATUS_OK})
    orig_frac = np.asarray(table.column("orig_frac").filter(ok), dtype=np.float64)
    new_frac = np.asarray(table.column("new_frac").filter(ok), dtype=np.float64)
    data = {
        "split": split,
        "samples": samples,
        "ok": int(ok.sum()),
        "updated": int(updated.sum()),
        "updated_pct": 100.0 * int(updated.sum()) / samples if samples else 0.0,
        "ties": int(tie.sum()),
        "ties_updated": int((tie & updated).sum()),
        "errors": dict(sorted(errors.items())),
        "box_sources": value_counts(table, "box_source"),
        "keypoint_units": value_counts(table, "keypoint_units"),
        "orig_frac_mean": float(orig_frac.mean()) if orig_frac.size else None,
        "new_frac_mean": float(new_frac.mean()) if new_frac.size else None,
        "mean_displacement_px": float(all_dist.mean()) if all_dist.size else None,
        "keypoints": {
            name: {
                "orig_considered": int(counts["orig_considered_mask"][k]),
                "orig_correct": int(counts["orig_correct_mask"][k]),
                "new_considered": int(counts["new_considered_mask"][k]),
                "new_correct": int(counts["new_correct_mask"][k]),
                "displacement_pairs": int(pairs[k]),
                "mean_displacement_px": None if np.isnan(means[k]) else float(means[k]),
            }
            for k, name in enumerate(COCO_KEYPOINTS)
        },
    }
    return ReportSummary(data, orig_frac, new_frac)


def _ok_rows(table) -> np.ndarray:
    import pyarrow.compute as pc

    status = table.column("status")
    return pc.fill_null(pc.equal(status.cast("string"), STATUS_OK), False).to_numpy(
        zero_copy_only=False
    )


def summarise_split(split: Path) -> ReportSummary:
    """Read the needed columns of `OUT/S/report` and summarise them."""
    return summarise_table(read_report(split, COLUMNS), split=split.name)


def print_summary(data: dict[str, Any], console) -> None:
    """Rich tables: the counts, then one row per keypoint."""
    from rich.table import Table

    overview = Table(title=f"split {data['split']}: {data['samples']} samples", show_header=False)
    overview.add_column("what")
    overview.add_column("value", justify="right")
    overview.add_row("updated", f"{data['updated']} ({data['updated_pct']:.1f} %)")
    overview.add_row("ties", f"{data['ties']} ({data['ties_updated']} updated)")
    for code, n in data["errors"].items():
        overview.add_row(f"error: {code}", str(n))
    for name, n in data["box_sources"].items():
        overview.add_row(f"box from {name}", str(n))
    for name, n in data["keypoint_units"].items():
        overview.add_row(f"keypoints in {name}", str(n))
    for name in ("orig_frac_mean", "new_frac_mean", "mean_displacement_px"):
        value = data[name]
        overview.add_row(name.replace("_", " "), "-" if value is None else f"{value:.3f}")
    console.print(overview)
    per_kp = Table(title="per keypoint: correct / considered (ok samples)")
    per_kp.add_column("keypoint", no_wrap=True)
    per_kp.add_column("original", justify="right", no_wrap=True)
    per_kp.add_column("estimate", justify="right", no_wrap=True)
    per_kp.add_column("shift px (updated)", justify="right", no_wrap=True)
    for name, row in data["keypoints"].items():
        shift = row["mean_displacement_px"]
        per_kp.add_row(
            name,
            _with_rate(row["orig_correct"], row["orig_considered"]),
            _with_rate(row["new_correct"], row["new_considered"]),
            "-" if shift is None else f"{shift:.2f} (n={row['displacement_pairs']})",
        )
    console.print(per_kp)


def _with_rate(correct: int, considered: int) -> str:
    share = f"{100.0 * correct / considered:5.1f} %" if considered else "    - "
    return f"{correct}/{considered} {share}"
