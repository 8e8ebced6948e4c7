"""`fdhclean export` (dp2-json, COCO) and `fdhclean compare` against the authors' format."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from inspect_run import refine_val

from fdhclean.cli import main
from fdhclean.fdh import COCO_SKELETON
from fdhclean.shards import decode_keypoints, read_shard


@pytest.fixture(scope="module")
def run(synth_root, tmp_path_factory):
    return refine_val(synth_root, tmp_path_factory.mktemp("export"))


def export(split, fmt, target) -> int:
    return main(
        ["export", str(split.parent), "--split", "val", "--format", fmt, "--out", str(target)]
    )


def expected_chosen(row) -> np.ndarray:
    """refine-spec 6 by hand: the estimate with v = score if > 0.3 else 0, or the original."""
    if not row.updated:
        return np.asarray(row.orig_keypoints, dtype=np.float32).reshape(17, 3)
    est = np.asarray(row.new_keypoints, dtype=np.float32).reshape(17, 3).copy()
    est[:, 2] = np.where(est[:, 2] > 0.3, est[:, 2], 0)
    return est


@pytest.fixture(scope="module")
def dp2(run, tmp_path_factory):
    target = tmp_path_factory.mktemp("dp2") / "fdh_keypoints_val.json"
    assert export(run, "dp2-json", target) == 0
    return target


def test_dp2_json_reads_back_to_the_chosen_keypoints(run, dp2):
    data = json.loads(dp2.read_text())
    report = pd.read_parquet(run / "report").set_index("key")
    assert sorted(data) == sorted(report.index)
    units = dict(zip(report.shard, report.keypoint_units, strict=False))
    for key, row in report.iterrows():
        ours = np.asarray(data[key], dtype=np.float32)
        assert ours.shape == (17, 3)
        np.testing.assert_array_equal(ours, expected_chosen(row))
    for name, unit in units.items():  # and it is what the cleaned shards hold
        for s in read_shard(run / name):
            stored = decode_keypoints(s.members["keypoints.npy"]).astype(np.float64)
            if unit == "pixels":
                stored[:, :2] /= [160, 288]
            np.testing.assert_allclose(data[s.key], stored, atol=1e-6)


def test_coco_export_loads_and_scores_itself_perfectly(run, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    target = tmp_path / "coco.json"
    assert export(run, "coco", target) == 0
    gt = COCO(str(target))
    report = pd.read_parquet(run / "report").set_index("key")
    assert len(gt.getImgIds()) == len(report)
    category = gt.loadCats(1)[0]
    assert category["name"] == "person" and category["skeleton"] == [list(p) for p in COCO_SKELETON]
    for ann in gt.loadAnns(gt.getAnnIds()):
        image = gt.loadImgs(ann["image_id"])[0]
        assert (image["width"], image["height"]) == (160, 288)
        row = report.loc[str(ann["image_id"])]
        x0, y0, x1, y1 = row.box
        assert ann["bbox"] == [x0, y0, x1 - x0, y1 - y0] and ann["area"] == (x1 - x0) * (y1 - y0)
        kp = np.asarray(ann["keypoints"], dtype=np.float64).reshape(17, 3)
        chosen = expected_chosen(row).astype(np.float64)
        visible = (chosen[:, 2] > 0) & (chosen[:, :2] >= 0).all(1) & (chosen[:, :2] < 1).all(1)
        assert kp[:, 2].tolist() == np.where(visible, 2, 0).tolist()
        assert ann["num_keypoints"] == int(visible.sum())
        np.testing.assert_allclose(kp[visible, :2], chosen[visible, :2] * [160, 288], atol=1e-3)

    def evaluate(shift: float) -> float:
        results = []
        for ann in gt.loadAnns(gt.getAnnIds()):
            kp = np.asarray(ann["keypoints"], dtype=np.float64).reshape(17, 3)
            kp[:, 0] += shift
            item = {"image_id": ann["image_id"], "category_id": 1, "score": 1.0}
            results.append({**item, "keypoints": kp.reshape(-1).tolist()})
        evaluator = COCOeval(gt, gt.loadRes(results), "keypoints")
        evaluator.params.iouThrs = np.array([1.0])  # OKS 1.0: identical keypoints only
        evaluator.evaluate()
        evaluator.accumulate()
        precision = evaluator.eval["precision"][0, :, 0, 0, -1]  # area all, max dets
        return float(precision[precision > -1].mean())

    assert evaluate(0.0) == 1.0
    assert evaluate(0.5) < 1.0  # the check can fail


def test_compare_with_its_own_export_agrees_fully(run, dp2, capsys):
    assert main(["compare", str(run.parent), "--split", "val", "--with", str(dp2)]) == 0
    frame = pd.read_parquet(run / "compare.parquet")
    summary = json.loads((run / "compare_summary.json").read_text())
    assert list(frame.columns[:5]) == ["key", "authors_closer_to", "ours", "agree", "distance_px"]
    assert frame.agree.all() and summary["agreement_pct"] == 100.0
    assert summary["mean_distance_px"] == pytest.approx(0.0, abs=1e-4)
    report = pd.read_parquet(run / "report")
    assert (frame.ours == np.where(report.updated, "estimate", "original")).all()
    assert summary["updated_pct_ours"] == pytest.approx(100 * report.updated.mean())
    assert summary["updated_pct_authors"] <= summary["updated_pct_ours"]
    assert summary["missing"] == 0 and summary["compared"] == len(report)


def test_compare_finds_planted_disagreements(run, dp2, tmp_path):
    data = json.loads(dp2.read_text())
    report = pd.read_parquet(run / "report")
    ok = report[report.status == "ok"].copy()
    orig = np.stack(ok.orig_keypoints.map(lambda k: np.reshape(k, (17, 3))))
    new = np.stack(ok.new_keypoints.map(lambda k: np.reshape(k, (17, 3))))
    ok["shift"] = np.linalg.norm((orig[..., :2] - new[..., :2]) * [160, 288], axis=-1).mean(1)
    far = ok[ok["shift"] > 5]
    flip_to_orig = far[far.updated].key.tolist()[:2]
    flip_to_est = far[~far.updated].key.tolist()[:2]
    assert len(flip_to_orig) == 2 and len(flip_to_est) == 2
    for key in flip_to_orig:
        data[key] = np.reshape(ok.set_index("key").loc[key, "orig_keypoints"], (17, 3)).tolist()
    for key in flip_to_est:
        est = np.reshape(ok.set_index("key").loc[key, "new_keypoints"], (17, 3)).copy()
        est[:, 2] = np.where(est[:, 2] > 0.3, est[:, 2], 0)
        data[str(int(key)).zfill(12)] = est.tolist()  # keys match as integers
        del data[key]
    removed = next(k for k in reversed(ok.key.tolist()) if k not in {*flip_to_orig, *flip_to_est})
    del data[removed]
    doctored = tmp_path / "doctored.json"
    doctored.write_text(json.dumps(data))
    assert main(["compare", str(run.parent), "--split", "val", "--with", str(doctored)]) == 0
    frame = pd.read_parquet(run / "compare.parquet").set_index("key")
    assert sorted(frame.index[~frame.agree]) == sorted([*flip_to_orig, *flip_to_est, removed])
    assert (frame.loc[flip_to_orig, "authors_closer_to"] == "original").all()
    assert (frame.loc[flip_to_est, "authors_closer_to"] == "estimate").all()
    assert frame.loc[removed, "authors_closer_to"] == "missing"
    summary = json.loads((run / "compare_summary.json").read_text())
    assert summary["missing"] == 1 and summary["compared"] == len(report) - 1
    assert summary["agree"] == len(report) - 5


def test_closer_to_labels():
    from fdhclean.inspect.compare import closer_to

    nan = np.nan
    d_orig = np.array([nan, 1.0, nan, 2.0, 5.0, 1.0])
    d_est = np.array([nan, nan, 3.0, 2.2, 1.0, 9.0])
    present = np.array([True, True, True, True, True, False])
    labels = closer_to(d_orig, d_est, present, tie_px=0.5).tolist()
    assert labels == ["no-visible", "original", "estimate", "both", "estimate", "missing"]


def test_streamed_blocks_give_the_same_bytes_as_one_block(run, tmp_path, monkeypatch):
    """Export, report and inspect read the report a block at a time: blocks smaller than a
    shard's report file (and not aligned with it) change no byte and no selected row."""
    from fdhclean.inspect import common
    from fdhclean.inspect.select import select_rows
    from fdhclean.inspect.summary import summarise_split

    outputs = {}
    for rows in (65536, 5):
        monkeypatch.setattr(common, "REPORT_BLOCK_ROWS", rows)
        for fmt in ("dp2-json", "coco"):
            assert export(run, fmt, tmp_path / f"{rows}.{fmt}.json") == 0
            outputs.setdefault(fmt, []).append((tmp_path / f"{rows}.{fmt}.json").read_bytes())
        data = summarise_split(run).data
        outputs.setdefault("summary", []).append(json.dumps(data, sort_keys=True))
        picked = select_rows(run, where="updated and new_frac > orig_frac", limit=7)
        outputs.setdefault("select", []).append(picked["key"].tolist())
    for name, (whole, blocks) in outputs.items():
        assert whole == blocks, name
    assert len(outputs["select"][0]) == 7
    # the streamed COCO text is what one json.dumps of the whole document gives
    from fdhclean.inspect.export import chosen_from_report, coco_document

    document = json.dumps(coco_document(chosen_from_report(run)), separators=(",", ":"))
    assert outputs["coco"][0] == (document + "\n").encode()


def test_an_unwritable_target_is_a_message_exit_2(run, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("not a directory")
    assert export(run, "dp2-json", blocker / "x.json") == 2
    assert "cannot write" in capsys.readouterr().out


def test_reports_left_by_other_settings_are_refused(synth_root, tmp_path, capsys):
    """A partial `--overwrite` run with other settings (one rank of three) leaves two shards'
    reports of the old settings: export, report and inspect refuse to mix them (exit 2)."""
    split = refine_val(synth_root, tmp_path / "out")
    refine_val(
        synth_root, tmp_path / "out", "--overwrite", "--new-min-score", "0.6",
        "--rank", "0", "--world-size", "3",
    )  # fmt: skip
    capsys.readouterr()
    assert export(split, "dp2-json", tmp_path / "x.json") == 2
    assert "2 report files" in capsys.readouterr().out
    assert not (tmp_path / "x.json").exists()
    assert main(["report", str(split.parent), "--split", "val", "--no-plots"]) == 2
    png = str(tmp_path / "i.png")
    assert main(["inspect", str(split.parent), "--split", "val", "--out", png]) == 2
    assert "report files" in capsys.readouterr().out
