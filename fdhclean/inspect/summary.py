"""`fdhclean report`: what a cleaning run did, from its parquet report alone.

Counts (samples, updated, ties, errors by code, box sources, keypoint units) and, per COCO
keypoint, how often the original and the estimate had it *considered* and *correct* (the
report's per-keypoint bitmasks, refine-spec 3 and 6), plus the mean displacement in pixels
between original and estimate over updated samples where both consider the keypoint (a
keypoint that is not considered may sit at a placeholder such as (0, 0), which is no
displacement). Only the needed columns are read; everything is vectorised numpy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fdhclean.fdh import COCO_KEYPOINTS, IMAGE_H, IMAGE_W, NUM_KEYPOINTS
from fdhclean.inspect.common import (
    bool_column,
    int_column,
    iter_report,
    keypoint_array,
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


@dataclass
class _Totals:
    """What a summary adds up over blocks of rows (so the report is read a block at a time)."""

    samples: int = 0
    ok: int = 0
    updated: int = 0
    ties: int = 0
    ties_updated: int = 0
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    pairs: np.ndarray = field(default_factory=lambda: np.zeros(NUM_KEYPOINTS, np.int64))
    dist_sums: np.ndarray = field(default_factory=lambda: np.zeros(NUM_KEYPOINTS))
    values: dict[str, Counter] = field(default_factory=dict)
    orig_frac: list[np.ndarray] = field(default_factory=list)
    new_frac: list[np.ndarray] = field(default_factory=list)

    def add(self, table) -> None:
        ok = ok_rows(table)
        updated = bool_column(table, "updated") & ok
        tie = bool_column(table, "tie") & ok
        self.samples += int(table.num_rows)
        self.ok += int(ok.sum())
        self.updated += int(updated.sum())
        self.ties += int(tie.sum())
        self.ties_updated += int((tie & updated).sum())
        masks = {name: int_column(table, name)[ok] for name in MASK_COLUMNS}
        for name, m in masks.items():
            self.counts[name] = self.counts.get(name, 0) + keypoint_counts(m)
        orig = keypoint_array(table.column("orig_keypoints"), updated)
        new = keypoint_array(table.column("new_keypoints"), updated)
        upd = updated[ok]
        both_mask = masks["orig_considered_mask"][upd] & masks["new_considered_mask"][upd]
        both = (both_mask[:, None] >> np.arange(NUM_KEYPOINTS)) & 1 == 1
        dist = pixel_distance(orig, new)
        self.pairs += both.sum(axis=0)
        self.dist_sums += np.where(both, dist, 0.0).sum(axis=0, dtype=np.float64)
        for name in ("status", "box_source", "keypoint_units"):
            self.values.setdefault(name, Counter()).update(value_counts(table, name))
        self.orig_frac.append(np.asarray(table.column("orig_frac").filter(ok), dtype=np.float64))
        self.new_frac.append(np.asarray(table.column("new_frac").filter(ok), dtype=np.float64))


def pixel_distance(orig: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Per keypoint pixel distance between normalised (N, 17, >=2) keypoint sets."""
    # float32 differences of normalised coordinates are exact to ~1e-4 px: plenty for a mean
    return np.hypot((orig[..., 0] - new[..., 0]) * IMAGE_W, (orig[..., 1] - new[..., 1]) * IMAGE_H)


def summarise_table(table, split: str = "") -> ReportSummary:
    """Summary numbers of a report table (any row order; error rows have null scores)."""
    return summarise_blocks([table], split)


def summarise_blocks(tables: Iterable, split: str = "") -> ReportSummary:
    """Summary numbers of a report given as blocks of rows (see `iter_report`)."""
    t = _Totals()
    for table in tables:
        t.add(table)
    counts = {name: t.counts.get(name, np.zeros(NUM_KEYPOINTS, np.int64)) for name in MASK_COLUMNS}
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(t.pairs > 0, t.dist_sums / np.maximum(t.pairs, 1), np.nan)
    pairs = int(t.pairs.sum())
    errors = {code: 0 for code in ERROR_STATUSES}
    statuses = dict(sorted(t.values.get("status", Counter()).items()))
    errors.update({k: v for k, v in statuses.items() if k != STATUS_OK})
    orig_frac = np.concatenate(t.orig_frac) if t.orig_frac else np.zeros(0)
    new_frac = np.concatenate(t.new_frac) if t.new_frac else np.zeros(0)
    samples = t.samples
    data = {
        "split": split,
        "samples": samples,
        "ok": t.ok,
        "updated": t.updated,
        "updated_pct": 100.0 * t.updated / samples if samples else 0.0,
        "ties": t.ties,
        "ties_updated": t.ties_updated,
        "errors": dict(sorted(errors.items())),
        "box_sources": dict(sorted(t.values.get("box_source", Counter()).items())),
        "keypoint_units": dict(sorted(t.values.get("keypoint_units", Counter()).items())),
        "orig_frac_mean": float(orig_frac.mean()) if orig_frac.size else None,
        "new_frac_mean": float(new_frac.mean()) if new_frac.size else None,
        "mean_displacement_px": float(t.dist_sums.sum() / pairs) if pairs else None,
        "keypoints": {
            name: {
                "orig_considered": int(counts["orig_considered_mask"][k]),
                "orig_correct": int(counts["orig_correct_mask"][k]),
                "new_considered": int(counts["new_considered_mask"][k]),
                "new_correct": int(counts["new_correct_mask"][k]),
                "displacement_pairs": int(t.pairs[k]),
                "mean_displacement_px": None if np.isnan(means[k]) else float(means[k]),
            }
            for k, name in enumerate(COCO_KEYPOINTS)
        },
    }
    return ReportSummary(data, orig_frac, new_frac)


def ok_rows(table) -> np.ndarray:
    import pyarrow.compute as pc

    status = table.column("status")
    return pc.fill_null(pc.equal(status.cast("string"), STATUS_OK), False).to_numpy(
        zero_copy_only=False
    )


def summarise_split(split: Path) -> ReportSummary:
    """Read the needed columns of `OUT/S/report`, a block of rows at a time (bounded memory
    whatever the split's size), and summarise them."""
    return summarise_blocks(iter_report(split, COLUMNS), split=split.name)


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
