"""ViTPose's top-down arithmetic against numbers computed by the official code.

`shared/data/vitpose_reference_vectors.npz` (its README entry documents every array) was made by
ViTAE-Transformer/ViTPose (mmpose 0.x) with opencv: box -> centre/scale, UDP warp matrix,
`cv2.warpAffine` crops, flip-test averaging and `keypoints_from_heatmaps` (DARK-UDP) on
synthetic heatmaps with border, low, two-mode, negative and all-zero maps.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_vectors

from fdhclean import fdh
from fdhclean.estimators import decoding, topdown


@pytest.fixture(scope="module")
def ref():
    d = shared_vectors("vitpose_reference_vectors")
    return {k: d[k] for k in d.files}


def _metas(ref) -> np.ndarray:
    return np.concatenate([ref["center"], ref["scale"]], axis=1)


def test_center_scale_and_warp_matrix_are_official(ref):
    for n, box in enumerate(ref["boxes_xywh"]):
        center, scale = topdown.center_scale_xywh(box)
        assert center.dtype == scale.dtype == np.float32
        np.testing.assert_array_equal(center, ref["center"][n], err_msg=ref["box_kind"][n])
        np.testing.assert_array_equal(scale, ref["scale"][n], err_msg=ref["box_kind"][n])
        np.testing.assert_array_equal(topdown.warp_matrix(center, scale), ref["warp_matrix"][n])


def test_xyxy_boxes_take_the_same_rule(ref):
    """`box_meta` (x0, y0, x1, y1: the estimators' input) = the official rule on xywh."""
    xywh = ref["boxes_xywh"]
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    metas = np.stack([topdown.box_meta(b) for b in xyxy])
    np.testing.assert_allclose(metas, _metas(ref), rtol=1e-6)  # x + w - x is w to 1 ulp
    half = np.stack([topdown.box_meta(b, frame="half-pixel") for b in xyxy])
    np.testing.assert_allclose(half[:, :2], metas[:, :2] - 0.5, atol=1e-4)


def test_crops_are_cv2_warp_affine(ref):
    """Every crop within 1 grey level of cv2.warpAffine (in fact bit-identical), including the
    band outside the image, fully-outside, tiny and huge boxes."""
    worst = []
    for n in range(len(ref["boxes_xywh"])):
        image = ref["images"][ref["image_index"][n]]
        ours = topdown.warp_crop_cv2(image, ref["warp_matrix"][n])
        assert ours.shape == (256, 192, 3) and ours.dtype == np.uint8
        worst.append(np.abs(ours.astype(int) - ref["crops"][n]).max())
    assert max(worst) <= 1, dict(zip(ref["box_kind"], worst, strict=True))
    assert sum(w == 0 for w in worst) == len(worst)  # exact today; tolerance is 1 level
    # and through preprocess: the model input is the normalised official crop
    box = ref["boxes_xywh"][0]
    x, _ = topdown.preprocess(
        ref["images"][ref["image_index"][0]], np.r_[box[:2], box[:2] + box[2:]]
    )
    np.testing.assert_allclose(x, topdown.normalize(ref["crops"][0]), atol=1e-6)


def test_scipy_crop_is_not_the_official_one(ref):
    """The transformers-style crop (float positions) differs: why `vitpose` crops with cv2."""
    n = int(np.flatnonzero(ref["box_kind"] == "mixed")[0])
    image = ref["images"][ref["image_index"][n]]
    scipy_crop = topdown.warp_crop_scipy(image, _metas(ref)[n])
    assert np.abs(scipy_crop.astype(int) - ref["crops"][n]).max() > 1


def test_flip_back_is_official(ref):
    assert list(ref["flip_index"]) == list(fdh.FLIP_PERMUTATION)
    np.testing.assert_array_equal(
        topdown.unflip_heatmaps(ref["heatmaps_flipped"]),
        ref["heatmaps_flipped"][:, ref["flip_index"]][..., ::-1],
    )


@pytest.mark.parametrize("flip", [True, False])
def test_vitpose_decoding_is_official(ref, flip):
    """`vitpose` decoding within 0.05 px of keypoints_from_heatmaps on every map, scores exact."""
    hm = ref["heatmaps"]
    if flip:
        hm = (hm + topdown.unflip_heatmaps(ref["heatmaps_flipped"])) * np.float32(0.5)
    want = ref["keypoints"] if flip else ref["keypoints_noflip"]
    scores = ref["scores"] if flip else ref["scores_noflip"]
    out = decoding.decode(hm, _metas(ref), "vitpose")
    err = np.abs(out[..., :2] - want).max(-1)
    assert err.max() < 0.05, np.argwhere(err >= 0.05)
    np.testing.assert_array_equal(out[..., 2], scores)
    # the hard cases are in the data: border peaks, negative and all-zero maps
    flags = ref["map_flags"]
    assert (flags & 1).any() and (flags & 128).any() and (flags & 32).any()
    half = decoding.decode(hm, _metas(ref), "vitpose", frame="half-pixel")
    np.testing.assert_allclose(half[..., :2], out[..., :2] + 0.5, atol=1e-4)


@pytest.mark.parametrize("mode", ["mmpose1", "transformers"])
def test_other_modes_differ_where_their_blur_differs(ref, mode):
    """mmpose 1.x's zero-padded, rescaled blur and transformers' blur leave plain interior peaks
    within a few hundredths of a heatmap pixel but move border peaks by pixels."""
    out = decoding.decode(ref["heatmaps"], _metas(ref), mode)
    err = np.abs(out[..., :2] - ref["keypoints_noflip"]).max(-1)
    sw = ref["scale"][:, 0:1] * 200 / 47  # image px per heatmap px
    border = (ref["map_flags"] & 1) > 0
    assert (err[border] / np.broadcast_to(sw, err.shape)[border]).max() > 0.5
    np.testing.assert_array_equal(out[..., 2], ref["scores_noflip"])


def test_non_positive_maps_start_from_minus_one(ref):
    """A map with max <= 0 decodes from heatmap (-1, -1), as the official `_get_max_preds`."""
    neg = (ref["map_flags"] & 128) > 0
    n, k = np.argwhere(neg)[0]
    coords, maxvals = decoding.max_preds(ref["heatmaps"][n])
    assert maxvals[k] <= 0 and tuple(coords[k]) == (-1.0, -1.0)
