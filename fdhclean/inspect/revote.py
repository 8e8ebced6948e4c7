"""`fdhclean revote`: decide again from a run's report, without the estimator.

The parent run's cleaned split `OUT/S` becomes the input of an ordinary refine run into
`OUT2/S` (`RefineSettings.revote`): its report supplies the raw estimates (`new_keypoints`) and
the original annotations (`orig_keypoints`), its cleaned shards the E_mask and vertex maps, and
the refine machinery (shard tasks, resume markers, finalize) does the rest, so the new version
has shards, report, manifest (provenance.parent = `OUT/S/manifest.json`) and run.json like any
run. With the parent's settings it reproduces the parent byte for byte; error statuses stay as
they are (see `fdhclean.refine.originals.ReportOriginals` for how originals are restored).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fdhclean.inspect.common import read_run_record, run_part_table
from fdhclean.refine.settings import RefineSettings
from fdhclean.rules import DEFAULT_RULES, load_rules


def revote_settings(
    parent: Path,
    out: Path,
    *,
    tie_policy: str | None = None,
    new_min_score: float | None = None,
    orig_min_score: float | None = None,
    rules: Path | None = None,
    workers: int = 0,
    overwrite: bool = False,
) -> RefineSettings:
    """Settings of a revote of the cleaned split `parent` (= OUT/S) into `out` (= OUT2).

    Unset thresholds, tie policy and rules are the parent's; the part table is the parent's
    and must still hash as it did.
    """
    record = read_run_record(parent)
    if not (parent / "manifest.json").is_file():
        raise FileNotFoundError(
            f"{parent / 'manifest.json'} is missing: finish the run (`fdhclean finalize`) first"
        )
    if Path(out).resolve() == parent.parent.resolve():
        raise ValueError(f"--out {out} is the run being revoted; give a new directory")
    previous = record["settings"]
    table_path = Path(previous["part_table"])
    run_part_table(parent)  # fails clearly when it is gone or changed
    inherited = rules is None  # a --rules FILE given now is used as it is now
    if inherited and previous.get("rules"):
        rules = Path(previous["rules"])
    if inherited:
        table = load_rules(rules) if rules else DEFAULT_RULES
        expected = record["provenance"].get("rules_sha256")
        if expected and table.sha256 != expected:
            raise ValueError(
                f"the run's rule table ({rules or 'built-in default'}) now hashes to "
                f"{table.sha256}, not {expected}; give --rules FILE"
            )
    return RefineSettings(
        split=record["split"],
        data_root=parent.parent,
        out=Path(out),
        part_table=table_path,
        rules=rules,
        orig_min_score=_pick(orig_min_score, previous["orig_min_score"]),
        new_min_score=_pick(new_min_score, previous["new_min_score"]),
        tie_policy=tie_policy or previous["tie_policy"],
        workers=workers,
        overwrite=overwrite,
        revote=True,
    )


def _pick(value: float | None, default: float) -> float:
    return float(default if value is None else value)


# --- report-only revote: a keypoint overlay instead of new shards ---------------------------

OVERLAY_FORMAT = "fdhclean-keypoint-overlay"
OVERLAY_VERSION = 1
OVERLAY_MANIFEST = "overlay_manifest.json"
_REVOTE_COLUMNS = [
    "key", "status", "updated", "orig_keypoints", "new_keypoints", "box",
    "orig_correct_mask", "orig_considered_mask", "new_correct_mask", "new_considered_mask",
]  # fmt: skip


def report_only_settings(parent: Path, **changes: Any) -> dict[str, Any]:
    """The parent's vote settings with `changes` applied, or a ValueError naming what a
    report-only revote cannot replay: the report keeps, per keypoint, whether it was considered
    and correct under the parent's thresholds and rules, so only a tie policy and thresholds at
    or above the parent's can be decided again without the E_mask and vertex maps."""
    record = read_run_record(parent)
    previous = record["settings"]
    if changes.get("rules") is not None:
        raise ValueError(
            "--rules needs the body-part maps of every keypoint: run `fdhclean revote` "
            "without --report-only (it re-reads the cleaned shards)"
        )
    settings = {"tie_policy": changes.get("tie_policy") or previous["tie_policy"]}
    for name in ("orig_min_score", "new_min_score"):
        old = float(previous[name])
        new = _pick(changes.get(name), old)
        if new < old:
            raise ValueError(
                f"--{name.replace('_', '-')} {new} is below the run's {old}: keypoints it "
                "would newly consider were never checked against the body-part map; run "
                "`fdhclean revote` without --report-only"
            )
        settings[name] = new
    settings["parent_settings"] = {k: previous[k] for k in ("orig_min_score", "new_min_score")}
    settings["parent_settings"]["tie_policy"] = previous["tie_policy"]
    return settings


