"""Pose estimators behind one interface (refine-spec section 7), all from local weights.

Backends: `vitpose-hf` (transformers, this environment), `vitpose-mmpose` (mmpose, its own
environment, see docs/mmpose-environment.md). Precomputed COCO results are read by
`fdhclean.estimators.predictions`. Heavy imports (torch, transformers, mmpose) happen inside
the backends, so importing this package is cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from fdhclean.estimators.runner import estimate_samples


@runtime_checkable
class PoseEstimator(Protocol):
    """images uint8 (N, 288, 160, 3) RGB; boxes int (N, 4) x0, y0, x1, y1 (exclusive max);
    returns float32 (N, 17, 3): x, y in pixels of the image (pixel i covers [i, i+1)), score."""

    name: str
    weights_sha256: str | None

    def estimate(self, images: np.ndarray, boxes: np.ndarray) -> np.ndarray: ...


def _build_vitpose_hf(**kwargs) -> PoseEstimator:
    from fdhclean.estimators.vitpose_hf import VitPoseHF

    return VitPoseHF(kwargs.pop("checkpoint"), **kwargs)


def _build_vitpose_mmpose(**kwargs) -> PoseEstimator:
    from fdhclean.estimators.mmpose_backend import VitPoseMMPose

    return VitPoseMMPose(kwargs.pop("checkpoint"), **kwargs)


# The small explicit registry of style.md item 8: name -> builder.
ESTIMATORS: dict[str, Callable[..., PoseEstimator]] = {
    "vitpose-hf": _build_vitpose_hf,
    "vitpose-mmpose": _build_vitpose_mmpose,
}


def build_estimator(
    name: str,
    *,
    checkpoint: str | Path,
    checkpoint_sha256: str | None = None,
    device: str = "auto",
    batch_size: int = 32,
    flip_test: bool = True,
    dtype: str = "auto",
    **options,
) -> PoseEstimator:
    """Build a registered backend from a local checkpoint (its sha256 is always computed).

    `options` go to the backend (e.g. `blur="transformers"` for vitpose-hf, `config=` for
    vitpose-mmpose).
    """
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; expected one of {sorted(ESTIMATORS)}")
    return ESTIMATORS[name](
        checkpoint=checkpoint,
        checkpoint_sha256=checkpoint_sha256,
        device=device,
        batch_size=batch_size,
        flip_test=flip_test,
        dtype=dtype,
        **options,
    )


__all__ = ["ESTIMATORS", "PoseEstimator", "build_estimator", "estimate_samples"]
