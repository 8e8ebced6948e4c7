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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fdhclean.atomic import atomic_open
from fdhclean.fdh import COCO_KEYPOINTS, COCO_SKELETON, IMAGE_H, IMAGE_W, NUM_KEYPOINTS
from fdhclean.inspect.common import (
    bool_column,
    chosen_keypoints,
    iter_report,
    keypoint_array,
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


@dataclass
class ExportCounts:
    written: int = 0
    left_out: int = 0  # samples without readable keypoints


_COLUMNS = ["key", "status", "updated", "orig_keypoints", "new_keypoints", "box"]


def chosen_from_table(table, new_min_score: float) -> Chosen:
    """The chosen annotation of every row of a report table (or block of one)."""
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


def iter_chosen(split: Path) -> Iterator[Chosen]:
    """The chosen annotations of `OUT/S`, a block of report rows at a time (bounded memory),
    from `OUT/S/report` (only the needed columns) and `OUT/S/run.json`."""
    new_min_score = float(read_run_record(split)["settings"]["new_min_score"])
    for table in iter_report(split, _COLUMNS):
        yield chosen_from_table(table, new_min_score)


def chosen_from_report(split: Path) -> Chosen:
    """The chosen annotation of every sample at once (small splits, tests)."""
    blocks = list(iter_chosen(split))
    return Chosen(
        keys=[k for b in blocks for k in b.keys],
        keypoints=np.concatenate([b.keypoints for b in blocks])
        if blocks
        else np.zeros((0, NUM_KEYPOINTS, 3), np.float32),
        boxes=[x for b in blocks for x in b.boxes],
        left_out=sum(b.left_out for b in blocks),
    )


def dp2_json_chunks(blocks: Iterable[Chosen], counts: ExportCounts) -> Iterator[str]:
    yield "{"
    for chosen in blocks:
        values = chosen.keypoints.astype(np.float64).reshape(len(chosen.keys), -1)
        parts = []
        for key, row in zip(chosen.keys, values, strict=True):
            sep = "," if counts.written else ""
            parts.append(sep + json.dumps(str(key)) + ":" + _ROW.format(*row.tolist()))
            counts.written += 1
        counts.left_out += chosen.left_out
        yield "".join(parts)
    yield "}\n"


def _coco_keypoints(chosen: Chosen) -> tuple[np.ndarray, np.ndarray]:
    kp = chosen.keypoints.astype(np.float64)
    x, y, v = kp[..., 0], kp[..., 1], kp[..., 2]
    visible = (v > 0) & (x >= 0) & (x < 1) & (y >= 0) & (y < 1)
    coco_kp = np.zeros_like(kp)
    coco_kp[..., 0] = np.where(visible, np.round(x * IMAGE_W, 4), 0.0)
    coco_kp[..., 1] = np.where(visible, np.round(y * IMAGE_H, 4), 0.0)
    coco_kp[..., 2] = np.where(visible, 2.0, 0.0)
    return coco_kp, visible


def coco_entries(chosen: Chosen, first_id: int) -> tuple[list[dict], list[dict]]:
    """The COCO `images` and `annotations` of a block (annotation ids from `first_id`)."""
    coco_kp, visible = _coco_keypoints(chosen)
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
                "id": first_id + i,
                "image_id": image_id,
                "category_id": 1,
                "iscrowd": 0,
                "keypoints": [int(val) if j % 3 == 2 else float(val) for j, val in enumerate(flat)],
                "num_keypoints": int(visible[i].sum()),
                "bbox": [int(x0), int(y0), int(x1 - x0), int(y1 - y0)],
                "area": int((x1 - x0) * (y1 - y0)),
            }
        )
    return images, annotations


_CATEGORY = {
    "id": 1,
    "name": "person",
    "supercategory": "person",
    "keypoints": list(COCO_KEYPOINTS),
    "skeleton": [list(pair) for pair in COCO_SKELETON],
}
_INFO = {"description": "FDH keypoints chosen by fdhclean refine"}


def coco_document(chosen: Chosen) -> dict:
    """The COCO keypoints annotation file of the chosen keypoints (see the module docstring)."""
    images, annotations = coco_entries(chosen, 1)
    return {"info": _INFO, "images": images, "annotations": annotations, "categories": [_CATEGORY]}


def _dumps(value) -> str:
    return json.dumps(value, separators=(",", ":"))


_KP_TEXT = "[" + ",".join(["%r,%r,%d"] * NUM_KEYPOINTS) + "]"
_IMAGE_TEXT = '{"id":%d,"width":%d,"height":%d,"file_name":%s}'
_ANNOTATION_TEXT = (
    '{"id":%d,"image_id":%d,"category_id":1,"iscrowd":0,"keypoints":%s,'
    '"num_keypoints":%d,"bbox":[%d,%d,%d,%d],"area":%d}'
)


def coco_texts(chosen: Chosen, first_id: int) -> tuple[list[str], list[str]]:
    """`coco_entries` already serialised: the bytes `json.dumps(separators=(",", ":"))` gives
    for those dicts (floats by repr, ints as ints), without building them (2x faster)."""
    coco_kp, visible = _coco_keypoints(chosen)
    flat = coco_kp.reshape(len(chosen.keys), -1).tolist()
    counts = visible.sum(axis=1).tolist()
    images, annotations = [], []
    for i, key in enumerate(chosen.keys):
        x0, y0, x1, y1 = chosen.boxes[i] or (0, 0, IMAGE_W, IMAGE_H)
        image_id = int(key)
        images.append(_IMAGE_TEXT % (image_id, IMAGE_W, IMAGE_H, json.dumps(f"{key}.png")))
        w, h = int(x1 - x0), int(y1 - y0)
        annotations.append(
            _ANNOTATION_TEXT
            % (first_id + i, image_id, _KP_TEXT % tuple(flat[i]), counts[i], x0, y0, w, h, w * h)
        )
    return images, annotations


def write_coco(split: Path, fh, counts: ExportCounts, spill_dir: Path) -> None:
    """Stream the COCO document to `fh`: images as they come, annotations spilled to a
    temporary file beside the target and appended (the same bytes as one `json.dumps`)."""
    import tempfile

    fh.write('{"info":' + _dumps(_INFO) + ',"images":[')
    with tempfile.TemporaryFile("w+", encoding="utf-8", dir=spill_dir) as spill:
        for chosen in iter_chosen(split):
            images, annotations = coco_texts(chosen, counts.written + 1)
            sep = "," if counts.written else ""
            if images:
                fh.write(sep + ",".join(images))
                spill.write(sep + ",".join(annotations))
            counts.written += len(images)
            counts.left_out += chosen.left_out
        fh.write('],"annotations":[')
        spill.seek(0)
        while block := spill.read(1 << 20):
            fh.write(block)
    fh.write('],"categories":[' + _dumps(_CATEGORY) + "]}\n")


def export(split: Path, fmt: str, path: Path) -> ExportCounts:
    """Write the chosen keypoints of `OUT/S` to `path` in `fmt` (one of FORMATS), streaming:
    one block of report rows in memory at a time."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {FORMATS}")
    read_run_record(split)  # fail before any output exists
    counts = ExportCounts()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as fh:
        if fmt == "dp2-json":
            fh.writelines(dp2_json_chunks(iter_chosen(split), counts))
        else:
            write_coco(split, fh, counts, path.parent)
    return counts
