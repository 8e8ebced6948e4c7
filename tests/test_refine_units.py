"""Issue 12 class 4: units are decided by the keypoints that can decide them, an ambiguous
shard is reported, and no value is written that the keypoint dtype cannot hold."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from fdhclean.cli import main
from fdhclean.decode import decide_units
from fdhclean.shards import ShardWriter, decode_keypoints, encode_npy, read_shard


def _refine(root, out) -> int:
    return main(
        ["refine", "--split", "val", "--data-root", str(root), "--out", str(out),
         "--part-table", str(root / "parts.npz"),
         "--predictions", str(root / "predictions_val.json")]
    )  # fmt: skip


def _edit_keypoints(path, edit) -> None:
    samples = read_shard(path)
    with ShardWriter(path) as writer:
        for s in samples:
            members = dict(s.members)
            kp = edit(s.index, decode_keypoints(members["keypoints.npy"]))
            if kp is not None:
                members["keypoints.npy"] = encode_npy(kp)
            writer.write(s.key, members)


def test_visible_keypoints_decide_and_ties_go_to_pixels():
    norm = np.tile([0.5, 0.5, 1.0], (17, 1))
    junk = norm.copy()
    junk[3] = [1.6, 0.2, 0.0]  # invisible: cannot decide
    assert decide_units([norm, junk]).units == "normalized"
    assert decide_units([norm, junk]).dissent == 0
    outlier = junk.copy()
    outlier[3, 2] = 2.0  # now visible at x = 1.6: one dissenting sample, reported
    decision = decide_units([norm, norm, outlier])
    assert (decision.units, decision.dissent) == ("normalized", 1)
    assert decide_units([norm, outlier]).units == "pixels"  # a tie: any pixel evidence wins
    assert decide_units([np.zeros((17, 3))]).basis == "all"


def test_an_invisible_outlier_does_not_flip_a_normalised_shard(synth_copy, tmp_path, capsys):
    shard = synth_copy / "val" / "out-000000.tar"  # a normalised shard of the synthetic set
    base = tmp_path / "base"
    assert _refine(synth_copy, base) == 0

    def invisible_outlier(index, kp):
        if index != 0:
            return None
        kp = kp.copy()
        kp[0] = [1.6, 0.5, 0.0]
        return kp

    _edit_keypoints(shard, invisible_outlier)
    out = tmp_path / "out"
    assert _refine(synth_copy, out) == 0
    before = pd.read_parquet(base / "val" / "report" / "out-000000.parquet")
    after = pd.read_parquet(out / "val" / "report" / "out-000000.parquet")
    assert set(after.keypoint_units) == {"normalized"}
    same = ["status", "updated", "orig_correct", "new_correct", "orig_considered"]
    pd.testing.assert_frame_equal(before[same].iloc[1:], after[same].iloc[1:])
    manifest = json.loads((out / "val" / "manifest.json").read_text())
    assert manifest["totals"]["units_ambiguous_shards"] == []

    def visible_outlier(index, kp):
        if index != 1:
            return None
        kp = kp.copy()
        kp[0] = [1.6, 0.5, 1.0]
        return kp

    _edit_keypoints(shard, visible_outlier)
    capsys.readouterr()
    out2 = tmp_path / "out2"
    assert _refine(synth_copy, out2) == 0
    assert "units of out-000000.tar: 1 of" in capsys.readouterr().err
    manifest = json.loads((out2 / "val" / "manifest.json").read_text())
    assert manifest["totals"]["units_ambiguous_shards"] == ["out-000000.tar"]
    report = pd.read_parquet(out2 / "val" / "report" / "out-000000.parquet")
    assert set(report.keypoint_units) == {"normalized"}


def test_uint8_pixel_keypoints_never_wrap(synth_copy, tmp_path):
    shard = synth_copy / "val" / "out-000001.tar"  # the pixel-unit shard
    _edit_keypoints(shard, lambda i, kp: np.clip(np.rint(kp), 0, 255).astype(np.uint8))
    out = tmp_path / "out"
    assert _refine(synth_copy, out) == 0
    report = pd.read_parquet(out / "val" / "report" / "out-000001.parquet")
    kept = report[report.error.fillna("").str.startswith("kept the original")]
    assert len(kept) > 0, "the synthetic set has estimates with y > 255"
    assert (kept.status == "ok").all() and not kept.updated.any()
    assert all("uint8" in e for e in kept.error)
    cleaned = {s.key: s for s in read_shard(out / "val" / "out-000001.tar")}
    originals = {s.key: s for s in read_shard(shard)}
    for row in report.itertuples():
        stored = decode_keypoints(cleaned[row.key].members["keypoints.npy"])
        assert stored.dtype == np.uint8
        if not row.updated:
            assert (
                stored.tobytes()
                == decode_keypoints(originals[row.key].members["keypoints.npy"]).tobytes()
            )
            continue
        est = np.asarray(row.new_keypoints).reshape(17, 3) * [160, 288, 1]
        np.testing.assert_array_equal(stored[:, :2], np.rint(est[:, :2]))


def test_a_shard_its_first_block_mispredicts_is_redone_in_the_decided_units(
    synth_copy, tmp_path, monkeypatch
):
    """Units are decided by the whole shard but the shard is streamed in one pass, written in
    the units of its first block; when the rest outvotes that block the shard is redone, so
    the outputs equal those of a pass that knew the units (here: the whole shard as one
    block). FDH shards hold one kind of units; this one mixes them on purpose."""
    from fdhclean.refine import shard_task

    shard = synth_copy / "val" / "out-000000.tar"

    def pixels_after_the_first_four(index, kp):
        if index < 4:
            return None  # normalised, as the synthetic shard stores them
        kp = kp.astype(np.float64) * [160.0, 288.0, 1.0]
        return kp.astype(np.float32)

    _edit_keypoints(shard, pixels_after_the_first_four)
    passes = []
    one_pass = shard_task._one_pass
    monkeypatch.setattr(
        shard_task, "_one_pass", lambda *a: passes.append(a[0].name) or one_pass(*a)
    )
    monkeypatch.setattr(shard_task, "CHUNK", 4)  # the first block: 4 normalised samples
    streamed = tmp_path / "streamed"
    assert _refine(synth_copy, streamed) == 0
    assert passes.count("out-000000.tar") == 2  # guessed normalised, redone in pixels
    assert passes.count("out-000001.tar") == 1  # the other shards: one pass each

    monkeypatch.setattr(shard_task, "CHUNK", 10_000)  # the whole shard in one block
    whole = tmp_path / "whole"
    assert _refine(synth_copy, whole) == 0
    report = pd.read_parquet(streamed / "val" / "report" / "out-000000.parquet")
    assert set(report.keypoint_units) == {"pixels"}
    for name in ("out-000000.tar", "report/out-000000.parquet"):
        assert (streamed / "val" / name).read_bytes() == (whole / "val" / name).read_bytes()
    marker = json.loads((streamed / "val" / ".done" / "out-000000.json").read_text())
    assert marker["units_ambiguous"].startswith("4 of 12 samples")
    assert not list((streamed / "val").glob(".*.tmp"))  # the first pass left nothing behind
