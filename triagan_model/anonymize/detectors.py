"""Person detectors with local inputs only (anonymize-spec 4.5).

- `coco`: bring your own detections. A COCO results list (entries with `file_name`, `score`, a
  `segmentation` as RLE or polygons, optional 51 `keypoints`, optional `frame` for videos), or a
  COCO annotations document (`images` with `file_name`, `annotations` with `image_id`);
  `file_name` is relative to the input root (a single input file: its name). Category ids other
  than 1 (person) are ignored.
- `torchvision-maskrcnn`: `maskrcnn_resnet50_fpn_v2` built with `weights=None` and
  `weights_backbone=None` (no download can start), its state dict from a local file loaded with
  `weights_only=True`, sha256 recorded and checked; COCO label 1, masks > 0.5.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from triagan_model.anonymize.compose import Person
from triagan_model.anonymize.identity import ConfigError

DETECTORS = ("coco", "torchvision-maskrcnn")


class DetectionError(ValueError):
    """Detections of one input that cannot be used (a per-file failure)."""


def _decode_segmentation(seg: Any, hw: tuple[int, int], where: str) -> np.ndarray:
    try:
        return _decode(seg, hw, where)
    except DetectionError:
        raise
    except Exception as exn:  # pycocotools' TypeError/ValueError on a malformed polygon or RLE
        raise DetectionError(f"{where}: malformed segmentation ({type(exn).__name__}: {exn}); "
                             "give an RLE dict with size and counts, or polygons of >= 3 "
                             "points [x0, y0, x1, y1, ...]") from exn  # fmt: skip


def _decode(seg: Any, hw: tuple[int, int], where: str) -> np.ndarray:
    from pycocotools import mask as mask_utils

    h, w = hw
    if isinstance(seg, dict):
        size = tuple(seg.get("size", ()))
        if size != (h, w):
            raise DetectionError(f"{where}: mask size {list(size)} is not the image's [{h}, {w}]; "
                                 "write the RLE at the image's full resolution")  # fmt: skip
        rle = seg if isinstance(seg.get("counts"), (str, bytes)) else \
            mask_utils.frPyObjects(seg, h, w)  # fmt: skip
        if isinstance(rle.get("counts"), str):
            rle = {"size": rle["size"], "counts": rle["counts"].encode()}
        return mask_utils.decode(rle).astype(bool)
    if isinstance(seg, list) and seg:
        polys = seg if isinstance(seg[0], list) else [seg]
        rles = mask_utils.frPyObjects(polys, h, w)
        return mask_utils.decode(mask_utils.merge(rles)).astype(bool)
    raise DetectionError(f"{where}: no usable segmentation (RLE dict or polygon list)")


class CocoDetections:
    """Detections read from a COCO file, looked up by (relative file name, frame)."""

    name = "coco"

    def __init__(self, path: str | Path, score_threshold: float = 0.3) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"detections file {self.path} not found (--detections)")
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError) as exn:
            raise ConfigError(f"{self.path}: not a JSON file ({exn})") from exn
        self.score_threshold = score_threshold
        self.entries: dict[tuple[str, int], list[dict]] = defaultdict(list)
        self._n_read = 0
        if isinstance(doc, dict):
            names = {im["id"]: im["file_name"] for im in doc.get("images", [])}
            rows = doc.get("annotations", [])
            for r in rows:
                if r.get("image_id") not in names:
                    raise ConfigError(
                        f"{self.path}: annotation {r.get('id')} names image_id "
                        f"{r.get('image_id')} absent from its images list"
                    )
                r = {**r, "file_name": names[r["image_id"]]}
                self._add(r)
        elif isinstance(doc, list):
            for r in doc:
                if not isinstance(r, dict) or "file_name" not in r:
                    raise ConfigError(f"{self.path}: every results entry needs a file_name "
                                      "relative to the input root")  # fmt: skip
                self._add(r)
        else:
            raise ConfigError(
                f"{self.path}: neither a COCO results list nor an annotations document"
            )
        self.has_keypoints = any("keypoints" in r for v in self.entries.values() for r in v)

    def _add(self, r: dict) -> None:
        # the entry's index in its list, so an error names the annotation to fix
        r = {**r, "_entry": self._n_read}
        self._n_read += 1
        if r.get("category_id", 1) != 1:
            return
        self.entries[(str(Path(r["file_name"]).as_posix()), int(r.get("frame", 0)))].append(r)

    def file_names(self) -> set[str]:
        return {name for name, _ in self.entries}

    def sha256(self) -> str:
        from triagan_model.atomic import sha256_file

        return sha256_file(self.path)

    def detect(self, image: np.ndarray, name: str, frame: int = 0) -> list[Person]:
        hw = image.shape[:2]
        persons = []
        for j, r in enumerate(self.entries.get((name, frame), [])):
            score = float(r.get("score", 1.0))
            if score < self.score_threshold:
                continue
            where = (f"{self.path}: entry {r['_entry']} (image {name} frame {frame}, "
                     f"detection {j})")  # fmt: skip
            mask = _decode_segmentation(r.get("segmentation"), hw, where)
            kp = None
            if "keypoints" in r:
                try:
                    kp = np.asarray(r["keypoints"], np.float32)
                except (TypeError, ValueError):  # null or text entries: this file fails alone
                    kp = np.zeros(0)
                if kp.size != 51:
                    raise DetectionError(f"{where}: keypoints must be 17 x [x, y, v]")
                kp = kp.reshape(17, 3)
            persons.append(Person(mask=mask, keypoints=kp, score=score))
        return persons

    def provenance(self) -> dict[str, Any]:
        return {"backend": self.name, "file": str(self.path), "sha256": self.sha256()}


class MaskRCNNDetector:
    """torchvision Mask R-CNN v2 from a local state-dict file."""

    name = "torchvision-maskrcnn"

    def __init__(self, weights: str | Path | None, *, sha256: str | None = None,
                 score_threshold: float = 0.3, min_size: int = 800, max_persons: int = 100,
                 max_res: int | None = None, device: str = "cpu") -> None:  # fmt: skip
        import torch
        from torchvision.models.detection import maskrcnn_resnet50_fpn_v2

        from triagan_model.atomic import sha256_file

        if weights is None or not Path(weights).is_file():
            raise ConfigError(f"Mask R-CNN weights {weights} not found: pass --detector-weights "
                              "FILE (torchvision's maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth, "
                              "a local file; nothing is downloaded)")  # fmt: skip
        self.weights, self.sha = Path(weights), sha256_file(weights)
        expected = sha256 or _sha_from_name(self.weights.name)
        if expected and not self.sha.startswith(expected):
            raise ConfigError(f"{weights}: sha256 {self.sha} does not match {expected}")
        model = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, min_size=min_size,
                                         box_detections_per_img=max_persons)  # fmt: skip
        try:
            state = torch.load(self.weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as exn:  # a corrupt or foreign file is the user's to fix
            raise ConfigError(
                f"{weights}: not a maskrcnn_resnet50_fpn_v2 state dict ({exn})"
            ) from exn
        self.model = model.eval().to(device)
        self.device, self.score_threshold, self.min_size = device, score_threshold, min_size
        self.max_res = max_res

    def detect(self, image: np.ndarray, name: str = "", frame: int = 0) -> list[Person]:
        """Persons with full-frame masks. With `max_res`, the detector sees the frame shrunk so
        its longer side is at most max_res (DP2's --max-res shrank the output too; here only
        the detector input), and the soft masks are resized back before the 0.5 threshold."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255
        h, w = image.shape[:2]
        scale = min(1.0, self.max_res / max(h, w)) if self.max_res else 1.0
        if scale < 1.0:
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            x = F.interpolate(x[None], size=size, mode="bilinear", antialias=True)[0]
        with torch.no_grad():
            out = self.model([x.to(self.device)])[0]
        keep = (out["labels"] == 1) & (out["scores"] >= self.score_threshold)
        soft = out["masks"][keep]
        if scale < 1.0 and len(soft):
            soft = F.interpolate(soft, size=(h, w), mode="bilinear")
        masks = (soft[:, 0] > 0.5).cpu().numpy()
        scores = out["scores"][keep].cpu().numpy()
        return [Person(mask=m, score=float(s)) for m, s in zip(masks, scores, strict=True)
                if m.any()]  # fmt: skip

    def provenance(self) -> dict[str, Any]:
        return {"backend": self.name, "weights": str(self.weights), "sha256": self.sha,
                "min_size": self.min_size, "score_threshold": self.score_threshold,
                "max_res": self.max_res}  # fmt: skip


def _sha_from_name(name: str) -> str | None:
    """torchvision file names end in 8 hex digits of the sha256 (`..._coco-73cbd019`)."""
    stem = name.split(".")[0]
    tail = stem.rsplit("-", 1)[-1] if "-" in stem else ""
    return tail if len(tail) == 8 and all(c in "0123456789abcdef" for c in tail) else None
