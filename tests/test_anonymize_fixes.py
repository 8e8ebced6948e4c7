"""Faults a review found in `triagan anonymize`, each rebuilt here: outputs over inputs, variable
frame rate video, a frame lost in encoding, bad pose weights, bad centres files, malformed COCO
segmentations, phone MPO JPEGs, animated images."""

from __future__ import annotations

import hashlib
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import torch
from anonymize_helpers import (
    one_thread,  # noqa: F401  (autouse: one torch thread)
    save_tiny_generator,
)
from PIL import Image

from triagan_model.anonymize import media
from triagan_model.cli import main


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_tiny_generator(tmp_path_factory.mktemp("g") / "w", stage="18x10", centres=4)


def _rle(mask: np.ndarray) -> dict:
    import pycocotools.mask as mu

    rle = mu.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def _person_mask(h: int = 120, w: int = 80) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[20:100, 25:55] = True
    return m


@pytest.fixture()
def one_image(tmp_path):
    img = np.random.RandomState(0).randint(0, 255, (120, 80, 3), np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    dets = [{"file_name": "a.png", "score": 0.9, "segmentation": _rle(_person_mask())}]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    return tmp_path


def _run(*args) -> int:
    return main(["anonymize", *map(str, args)])


def test_output_never_overwrites_an_input(one_image, weights, monkeypatch, capsys):
    d = one_image
    before = hashlib.sha256((d / "a.png").read_bytes()).hexdigest()
    monkeypatch.chdir(d)
    assert _run("a.png", "--out", ".", "--weights", weights, "--detections", "dets.json") == 2
    err = capsys.readouterr().err
    assert "would overwrite the input a.png" in err and "Traceback" not in err
    assert hashlib.sha256((d / "a.png").read_bytes()).hexdigest() == before
    # a file input inside OUT is refused too
    (d / "o").mkdir()
    (d / "o" / "a.png").write_bytes((d / "a.png").read_bytes())
    assert _run("o/a.png", "--out", "o/..", "--weights", weights, "--detections",
                "dets.json") == 2  # fmt: skip
    assert _run("o/a.png", "--out", "o", "--weights", weights, "--detections", "dets.json") == 2
    assert "lies inside --out" in capsys.readouterr().err


def _write_clip(path: Path, pts: list[int], tb: Fraction, codec: str = "libx264") -> None:
    c = av.open(str(path), "w")
    s = c.add_stream(codec, rate=25)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    s.codec_context.time_base = tb
    for i, p in enumerate(pts):
        arr = np.full((48, 64, 3), i * 25 % 255, np.uint8)
        f = av.VideoFrame.from_ndarray(arr, format="rgb24")
        f.pts, f.time_base = p, tb
        for pk in s.encode(f):
            c.mux(pk)
    for pk in s.encode(None):
        c.mux(pk)
    c.close()


def _seconds(path: Path) -> list[float]:
    with av.open(str(path)) as c:
        return [float(f.pts * f.time_base) for f in c.decode(video=0)]


@pytest.mark.parametrize("codec", ["libx264", "mpeg4", "ffv1"])
def test_variable_frame_rate_timestamps_kept(tmp_path, codec):
    src = tmp_path / "vfr.mkv"
    _write_clip(src, [0, 1, 3, 4, 7, 8, 9, 12], Fraction(1, 30))
    dst = tmp_path / f"out_{codec}.mkv"
    r = media.transcode_video(src, dst, lambda i, x: x, codec=codec)
    assert r.frames_in == r.frames_out == 8
    assert _seconds(dst) == pytest.approx(_seconds(src))


def test_frame_lost_in_encoding_fails_the_file(tmp_path, weights, monkeypatch, capsys):
    src = tmp_path / "in" / "clip.mp4"
    src.parent.mkdir()
    _write_clip(src, list(range(6)), Fraction(1, 25))
    mask = np.pad(np.ones((30, 16), bool), ((9, 9), (24, 24)))
    dets = [{"file_name": "clip.mp4", "frame": 0, "score": 0.9, "segmentation": _rle(mask)}]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    real, calls = media._encode, []

    def dropping(out, ostream, rgb, pts, tb):
        calls.append(pts)
        return 0 if len(calls) == 3 else real(out, ostream, rgb, pts, tb)  # frame 2 never encoded

    monkeypatch.setattr(media, "_encode", dropping)
    out = tmp_path / "out"
    args = [src.parent, "--out", out, "--weights", weights, "--detections", tmp_path / "dets.json"]
    assert _run(*args) == 1
    assert "6 frames decoded but 5 encoded" in capsys.readouterr().err
    assert not (out / "clip.mp4").exists()
    files = pd.read_parquet(out / "report" / "files")
    assert files.status.tolist() == ["failed"]
    monkeypatch.setattr(media, "_encode", real)
    assert _run(*args) == 0 and media.count_frames(out / "clip.mp4")[0] == 6


def test_pose_weights_missing_is_exit_2(one_image, weights, capsys):
    pytest.importorskip("transformers")
    d = one_image
    code = _run(d / "a.png", "--out", d / "o", "--weights", weights, "--detections",
                d / "dets.json", "--pose", "vitpose-hf",
                "--pose-weights", "/nonexistent/vp")  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "/nonexistent/vp" in err and "Traceback" not in err


def test_bad_clusters_files_are_exit_2(one_image, weights, tmp_path, capsys):
    from triagan_model.sampling.truncation import save_centres

    d = one_image
    good = weights / "w_centers.safetensors"
    (tmp_path / "trunc.safetensors").write_bytes(good.read_bytes()[:40])
    save_centres(tmp_path / "wide.safetensors", torch.zeros(4, 7), source="test")
    for name, needle in (("trunc.safetensors", "cannot be read"),
                         ("wide.safetensors", "shape (4, 7)")):  # fmt: skip
        capsys.readouterr()
        code = _run(d / "a.png", "--out", d / "o", "--weights", weights, "--detections",
                    d / "dets.json", "--clusters", tmp_path / name)  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2, err
        assert needle in err and name in err and "Traceback" not in err
    assert not (d / "o" / "a.png").exists()


@pytest.mark.parametrize(
    "seg,kp",
    [([[10, 10, 40, 90]], None), ([[1, 2, 3]], None), ({"size": [120, 80]}, None),
     ({"size": [120, 80], "counts": 5}, None), ("rle", ["x"] * 51)],
)  # fmt: skip
def test_malformed_segmentation_fails_only_that_file(tmp_path, weights, seg, kp, capsys):
    inp = tmp_path / "in"
    inp.mkdir()
    img = np.random.RandomState(0).randint(0, 255, (120, 80, 3), np.uint8)
    for n in ("a.png", "b.png"):
        Image.fromarray(img).save(inp / n)
    good = _rle(_person_mask())
    bad = {"file_name": "b.png", "score": 0.9, "segmentation": good if seg == "rle" else seg}
    if kp is not None:
        bad["keypoints"] = kp
    dets = [{"file_name": "a.png", "score": 0.9, "segmentation": good}, bad]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    out = tmp_path / "out"
    code = _run(inp, "--out", out, "--weights", weights, "--detections", tmp_path / "dets.json")
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "entry 1 (image b.png" in err and ("segmentation" in err or "keypoints" in err)
    files = pd.read_parquet(out / "report" / "files").set_index("input")
    assert files.status.to_dict() == {"a.png": "ok", "b.png": "failed"}
    assert (out / "a.png").is_file() and not (out / "b.png").exists()


def test_mpo_is_written_as_jpeg_at_the_asked_quality(tmp_path):
    rng = np.random.RandomState(0)
    a = Image.fromarray(rng.randint(0, 255, (64, 48, 3), np.uint8))
    a.save(tmp_path / "cam.jpg", format="MPO", save_all=True, append_images=[a.copy()])
    with Image.open(tmp_path / "cam.jpg") as im:
        assert im.format == "MPO"
    rgb, info = media.read_image(tmp_path / "cam.jpg")
    assert info.format == "JPEG" and any("MPO with 2 images" in n for n in info.warnings)
    (tmp_path / "o.jpg").write_bytes(media.encode_image(rgb, info, jpeg_quality=95))
    from PIL import JpegImagePlugin

    with Image.open(tmp_path / "o.jpg") as im:
        assert im.format == "JPEG" and JpegImagePlugin.get_sampling(im) == 0  # 4:4:4
        q = im.quantization[0]
    assert max(q) <= 16  # quality 95: 12; quality 75 (PIL's default): 60


def test_animated_and_multipage_images_fail_with_a_message(tmp_path):
    fr = [Image.fromarray(np.full((16, 16, 3), v, np.uint8)) for v in (0, 128, 255)]
    fr[0].save(tmp_path / "anim.webp", save_all=True, append_images=fr[1:])
    fr[0].save(tmp_path / "multi.tif", save_all=True, append_images=fr[1:])
    fr[0].save(tmp_path / "anim.png", save_all=True, append_images=fr[1:])
    for n in ("anim.webp", "multi.tif", "anim.png"):
        with pytest.raises(media.MediaError, match=r"3 frames: animated or multi-page"):
            media.read_image(tmp_path / n)


def test_palette_image_warns(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).convert("P").save(tmp_path / "p.png")
    _, info = media.read_image(tmp_path / "p.png")
    assert any("palette" in n for n in info.warnings) and info.mode == "RGB"
