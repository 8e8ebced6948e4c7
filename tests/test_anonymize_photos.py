"""Real photographs shipped in pip packages (scikit-image's astronaut and camera, matplotlib's
grace_hopper) with detections drawn by hand: image I/O realism (EXIF orientation, GPS stripped,
greyscale stays greyscale, alpha restored, JPEG stays JPEG) and a privacy oracle: scikit-image's
LBP frontal-face cascade finds the face before and none in that place after."""

from __future__ import annotations

import json

import matplotlib.cbook as cbook
import numpy as np
import pandas as pd
import pytest
from anonymize_helpers import (
    one_thread,  # noqa: F401  (autouse: one torch thread)
    save_tiny_generator,
    scenes_module,
)
from PIL import Image

from triagan_model.anonymize.media import read_image
from triagan_model.cli import main

skimage_data = pytest.importorskip("skimage.data")
from skimage.feature import Cascade  # noqa: E402

# Hand-drawn person outlines (x, y) in upright pixels, and where the cascade finds the face.
OUTLINES = {
    "astronaut": [(150, 20), (300, 20), (310, 170), (370, 230), (380, 512), (20, 512),
                  (30, 250), (110, 170), (140, 160)],
    "camera": [(190, 60), (290, 60), (300, 150), (340, 200), (330, 260), (250, 250),
               (230, 420), (200, 512), (60, 512), (10, 330), (20, 200), (100, 150), (190, 140)],
    "grace": [(150, 20), (390, 20), (380, 330), (512, 380), (512, 600), (0, 600), (0, 400),
              (150, 330)],
}  # fmt: skip


def photos() -> dict[str, np.ndarray]:
    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as im:
        grace = np.asarray(im.convert("RGB")).copy()
    return {"astronaut": skimage_data.astronaut(), "camera": skimage_data.camera(), "grace": grace}


def faces(img: np.ndarray) -> list[tuple[int, int, int, int]]:
    cascade = Cascade(skimage_data.lbp_frontal_face_cascade_filename())
    found = cascade.detect_multi_scale(img=img, scale_factor=1.2, step_ratio=1,
                                       min_size=(40, 40), max_size=(300, 300))  # fmt: skip
    return [(d["c"], d["r"], d["c"] + d["width"], d["r"] + d["height"]) for d in found]


def _inside(face, outline) -> bool:
    cx, cy = (face[0] + face[2]) / 2, (face[1] + face[3]) / 2
    xs, ys = zip(*outline, strict=True)
    return min(xs) <= cx <= max(xs) and min(ys) <= cy <= max(ys)


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    inp = root / "in"
    inp.mkdir()
    ph = photos()
    # astronaut: a JPEG stored rotated, EXIF orientation 6 (display = rotate 90 clockwise), GPS
    stored = Image.fromarray(np.rot90(ph["astronaut"], k=1).copy())
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "TestCam"
    exif[0x8825] = {1: "N", 2: (59.0, 26.0, 0.0)}
    stored.save(inp / "astronaut.jpg", quality=95, exif=exif)
    Image.fromarray(ph["camera"], "L").save(inp / "camera.png")
    Image.fromarray(ph["grace"]).save(inp / "grace.jpg", quality=95)
    rgba = Image.fromarray(ph["astronaut"]).convert("RGBA")
    alpha = np.full((512, 512), 255, np.uint8)
    alpha[:, :40] = 0
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(inp / "astronaut_alpha.png")
    dets = []
    for name, key in (("astronaut.jpg", "astronaut"), ("camera.png", "camera"),
                      ("grace.jpg", "grace"), ("astronaut_alpha.png", "astronaut")):  # fmt: skip
        poly = [float(v) for xy in OUTLINES[key] for v in xy]
        dets.append({"file_name": name, "category_id": 1, "score": 1.0, "segmentation": [poly]})
    scenes_module().write_json(root / "dets.json", dets)
    return root, ph


