"""Pose backends: the one contract every backend provides, and how a name is resolved.

A backend is anything with the members of `PoseEstimator` (a structural Protocol: nothing to
inherit). Third-party and fdhclean's backends register a *builder* in the entry-point group
`triagan_toolkit.pose_estimators` (pyproject.toml); `build(checkpoint, *, checkpoint_sha256=None,
device="auto", batch_size=32, flip_test=True, dtype="auto", **options)` returns the backend.
No Python import crosses from triagan_model into fdhclean: the name is looked up in the
installed distributions' metadata only. `from-detections` (keypoints given with the detections)
and `none` (every keypoint invisible: the generator then works from the mask alone) are built in.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

import numpy as np

ENTRY_POINT_GROUP = "triagan_toolkit.pose_estimators"
BUILTIN = ("from-detections", "none")


@runtime_checkable
class PoseEstimator(Protocol):
    """Everything a pose backend provides."""

    name: str
    weights_sha256: str | None

    def provenance(self) -> dict[str, Any]:
        """What the outputs depend on (backend, weights hash, decoding, flip test, dtype)."""
        ...

    def estimate_boxes(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """(N, 17, 3) float32 (x, y in image pixels, score) for the (N, 4) x0, y0, x1, y1 pixel
        `boxes` of one (H, W, 3) uint8 RGB image, without copying the image per box."""
        ...


class PoseError(ValueError):
    """A pose backend that cannot be resolved or built (a configuration error: exit 2)."""


class NoPose:
    """Every keypoint invisible (score 0)."""

    name = "none"
    weights_sha256 = None

    def provenance(self) -> dict[str, Any]:
        return {"backend": self.name}

    def estimate_boxes(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        return np.zeros((len(np.asarray(boxes).reshape(-1, 4)), 17, 3), np.float32)


class FromDetections(NoPose):
    """Marker backend: the detections carry keypoints; persons without any get none."""

    name = "from-detections"


def available() -> list[str]:
    return sorted({*BUILTIN, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})


def build_pose(name: str, checkpoint: str | None = None, **options: Any) -> PoseEstimator:
    """The backend called `name`, built with `checkpoint` and the builder's options."""
    if name == "none":
        return NoPose()
    if name == "from-detections":
        return FromDetections()
    eps = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not eps:
        raise PoseError(
            f"unknown pose backend {name!r}; installed: {', '.join(available())} "
            f"(backends register in the entry-point group {ENTRY_POINT_GROUP})"
        )
    if checkpoint is None:
        raise PoseError(f"pose backend {name!r} needs --pose-weights (a local file or directory)")
    try:
        builder = eps[0].load()
    except Exception as exn:  # a broken plugin must not be a traceback
        raise PoseError(f"pose backend {name!r} ({eps[0].value}) failed to import: {exn}") from exn
    try:
        backend = builder(checkpoint, **options)
    except Exception as exn:  # a missing or foreign checkpoint is the user's to fix, not a trace
        raise PoseError(
            f"pose backend {name!r} could not load --pose-weights {checkpoint}: "
            f"{type(exn).__name__}: {exn}"
        ) from exn
    if not isinstance(backend, PoseEstimator):  # checked once, here, not probed per call
        raise PoseError(
            f"pose backend {name!r} ({eps[0].value}) does not provide the "
            "PoseEstimator contract (name, weights_sha256, provenance, estimate_boxes)"
        )
    return backend
