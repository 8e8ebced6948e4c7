"""vitpose-hf against transformers' own per-image pipeline, flip test, decoding, predictions I/O,
local-weights checks and the `fdhclean estimate` command (tiny random-init ViTPose)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fdhclean import fdh
from fdhclean.estimators import decoding, topdown
from fdhclean.estimators.predictions import (
    Predictions,
    count_foreign,
    load_predictions,
    write_predictions,
)

BOXES = np.array([(10, 20, 150, 280), (0, 0, 160, 288), (40, 100, 90, 130), (3, 5, 9, 200),
                  (50, 50, 52, 53), (20, 0, 160, 100)])  # fmt: skip


def _images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, fdh.IMAGE_H, fdh.IMAGE_W, 3), dtype=np.uint8)


def _build(path, **kw):
    from fdhclean.estimators import build_estimator

    return build_estimator("vitpose-hf", checkpoint=path, device="cpu", **kw)


def test_equals_transformers_per_image_pipeline(tiny_vitpose):
    import torch
    from transformers import VitPoseImageProcessor

    path, model = tiny_vitpose
    images = _images(len(BOXES))
    ours = _build(path, flip_test=False, decoding="transformers", batch_size=4).estimate(
        images, BOXES
    )
    proc = VitPoseImageProcessor()
    for i, (x0, y0, x1, y1) in enumerate(BOXES):
        boxes = [[[x0, y0, x1 - x0, y1 - y0]]]  # COCO xywh, box numbers unchanged (official)
        inputs = proc(images=[images[i]], boxes=boxes, return_tensors="pt")
        with torch.no_grad():
            out = model(**inputs)
        ref = proc.post_process_pose_estimation(out, boxes=boxes)[0][0]
        found = ref["scores"].numpy() > 0
        assert found.mean() > 0.8
        # Residual: a few crop pixels round to the other uint8 level (float64 vs float32 warp).
        np.testing.assert_allclose(ours[i, found, :2], ref["keypoints"].numpy()[found],
                                   atol=0.05)  # fmt: skip
        np.testing.assert_allclose(ours[i, :, 2], ref["scores"].numpy(), atol=1e-4)


def _unmirror(kps):
    """Keypoints of a mirrored image -> the original image's frame (x -> W - x, swap sides)."""
    out = kps[:, list(fdh.FLIP_PERMUTATION)].copy()
    out[..., 0] = fdh.IMAGE_W - out[..., 0]
    return out