def test_exif_orientation_applied_on_read(photo_dir):
    root, ph = photo_dir
    rgb, info = read_image(root / "in" / "astronaut.jpg")
    assert rgb.shape == (512, 512, 3)
    assert np.abs(rgb.astype(int) - ph["astronaut"]).mean() < 4  # upright (JPEG loss only)


def test_photos_modes_metadata_and_privacy(photo_dir, tmp_path):
    root, ph = photo_dir
    for name, key in (("astronaut", "astronaut"), ("camera", "camera"), ("grace", "grace")):
        assert any(_inside(f, OUTLINES[key]) for f in faces(ph[key])), name  # the oracle works
    w = save_tiny_generator(tmp_path / "w", stage="72x40", centres=4)
    out = tmp_path / "out"
    assert main(["anonymize", str(root / "in"), "--out", str(out), "--weights", str(w),
                 "--detections", str(root / "dets.json")]) == 0  # fmt: skip
    with Image.open(out / "astronaut.jpg") as im:
        assert im.format == "JPEG" and im.size == (512, 512) and im.mode == "RGB"
        assert dict(im.getexif()) == {}  # orientation applied, GPS and the rest stripped
        after = {"astronaut": np.asarray(im).copy()}
    with Image.open(out / "camera.png") as im:
        assert im.mode == "L" and im.size == (512, 512)
        after["camera"] = np.asarray(im).copy()
    with Image.open(out / "grace.jpg") as im:
        assert im.size == (512, 600)
        after["grace"] = np.asarray(im.convert("RGB")).copy()
    with Image.open(out / "astronaut_alpha.png") as im:
        assert im.mode == "RGBA"
        np.testing.assert_array_equal(np.asarray(im)[..., 3], np.asarray(
            Image.open(root / "in" / "astronaut_alpha.png"))[..., 3])  # fmt: skip
    for key, img in after.items():
        left = [f for f in faces(img) if _inside(f, OUTLINES[key])]
        assert left == [], f"{key}: a face survived at {left}"
    persons = pd.read_parquet(out / "report" / "persons")
    assert (persons.status == "anonymized").all() and len(persons) == 4
    # --keep-metadata keeps EXIF but never the GPS; the folder's detections name files that are
    # not among this single input: refused (exit 2)
    out2 = tmp_path / "out2"
    assert main(["anonymize", str(root / "in" / "astronaut.jpg"), "--out", str(out2),
                 "--weights", str(w), "--detections", str(root / "dets.json"),
                 "--keep-metadata"]) == 2  # fmt: skip
    single = tmp_path / "dets1.json"
    single.write_text(json.dumps([d for d in json.loads((root / "dets.json").read_text())
                                  if d["file_name"] == "astronaut.jpg"]))  # fmt: skip
    assert (
        main(
            [
                "anonymize",
                str(root / "in" / "astronaut.jpg"),
                "--out",
                str(out2),
                "--weights",
                str(w),
                "--detections",
                str(single),
                "--keep-metadata",
            ]
        )
        == 0
    )
    with Image.open(out2 / "astronaut.jpg") as im:
        exif = im.getexif()
        assert exif.get(0x010F) == "TestCam" and 0x8825 not in exif and 0x0112 not in exif


def test_16bit_greyscale_and_palette_read(tmp_path):
    g16 = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 21).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    with pytest.warns(UserWarning, match="8 bits"):
        from triagan_model.anonymize.media import warn_all

        rgb, info = read_image(tmp_path / "g16.png")
        warn_all(info.warnings)
    assert info.mode == "L" and rgb.shape == (48, 64, 3)
    np.testing.assert_array_equal(rgb[..., 0], (g16 >> 8).astype(np.uint8))
    Image.fromarray(photos()["astronaut"]).convert("P").save(tmp_path / "p.png")
    rgb, info = read_image(tmp_path / "p.png")
    assert info.mode == "RGB" and rgb.shape == (512, 512, 3)
