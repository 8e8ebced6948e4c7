"""Detector and pose backends: a random-weight Mask R-CNN v2 saved as a local file (no download,
sha256 recorded and checked), and pose backends discovered through the entry-point group
`triagan_toolkit.pose_estimators` from a fake installed distribution."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest
import torch
from anonymize_helpers import (
    ConstantG,
    one_thread,  # noqa: F401  (autouse: one torch thread)
    save_tiny_generator,
)

from triagan_model.anonymize.api import Anonymizer, AnonymizeSettings
from triagan_model.anonymize.compose import Person
from triagan_model.anonymize.identity import ConfigError
from triagan_model.anonymize.pose import PoseError, available, build_pose
from triagan_model.cli import main


@pytest.fixture(scope="module")
def maskrcnn_file(tmp_path_factory):
    """Random Mask R-CNN v2 weights whose box head calls everything a person."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn_v2

    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, min_size=320)
    state = model.state_dict()
    state["roi_heads.box_predictor.cls_score.bias"][1] = 20.0
    path = tmp_path_factory.mktemp("mrcnn") / "maskrcnn_random.pth"
    torch.save(state, path)
    return path


def test_maskrcnn_local_file_no_download(maskrcnn_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # stays empty: no download
    from triagan_model.anonymize.detectors import MaskRCNNDetector
    from triagan_model.weights import sha256_file

    det = MaskRCNNDetector(maskrcnn_file, min_size=320, max_persons=5)
    assert det.provenance()["sha256"] == sha256_file(maskrcnn_file)
    img = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    persons = det.detect(img)
    assert persons and all(p.mask.shape == (96, 128) and p.mask.dtype == bool for p in persons)
    assert not (tmp_path / "torch_home").exists()
    small = MaskRCNNDetector(maskrcnn_file, min_size=320, max_persons=2, max_res=64)
    shrunk = small.detect(img)  # the detector sees 48x64; masks come back at 96x128
    assert all(p.mask.shape == (96, 128) for p in shrunk)
    assert small.provenance()["max_res"] == 64
    with pytest.raises(ConfigError, match="does not match"):
        MaskRCNNDetector(maskrcnn_file, sha256="deadbeef", min_size=320)
    # through the CLI: a missing weights file is exit 2 naming it
    w = save_tiny_generator(tmp_path / "w", stage="18x10", centres=4)
    from PIL import Image

    Image.fromarray(img).save(tmp_path / "x.png")
    capsys.readouterr()
    base = ["anonymize", str(tmp_path / "x.png"), "--out", str(tmp_path / "o"), "--weights",
            str(w), "--pose", "none", "--detector", "torchvision-maskrcnn"]  # fmt: skip
    assert main([*base, "--detector-weights", str(tmp_path / "nope.pth")]) == 2
    assert "nope.pth" in capsys.readouterr().err
    assert main([*base, "--detector-weights", str(maskrcnn_file), "--detector-min-size",
                 "320", "--detector-max-persons", "1"]) == 0  # fmt: skip
    assert len(json.loads((tmp_path / "o" / ".done" / "x.png.json").read_text())["persons"]) <= 1
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["settings"]["provenance"]["detector"]["sha256"] == sha256_file(maskrcnn_file)


FAKE_MODULE = """
import numpy as np

CALLS = []


class Fake:
    name = "fake-pose"
    weights_sha256 = "0" * 64

    def provenance(self):
        return {"backend": self.name, "weights_sha256": self.weights_sha256}

    def estimate_boxes(self, image, boxes):
        CALLS.append((image.shape, len(boxes)))
        out = np.zeros((len(boxes), 17, 3), np.float32)
        for i, (x0, y0, x1, y1) in enumerate(boxes):
            out[i, :, 0] = (x0 + x1) / 2
            out[i, :, 1] = y0 + (y1 - y0) * np.linspace(0.1, 0.9, 17)
            out[i, :, 2] = 0.9
        return out


def build(checkpoint, *, checkpoint_sha256=None, device="auto", batch_size=32,
          flip_test=True, dtype="auto", **options):
    return Fake()


def build_broken(checkpoint, **options):
    return object()
"""


@pytest.fixture
def fake_distribution(tmp_path, monkeypatch):
    (tmp_path / "fakepose_mod.py").write_text(textwrap.dedent(FAKE_MODULE))
    info = tmp_path / "fakepose-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakepose\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[triagan_toolkit.pose_estimators]\nfake-pose = fakepose_mod:build\n"
        "broken-pose = fakepose_mod:build_broken\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("fakepose_mod", None)


def test_pose_backend_from_entry_point(fake_distribution):
    assert {"fake-pose", "broken-pose", "from-detections", "none"} <= set(available())
    pose = build_pose("fake-pose", "ckpt")
    img = np.zeros((120, 200, 3), np.uint8)
    masks = []
    for x0 in (20, 110):
        m = np.zeros((120, 200), bool)
        m[10:110, x0 : x0 + 40] = True
        masks.append(m)
    anon = Anonymizer(ConstantG(), pose=pose, settings=AnonymizeSettings())
    res = anon.image(img, persons=[Person(m) for m in masks], key="p.png")
    import fakepose_mod

    assert fakepose_mod.CALLS == [((120, 200, 3), 2)]  # one call with both boxes, no copies
    kps = [np.asarray(r["keypoints"]).reshape(17, 3) for r in res.persons]
    assert all(np.allclose(k[:, 2], 0.9) for k in kps)
    with pytest.raises(PoseError, match="PoseEstimator contract"):
        build_pose("broken-pose", "ckpt")
    with pytest.raises(PoseError, match="installed: .*fake-pose"):
        build_pose("no-such-pose", "ckpt")
    with pytest.raises(PoseError, match="--pose-weights"):
        build_pose("fake-pose", None)


def test_vitpose_hf_through_the_installed_entry_point(tiny_vitpose):
    """The real plugin path: pyproject registers fdhclean's builders in the entry-point group,
    the anonymiser finds `vitpose-hf` there (no import crosses the packages), and its keypoints
    for N boxes of one frame are what fdhclean's estimator gives for the same boxes."""
    checkpoint, _ = tiny_vitpose
    assert "vitpose-hf" in available(), "reinstall the project: `pip install -e .` (entry points)"
    pose = build_pose("vitpose-hf", str(checkpoint), device="cpu", batch_size=4)
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (180, 320, 3), dtype=np.uint8)
    masks = []
    for x0, y0, w, h in ((10, 20, 60, 140), (150, 5, 90, 170), (260, 60, 50, 100)):
        m = np.zeros((180, 320), bool)
        m[y0 : y0 + h, x0 : x0 + w] = True
        masks.append(m)
    anon = Anonymizer(ConstantG(), pose=pose, settings=AnonymizeSettings(keypoint_threshold=0.0))
    res = anon.image(frame, persons=[Person(m) for m in masks], key="vit.png")
    assert [r["status"] for r in res.persons] == ["anonymized"] * 3
    from fdhclean.estimators import build_vitpose_hf  # the test may use both packages

    direct = build_vitpose_hf(checkpoint, device="cpu", batch_size=4)
    boxes = np.array([[10, 20, 70, 160], [150, 5, 240, 175], [260, 60, 310, 160]], np.float64)
    expected = direct.estimate_boxes(frame, boxes)
    assert expected.shape == (3, 17, 3) and np.isfinite(expected).all()
    assert pose.provenance() == direct.provenance()
    assert np.array_equal(pose.estimate_boxes(frame, boxes), expected)
