"""`fdhclean inspect`: contact sheets read the right shards and draw where the keypoints are."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from inspect_run import refine_val
from PIL import Image

import fdhclean.shards
from fdhclean.cli import main
from fdhclean.inspect.sheet import (
    CAPTION_H,
    EST_COLOR,
    GAP,
    ORIG_COLOR,
    build_sheet,
    keypoint_pixels,
)


@pytest.fixture(scope="module")
def run(synth_root, tmp_path_factory):
    return refine_val(synth_root, tmp_path_factory.mktemp("inspect"))


def considered(kp, min_score):
    kp = np.asarray(kp, dtype=np.float64).reshape(17, 3)
    x, y, v = kp.T
    return kp, (v > min_score) & (x >= 0) & (x < 1) & (y >= 0) & (y < 1)


def test_sheet_layout_and_skeleton_pixels(run):
    scale, columns = 2, 3
    where = "status == 'ok' and (updated or tie)"
    sheet = build_sheet(run, where=where, limit=5, scale=scale, columns=columns)
    assert len(sheet.tiles) == 5
    tile_w, tile_h = 2 * 160 * scale + GAP, 288 * scale + CAPTION_H
    assert sheet.image.size == (GAP + 3 * (tile_w + GAP), GAP + 2 * (tile_h + GAP))
    report = pd.read_parquet(run / "report").set_index("key")
    pixels = np.asarray(sheet.image)
    checked = {"chosen": 0, "other": 0}
    for tile in sheet.tiles:
        row = report.loc[tile.key]
        orig, orig_on = considered(row.orig_keypoints, 0.0)
        new, new_on = considered(row.new_keypoints, 0.3)
        sides = [(orig, orig_on, ORIG_COLOR), (new, new_on, EST_COLOR)]
        chosen = sides[1] if row.updated else sides[0]
        other = sides[0] if row.updated else sides[1]
        # the pixel rule: keypoint (x, y) is image pixel (floor(x * 160), floor(y * 288))
        chosen_centres = np.floor(chosen[0][:, :2] * [160, 288]) * scale + scale // 2
        for origin in (tile.image_origin, tile.parts_origin):
            for kp, shown, colour in (chosen, other):
                centres = np.floor(kp[:, :2] * [160, 288]) * scale + scale // 2
                for k in np.flatnonzero(shown):
                    if colour != chosen[2]:
                        gaps = np.hypot(*(chosen_centres[chosen[1]] - centres[k]).T)
                        if gaps.size and gaps.min() <= 3 * scale + 1:
                            continue  # covered by a chosen marker, which is drawn on top
                    x, y = int(origin[0] + centres[k][0]), int(origin[1] + centres[k][1])
                    assert tuple(pixels[y, x]) == colour, (tile.key, k, colour)
                    checked["chosen" if colour == chosen[2] else "other"] += 1
    assert checked["chosen"] > 20 and checked["other"] > 5


def test_cli_keys_read_only_the_shards_holding_them(run, tmp_path, monkeypatch):
    report = pd.read_parquet(run / "report")
    picks = report.groupby("shard").head(1).iloc[[0, 2]]
    opened = []
    real = fdhclean.shards.iter_shard

    def spy(path):
        opened.append(path.name)
        return real(path)

    monkeypatch.setattr(fdhclean.shards, "iter_shard", spy)
    target = tmp_path / "sheet.png"
    keys = ",".join(picks.key)
    assert (
        main(["inspect", str(run.parent), "--split", "val", "--keys", keys, "--out", str(target)])
        == 0
    )
    assert sorted(opened) == sorted(picks.shard)
    with Image.open(target) as image:
        assert image.size == (GAP + 2 * (2 * 160 + 2 * GAP), GAP + 288 + CAPTION_H + GAP)


def test_where_selects_by_report_columns(run):
    report = pd.read_parquet(run / "report")
    sheet = build_sheet(run, where="not updated and status == 'ok'", limit=100)
    expected = report[~report.updated & (report.status == "ok")].key.tolist()
    assert [t.key for t in sheet.tiles] == expected
    assert len(build_sheet(run, where="tie", limit=2).tiles) == min(2, int(report.tie.sum()))


def test_errors_are_clear(run, tmp_path, capsys):
    args = ["inspect", str(run.parent), "--split", "val", "--out", str(tmp_path / "s.png")]
    assert main([*args, "--where", "no_such_column > 1"]) == 2
    assert "no_such_column" in capsys.readouterr().out
    assert main([*args, "--keys", "123"]) == 2
    assert "123" in capsys.readouterr().out
    assert main([*args, "--where", "orig_frac > 2"]) == 2
    assert "no sample" in capsys.readouterr().out


def test_missing_part_table_fails_clearly(run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy" / "val"
    shutil.copytree(run, copy)
    record = json.loads((copy / "run.json").read_text())
    record["settings"]["part_table"] = str(tmp_path / "gone.npz")
    (copy / "run.json").write_text(json.dumps(record))
    args = ["inspect", str(copy.parent), "--split", "val", "--where", "tie"]
    assert main([*args, "--out", str(tmp_path / "s.png")]) == 2
    message = capsys.readouterr().out
    assert "gone.npz" in message and "settings.part_table" in message
    assert not (tmp_path / "s.png").exists()


def test_keypoint_pixels_use_the_floor_rule():
    kp = np.zeros((17, 3))
    kp[0] = (37.9 / 160, 100.6 / 288, 1)  # rounding would give pixel (38, 101)
    kp[1] = (0.0, 287.999 / 288, 1)
    centres = keypoint_pixels(kp, scale=4)
    assert centres[0].tolist() == [37 * 4 + 2, 100 * 4 + 2]
    assert centres[1].tolist() == [2, 287 * 4 + 2]