def _peaks(n, seed):
    """Peaked heatmaps (UDP Gaussians, sigma 2) at random sub-pixel centres."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: topdown.HEATMAP_H, : topdown.HEATMAP_W]
    mu = rng.uniform([3, 3], [topdown.HEATMAP_W - 4, topdown.HEATMAP_H - 4], (n, 17, 2))
    d2 = (xx - mu[..., 0, None, None]) ** 2 + (yy - mu[..., 1, None, None]) ** 2
    return (rng.uniform(0.3, 1.0, (n, 17, 1, 1)) * np.exp(-d2 / 8)).astype(np.float32)


def test_flip_test_is_mirror_equivariant(tiny_vitpose):
    """Mirrored image + mirrored box -> mirrored keypoints, left/right swapped, in the
    `half-pixel` frame (pixel i covers [i, i + 1), so the mirror is x -> W - x).

    Checked in its two exact parts, because a random network's flat heatmaps make DARK's
    Newton step ill-conditioned (1e-5 changes move it by pixels): (1) the crop of the mirrored
    input is the mirrored crop and the flip-tested heatmaps of a mirrored crop are the
    original's mirrored with channels swapped; (2) decoding commutes with mirroring.
    """
    path, _ = tiny_vitpose
    images = _images(3, seed=1)
    boxes = BOXES[:3]
    mboxes = np.stack([fdh.IMAGE_W - boxes[:, 2], boxes[:, 1], fdh.IMAGE_W - boxes[:, 0],
                       boxes[:, 3]], 1)  # fmt: skip
    # the continuous (scipy) warp: cv2's truncation to 1/32 px is not mirror-symmetric
    kw = {"frame": "half-pixel", "method": "scipy"}
    pre = [topdown.preprocess(images[i], boxes[i], **kw) for i in range(3)]
    mpre = [topdown.preprocess(images[i][:, ::-1].copy(), mboxes[i], **kw) for i in range(3)]
    crops, metas = (np.stack([p[j] for p in pre]) for j in (0, 1))
    mcrops, mmetas = (np.stack([p[j] for p in mpre]) for j in (0, 1))
    diff = np.abs(mcrops - crops[..., ::-1])
    assert (diff > 1e-4).mean() < 1e-3 and diff.max() < 0.02  # at most one uint8 level, rarely
    np.testing.assert_allclose(mmetas[:, 0], fdh.IMAGE_W - 1 - metas[:, 0])
    mirrored = np.ascontiguousarray(crops[..., ::-1])
    est = _build(path, flip_test=True, frame="half-pixel")
    heat = est.predict_heatmaps(crops)
    np.testing.assert_allclose(topdown.unflip_heatmaps(est.predict_heatmaps(mirrored)), heat,
                               atol=1e-5)  # fmt: skip
    # Without the flip test the network alone is not equivariant: the check above can fail.
    plain = _build(path, flip_test=False)
    gap = topdown.unflip_heatmaps(plain.predict_heatmaps(mirrored)) - plain.predict_heatmaps(crops)
    assert np.abs(gap).max() > 1e-3
    peaks = _peaks(3, seed=5)
    ours = est.decode(peaks, metas)
    theirs = est.decode(np.ascontiguousarray(topdown.unflip_heatmaps(peaks)), mmetas)
    np.testing.assert_allclose(_unmirror(theirs), ours, atol=1e-3)


@pytest.mark.parametrize("mode", decoding.DECODINGS)
def test_decode_recovers_subpixel_peak(mode):
    """A UDP Gaussian (sigma 2, ViTPose's training target) away from the border decodes back
    to its centre (near the border the official reflect-101 blur biases it by up to ~0.5 heatmap
    px; `test_vitpose_reference` checks that case against the official numbers)."""
    meta = topdown.box_meta(np.array([20, 30, 120, 250]))
    mu = np.array([[17.3, 40.6], [9.8, 11.2], [30.5, 22.25]])
    yy, xx = np.mgrid[: topdown.HEATMAP_H, : topdown.HEATMAP_W]
    hm = np.zeros((1, 17, topdown.HEATMAP_H, topdown.HEATMAP_W), np.float32)
    for k in range(17):
        mx, my = mu[k % 3]
        hm[0, k] = np.exp(-((xx - mx) ** 2 + (yy - my) ** 2) / (2 * 2.0**2))
    kps = decoding.decode(hm, meta[None], mode)[0]
    cx, cy = meta[:2]
    w, h = meta[2:] * 200.0
    expect_x = mu[np.arange(17) % 3, 0] * w / 47 + cx - w / 2
    expect_y = mu[np.arange(17) % 3, 1] * h / 63 + cy - h / 2
    tol = 0.05 * w / 47  # a twentieth of a heatmap pixel
    np.testing.assert_allclose(kps[:, 0], expect_x, atol=tol)
    np.testing.assert_allclose(kps[:, 1], expect_y, atol=tol)
    np.testing.assert_allclose(kps[:, 2], hm[0].max(axis=(1, 2)))  # score: the maximum


def test_missing_checkpoint_and_sha256(tiny_vitpose, tmp_path):
    from fdhclean.estimators import build_estimator
    from fdhclean.estimators.weights import sha256_file

    path, _ = tiny_vitpose
    missing = tmp_path / "no-such-weights"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        _build(missing)
    with pytest.raises(ValueError, match="sha256 mismatch"):
        _build(path, checkpoint_sha256="0" * 64)
    good = sha256_file(path / "model.safetensors")
    assert _build(path, checkpoint_sha256=good.upper()).weights_sha256 == good
    with pytest.raises(ValueError, match="unknown estimator"):
        build_estimator("vitpose-xl", checkpoint=path)
    cut = tmp_path / "cut"  # truncated weights: a message naming the directory, no traceback
    cut.mkdir()
    (cut / "config.json").write_bytes((path / "config.json").read_bytes())
    (cut / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes()[:3000])
    with pytest.raises(ValueError, match=f"{cut}: not a loadable transformers ViTPose"):
        _build(cut)


@pytest.mark.parametrize("workers", [0, 1])
def test_estimate_samples_order_and_failures(tiny_vitpose, workers):
    from fdhclean.estimators import estimate_samples

    path, _ = tiny_vitpose
    est = _build(path, flip_test=True)
    images = _images(5, seed=2)
    boxes = BOXES[:5].copy()
    boxes[2] = (7, 7, 7, 30)  # empty box: the estimator cannot run on it
    samples = [(str(100 + i), images[i], boxes[i]) for i in range(5)]
    out = list(estimate_samples(est, samples, batch_size=2, workers=workers, progress=False))
    assert [k for k, _ in out] == [s[0] for s in samples]
    assert out[2][1] is None
    good = [0, 1, 3, 4]
    np.testing.assert_allclose(np.stack([out[i][1] for i in good]),
                               est.estimate(images[good], boxes[good]), atol=1e-4)  # fmt: skip


def test_predictions_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    kps = (rng.random((3, 17, 3)) * [160, 288, 1]).astype(np.float32)
    path = tmp_path / "p.json"
    write_predictions(path, [("7", kps[0], 0.5), ("0008", kps[1], 0.4), ("9", kps[2], 0.3)])
    pred = load_predictions(path)
    assert isinstance(pred, Predictions) and pred.num_entries == 3 and pred.num_duplicates == 0
    np.testing.assert_array_equal(pred.get("7"), kps[0])  # bit-exact float32
    np.testing.assert_array_equal(pred.get("8"), kps[1])
    assert pred.get("10") is None
    assert count_foreign(pred, {"7", "8"}) == 1
    assert len(pred.sha256) == 64 and list(tmp_path.iterdir()) == [path]


def _entry(image_id, score, x=1.0):
    return {"image_id": image_id, "category_id": 1, "keypoints": [x, 2.0, 0.5] * 17,
            "score": score}  # fmt: skip


def test_predictions_duplicates_and_errors(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([_entry(5, 0.2, 1.0), _entry(5, 0.9, 3.0), _entry(5, 0.5, 4.0)]))
    pred = load_predictions(path)
    assert pred.num_duplicates == 2 and pred.get("5")[0, 0] == 3.0
    bad = [
        ({"image_id": 1, "keypoints": [0] * 51}, "no 'score'"),
        (_entry(1, 0.5) | {"keypoints": [0] * 50}, "list of 51"),
        (_entry(1, 0.5) | {"category_id": 2}, "category_id"),
        (_entry("x1", 0.5), "not an integer"),
        (_entry(1, float("nan")), "NaN"),
        ([1, 2], "expected an object"),
    ]
    for entry, message in bad:
        path.write_text(json.dumps([_entry(2, 0.1), entry]))
        with pytest.raises(ValueError, match=message) as err:
            load_predictions(path)
        assert "entry 1" in str(err.value) and str(path) in str(err.value)
    path.write_text("{}")
    with pytest.raises(ValueError, match="JSON list"):
        load_predictions(path)


def _write_shard(path, samples):
    from fdhclean.decode import encode_png
    from fdhclean.shards import ShardWriter

    with ShardWriter(path) as writer:
        for key, members in samples:
            writer.write(key, {k: (encode_png(v) if isinstance(v, np.ndarray) else v)
                               for k, v in members.items()})  # fmt: skip


def test_estimate_command(tiny_vitpose, tmp_path):
    from fdhclean.cli import main

    path, _ = tiny_vitpose
    split = tmp_path / "data" / "val"
    split.mkdir(parents=True)
    images = _images(4, seed=4)
    emask = np.zeros((288, 160), np.uint8)
    emask[50:200, 40:120] = 1
    known = np.ones((288, 160), np.uint8)
    known[100:150, 60:90] = 0
    samples = [
        ("11", {"image.png": images[0], "E_mask.png": emask, "mask.png": known}),
        ("12", {"image.png": images[1], "e_mask.png": np.zeros_like(emask), "mask.png": known}),
        ("13", {"image.png": b"not a png", "E_mask.png": emask, "mask.png": known}),
        ("14", {"image.png": images[3], "E_mask.png": emask, "mask.png": known}),
    ]
    _write_shard(split / "out-000000.tar", samples)
    out = tmp_path / "pred.json"
    args = ["estimate", "--split", "val", "--data-root", str(tmp_path / "data"), "--estimator",
            "vitpose-hf", "--checkpoint", str(path), "--out", str(out), "--workers", "0",
            "--device", "cpu", "--no-progress", "--batch-size", "2"]  # fmt: skip
    assert main(args) == 0
    pred = load_predictions(out)
    assert sorted(pred.keypoints) == ["11", "12", "14"]
    est = _build(path, frame="half-pixel")  # what `fdhclean estimate` asks for (FDH_FRAME)
    expect = est.estimate(images[[0, 1]], np.array([[40, 50, 120, 200], [60, 100, 90, 150]]))
    np.testing.assert_allclose(pred.get("11"), expect[0], atol=1e-3)
    np.testing.assert_allclose(pred.get("12"), expect[1], atol=1e-3)
    meta = json.loads(out.with_name("pred.json.meta.json").read_text())
    assert meta["errors"]["failed"] == 1 and meta["weights_sha256"] == est.weights_sha256
    assert meta["provenance"]["decoding"] == "vitpose"
    assert meta["provenance"]["frame"] == "half-pixel"  # FDH's frame (FDH_FRAME)
    assert main([*args, "--checkpoint-sha256", "0" * 64]) == 2


def test_vitpose_mmpose_without_mmpose_names_the_requirements(tmp_path):
    try:
        import mmpose  # noqa: F401

        pytest.skip("mmpose is importable here")
    except ImportError:
        pass
    from fdhclean.estimators import build_estimator

    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    with pytest.raises(RuntimeError, match="requirements-mmpose.txt"):
        build_estimator("vitpose-mmpose", checkpoint=weights)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_estimator("vitpose-mmpose", checkpoint=tmp_path / "nope.pth")


def test_batch_failures_and_non_finite_estimates_stay_per_sample(tiny_vitpose):
    """A model error on a batch (e.g. out of memory) retries its samples one by one; a NaN
    estimate (fp16/bf16 overflow) is that sample's failure, not a broken predictions file."""
    from fdhclean.estimators import estimate_samples

    path, _ = tiny_vitpose
    est = _build(path, flip_test=False, batch_size=len(BOXES))
    real = est.predict_heatmaps

    def out_of_memory_for_batches(batch):
        if len(batch) > 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(batch)

    images = _images(len(BOXES))
    samples = [(str(i), images[i], BOXES[i]) for i in range(len(BOXES))]
    est.predict_heatmaps = out_of_memory_for_batches
    one_by_one = dict(estimate_samples(est, samples, batch_size=len(BOXES), progress=False))
    est.predict_heatmaps = real
    batched = dict(estimate_samples(est, samples, batch_size=len(BOXES), progress=False))
    for key, kp in batched.items():
        np.testing.assert_allclose(one_by_one[key], kp, atol=1e-3)
    est.predict_heatmaps = lambda batch: np.full((len(batch), 17, 64, 48), np.nan, np.float32)
    assert all(kp is None for _, kp in estimate_samples(est, samples, progress=False))


def test_estimate_boxes_equals_estimate_on_copies_without_copying_the_frame(tiny_vitpose):
    """Many persons on one large frame: the same keypoints as `estimate` on stacked copies,
    while the frame (read-only here) is never copied: peak traced memory stays below one frame."""
    import tracemalloc

    path, _ = tiny_vitpose
    est = _build(path, flip_test=False, batch_size=3)  # the tiny model's decoder is the cost
    rng = np.random.default_rng(8)
    frame = rng.integers(0, 256, (2160, 3840, 3), dtype=np.uint8)  # a 4K frame, 24.9 MB
    frame.setflags(write=False)
    n = 6
    x0, y0 = rng.uniform(-50, 3700, n), rng.uniform(-50, 1900, n)
    boxes = np.stack([x0, y0, x0 + rng.uniform(5, 400, n), y0 + rng.uniform(10, 700, n)], 1)
    tracemalloc.start()
    got = est.estimate_boxes(frame, boxes)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert got.shape == (n, 17, 3) and got.dtype == np.float32
    assert peak < frame.nbytes, f"peak {peak / 1e6:.1f} MB: the frame was copied"
    small = frame[:400, :600]  # a frame small enough to stack copies of
    sboxes = np.clip(boxes[:4] / 8, -10, 590)
    sboxes[:, 2:] = sboxes[:, :2] + np.maximum(boxes[:4, 2:] - boxes[:4, :2], 8) / 4
    stacked = est.estimate(np.stack([small] * len(sboxes)), sboxes)
    np.testing.assert_allclose(est.estimate_boxes(small, sboxes), stacked, rtol=0, atol=1e-5)
    assert est.estimate_boxes(frame, np.zeros((0, 4))).shape == (0, 17, 3)
    with pytest.raises(ValueError, match="uint8"):
        est.estimate_boxes(frame.astype(np.float32), boxes)


def test_one_protocol_for_every_backend(tiny_vitpose):
    """Both backends declare everything consumers use (no hasattr probes anywhere)."""
    import typing

    from fdhclean.estimators import PoseEstimator
    from fdhclean.estimators.mmpose_backend import VitPoseMMPose
    from fdhclean.estimators.vitpose_hf import VitPoseHF

    path, _ = tiny_vitpose
    est = _build(path, decoding="mmpose1", frame="half-pixel")
    assert isinstance(est, PoseEstimator)
    prov = est.provenance()
    assert prov["decoding"] == "mmpose1" and prov["frame"] == "half-pixel"
    assert prov["weights_sha256"] == est.weights_sha256 and json.dumps(prov)
    stages = est.stages()
    x, meta = stages.preprocess(_images(1)[0], BOXES[0])
    assert stages.decode(stages.predict_heatmaps(x[None]), meta[None]).shape == (1, 17, 3)
    members = typing.get_type_hints(PoseEstimator) | dict.fromkeys(
        ["provenance", "estimate", "estimate_boxes", "stages"]
    )
    for cls in (VitPoseHF, VitPoseMMPose):
        for member in ("provenance", "estimate", "estimate_boxes", "stages"):
            assert callable(getattr(cls, member)), (cls, member)
        assert cls.name in ("vitpose-hf", "vitpose-mmpose")
    assert set(members) >= {"name", "weights_sha256"}
    for bad in ({"decoding": "mmpose"}, {"frame": "pixel"}):
        with pytest.raises(ValueError, match="expected one of"):
            _build(path, **bad)


def test_entry_points_name_the_public_builders():
    """pyproject's `triagan_toolkit.pose_estimators` group resolves to fdhclean's builders (the
    anonymiser finds backends only this way: no import crosses the packages)."""
    import importlib
    import tomllib
    from pathlib import Path

    from fdhclean.estimators import ESTIMATORS, build_vitpose_hf, build_vitpose_mmpose

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    group = project["project"]["entry-points"]["triagan_toolkit.pose_estimators"]
    assert set(group) == set(ESTIMATORS) == {"vitpose-hf", "vitpose-mmpose"}
    for name, target in group.items():
        module, attr = target.split(":")
        assert getattr(importlib.import_module(module), attr) is ESTIMATORS[name]
    assert ESTIMATORS["vitpose-hf"] is build_vitpose_hf
    assert ESTIMATORS["vitpose-mmpose"] is build_vitpose_mmpose
