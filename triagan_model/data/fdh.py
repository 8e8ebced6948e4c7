"""Facts of the FDH format that the training side needs (shared docs `fdh-format.md`).

`fdhclean` keeps its own copy of these facts; the two packages never import each other, and
`tests/test_manifest_contract.py` checks that they agree where they meet.
"""

from __future__ import annotations

IMAGE_H = 288
IMAGE_W = 160
NUM_KEYPOINTS = 17

# COCO-17 rows swapped by a horizontal flip ("left" is the subject's own left).
FLIP_PERMUTATION: tuple[int, ...] = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)

# COCO keypoint sigmas (pycocotools COCOeval.Params.kpt_oks_sigmas), COCO-17 order.
COCO_SIGMAS: tuple[float, ...] = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
    0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
)  # fmt: skip

# Member suffixes, lower-cased: webdataset (and our reader) lower-case suffixes when grouping,
# so `E_mask.png` is seen as `e_mask.png`.
MEMBER_IMAGE = "image.png"
MEMBER_MASK = "mask.png"
MEMBER_MASKRCNN = "maskrcnn_mask.png"
MEMBER_CONDITION = "condition.png"
MEMBER_KEYPOINTS = "keypoints.npy"
# Members the training side never decodes (CSE data, fdh-format.md "Members of one sample").
UNUSED_MEMBERS = frozenset({"vertices.npy", "e_mask.png"})

UNITS_NORMALIZED = "normalized"
UNITS_PIXELS = "pixels"
KEYPOINT_UNITS = (UNITS_NORMALIZED, UNITS_PIXELS)

# Value of the unknown region in `condition.png` (fdh-format.md, derived layouts).
CONDITION_FILL_U8 = 127
