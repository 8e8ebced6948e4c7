"""The anonymiser's geometry and paste-back: DeepPrivacy2's own vectors, exact pixels with fake
generators, batching, identity and truncation (anonymize-spec sections 3 and 5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from anonymize_helpers import (
    ConstantG,
    one_thread,  # noqa: F401  (autouse: one torch thread)
    pattern_g,
    save_tiny_generator,
)
from conftest import shared_vectors

from triagan_model.anonymize.api import Anonymizer, AnonymizeSettings
from triagan_model.anonymize.boxes import expand_box, mask_box
from triagan_model.anonymize.compose import Person, compose, plan_persons
from triagan_model.anonymize.crops import (
    crop_keypoints,
    crop_masks,
    cut_pad_resize,
    dilation_radius,
)
from triagan_model.anonymize.identity import ConfigError, latents, resolve_truncation


@pytest.fixture(scope="module")
def vectors():
    return shared_vectors("dp2_anonymize_vectors")


def _scene(d, s):
    p = f"s{s:02d}_"
    persons = [
        Person(m.astype(bool), k) for m, k in zip(d[p + "masks"], d[p + "keypoints"], strict=True)
    ]
    return p, d[p + "image"], persons


def test_dp2_boxes_crops_masks_keypoints(vectors):
    d = vectors
    for s in range(24):
        p, img, persons = _scene(d, s)
        plans = [q for q in plan_persons(persons, img.shape[:2], [""] * len(persons))
                 if q.status != "too-small"]  # fmt: skip
        np.testing.assert_array_equal(np.array([q.box for q in plans]).reshape(-1, 4),
                                      d[p + "boxes"], err_msg=p)  # fmt: skip
        im = torch.from_numpy(img).permute(2, 0, 1).contiguous()
        for i, q in enumerate(plans):
            np.testing.assert_array_equal(q.masks.mask, d[p + "crop_mask"][i].astype(bool))
            np.testing.assert_array_equal(q.masks.maskrcnn_mask,
                                          d[p + "crop_maskrcnn_mask"][i].astype(bool))  # fmt: skip
            crop = cut_pad_resize(im, q.box).permute(1, 2, 0).numpy()
            np.testing.assert_array_equal(crop, d[p + "crop_img"][i], err_msg=f"{p}{i}")
            np.testing.assert_allclose(q.keypoints, d[p + "crop_keypoints"][i], atol=1e-6)
    # the persons DP2 drops are exactly the ones reported too-small
    small = 0
    for s in range(24):
        _, img, persons = _scene(d, s)
        plans = plan_persons(persons, img.shape[:2], [""] * len(persons))
        small += sum(q.status == "too-small" for q in plans)
    assert small == 70 - 64


def test_dp2_paste_back_batched_and_one_by_one(vectors):
    d = vectors
    fake = pattern_g(d["pattern"])
    for s in range(24):
        p, img, persons = _scene(d, s)
        before = img.copy()
        plans = plan_persons(persons, img.shape[:2], [str(i) for i in range(len(persons))])
        batched = compose(img, plans, fake, batch_size=16)
        single = compose(img, plans, fake, batch_size=1)
        assert np.abs(batched.astype(int) - d[p + "output"]).max() <= 1, p
        np.testing.assert_array_equal(batched, single)
        np.testing.assert_array_equal(img, before)  # input never modified


def test_spec_box_table():
    hw = (1080, 1920)
    table = [((500, 200, 600, 500), 18000, (463, 192, 639, 509)),
             ((500, 200, 700, 560), 64800, (486, 176, 714, 584)),
             ((0, 600, 150, 1080), 50000, (0, 574, 281, 1080)),
             ((900, 500, 910, 520), 120, (900, 500, 911, 521)),
             ((900, 500, 916, 540), 400, (897, 499, 920, 541))]  # fmt: skip
    for tight, px, expected in table:
        assert expand_box(tight, hw, px) == expected
    assert dilation_radius() == 4


def _two_overlapping(hw=(200, 300)):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    a = np.zeros(hw, bool)
    a[40:170, 60:120] = True
    b = np.zeros(hw, bool)
    b[30:180, 100:170] = True
    c = np.zeros(hw, bool)
    c[50:150, 230:280] = True
    return img, [Person(a), Person(b), Person(c)]


def test_pixels_outside_dilated_masks_bit_identical():
    img, persons = _two_overlapping()
    anon = Anonymizer(ConstantG(51 / 127.5 - 1), settings=AnonymizeSettings())
    res = anon.image(img, persons=persons, key="x.png")
    from scipy.ndimage import binary_dilation

    from triagan_model.anonymize.crops import disk

    # the crop's radius-4 dilation is 4 * box height / 288 < 3 frame pixels here; the NEAREST
    # resizes there and back add at most 2 more
    region = binary_dilation(np.any([p.mask for p in persons], 0), structure=disk(5))
    np.testing.assert_array_equal(res.image[~region], img[~region])
    changed = (res.image != img).any(-1)
    inside = np.any([p.mask for p in persons], 0)
    assert changed[inside].mean() > 0.95  # grey 51 replaced random pixels
    assert (res.image[inside] == 51).all(-1).mean() > 0.95
    assert [r["status"] for r in res.persons] == ["anonymized"] * 3


def test_largest_on_top_and_layers():
    img, persons = _two_overlapping()
    plans = plan_persons(persons, img.shape[:2], ["a", "b", "c"])
    areas = [q.area for q in plans]
    assert areas == sorted(areas)
    # c is disjoint from both: it shares layer 0 with the smallest; the others stack
    layers = {q.index: q.layer for q in plans}
    assert layers[2] == 0 and layers[0] == 0 and layers[1] == 1
    values = {0: -0.5, 1: 0.5}  # per-layer grey: the top person (b, larger) must win the overlap

    def per_call(batch):
        v = values[len(calls)] if len(calls) < 2 else 0.0
        calls.append(batch["keys"])
        return torch.full_like(batch["img"], v)

    calls = []
    out = compose(img, plans, per_call, batch_size=16)
    assert len(calls) == 2  # one batched call per layer
    overlap = persons[0].mask & persons[1].mask
    expected = round((0.5 + 1) / 2 * 255)
    assert (out[overlap] == expected).all()


def test_identity_same_key_same_latent_any_order():
    z1 = latents(["a.jpg#p0", "a.jpg#p1"], 16, seed=0)
    z2 = latents(["a.jpg#p1", "a.jpg#p0"], 16, seed=0)
    torch.testing.assert_close(z1[0], z2[1], rtol=0, atol=0)
    assert not torch.equal(z1[0], z1[1])
    assert not torch.equal(latents(["a.jpg#p0"], 16, seed=1)[0], z1[0])


def test_truncation_refused_without_centres(tmp_path):
    w = save_tiny_generator(tmp_path / "w", stage="18x10", centres=None)
    with pytest.raises(ConfigError, match="triagan clusters --weights"):
        resolve_truncation(w, psi=0.0)
    with pytest.raises(ConfigError, match="triagan clusters"):
        resolve_truncation(w, psi=0.7, multi_modal="on")
    with pytest.warns(UserWarning, match="w_avg"):
        assert resolve_truncation(w, psi=0.7).centres is None
    with pytest.warns(UserWarning, match="one identity"):
        resolve_truncation(w, psi=0.0, multi_modal="off")


def test_real_tiny_generator_psi0_gives_centres(tmp_path):
    w = save_tiny_generator(tmp_path / "w", stage="72x40", centres=4)
    img, persons = _two_overlapping()
    for rule in ("nearest", "index"):
        anon = Anonymizer.from_files(str(w), settings=AnonymizeSettings(centre_rule=rule))
        res = anon.image(img, persons=persons, key="k.png")
        idx = [r["centre_index"] for r in res.persons]
        assert all(i is not None and 0 <= i < 4 for i in idx)
        assert anon.provenance["centres"].endswith("w_centers.safetensors")
        again = anon.image(img, persons=[Person(p.mask) for p in persons], key="k.png")
        np.testing.assert_array_equal(res.image, again.image)  # deterministic per key
        other = anon.image(img, persons=[Person(p.mask) for p in persons], key="other.png")
        assert not np.array_equal(res.image, other.image)


def test_bad_person_mask_size_is_a_clear_error():
    img, persons = _two_overlapping()
    persons[1].mask = persons[1].mask[:-1]
    anon = Anonymizer(ConstantG())
    with pytest.raises(ValueError, match="person 1's mask"):
        anon.image(img, persons=persons, key="bad.png")


def test_small_person_policies_each_reported():
    img = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    m = np.zeros((120, 160), bool)
    m[50:58, 70:74] = True  # 32 px: expanded box far under 32 x 32
    for policy in ("blur", "pixelate", "maskout", "keep"):
        anon = Anonymizer(ConstantG(), settings=AnonymizeSettings(small_person=policy))
        res = anon.image(img, persons=[Person(m)], key="s.png")
        (row,) = res.persons
        assert row["status"] == "too-small" and row["fallback"] == policy
        changed = (res.image != img).any(-1)
        assert changed.any() == (policy != "keep"), policy
        if policy != "keep":
            ys, xs = np.nonzero(changed)
            assert ys.min() >= 45 and ys.max() < 63 and xs.min() >= 65 and xs.max() < 79
    assert (anon.image(img, persons=[Person(m)]).image == img).all()


def test_crop_keypoints_visibility():
    kp = np.zeros((17, 3), np.float32)
    kp[0] = (50, 60, 0.9)
    kp[1] = (50, 60, 0.1)  # under the threshold
    kp[2] = (500, 60, 0.9)  # outside the box
    kp[3] = (np.nan, 60, 0.9)
    out = crop_keypoints(kp, (0, 0, 100, 180), 0.3)
    assert out[:4, 2].tolist() == [1, 0, 0, 0]
    assert out[0, :2].tolist() == pytest.approx([0.5, 60 / 180])


def test_empty_mask_is_too_small_not_a_crash():
    img = np.zeros((64, 64, 3), np.uint8)
    res = Anonymizer(ConstantG()).image(img, persons=[Person(np.zeros((64, 64), bool))])
    assert res.persons[0]["status"] == "too-small" and res.persons[0]["box"] is None
    assert mask_box(np.zeros((3, 3), bool)) is None
    assert crop_masks(np.ones((64, 64), bool), (0, 0, 64, 64)).mask.shape == (288, 160)


def test_conditioning_mode_comes_from_the_weights(tmp_path):
    img, persons = _two_overlapping()
    for p in persons:  # keypoints on the mask's centre line, so the maps differ by mode
        ys, xs = np.nonzero(p.mask)
        kp = np.zeros((17, 3), np.float32)
        kp[:, 0] = xs.mean()
        kp[:, 1] = np.linspace(ys.min() + 5, ys.max() - 5, 17)
        kp[:, 2] = 1
        p.keypoints = kp
    outs = {}
    for mode in ("reference", "flip-exact"):
        w = save_tiny_generator(tmp_path / mode, stage="18x10", centres=4, mode=mode)
        anon = Anonymizer.from_files(str(w))
        assert anon.provenance["conditioning_mode"] == mode
        outs[mode] = anon.image(img, persons=persons, key="m.png").image
    assert not np.array_equal(outs["reference"], outs["flip-exact"])


def test_crop_interpolation_rule_differs_only_for_boxes_leaving_the_image():
    img = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (3, 200, 120), dtype=np.uint8))
    outside = (-100, -150, 80, 174)  # 324 x 180 box, 174 x 80 of it inside the image
    ref = cut_pad_resize(img, outside, rule="reference")  # DP2: NEAREST (clamped extent)
    padded = cut_pad_resize(img, outside, rule="padded")  # BICUBIC (the crop's own size)
    assert not torch.equal(ref, padded)
    nearest = torch.nn.functional.interpolate(
        torch.nn.functional.pad(img[:, :174, :80].float(), (100, 0, 150, 0))[None],
        size=(288, 160), mode="nearest")[0].to(torch.uint8)  # fmt: skip
    torch.testing.assert_close(ref, nearest, rtol=0, atol=0)
    inside = (10, 10, 100, 172)
    assert torch.equal(cut_pad_resize(img, inside, rule="reference"),
                       cut_pad_resize(img, inside, rule="padded"))  # fmt: skip
