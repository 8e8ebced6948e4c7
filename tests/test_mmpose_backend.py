"""vitpose-mmpose: only where mmpose imports (its own environment, requirements-mmpose.txt).

Cross-checks the whole chain: a random mmpose ViTPose-B checkpoint run by mmpose itself
(per image via `inference_topdown`, and batched by our backend) and, converted with
`convert_vitpose`, by vitpose-hf with the same flip test and DARK blur.
"""

from __future__ import annotations

import numpy as np
import pytest

from fdhclean.estimators.mmpose_backend import INSTALL_HINT

try:
    import mmpose  # noqa: F401
    from mmpose.apis import inference_topdown, init_model  # noqa: F401

    HAVE_MMPOSE = True
except ImportError:
    HAVE_MMPOSE = False

pytestmark = [
    pytest.mark.mmpose,
    pytest.mark.skipif(not HAVE_MMPOSE, reason=f"mmpose is not importable: {INSTALL_HINT}"),
]
BASE = "body_2d_keypoint/topdown_heatmap/coco/td-hm_ViTPose-base_8xb64-210e_coco-256x192.py"
BOXES = np.array([(40, 60, 130, 270), (55, 90, 105, 200), (0, 0, 160, 288)])


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    import torch
    from mmengine.config import Config

    from fdhclean.estimators.mmpose_backend import bundled_config

    cfg = Config.fromfile(str(bundled_config(BASE)))
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    model = init_model(cfg, None, device="cpu")
    sd = model.state_dict()
    sd["head.final_layer.weight"] = sd["head.final_layer.weight"] * 300  # peaked heatmaps
    path = tmp_path_factory.mktemp("mmpose") / "vitpose-b-random.pth"
    torch.save({"state_dict": sd}, path)
    return path


def _images(n):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 288, 160, 3), dtype=np.uint8)


def test_batched_equals_inference_topdown(random_checkpoint):
    from fdhclean.estimators import build_estimator
    from fdhclean.estimators.mmpose_backend import bundled_config, mmpose_boxes

    est = build_estimator("vitpose-mmpose", checkpoint=random_checkpoint, device="cpu",
                          config=str(bundled_config(BASE)))  # fmt: skip
    images = _images(len(BOXES))
    ours = est.estimate(images, BOXES)
    for i in range(len(BOXES)):
        ref = inference_topdown(est.model, images[i][..., ::-1].copy(),
                                mmpose_boxes(BOXES[i : i + 1]), bbox_format="xyxy")[0]  # fmt: skip
        # frame "official": keypoints exactly as mmpose gives them (no shift)
        np.testing.assert_allclose(ours[i, :, :2], ref.pred_instances.keypoints[0], atol=1e-3)
        np.testing.assert_allclose(ours[i, :, 2], ref.pred_instances.keypoint_scores[0], atol=1e-5)


def test_converted_vitpose_hf_matches_mmpose(random_checkpoint, tmp_path):
    from fdhclean.estimators import build_estimator
    from fdhclean.estimators.convert import convert_vitpose
    from fdhclean.estimators.mmpose_backend import bundled_config

    convert_vitpose(random_checkpoint, tmp_path / "hf", variant="base")
    images = _images(len(BOXES))
    mm = build_estimator("vitpose-mmpose", checkpoint=random_checkpoint, device="cpu",
                         config=str(bundled_config(BASE))).estimate(images, BOXES)  # fmt: skip
    hf = build_estimator("vitpose-hf", checkpoint=tmp_path / "hf", device="cpu", dtype="fp32",
                         decoding="mmpose1").estimate(images, BOXES)  # fmt: skip
    found = mm[..., 2] > 0.1
    assert found.mean() > 0.5
    # cv2 vs scipy warps round a few crop pixels differently: allow a small residual.
    np.testing.assert_allclose(hf[found][:, :2], mm[found][:, :2], atol=0.5)
    np.testing.assert_allclose(hf[..., 2], mm[..., 2], rtol=0.02, atol=1e-3)


def test_missing_checkpoint_names_path(tmp_path):
    from fdhclean.estimators import build_estimator

    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_estimator("vitpose-mmpose", checkpoint=tmp_path / "nope.pth")
