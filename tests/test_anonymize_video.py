"""Video: the tracker (crossing, hold-over of a deleted detection, a new track on return after
max-age), one identity per track, and PyAV I/O (frames in = out, timestamps, audio policy)."""

from __future__ import annotations

import json

import av
import numpy as np
import pandas as pd
import pytest
from anonymize_helpers import (
    ConstantG,
    one_thread,  # noqa: F401  (autouse: one torch thread)
    save_tiny_generator,
    scenes_module,
)

from triagan_model.anonymize.api import Anonymizer, AnonymizeSettings
from triagan_model.anonymize.boxes import mask_box
from triagan_model.anonymize.compose import Person
from triagan_model.anonymize.media import count_frames
from triagan_model.cli import main

FPS = 4  # max-age round(fps) = 4 frames


@pytest.fixture(scope="module")
def clip():
    return scenes_module().moving_clip(n_frames=18)


def _dets(clip, drop):
    out = []
    for f, s in enumerate(clip):
        rows = zip(s.masks, s.keypoints, s.ids, strict=True)
        out.append([Person(m, k) for m, k, pid in rows if (f, pid) not in drop])
    return out


def test_tracks_crossing_holdover_and_return(clip):
    drop = {(4, 2)} | {(f, 2) for f in range(8, 14)}  # one lost frame; then gone 6 > 4 frames
    anon = Anonymizer(ConstantG(), settings=AnonymizeSettings(hold_frames=2))
    results = list(anon.frames([s.image for s in clip], key="v.mkv", fps=FPS,
                               persons=_dets(clip, drop)))  # fmt: skip
    assert len(results) == len(clip)
    tracks: dict[int, set] = {0: set(), 1: set(), 2: set()}
    for f, (res, sc) in enumerate(zip(results, clip, strict=True)):
        gt = {tuple(mask_box(m)): pid for m, pid in zip(sc.masks, sc.ids, strict=True)}
        for row in res.persons:
            if row["status"] == "held":
                continue  # checked below
            pid = gt[tuple(row["box"])]
            tracks[pid].add((row["track"], f >= 14 and pid == 2))
            assert row["identity_key"] == f"v.mkv#t{row['track']}"
    # the crossing persons keep one track each through the crossing
    assert len({t for t, _ in tracks[0]}) == 1 and len({t for t, _ in tracks[1]}) == 1
    # person 2: one track before its absence, a new one after it (longer than max-age)
    before = {t for t, late in tracks[2] if not late}
    after = {t for t, late in tracks[2] if late}
    assert len(before) == 1 and len(after) == 1 and before != after
    held = [(f, r["track"]) for f, res in enumerate(results) for r in res.persons
            if r["status"] == "held"]  # fmt: skip
    (t2,) = before
    assert held == [(4, t2), (8, t2), (9, t2)]  # 2-frame hold-over, then nothing
    # a held person is anonymised: pixels where it stands change
    m = clip[4].masks[clip[4].ids.index(2)]
    assert (results[4].image[m] != clip[4].image[m]).any(-1).mean() > 0.9


def test_video_cli_frames_timestamps_audio(clip, tmp_path):
    A = scenes_module()
    src = A.write_video(tmp_path / "in" / "clip.mkv", [s.image for s in clip], fps=FPS, audio=True)
    A.write_json(tmp_path / "dets.json", A.coco_results("clip.mkv", clip))
    w = save_tiny_generator(tmp_path / "w", stage="18x10", centres=4)
    n_in, pts_in = count_frames(src)
    base = ["anonymize", str(src), "--weights", str(w), "--detections",
            str(tmp_path / "dets.json")]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "o1"), "--codec", "ffv1"]) == 0
    assert main([*base, "--out", str(tmp_path / "o2"), "--keep-audio"]) == 0
    for out, audio in ((tmp_path / "o1", False), (tmp_path / "o2", True)):
        n_out, pts_out = count_frames(out / "clip.mkv")
        assert (n_out, pts_out) == (n_in, pts_in)
        with av.open(str(out / "clip.mkv")) as c:
            assert bool(c.streams.audio) == audio
            assert float(c.streams.video[0].average_rate) == FPS
    persons = pd.read_parquet(tmp_path / "o1" / "report" / "persons")
    assert sorted(persons.frame.unique()) == list(range(len(clip)))
    assert persons.groupby("track").identity_key.nunique().max() == 1
    # FFV1 is lossless: far from every person the frames are bit-identical
    from scipy.ndimage import binary_dilation

    from triagan_model.anonymize.crops import disk

    with av.open(str(tmp_path / "o1" / "clip.mkv")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    for fr, sc in zip(frames, clip, strict=True):
        far = ~binary_dilation(np.any(sc.masks, 0), structure=disk(8))
        np.testing.assert_array_equal(fr[far], sc.image[far])
        assert (fr != sc.image).any()
    summary = json.loads((tmp_path / "o1" / "summary.json").read_text())
    assert summary["frames"] == len(clip) and summary["frames_per_s"] > 0


def test_zero_size_video_fails_alone(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "empty.mp4").write_bytes(b"")
    w = save_tiny_generator(tmp_path / "w", stage="18x10", centres=4)
    scenes_module().write_json(tmp_path / "d.json", [])
    capsys.readouterr()
    code = main(["anonymize", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--weights",
                 str(w), "--detections", str(tmp_path / "d.json")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "empty.mp4" in err and "not a readable video" in err
    assert "Traceback" not in err and not (tmp_path / "o" / "empty.mp4").exists()
