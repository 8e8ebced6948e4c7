"""Precomputed pose predictions in COCO results format (refine-spec section 7).

`[{"image_id": int(key), "category_id": 1, "keypoints": [x, y, score] * 17, "score": s}]`,
x, y in pixels of the 288x160 image (pixel i covers [i, i+1)). Several entries for one image:
the highest `score` wins (the first on a tie). Entries for keys outside the split are counted
and reported by the caller, not an error.

Keys are sample keys (integer strings); they are matched through `canonical_key` (str(int(k))),
so a key written with leading zeros still finds its entry.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fdhclean import fdh
from fdhclean.atomic import atomic_open
from fdhclean.estimators.weights import sha256_file

_NUM_VALUES = 3 * fdh.NUM_KEYPOINTS


def canonical_key(key: str | int) -> str:
    """The form a COCO `image_id` takes back as a sample key: str(int(key))."""
    try:
        return str(int(key))
    except (TypeError, ValueError):
        raise ValueError(f"sample key {key!r} is not an integer string (COCO image_id)") from None


@dataclass
class Predictions:
    keypoints: dict[str, np.ndarray]  # canonical key -> float32 (17, 3) pixels + score
    sha256: str  # of the file
    num_entries: int
    num_duplicates: int  # entries that lost against a higher-scoring one for the same image
    scores: dict[str, float] = field(default_factory=dict)  # the winning entry's overall score

    def get(self, key: str) -> np.ndarray | None:
        """The (17, 3) prediction for a sample key, or None when there is none."""
        try:
            return self.keypoints.get(canonical_key(key))
        except ValueError:
            return None


def _entry(i: int, entry, path: Path) -> tuple[str, np.ndarray, float]:
    where = f"{path}: entry {i}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} is a {type(entry).__name__}, expected an object")
    for name in ("image_id", "keypoints", "score"):
        if name not in entry:
            raise ValueError(f"{where} has no {name!r}")
    image_id = entry["image_id"]
    try:
        if isinstance(image_id, bool) or not isinstance(image_id, int | str):
            raise ValueError
        key = canonical_key(image_id)
    except ValueError:
        raise ValueError(f"{where}: image_id {image_id!r} is not an integer") from None
    if entry.get("category_id", 1) != 1:
        raise ValueError(f"{where}: category_id {entry['category_id']!r} is not 1 (person)")
    values = entry["keypoints"]
    if not isinstance(values, list) or len(values) != _NUM_VALUES:
        n = len(values) if isinstance(values, list) else type(values).__name__
        raise ValueError(f"{where}: keypoints must be a list of {_NUM_VALUES} numbers, got {n}")
    try:
        kps = np.asarray(values, dtype=np.float64).reshape(fdh.NUM_KEYPOINTS, 3)
        score = float(entry["score"])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: keypoints/score are not all numbers") from None
    if not np.isfinite(kps).all() or not math.isfinite(score):
        raise ValueError(f"{where}: keypoints/score contain NaN or infinity")
    return key, kps.astype(np.float32), score


def load_predictions(path: str | Path) -> Predictions:
    """Read a COCO results file; malformed entries raise a ValueError naming file and entry."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of COCO results, got {type(data).__name__}")
    keypoints: dict[str, np.ndarray] = {}
    scores: dict[str, float] = {}
    duplicates = 0
    for i, entry in enumerate(data):
        key, kps, score = _entry(i, entry, path)
        if key in keypoints:
            duplicates += 1
            if score <= scores[key]:
                continue
        keypoints[key], scores[key] = kps, score
    return Predictions(keypoints, sha256_file(path), len(data), duplicates, scores)


def _number(v: np.float32) -> float:
    """Shortest decimal that reads back as the same float32 (keeps files small and exact)."""
    return float(np.format_float_positional(v, unique=True, trim="0"))


def write_predictions(path: str | Path, items: Iterable[tuple[str, np.ndarray, float]]) -> None:
    """Write (key, float32 (17, 3) pixels + score, overall score) as COCO results, atomically."""
    path = Path(path)
    entries = []
    for key, kps, score in items:
        kps = np.asarray(kps, dtype=np.float32)
        if kps.shape != (fdh.NUM_KEYPOINTS, 3):
            raise ValueError(f"keypoints for key {key!r} have shape {kps.shape}, expected (17, 3)")
        entries.append(
            {
                "image_id": int(canonical_key(key)),
                "category_id": 1,
                "keypoints": [_number(v) for v in kps.reshape(-1)],
                "score": _number(np.float32(score)),
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as f:
        json.dump(entries, f, separators=(",", ":"))


def count_foreign(pred: Predictions, split_keys: set[str]) -> int:
    """Number of predicted images whose key is not in the split (reported, not an error)."""
    canonical = set()
    for key in split_keys:
        try:
            canonical.add(canonical_key(key))
        except ValueError:
            continue
    return sum(1 for key in pred.keypoints if key not in canonical)
