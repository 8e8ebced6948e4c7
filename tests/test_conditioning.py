"""Conditioning modes: ``reference`` reproduces DeepPrivacy2's maps exactly (vectors computed by
DP2's own code, shared/data/dp2_conditioning_vectors.npz), ``flip-exact`` keeps the previous rule,
and the mode travels with the generator's weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import shared_vectors
from PIL import Image, ImageDraw

from triagan_model.configs import CONDITIONING_MODES, get_config
from triagan_model.networks import conditioning as C
from triagan_model.networks.generator import TriaGANGenerator
from triagan_model.weights import CONFIG_FILE, load_generator, save_generator

RESOLUTIONS = ((18, 10), (36, 20), (72, 40), (144, 80), (288, 160))


@pytest.fixture(scope="module")
def ref():
    return shared_vectors("dp2_conditioning_vectors")


def test_reference_decoding_matches_dp2(ref):
    raw = torch.from_numpy(ref["keypoints_raw"])
    decoded = C.dp2_decode_keypoints(raw)
    assert torch.equal(decoded, torch.from_numpy(ref["keypoints_decoded"]))
    assert torch.equal(C.dp2_decode_keypoints(decoded), decoded)  # idempotent
    assert torch.equal(raw, torch.from_numpy(ref["keypoints_raw"]))  # input not modified


@pytest.mark.parametrize("hw", RESOLUTIONS, ids=lambda hw: f"{hw[0]}x{hw[1]}")
@pytest.mark.parametrize("source", ["keypoints_raw", "keypoints_decoded"])
def test_reference_mode_reproduces_dp2_exactly(ref, hw, source):
    """0 differing values: keypoint maps, the label map and the six one-hot limb maps."""
    kp = torch.from_numpy(ref[source])
    name = f"{hw[0]}x{hw[1]}"
    kmaps = C.keypoint_maps(kp, hw, mode="reference").to(torch.uint8).numpy()
    label = C.limb_label_map(kp, hw).numpy()
    limbs = C.limb_maps(kp, hw, mode="reference").to(torch.uint8).numpy()
    for got, key in ((kmaps, "keypoint_maps"), (label, "limb_label_map"), (limbs, "limb_maps")):
        want = ref[f"{key}_{name}"]
        assert got.shape == want.shape, key
        assert int((got != want).sum()) == 0, f"{key} at {name}: {(got != want).sum()} differ"
    # the vectors exercise what differs between the modes (else the test could not fail)
    flip = C.limb_maps(kp, hw, mode="flip-exact").to(torch.uint8).numpy()
    assert (flip != ref[f"limb_maps_{name}"]).any()


def test_build_condition_uses_the_mode(ref):
    kp = torch.from_numpy(ref["keypoints_raw"][:8])
    hw = (72, 40)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(8, 3, *hw, generator=g) * 2 - 1
    mask = (torch.rand(8, 1, *hw, generator=g) > 0.5).float()
    cond = C.build_condition(image, mask, mask, kp, hw)  # default: reference
    assert torch.equal(cond[:, 7:24], torch.from_numpy(ref["keypoint_maps_72x40"][:8]).float())
    assert torch.equal(cond[:, 24:], torch.from_numpy(ref["limb_maps_72x40"][:8]).float())
    flip = C.build_condition(image, mask, mask, kp, hw, mode="flip-exact")
    assert torch.equal(flip[:, :7], cond[:, :7]) and not torch.equal(flip, cond)
    with pytest.raises(ValueError, match="unknown conditioning mode 'floor'"):
        C.build_condition(image, mask, mask, kp, hw, mode="floor")


def test_pil_line_rasteriser_clips_instead_of_clamping():
    """DP2 rounds endpoints but never clamps them: PIL clips a line leaving the image, which
    keeps its slope. A clamped endpoint would draw another line."""
    h, w = 18, 10
    kp = torch.zeros(1, 17, 3)
    # left shoulder -> left elbow; x*W = 10 for the elbow: one column outside after rounding
    kp[0, 5] = torch.tensor([0.05, 0.05, 1.0])  # (0.5 -> 0, 0.9 -> 1)
    kp[0, 7] = torch.tensor([1.0, 0.95, 1.0])  # (10, 17.1 -> 17)
    got = C.limb_label_map(kp, (h, w))[0].numpy()
    expected = Image.new("L", (w, h), 0)
    ImageDraw.Draw(expected).line(((0, 1), (10, 17)), width=1, fill=2)
    clamped = Image.new("L", (w, h), 0)
    ImageDraw.Draw(clamped).line(((0, 1), (9, 17)), width=1, fill=2)
    assert np.array_equal(got, np.asarray(expected))
    assert not np.array_equal(got, np.asarray(clamped))
    assert set(np.unique(got)) == {0, 2}  # class 1 = left arm, + 1


def test_later_limbs_overwrite_and_fallback_head_line():
    """One label per pixel, the last drawn wins; with the nose invisible and both shoulders
    visible, DP2 draws mid-eye -> neck even when the eyes are invisible."""
    hw = (36, 20)
    kp = torch.zeros(1, 17, 3)
    kp[0, 5] = torch.tensor([0.3, 0.3, 1.0])  # shoulders: body line, then the arms over it
    kp[0, 6] = torch.tensor([0.7, 0.3, 1.0])
    kp[0, 1] = torch.tensor([0.45, 0.1, 0.0])  # invisible eyes still place the mid-eye
    kp[0, 2] = torch.tensor([0.55, 0.1, 0.0])
    label = C.limb_label_map(kp, hw)[0]
    assert label[4, 10] == 1  # head (class 0 + 1) at the mid-eye (0.5*20, round(0.1*36 = 3.6))
    neck = (10, 11)  # round(0.5*20), round(0.3*36 = 10.8)
    assert label[neck[1], neck[0]] == 1  # the head line, drawn last, overwrites the body line
    maps = C.limb_maps(kp, hw, mode="reference")
    assert maps.sum(1).max() == 1  # one-hot: never two limbs on a pixel
    independent = C.limb_maps(kp, hw, mode="flip-exact")
    assert independent[0, 0].sum() == 0  # flip-exact needs visible eyes for the mid-eye
    # invisible eyes far outside (PIL would walk ~1e9 pixels) or NaN: that one line is skipped
    for far in (1e8, float("nan")):
        kp[0, 1, 0] = kp[0, 2, 0] = far
        label = C.limb_label_map(kp, hw)[0]
        assert (label == 1).sum() == 0 and (label == 4).sum() > 0  # the shoulder line stays


def test_reference_keypoint_pixel_rounds_half_to_even():
    h, w = 36, 20
    kp = torch.zeros(1, 17, 3)
    kp[0, 0] = torch.tensor([0.125, 0.5, 1.0])  # x*W = 2.5 -> 2 (half to even), y*H = 18
    kp[0, 1] = torch.tensor([0.175, 1.0, 1.0])  # x*W = 3.5 -> 4, y = 1 -> 36 clamped to 35
    kp[0, 2] = torch.tensor([0.5, 0.5, 0.6])  # v = 0.6 is visible after decoding
    kp[0, 3] = torch.tensor([1.01, 0.5, 1.0])  # outside: invisible
    maps = C.keypoint_maps(kp, (h, w))
    assert maps.sum() == 3
    assert maps[0, 0, 18, 2] == 1 and maps[0, 1, 35, 4] == 1 and maps[0, 2, 18, 10] == 1
    floor = C.keypoint_maps(kp, (h, w), mode="flip-exact")
    assert floor[0, 1, 35, 3] == 1  # floor(3.5)


def test_mode_is_saved_in_generator_json_and_old_files_read_as_flip_exact(tmp_path):
    assert CONDITIONING_MODES == ("reference", "flip-exact")
    cfg = get_config("A-tiny", warn_tiny=False)
    for name in ("A", "B", "C", "D", "E"):
        assert get_config(name).generator_config().conditioning_mode == "reference"
    g = TriaGANGenerator(cfg.generator_config("72x40"))
    save_generator(g, tmp_path / "new")
    doc = json.loads((tmp_path / "new" / CONFIG_FILE).read_text())
    assert doc["generator"]["conditioning_mode"] == "reference"
    assert load_generator(tmp_path / "new").cfg.conditioning_mode == "reference"
    # a generator.json from the previous version has no field: it was trained flip-exact
    del doc["generator"]["conditioning_mode"]
    (tmp_path / "new" / CONFIG_FILE).write_text(json.dumps(doc))
    assert load_generator(tmp_path / "new").cfg.conditioning_mode == "flip-exact"
    doc["generator"]["conditioning_mode"] = "nearest"
    (tmp_path / "new" / CONFIG_FILE).write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="unknown conditioning_mode 'nearest'"):
        load_generator(tmp_path / "new")


def test_generate_batch_takes_the_mode_from_the_weights(ref, tmp_path):
    """The same weights marked reference / flip-exact give the images of each mode's condition."""
    import dataclasses

    from triagan_model.sampling.generate import generate_batch, sample_z

    hw = (18, 10)
    kp = torch.from_numpy(ref["keypoints_raw"][:6])
    g = torch.Generator().manual_seed(1)
    batch = {"img": torch.rand(6, 3, *hw, generator=g) * 2 - 1,
             "mask": (torch.rand(6, 1, *hw, generator=g) > 0.3).float(),
             "keypoints": kp}  # fmt: skip
    batch["maskrcnn_mask"] = batch["mask"]
    cfg = get_config("A-tiny", warn_tiny=False).generator_config()
    cfg = dataclasses.replace(cfg, resolution=hw, dim_mults=(1, 1))
    torch.manual_seed(0)
    G = TriaGANGenerator(cfg)
    for mode in CONDITIONING_MODES:
        G_mode = TriaGANGenerator(dataclasses.replace(cfg, conditioning_mode=mode))
        G_mode.load_state_dict(G.state_dict())
        save_generator(G_mode, tmp_path / mode)
    z = sample_z(list(range(6)), cfg.z_dim, 0)
    out = {}
    for mode in CONDITIONING_MODES:
        loaded = load_generator(tmp_path / mode)
        assert loaded.cfg.conditioning_mode == mode
        out[mode] = generate_batch(loaded, batch, z)
        cond = C.build_condition(batch["img"], batch["mask"], batch["mask"], kp, hw, mode=mode)
        with torch.no_grad():
            w = loaded.mapping(z)
            assert torch.allclose(out[mode], loaded(cond, w=w, noise_mode="const")["img"])
    assert not torch.allclose(out["reference"], out["flip-exact"])
