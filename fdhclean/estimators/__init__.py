"""Pose estimators behind one interface (refine-spec section 7), all from local weights.

Backends: `vitpose-hf` (transformers, this environment), `vitpose-mmpose` (mmpose, its own
environment, see docs/mmpose-environment.md). Precomputed COCO results are read by
`fdhclean.estimators.predictions`. Heavy imports (torch, transformers, mmpose) happen inside
the backends, so importing this package is cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fdhclean.estimators.protocol import PoseEstimator, TopDownStages
from fdhclean.estimators.runner import estimate_samples


def build_vitpose_hf(checkpoint: str | Path, **kwargs: Any) -> PoseEstimator:
    """`vitpose-hf` from a local transformers directory; kwargs as `build_estimator`'s
    (checkpoint_sha256, device, batch_size, flip_test, dtype, decoding, frame).
    Registered as the `triagan_toolkit.pose_estimators` entry point `vitpose-hf`."""
    from fdhclean.estimators.vitpose_hf import VitPoseHF

    return VitPoseHF(checkpoint, **kwargs)


def build_vitpose_mmpose(checkpoint: str | Path, **kwargs: Any) -> PoseEstimator:
    """`vitpose-mmpose` from an mmpose .pth (its own environment); kwargs as
    `build_estimator`'s (checkpoint_sha256, device, batch_size, flip_test, dtype, config,
    frame). Registered as the entry point `vitpose-mmpose`."""
    from fdhclean.estimators.mmpose_backend import VitPoseMMPose

    return VitPoseMMPose(checkpoint, **kwargs)


# The small explicit registry of style.md item 8: name -> builder.
ESTIMATORS: dict[str, Callable[..., PoseEstimator]] = {
    "vitpose-hf": build_vitpose_hf,
    "vitpose-mmpose": build_vitpose_mmpose,
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

    `options` go to the backend (e.g. `decoding="transformers"`, `frame="half-pixel"` for
    vitpose-hf, `config=` for vitpose-mmpose).
    """
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; expected one of {sorted(ESTIMATORS)}")
    return ESTIMATORS[name](
        checkpoint,
        checkpoint_sha256=checkpoint_sha256,
        device=device,
        batch_size=batch_size,
        flip_test=flip_test,
        dtype=dtype,
        **options,
    )


__all__ = [
    "ESTIMATORS",
    "PoseEstimator",
    "TopDownStages",
    "build_estimator",
    "build_vitpose_hf",
    "build_vitpose_mmpose",
    "estimate_samples",
]