def _rescore(table, side: str, v: np.ndarray, min_score: float) -> tuple[np.ndarray, np.ndarray]:
    """(correct, considered) counts under a threshold at or above the parent's: a keypoint
    stays considered when its score passes the new threshold too, correct when it was."""
    from fdhclean.inspect.common import int_column

    bits = np.left_shift(np.int64(1), np.arange(v.shape[1], dtype=np.int64))
    with np.errstate(invalid="ignore"):
        passes = ((v > min_score) * bits).sum(axis=1, dtype=np.int64)
    considered = int_column(table, f"{side}_considered_mask") & passes
    correct = int_column(table, f"{side}_correct_mask") & considered
    return np.bitwise_count(correct).astype(np.int64), np.bitwise_count(considered).astype(np.int64)


def revote_block(table, settings: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(updated, tie) of a block of report rows under `settings` (refine-spec 3-4): the same
    float64 fracs and tuple comparison as `fdhclean.vote.decide`; error rows never update."""
    from fdhclean.inspect.common import keypoint_array
    from fdhclean.inspect.summary import ok_rows
    from fdhclean.vote import Scores, decide

    ok = ok_rows(table)
    scores = {}
    for side in ("orig", "new"):
        v = keypoint_array(table.column(f"{side}_keypoints"), dtype=np.float64)[..., 2]
        correct, considered = _rescore(table, side, v, settings[f"{side}_min_score"])
        frac = np.divide(correct.astype(np.float64), considered.astype(np.float64),
                         out=np.zeros(len(correct)), where=considered > 0)  # fmt: skip
        scores[side] = Scores(correct, considered, correct, considered, frac)
    updated, tie = decide(scores["orig"], scores["new"], settings["tie_policy"])
    return updated & ok, tie & ok


def write_overlay(parent: Path, out: Path, **changes: Any) -> dict[str, Any]:
    """Revote `parent` (= OUT/S) from its report alone into `out/S/fdh_keypoints_S.json` (the
    reference overlay format `triagan train --keypoints-overlay` reads: every readable sample's
    chosen keypoints, normalised) and `out/S/overlay_manifest.json`; no shard is read or
    written. Returns the manifest."""
    import json

    import pyarrow as pa

    from fdhclean.atomic import atomic_open, atomic_write_bytes
    from fdhclean.inspect.common import bool_column, iter_report
    from fdhclean.inspect.export import ExportCounts, chosen_from_table, dp2_json_chunks
    from fdhclean.manifest import base_provenance, sha256_file

    parent = Path(parent)
    manifest = parent / "manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(
            f"{manifest} is missing: finish the run (`fdhclean finalize`) first"
        )
    settings = report_only_settings(parent, **changes)
    split = read_run_record(parent)["split"]
    target_dir = Path(out) / split
    if target_dir.resolve() == parent.resolve():
        raise ValueError(f"--out {out} is the run being revoted; give a new directory")
    target_dir.mkdir(parents=True, exist_ok=True)
    overlay = target_dir / f"fdh_keypoints_{split}.json"
    totals = {"samples": 0, "updated": 0, "ties": 0, "changed": 0}

    def blocks():
        for table in iter_report(parent, _REVOTE_COLUMNS):
            updated, tie = revote_block(table, settings)
            totals["samples"] += table.num_rows
            totals["updated"] += int(updated.sum())
            totals["ties"] += int(tie.sum())
            was = bool_column(table, "updated")
            totals["changed"] += int((updated != was).sum())
            table = table.set_column(
                table.schema.get_field_index("updated"), "updated", pa.array(updated)
            )
            yield chosen_from_table(table, settings["new_min_score"])

    counts = ExportCounts()
    with atomic_open(overlay, "w") as fh:
        fh.writelines(dp2_json_chunks(blocks(), counts))
    record = {
        "format": OVERLAY_FORMAT,
        "version": OVERLAY_VERSION,
        "split": split,
        "overlay": overlay.name,
        "overlay_sha256": sha256_file(overlay),
        "settings": settings,
        "totals": {**totals, "written": counts.written, "left_out": counts.left_out},
        "provenance": base_provenance("fdhclean revote --report-only", manifest),
    }
    text = json.dumps(record, indent=1) + "\n"
    atomic_write_bytes(target_dir / OVERLAY_MANIFEST, text.encode())
    return record
