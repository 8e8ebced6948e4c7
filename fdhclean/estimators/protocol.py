"""The one contract every pose backend satisfies (refine-spec section 7, anonymize-spec 4.1).

Consumers (`estimate_samples`, refine's provenance, `fdhclean estimate`, the anonymiser through
the `triagan_toolkit.pose_estimators` entry points) use only what is declared here: no
`hasattr` probes, no `getattr` defaults.

Coordinates. Boxes are (x0, y0, x1, y1) pixels; keypoints come back as float32 (x, y, score)
in the same pixel frame as the image and boxes (the backend's `frame` option: `official` =
ViTPose's, where integer coordinates are pixel centres; see `topdown`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class TopDownStages:
    """A backend's three stages, for pipelining: `preprocess` and `decode` are picklable
    module-level functions (they run in crop worker processes), `predict_heatmaps` runs the
    model in the calling process.

    preprocess(image uint8 (H, W, 3), box (4,)) -> (input float32 (3, 256, 192), meta (4,))
    predict_heatmaps(inputs (N, 3, 256, 192)) -> float32 heatmaps (N, 17, 64, 48)
    decode(heatmaps (N, 17, 64, 48), metas (N, 4)) -> float32 (N, 17, 3)
    """

    preprocess: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
    predict_heatmaps: Callable[[np.ndarray], np.ndarray]
    decode: Callable[[np.ndarray, np.ndarray], np.ndarray]


@runtime_checkable
class PoseEstimator(Protocol):
    """Everything a pose backend provides.

    - `name`, `weights_sha256`: the registered name and the local weights' sha256;
    - `provenance()`: a JSON-ready dict of what the numbers depend on (name, sha256, flip test,
      dtype, decoding, frame, ...), recorded in manifests and prediction files;
    - `estimate(images (N, H, W, 3) uint8 RGB, boxes (N, 4))`: one box per image;
    - `estimate_boxes(image (H, W, 3) uint8 RGB, boxes (N, 4) float)`: N persons on one frame,
      each cropped straight from it (the frame is never copied per person), crops batched;
    - `stages()`: the three stages for worker pipelining, or None for a backend that only runs
      whole `estimate` calls (vitpose-mmpose).
    Both estimate calls return float32 (N, 17, 3) and raise ValueError on a bad image or box.
    """

    name: str
    weights_sha256: str | None

    def provenance(self) -> dict[str, Any]: ...

    def estimate(self, images: np.ndarray, boxes: np.ndarray) -> np.ndarray: ...

    def estimate_boxes(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray: ...

    def stages(self) -> TopDownStages | None: ...
