"""`vitpose-hf`: ViTPose through transformers' VitPoseForPoseEstimation, local weights only.

The model runs batched; cropping (`topdown.preprocess`) and heatmap decoding
(`decoding.decode`) are plain module-level functions, so `estimate_samples` can run them in
worker processes while the model runs (refine-spec section 7; the arithmetic is the official
ViTPose test pipeline by default, see `topdown` and `decoding`).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np

from fdhclean import fdh
from fdhclean.estimators import decoding as dec
from fdhclean.estimators import topdown
from fdhclean.estimators.protocol import TopDownStages
from fdhclean.estimators.weights import hf_weight_files, require_local, verify_sha256

DTYPES = ("auto", "fp32", "fp16", "bf16")


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; anything else is passed through."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str):
    """'auto' -> bf16 autocast on CUDA, fp32 on CPU (bf16 is ~6x slower on CPU: dependencies.md)."""
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {DTYPES}")
    if dtype == "auto":
        dtype = "bf16" if device.startswith("cuda") else "fp32"
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


class VitPoseHF:
    """ViTPose (transformers format directory) with flip test and DARK-UDP decoding.

    `decoding`: "vitpose" (the official ViTPose / mmpose 0.x arithmetic, default), "mmpose1"
    (mmpose 1.x's blur) or "transformers" (transformers' crop and post-processing; the
    equality test runs that way). `frame`: "official" (default) or "half-pixel" (`topdown`).
    """

    name = "vitpose-hf"

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        checkpoint_sha256: str | None = None,
        device: str = "auto",
        batch_size: int = 32,
        flip_test: bool = True,
        dtype: str = "auto",
        decoding: str = "vitpose",
        frame: str = "official",
    ) -> None:
        path = require_local(checkpoint, kind="vitpose-hf", directory=True)
        if not (path / "config.json").is_file() or not hf_weight_files(path):
            raise FileNotFoundError(
                f"{path} is not a transformers ViTPose checkpoint (needs config.json and "
                "*.safetensors; convert an official .pth with `fdhclean convert-vitpose`)"
            )
        dec.check_decoding(decoding)
        topdown.frame_offset(frame)  # validates the name
        self.weights_sha256 = verify_sha256(path, checkpoint_sha256)
        self.checkpoint = path
        self.batch_size = int(batch_size)
        self.flip_test = bool(flip_test)
        self.decoding = decoding
        self.frame = frame
        self.device = resolve_device(device)
        self.dtype = dtype
        self.autocast_dtype = resolve_dtype(dtype, self.device)
        self.model = self._load(path)
        crop = "scipy" if decoding == "transformers" else "cv2"  # that library's own warp
        self.preprocess = functools.partial(topdown.preprocess, method=crop, frame=frame)
        self.decode = functools.partial(dec.decode, decoding=decoding, frame=frame)

    def provenance(self) -> dict[str, Any]:
        """What the keypoints depend on (recorded by refine and `fdhclean estimate`; part of
        refine's settings fingerprint, so no device: every rank must give the same dict)."""
        return {
            "name": self.name, "checkpoint": str(self.checkpoint),
            "weights_sha256": self.weights_sha256, "flip_test": self.flip_test,
            "dtype": self.dtype, "autocast_dtype": str(self.autocast_dtype),
            "decoding": self.decoding, "frame": self.frame,
        }  # fmt: skip

    def stages(self) -> TopDownStages:
        return TopDownStages(self.preprocess, self.predict_heatmaps, self.decode)

    def _load(self, path: Path):
        import torch

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from safetensors import SafetensorError
        from transformers import VitPoseForPoseEstimation

        try:
            model = VitPoseForPoseEstimation.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as e:
            cause = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise ValueError(
                f"{path}: not a loadable transformers ViTPose checkpoint ({cause}); convert the "
                "official .pth again with `fdhclean convert-vitpose`"
            ) from None
        if model.config.num_labels != fdh.NUM_KEYPOINTS:
            raise ValueError(
                f"{path}: the model predicts {model.config.num_labels} keypoints, "
                f"expected the {fdh.NUM_KEYPOINTS} COCO keypoints"
            )
        self._moe = getattr(model.config.backbone_config, "num_experts", 1) > 1
        model = model.eval().to(self.device)
        if self.device.startswith("cuda"):
            model = model.to(memory_format=torch.channels_last)
        return model

    def _forward(self, x):
        import torch

        kwargs = {}
        if self._moe:  # ViTPose++: dataset 0 is COCO (refine-spec section 7)
            kwargs["dataset_index"] = torch.zeros(len(x), dtype=torch.long, device=x.device)
        if self.autocast_dtype is None:
            return self.model(pixel_values=x, **kwargs).heatmaps.float()
        with torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype):
            return self.model(pixel_values=x, **kwargs).heatmaps.float()

    def predict_heatmaps(self, batch: np.ndarray) -> np.ndarray:
        """Model inputs (N, 3, 256, 192) -> float32 heatmaps (N, 17, 64, 48), flip-averaged."""
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
            if self.device.startswith("cuda"):
                x = x.contiguous(memory_format=torch.channels_last)
            heatmaps = self._forward(x).cpu().numpy()
            if self.flip_test:
                flipped = self._forward(torch.flip(x, dims=[3])).cpu().numpy()
                heatmaps = (heatmaps + topdown.unflip_heatmaps(flipped)) * np.float32(0.5)
        return heatmaps

    def _run(self, image_of, boxes: np.ndarray) -> np.ndarray:
        """Crop box i from image_of(i), model in batches of `batch_size`, decode."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        out = np.zeros((len(boxes), fdh.NUM_KEYPOINTS, 3), dtype=np.float32)
        for start in range(0, len(boxes), self.batch_size):
            stop = min(start + self.batch_size, len(boxes))
            prepared = [self.preprocess(image_of(i), boxes[i]) for i in range(start, stop)]
            batch = np.stack([p[0] for p in prepared])
            metas = np.stack([p[1] for p in prepared])
            out[start:stop] = self.decode(self.predict_heatmaps(batch), metas)
        return out

    def estimate(self, images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) RGB images + (N, 4) boxes, one per image -> float32 (N, 17, 3)."""
        if len(images) != len(boxes):
            raise ValueError(f"{len(images)} images but {len(boxes)} boxes")
        return self._run(lambda i: images[i], boxes)

    def estimate_boxes(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """N persons on one uint8 (H, W, 3) RGB frame -> float32 (N, 17, 3). Each crop reads
        the frame in place (no copy per person); crops go to the model in batches."""
        topdown.check_image(image)
        return self._run(lambda i: image, boxes)
