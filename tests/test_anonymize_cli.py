"""`triagan anonymize` end to end on synthetic scenes through the `coco` detector: statuses
against the ground truth, sizes kept, folders mirrored, resume, ranks, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from anonymize_helpers import (
    one_thread,  # noqa: F401  (autouse: one torch thread)
    save_tiny_generator,
    scenes_module,
)
from PIL import Image

from triagan_model.cli import main


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_tiny_generator(tmp_path_factory.mktemp("g") / "w", stage="18x10", centres=4)


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    """A folder with two scenes (one in a subfolder, one JPEG) and COCO results beside it."""
    A = scenes_module()
    root = tmp_path_factory.mktemp("scenes")
    inp = root / "in"
    (inp / "sub").mkdir(parents=True)
    s1 = A.still_scene((270, 480), seed=0)
    s2 = A.still_scene((240, 320), seed=1, scales=(0.8, 0.5, 0.05))
    Image.fromarray(s1.image).save(inp / "a.png")
    Image.fromarray(s2.image).save(inp / "sub" / "b.jpg", quality=95)
    Image.fromarray(s2.image).save(inp / "empty.png")  # no detections: re-encoded, no-person
    dets = A.coco_results("a.png", [s1]) + A.coco_results("sub/b.jpg", [s2])
    A.write_json(root / "dets.json", dets)
    return root, s1, s2


def _run(*args):
    return main(["anonymize", *map(str, args)])


def test_folder_end_to_end_resume_and_ranks(scene_dir, weights, tmp_path, capsys):
    root, s1, s2 = scene_dir
    out = tmp_path / "out"
    args = [root / "in", "--out", out, "--weights", weights, "--detections", root / "dets.json"]
    assert _run(*args) == 0
    for rel, sc in (("a.png", s1), ("sub/b.jpg", s2), ("empty.png", s2)):
        with Image.open(out / rel) as im:
            assert im.size == sc.image.shape[1::-1] and im.mode == "RGB"
    with Image.open(out / "sub" / "b.jpg") as im:
        assert im.format == "JPEG"
    persons = pd.read_parquet(out / "report" / "persons")
    files = pd.read_parquet(out / "report" / "files")
    assert dict(zip(files.input, files.status, strict=True)) == {"a.png": "ok", "sub/b.jpg": "ok",
                                                      "empty.png": "no-person"}  # fmt: skip
    a = persons[persons.input == "a.png"]
    assert len(a) == len(s1.masks)
    # ground truth: the expanded box of the 0.1-scale figure is under 32 x 32
    tiny = a[a.mask_pixels == min(int(m.sum()) for m in s1.masks)]
    assert tiny.status.tolist() == ["too-small"] and tiny.fallback.tolist() == ["blur"]
    assert (a.status != "too-small").sum() == len(s1.masks) - 1
    anonymised = np.asarray(Image.open(out / "a.png"))
    big = s1.masks[int(np.argmax([m.sum() for m in s1.masks]))]
    assert (anonymised[big] != s1.image[big]).any(-1).mean() > 0.5
    union = np.any(s1.masks, 0)
    from scipy.ndimage import binary_dilation

    from triagan_model.anonymize.crops import disk

    # radius 4 at 288 px is under 6 frame px for these boxes (< 405 px tall); NEAREST there and
    # back adds up to 2
    far = ~binary_dilation(union, structure=disk(8))
    np.testing.assert_array_equal(anonymised[far], s1.image[far])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["files"] == {"ok": 2, "no-person": 1}
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["provenance"]["detector"]["sha256"]
    # rerun: everything is skipped, outputs identical
    before = (out / "a.png").read_bytes()
    capsys.readouterr()
    assert _run(*args) == 0
    assert "0 file(s), 3 already done" in capsys.readouterr().out
    assert (out / "a.png").read_bytes() == before
    # resume after a lost output: only that file is redone, to the same bytes
    (out / "a.png").unlink()
    assert _run(*args) == 0
    assert (out / "a.png").read_bytes() == before
    # two ranks split the files and together give the same outputs
    ranked = tmp_path / "ranked"
    for r in (0, 1):
        assert _run(*args[:2], ranked, *args[3:], "--rank", r, "--world-size", 2) == 0
    assert (ranked / "a.png").read_bytes() == before
    ranks = [pd.read_parquet(ranked / "report" / "files" / f"files-{r}.parquet") for r in (0, 1)]
    assert sorted(pd.concat(ranks).input) == sorted(files.input)
    assert all(len(t) for t in ranks)


def test_bad_inputs(scene_dir, weights, tmp_path, capsys):
    root, s1, _ = scene_dir
    inp = tmp_path / "in"
    shutil.copytree(root / "in", inp)
    (inp / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    dets = json.loads((root / "dets.json").read_text())
    # a mask of the wrong size for sub/b.jpg: that file fails alone, with the reason
    A = scenes_module()
    bad = [d for d in dets if d["file_name"] == "sub/b.jpg"][0]
    bad["segmentation"] = A.rle(np.ones((10, 10), bool))
    A.write_json(tmp_path / "dets.json", dets)
    out = tmp_path / "out"
    capsys.readouterr()
    code = _run(inp, "--out", out, "--weights", weights, "--detections", tmp_path / "dets.json")
    err = capsys.readouterr().err
    assert code == 1
    assert "broken.png" in err and "not a readable image" in err
    assert "sub/b.jpg" in err and "mask size [10, 10]" in err and "Traceback" not in err
    files = pd.read_parquet(out / "report" / "files").set_index("input")
    assert files.status.to_dict() == {"a.png": "ok", "broken.png": "failed",
                                      "empty.png": "no-person", "sub/b.jpg": "failed"}  # fmt: skip
    assert not (out / "broken.png").exists() and not (out / "sub" / "b.jpg").exists()
    assert (inp / "broken.png").read_bytes().startswith(b"\x89PNG")  # inputs untouched
    # detections naming an image that is not an input: exit 2 before any output
    A.write_json(tmp_path / "foreign.json", dets + [{**dets[0], "file_name": "nope.png"}])
    capsys.readouterr()
    out2 = tmp_path / "out2"
    assert _run(inp, "--out", out2, "--weights", weights, "--detections",
                tmp_path / "foreign.json") == 2  # fmt: skip
    assert "nope.png" in capsys.readouterr().err and not out2.exists()
    # configuration errors: exit 2 with the fix
    for extra, needle in (
        ([], "triagan clusters"),
        (["--weights", tmp_path / "nothing"], "not found"),
    ):
        nocentres = save_tiny_generator(tmp_path / "nc", stage="18x10", centres=None)
        capsys.readouterr()
        argv = [inp / "a.png", "--out", tmp_path / "o3", "--weights", nocentres,
                "--detections", tmp_path / "dets.json", *extra]  # fmt: skip
        assert _run(*argv) == 2
        assert needle in capsys.readouterr().err
    assert _run(inp, "--out", inp / "x", "--weights", weights, "--detections",
                tmp_path / "dets.json") == 2  # fmt: skip
    assert _run(inp, "--out", out, "--weights", weights, "--detections",
                tmp_path / "missing.json") == 2  # fmt: skip


def test_dry_run_prints_settings(scene_dir, weights, tmp_path, capsys):
    root, _, _ = scene_dir
    capsys.readouterr()
    assert _run(root / "in", "--out", tmp_path / "o", "--weights", weights, "--detections",
                root / "dets.json", "--dry-run", "--centre-rule", "index") == 0  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert doc["centre_rule"] == "index" and doc["inputs"] == 3
    assert doc["provenance"]["pose"]["backend"] == "from-detections"
    assert not (tmp_path / "o").exists()
