"""Generator, conditioning input and generator weights (triagan-spec "Generator")."""

from __future__ import annotations

import warnings

import pytest
import torch

from triagan_model.configs import get_config
from triagan_model.networks.conditioning import (
    COCO_FLIP_PERMUTATION,
    LIMB_FLIP_PERMUTATION,
    NUM_CONDITION_CHANNELS,
    build_condition,
    flip_keypoints,
    keypoint_maps,
    limb_maps,
)
from triagan_model.networks.generator import TriaGANGenerator
from triagan_model.weights import load_generator, load_matching, save_generator


def tiny(name: str = "E-tiny"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_config(name)


def random_batch(b: int, hw: tuple[int, int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    kp = torch.rand(b, 17, 3, generator=g)
    kp[..., 2] = (torch.rand(b, 17, generator=g) > 0.2).float()
    image = torch.rand(b, 3, h, w, generator=g) * 2 - 1
    mask = (torch.rand(b, 1, h, w, generator=g) > 0.5).float()
    person = (torch.rand(b, 1, h, w, generator=g) > 0.5).float()
    return image, mask, person, kp


@pytest.mark.parametrize("stage", ["18x10", "36x20", "72x40", "144x80", "288x160"])
def test_generator_shapes_and_known_pixels(stage):
    torch.manual_seed(0)
    cfg = tiny().generator_config(stage)
    g = TriaGANGenerator(cfg).eval()
    image, mask, person, kp = random_batch(2, cfg.resolution)
    cond = build_condition(image, mask, person, kp, cfg.resolution)
    assert cond.shape == (2, NUM_CONDITION_CHANNELS, *cfg.resolution)
    with torch.no_grad():
        out = g(cond)
    assert out["img"].shape == out["unmasked"].shape == (2, 3, *cfg.resolution)
    known = mask.expand_as(image) > 0
    assert torch.equal(out["img"][known], image[known])  # known pixels unchanged, bit for bit
    assert not torch.equal(out["img"][~known], image[~known])


def test_generator_under_bf16_autocast():
    """What the training loop runs on a GPU (mixed precision): w_avg updates in float32 and the
    known pixels still come back bit for bit (here CPU autocast, the same dtype rules)."""
    torch.manual_seed(0)
    cfg = tiny().generator_config("18x10")
    g = TriaGANGenerator(cfg)
    image, mask, person, kp = random_batch(2, cfg.resolution)
    cond = build_condition(image, mask, person, kp, cfg.resolution)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = g(cond, update_w_avg=True)
    assert g.mapping.w_avg.dtype == torch.float32 and out["img"].dtype == torch.float32
    known = mask.expand_as(image) > 0
    assert torch.equal(out["img"][known], image[known])


def test_generator_rejects_wrong_input_shape():
    g = TriaGANGenerator(tiny().generator_config("18x10"))
    with pytest.raises(ValueError, match="cond must have shape"):
        g(torch.zeros(1, 30, 36, 20))


def test_keypoint_maps_pixel_rule():
    h, w = 36, 20
    kp = torch.tensor([[[0.5, 0.5, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 2.0], [0.26, 0.74, 1.0]]])
    kp = torch.cat([kp, torch.zeros(1, 13, 3)], 1)  # the rest invisible
    maps = keypoint_maps(kp, (h, w), mode="flip-exact")
    assert maps.sum() == 4
    assert maps[0, 0, 18, 10] == 1  # floor(0.5*36), floor(0.5*20)
    assert maps[0, 1, 0, 0] == 1
    assert maps[0, 2, h - 1, w - 1] == 1  # x = 1 clamps to the last pixel
    assert maps[0, 3, 26, 5] == 1  # floor(0.74*36) = 26, floor(0.26*20) = 5
    # invisible (v = 0) or outside [0, 1]: no pixel
    kp2 = kp.clone()
    kp2[0, 0, 2] = 0
    kp2[0, 1, 0] = 1.2
    assert keypoint_maps(kp2, (h, w), mode="flip-exact").sum() == 2


def test_limb_maps_draw_lines_between_keypoints():
    h, w = 72, 40
    kp = torch.zeros(1, 17, 3)
    kp[0, 7] = torch.tensor([0.1, 0.1, 1])  # left elbow
    kp[0, 9] = torch.tensor([0.1, 0.5, 1])  # left wrist: a vertical line x = 4, y 7..36
    maps = limb_maps(kp, (h, w), mode="flip-exact")
    assert maps[0, 1].sum() == 36 - 7 + 1
    assert torch.all(maps[0, 1, 7:37, 4] == 1)
    assert maps[0, [0, 2, 3, 4, 5]].sum() == 0  # only the left-arm map
    # Virtual neck (mid-shoulder) and mid-hip give the body line.
    kp = torch.zeros(1, 17, 3)
    for i, (x, y) in {5: (0.3, 0.2), 6: (0.7, 0.2), 11: (0.4, 0.6), 12: (0.6, 0.6)}.items():
        kp[0, i] = torch.tensor([x, y, 1.0])
    body = limb_maps(kp, (h, w), mode="flip-exact")[0, 3]
    assert torch.all(body[14:44, 20] == 1)  # neck (20, 14) -> mid-hip (20, 43)
    assert body[14, 12] == 1 and body[14, 28] == 1  # shoulder line end points


def test_condition_flip_equivariance_is_exact():
    hw = (72, 40)
    image, mask, person, kp = random_batch(6, hw, seed=3)
    cond = build_condition(image, mask, person, kp, hw, mode="flip-exact")
    flipped = build_condition(
        image.flip(-1), mask.flip(-1), person.flip(-1), flip_keypoints(kp), hw, mode="flip-exact"
    )
    perm = list(range(7)) + [7 + i for i in COCO_FLIP_PERMUTATION]
    perm += [24 + i for i in LIMB_FLIP_PERMUTATION]
    assert cond[:, 24:].sum() > 100  # lines were drawn
    assert torch.equal(flipped, cond[:, perm].flip(-1))


def test_progressive_stage_loads_previous_by_name():
    cfg = tiny()
    g18 = TriaGANGenerator(cfg.generator_config("18x10"))
    g36 = TriaGANGenerator(cfg.generator_config("36x20"))
    report = load_matching(g36, g18.state_dict())
    assert not report.unexpected and not report.mismatched
    new_prefixes = ("encoder.levels.2.", "decoder.levels.2.", "decoder.unet_skips.2.")
    assert report.new and all(k.startswith(new_prefixes) for k in report.new)
    assert len(report.loaded) == len(g18.state_dict())
    sd36, sd18 = g36.state_dict(), g18.state_dict()
    assert all(torch.equal(sd36[k], sd18[k]) for k in report.loaded)


def test_weights_round_trip(tmp_path):
    torch.manual_seed(1)
    cfg = tiny().generator_config("36x20")
    g = TriaGANGenerator(cfg).eval()
    with torch.no_grad():  # non-trivial layer scales and noise strengths
        for p in g.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_generator(g, tmp_path / "w", config_name="E-tiny", stage="36x20")
    g2 = load_generator(tmp_path / "w")
    image, mask, person, kp = random_batch(2, cfg.resolution)
    cond = build_condition(image, mask, person, kp, cfg.resolution)
    z = torch.randn(2, cfg.z_dim)
    with torch.no_grad():
        a, b = g(cond, z), g2(cond, z)
    assert torch.equal(a["unmasked"], b["unmasked"])
    (tmp_path / "w" / "generator.safetensors").write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="sha256"):
        load_generator(tmp_path / "w")


def test_w_avg_tracking_and_truncation():
    g = TriaGANGenerator(tiny().generator_config("18x10"))
    z = torch.randn(8, 64)
    w = g.mapping(z, update_w_avg=True)
    assert torch.allclose(g.mapping.w_avg, 0.002 * w.mean(0), atol=1e-6)
    assert torch.allclose(g.mapping.truncate(w, 0.0), g.mapping.w_avg.expand_as(w))


def test_noise_modes():
    cfg = tiny().generator_config("18x10")
    g = TriaGANGenerator(cfg)
    with torch.no_grad():
        for m in g.modules():
            if hasattr(m, "noise_strength"):
                m.noise_strength.fill_(1.0)
    cond = build_condition(*random_batch(1, cfg.resolution), cfg.resolution)
    z = torch.randn(1, 64)
    with torch.no_grad():
        c1, c2 = (g(cond, z, noise_mode="const")["unmasked"] for _ in range(2))
        r1, r2 = (g(cond, z, noise_mode="random")["unmasked"] for _ in range(2))
    assert torch.equal(c1, c2) and not torch.equal(r1, r2)
