"""`fdhclean export`: a run's chosen keypoints as the reference overlay or as COCO annotations.

The chosen annotation is what the cleaned `keypoints.npy` holds (refine-spec 6), rebuilt from
the report and the run's settings without opening a shard: for updated samples the estimate
with v = score where score > new_min_score else 0, otherwise the original. Samples with an
error status keep (and are exported with) their original keypoints. Values are the report's
normalised float32; a keypoint with a non-finite value (status `bad-keypoints`) is exported as
not visible ([0, 0, 0]); a sample whose keypoints could not be read at all (no
`orig_keypoints`) is left out and counted.

- `dp2-json`: `{key: [[x, y, v] x 17]}`, normalised: the reference implementation's
  `fdh_keypoints_{train,val}.json` overlay (fdh-format.md). Numbers are written with 9
  significant digits, which read back as the same float32.
- `coco`: a COCO keypoints annotation file (pycocotools loads it): one image per sample
  (id int(key), 160 x 288), one person annotation with pixel keypoints (v 2 = visible: v > 0
  and inside the image, else [0, 0, 0]), `num_keypoints`, `bbox` / `area` from the report's
  person box (x0, y0, x1, y1 exclusive -> x, y, w, h; the whole image when there is none).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fdhclean.atomic import atomic_open
from fdhclean.fdh import COCO_KEYPOINTS, COCO_SKELETON, IMAGE_H, IMAGE_W, NUM_KEYPOINTS
from fdhclean.inspect.common import (
    bool_column,
    chosen_keypoints,
    keypoint_array,
    read_report,
    read_run_record,
)

FORMATS = ("dp2-json", "coco")
_ROW = "[" + ",".join(["[{:.9g},{:.9g},{:.9g}]"] * NUM_KEYPOINTS) + "]"


@dataclass
class Chosen:
    keys: list[str]
    keypoints: np.ndarray  # float32 (N, 17, 3) normalised, non-finite keypoints zeroed
    boxes: list[list[int] | None]
    left_out: int  # samples without readable keypoints


def chosen_from_report(split: Path) -> Chosen:
    """The chosen annotation of every sample, from `OUT/S/report` and `OUT/S/run.json`."""
    record = read_run_record(split)
    new_min_score = float(record["settings"]["new_min_score"])
    table = read_report(
        split, ["key", "status", "updated", "orig_keypoints", "new_keypoints", "box"]
    )
    orig = keypoint_array(table.column("orig_keypoints"))
    new = keypoint_array(table.column("new_keypoints"))
    chosen = chosen_keypoints(orig, new, bool_column(table, "updated"), new_min_score)
    # left out: only rows whose keypoints.npy could not be read at all (null in the report);
    # all-NaN originals (bad-keypoints) are exported as not visible
    readable = ~table.column("orig_keypoints").is_null().to_numpy(zero_copy_only=False)
    bad = ~np.isfinite(chosen).all(axis=2)
    chosen[bad] = 0.0
    keys = np.asarray(table.column("key").to_pylist(), dtype=object)
    boxes = table.column("box").to_pylist()
    return Chosen(
        keys=keys[readable].tolist(),
        keypoints=chosen[readable],
        boxes=[b for b, r in zip(boxes, readable, strict=True) if r],
        left_out=int((~readable).sum()),
    )


def _write_text_atomic(path: Path, chunks: Iterable[str]) -> None:
    """Stream text to `path` atomically (no partial file ever)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as fh:
        fh.writelines(chunks)


def dp2_json_chunks(chosen: Chosen) -> Iterable[str]:
    yield "{"
    values = chosen.keypoints.astype(np.float64).reshape(len(chosen.keys), -1)
    for i, (key, row) in enumerate(zip(chosen.keys, values, strict=True)):
        yield ("," if i else "") + json.dumps(str(key)) + ":" + _ROW.format(*row.tolist())
    yield "}\n"


def coco_document(chosen: Chosen) -> dict:
    """The COCO keypoints annotation file of the chosen keypoints (see the module docstring)."""
    kp = chosen.keypoints.astype(np.float64)
    x, y, v = kp[..., 0], kp[..., 1], kp[..., 2]
    visible = (v > 0) & (x >= 0) & (x < 1) & (y >= 0) & (y < 1)
    coco_kp = np.zeros_like(kp)
    coco_kp[..., 0] = np.where(visible, np.round(x * IMAGE_W, 4), 0.0)
    coco_kp[..., 1] = np.where(visible, np.round(y * IMAGE_H, 4), 0.0)
    coco_kp[..., 2] = np.where(visible, 2.0, 0.0)
    images, annotations = [], []
    for i, key in enumerate(chosen.keys):
        x0, y0, x1, y1 = chosen.boxes[i] or (0, 0, IMAGE_W, IMAGE_H)
        image_id = int(key)
        images.append(
            {"id": image_id, "width": IMAGE_W, "height": IMAGE_H, "file_name": f"{key}.png"}
        )
        flat = coco_kp[i].reshape(-1)
        annotations.append(
            {
                "id": i + 1,
                "image_id": image_id,
                "category_id": 1,
                "iscrowd": 0,
                "keypoints": [int(val) if j % 3 == 2 else float(val) for j, val in enumerate(flat)],
                "num_keypoints": int(visible[i].sum()),
                "bbox": [int(x0), int(y0), int(x1 - x0), int(y1 - y0)],
                "area": int((x1 - x0) * (y1 - y0)),
            }
        )
    category = {
        "id": 1,
        "name": "person",
        "supercategory": "person",
        "keypoints": list(COCO_KEYPOINTS),
        "skeleton": [list(pair) for pair in COCO_SKELETON],
    }
    return {
        "info": {"description": "FDH keypoints chosen by fdhclean refine"},
        "images": images,
        "annotations": annotations,
        "categories": [category],
    }


def export(split: Path, fmt: str, path: Path) -> Chosen:
    """Write the chosen keypoints of `OUT/S` to `path` in `fmt` (one of FORMATS)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {FORMATS}")
    chosen = chosen_from_report(split)
    if fmt == "dp2-json":
        _write_text_atomic(path, dp2_json_chunks(chosen))
    else:
        text = json.dumps(coco_document(chosen), separators=(",", ":"))
        _write_text_atomic(path, [text, "\n"])
    return chosen
