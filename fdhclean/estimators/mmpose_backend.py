"""`vitpose-mmpose`: mmpose's own top-down pipeline (refine-spec section 7).

mmpose cannot share an environment with torch 2.14 (dependencies.md); it runs in its own
environment (requirements-mmpose.txt, docs/mmpose-environment.md) through `fdhclean estimate`,
which writes predictions for the other commands. mmpose is imported lazily.

Conventions (checked against mmpose 1.x `inference_topdown`, `LoadImage`, `PoseDataPreprocessor`):
- an ndarray image is used as given and the config's preprocessor converts BGR -> RGB, so the
  RGB image is passed as BGR (as `mmcv.imread` would give it);
- boxes are xyxy in mmpose's frame (pixel centres on integers): with `frame="official"`
  (default) box numbers pass unchanged and keypoints come back as mmpose gives them; with
  `frame="half-pixel"` boxes move by -0.5 and keypoints by +0.5 (see `topdown` for the frames);
- many images go through one `test_step`, exactly as `inference_topdown` does for the boxes of
  one image (same pipeline, `pseudo_collate`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fdhclean import fdh
from fdhclean.estimators.topdown import check_image, frame_offset
from fdhclean.estimators.weights import require_local, verify_sha256

DEFAULT_CONFIG = (
    "body_2d_keypoint/topdown_heatmap/coco/td-hm_ViTPose-huge_8xb64-210e_coco-256x192.py"
)
INSTALL_HINT = (
    "vitpose-mmpose needs mmpose 1.3.2 with mmcv 2.1.0 in a separate environment: see "
    "requirements-mmpose.txt and docs/mmpose-environment.md (or convert the checkpoint with "
    "`fdhclean convert-vitpose` and use --estimator vitpose-hf)"
)


def _import_mmpose():
    try:
        import mmpose
        from mmpose.apis import inference_topdown, init_model
    except ImportError as e:
        raise RuntimeError(f"{INSTALL_HINT} ({e})") from None
    return mmpose, init_model, inference_topdown


def bundled_config(name: str = DEFAULT_CONFIG) -> Path:
    """A config shipped inside the mmpose wheel (`mmpose/.mim/configs/...`)."""
    mmpose, _, _ = _import_mmpose()
    path = Path(mmpose.__file__).parent / ".mim" / "configs" / name
    if not path.is_file():
        raise FileNotFoundError(f"mmpose config not found: {path}")
    return path


def mmpose_boxes(boxes: np.ndarray, frame: str = "official") -> np.ndarray:
    """(N, 4) x0, y0, x1, y1 boxes in `frame` -> mmpose xyxy boxes (pixel centres on integers)."""
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4) - np.float32(frame_offset(frame))


class VitPoseMMPose:
    name = "vitpose-mmpose"

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        checkpoint_sha256: str | None = None,
        device: str = "auto",
        batch_size: int = 32,
        flip_test: bool = True,
        dtype: str = "auto",
        config: str | Path | None = None,
        frame: str = "official",
    ) -> None:
        path = require_local(checkpoint, kind="vitpose-mmpose", directory=False)
        self.frame = frame
        frame_offset(frame)  # validates the name
        _, init_model, _ = _import_mmpose()
        import torch
        from mmengine.config import Config

        self.weights_sha256 = verify_sha256(path, checkpoint_sha256)
        cfg_path = Path(config) if config is not None else bundled_config()
        if not cfg_path.is_file():
            raise FileNotFoundError(f"mmpose config not found: {cfg_path}")
        cfg = Config.fromfile(str(cfg_path))
        cfg.model.backbone.init_cfg = None  # never fetch the MAE pre-training weights
        cfg.model.test_cfg.flip_test = bool(flip_test)
        if device == "auto":
            device = "cuda:0" if torch.cuda.is_available() else "cpu"
        if dtype not in ("auto", "fp32"):
            raise ValueError("vitpose-mmpose runs in fp32 only (mmpose's own inference path)")
        self.model = init_model(cfg, str(path), device=device)
        self.batch_size = int(batch_size)
        self.flip_test = bool(flip_test)
        self.config = cfg_path
        self.checkpoint = path
        self.device = device

    def provenance(self) -> dict[str, Any]:
        return {
            "name": self.name, "checkpoint": str(self.checkpoint),
            "weights_sha256": self.weights_sha256, "flip_test": self.flip_test, "dtype": "fp32",
            "decoding": "mmpose1", "frame": self.frame, "config": str(self.config),
        }  # fmt: skip

    def stages(self) -> None:
        return None  # mmpose runs its own pipeline: whole `estimate` calls only

    def _run(self, images, boxes: np.ndarray):
        import torch
        from mmengine.dataset import Compose, pseudo_collate
        from mmengine.registry import init_default_scope

        init_default_scope(self.model.cfg.get("default_scope", "mmpose"))
        pipeline = Compose(self.model.cfg.test_dataloader.dataset.pipeline)
        data = []
        for image, box in zip(images, mmpose_boxes(boxes, self.frame), strict=True):
            info = {"img": image, "bbox": box[None],
                    "bbox_score": np.ones(1, dtype=np.float32)}  # fmt: skip
            info.update(self.model.dataset_meta)
            data.append(pipeline(info))
        with torch.no_grad():
            return self.model.test_step(pseudo_collate(data))

    def _keypoints(self, images, boxes: np.ndarray) -> np.ndarray:
        """images[i] is the BGR frame of box i (a sequence; one frame may repeat)."""
        shift = np.float32(frame_offset(self.frame))
        out = np.zeros((len(boxes), fdh.NUM_KEYPOINTS, 3), dtype=np.float32)
        for start in range(0, len(boxes), self.batch_size):
            stop = min(start + self.batch_size, len(boxes))
            for i, sample in enumerate(self._run(images[start:stop], boxes[start:stop])):
                inst = sample.pred_instances
                out[start + i, :, :2] = np.asarray(inst.keypoints[0]) + shift
                out[start + i, :, 2] = np.asarray(inst.keypoint_scores[0])
        return out

    def estimate(self, images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) RGB images + (N, 4) boxes -> float32 (N, 17, 3)."""
        bgr = [np.ascontiguousarray(image[..., ::-1]) for image in images]
        return self._keypoints(bgr, np.asarray(boxes).reshape(-1, 4))

    def estimate_boxes(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """N persons on one RGB frame: the frame is converted to BGR once, for all of them."""
        check_image(image)
        boxes = np.asarray(boxes).reshape(-1, 4)
        bgr = np.ascontiguousarray(image[..., ::-1])
        return self._keypoints([bgr] * len(boxes), boxes)
