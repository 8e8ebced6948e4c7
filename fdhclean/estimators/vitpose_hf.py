"""`vitpose-hf`: ViTPose through transformers' VitPoseForPoseEstimation, local weights only.

The model runs batched; cropping (`preprocess`) and heatmap decoding (`decode`) are plain
module-level functions of `topdown`, so `estimate_samples` can run them in worker processes
while the model runs (refine-spec section 7 fixes the top-down details; see `topdown`).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from fdhclean import fdh
from fdhclean.estimators import topdown
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

    `blur` selects the DARK modulation ("mmpose" = what ViTPose/mmpose compute, the default;
    "transformers" = transformers' own post-processing, used by the equality test).
    """

    name = "vitpose-hf"
    preprocess = staticmethod(topdown.preprocess)

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        checkpoint_sha256: str | None = None,
        device: str = "auto",
        batch_size: int = 32,
        flip_test: bool = True,
        dtype: str = "auto",
        blur: str = "mmpose",
    ) -> None:
        path = require_local(checkpoint, kind="vitpose-hf", directory=True)
        if not (path / "config.json").is_file() or not hf_weight_files(path):
            raise FileNotFoundError(
                f"{path} is not a transformers ViTPose checkpoint (needs config.json and "
                "*.safetensors; convert an official .pth with `fdhclean convert-vitpose`)"
            )
        if blur not in topdown.BLUR_MODES:
            raise ValueError(f"unknown blur {blur!r}; expected one of {topdown.BLUR_MODES}")
        self.weights_sha256 = verify_sha256(path, checkpoint_sha256)
        self.checkpoint = path
        self.batch_size = int(batch_size)
        self.flip_test = bool(flip_test)
        self.blur = blur
        self.device = resolve_device(device)
        self.autocast_dtype = resolve_dtype(dtype, self.device)
        self.model = self._load(path)
        self.decode = functools.partial(topdown.decode, blur=blur)

    def _load(self, path: Path):
        import torch

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import VitPoseForPoseEstimation

        model = VitPoseForPoseEstimation.from_pretrained(path, local_files_only=True)
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

    def predict(self, batch: np.ndarray, metas: np.ndarray) -> np.ndarray:
        """Preprocessed batch + metas -> float32 (N, 17, 3) keypoints (pixels) and scores."""
        return self.decode(self.predict_heatmaps(batch), metas)

    def estimate(self, images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) RGB images + int (N, 4) boxes -> float32 (N, 17, 3)."""
        out = np.zeros((len(images), fdh.NUM_KEYPOINTS, 3), dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            stop = min(start + self.batch_size, len(images))
            prepared = [self.preprocess(images[i], boxes[i]) for i in range(start, stop)]
            batch = np.stack([p[0] for p in prepared])
            metas = np.stack([p[1] for p in prepared])
            out[start:stop] = self.predict(batch, metas)
        return out
