"""`fdhclean report`: summary numbers (checked on a hand-made report), tables and plots."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from inspect_run import refine_val
from PIL import Image

from fdhclean.cli import main
from fdhclean.fdh import COCO_KEYPOINTS
from fdhclean.inspect.summary import keypoint_counts
from fdhclean.refine.report import REPORT_SCHEMA


def bits(*ks: int) -> int:
    return sum(1 << k for k in ks)


def keypoints(points: dict[int, tuple[float, float, float]]) -> list[float]:
    kp = np.zeros((17, 3), dtype=np.float32)
    for k, xyv in points.items():
        kp[k] = xyv
    return kp.reshape(-1).tolist()


def row(key, status="ok", updated=False, tie=False, orig=None, new=None, **scores):
    base = {name: None for name in REPORT_SCHEMA.names}
    base.update(key=key, shard="out-000000.tar", index=int(key) - 1, status=status)
    base.update(updated=updated, tie=tie, orig_keypoints=orig, new_keypoints=new)
    base.update(box=[0, 0, 160, 288], box_source="e_mask", keypoint_units="normalized")
    base.update(scores)
    return base


def scored(oc, ocm, nc, ncm):
    """Score columns from the considered / correct bit lists of both sides."""
    out = {}
    for side, considered, correct in (("orig", oc, ocm), ("new", nc, ncm)):
        out[f"{side}_considered_mask"], out[f"{side}_correct_mask"] = (
            bits(*considered),
            bits(*correct),
        )
        out[f"{side}_considered"], out[f"{side}_correct"] = len(considered), len(correct)
        out[f"{side}_frac"] = len(correct) / len(considered) if considered else 0.0
    return out


@pytest.fixture()
def hand_report(tmp_path):
    """Five samples: 2 updated (1 a tie), 1 tie kept, 1 no-estimate, 1 bad-member."""
    rows = [
        # updated: nose moves 16 px right, left_eye 28.8 px down; left_ear only in the estimate
        row("1", updated=True,
            orig=keypoints({0: (0.5, 0.5, 2), 1: (0.25, 0.25, 2), 2: (0.3, 0.3, 2)}),
            new=keypoints({0: (0.6, 0.5, 0.9), 1: (0.25, 0.35, 0.8), 2: (0.3, 0.3, 0.9),
                           3: (0.7, 0.1, 0.9)}),
            **scored([0, 1, 2], [0, 1], [0, 1, 2, 3], [0, 1, 2, 3])),
        # a tie taken by the estimate: nose moves (0.1 * 160, 0.1 * 288) = (16, 28.8) px
        row("2", updated=True, tie=True,
            orig=keypoints({0: (0.1, 0.1, 2)}), new=keypoints({0: (0.2, 0.2, 0.9)}),
            **scored([0], [0], [0], [0])),
        # a tie kept (scores equal, not updated): its displacement does not count
        row("3", tie=True, orig=keypoints({0: (0.5, 0.5, 2)}), new=keypoints({0: (0.9, 0.9, 0.9)}),
            **scored([0, 5], [5], [0, 5], [0])),
        row("4", status="no-estimate", error="no prediction for this key",
            orig=keypoints({0: (0.5, 0.5, 2)})),
        row("5", status="bad-member", error="KeyError: vertices.npy"),
    ]  # fmt: skip
    rows[4]["box_source"], rows[4]["box"] = None, None
    rows[3]["box_source"] = "mask"
    rows[1]["keypoint_units"] = "pixels"
    table = pa.Table.from_pylist(rows, schema=REPORT_SCHEMA)
    split = tmp_path / "run" / "val"
    (split / "report").mkdir(parents=True)
    pq.write_table(table.slice(0, 3), split / "report" / "out-000000.parquet")
    pq.write_table(table.slice(3), split / "report" / "out-000001.parquet")
    return split


def test_summary_of_a_hand_made_report(hand_report, capsys):
    assert main(["report", str(hand_report.parent), "--split", "val"]) == 0
    printed = capsys.readouterr().out
    assert "2 (40.0 %)" in printed and "left_eye" in printed
    data = json.loads((hand_report / "summary.json").read_text())
    assert data["samples"] == 5 and data["ok"] == 3
    assert data["updated"] == 2 and data["updated_pct"] == pytest.approx(40.0)
    assert data["ties"] == 2 and data["ties_updated"] == 1
    assert data["errors"] == {"bad-keypoints": 0, "bad-member": 1, "no-estimate": 1}
    assert data["box_sources"] == {"e_mask": 3, "mask": 1}
    assert data["keypoint_units"] == {"normalized": 4, "pixels": 1}
    assert data["orig_frac_mean"] == pytest.approx((2 / 3 + 1 + 0.5) / 3)
    assert data["new_frac_mean"] == pytest.approx((1 + 1 + 0.5) / 3)
    kp = data["keypoints"]
    nose_shift = pytest.approx((16 + np.hypot(16, 28.8)) / 2)
    assert kp["nose"] == {
        "orig_considered": 3, "orig_correct": 2, "new_considered": 3, "new_correct": 3,
        "displacement_pairs": 2, "mean_displacement_px": nose_shift,
    }  # fmt: skip
    assert kp["left_eye"]["orig_correct"] == 1 and kp["left_eye"]["new_correct"] == 1
    assert kp["left_eye"]["mean_displacement_px"] == pytest.approx(28.8, abs=1e-4)
    assert kp["right_eye"]["mean_displacement_px"] == pytest.approx(0.0, abs=1e-5)
    assert kp["left_ear"]["new_considered"] == 1 and kp["left_ear"]["orig_considered"] == 0
    assert (
        kp["left_ear"]["displacement_pairs"] == 0 and kp["left_ear"]["mean_displacement_px"] is None
    )
    assert kp["left_shoulder"]["orig_correct"] == 1 and kp["left_shoulder"]["new_correct"] == 0
    assert (
        kp["left_shoulder"]["orig_considered"] == 1 and kp["left_shoulder"]["new_considered"] == 1
    )
    pairs = [16, np.hypot(16, 28.8), 28.8, 0.0]
    assert data["mean_displacement_px"] == pytest.approx(np.mean(pairs), abs=1e-4)
    for name in ("frac_hist.png", "frac_2d.png", "keypoint_correct.png"):
        with Image.open(hand_report / "plots" / name) as image:
            assert image.format == "PNG" and image.size[0] > 200


def test_keypoint_counts_match_bit_tests():
    masks = np.random.default_rng(0).integers(0, 1 << 17, 500)
    expected = [sum(1 for m in masks if m >> k & 1) for k in range(17)]
    assert keypoint_counts(masks).tolist() == expected


def test_report_of_a_real_run_agrees_with_the_manifest(synth_root, tmp_path):
    split = refine_val(synth_root, tmp_path / "clean")
    assert main(["report", str(split.parent), "--split", "val", "--no-plots"]) == 0
    data = json.loads((split / "summary.json").read_text())
    manifest = json.loads((split / "manifest.json").read_text())
    for name in ("samples", "updated", "ties", "errors", "box_sources"):
        assert data[name] == manifest["totals"][name], name
    report = pd.read_parquet(split / "report")
    ok = report[report.status == "ok"]
    for k, name in enumerate(COCO_KEYPOINTS):
        for column in ("orig_correct_mask", "new_considered_mask"):
            expected = int(ok[column].map(lambda m, k=k: int(m) >> k & 1).sum())
            key = column.removesuffix("_mask")
            assert data["keypoints"][name][key] == expected, (name, column)
    assert not (split / "plots").exists()


def test_report_names_a_missing_run(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--split", "val"]) == 2
    assert "fdhclean refine" in capsys.readouterr().out
