"""Facts of the FDH format shared by every stage (see shared docs `fdh-format.md`)."""

from __future__ import annotations

IMAGE_H = 288
IMAGE_W = 160

COCO_KEYPOINTS: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
NUM_KEYPOINTS = len(COCO_KEYPOINTS)

# Index permutation applied to the keypoint rows on a horizontal flip (x -> 1 - x).
FLIP_PERMUTATION: tuple[int, ...] = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)

# COCO's person skeleton (1-based keypoint ids, as in the COCO annotation files).
COCO_SKELETON: tuple[tuple[int, int], ...] = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8),
    (7, 9), (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)  # fmt: skip

# COCO keypoint sigmas (pycocotools COCOeval) in COCO_KEYPOINTS order.
COCO_SIGMAS: tuple[float, ...] = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
    0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
)  # fmt: skip

# Canonical SMPL part order (refine-spec section 1): bit p of a part bitmask = PART_NAMES[p].
PART_NAMES: tuple[str, ...] = (
    "head", "neck", "leftShoulder", "rightShoulder", "leftArm", "rightArm",
    "leftForeArm", "rightForeArm", "leftHand", "rightHand", "leftHandIndex1",
    "rightHandIndex1", "spine", "spine1", "spine2", "hips", "leftUpLeg", "rightUpLeg",
    "leftLeg", "rightLeg", "leftFoot", "rightFoot", "leftToeBase", "rightToeBase",
)  # fmt: skip

# Number of CSE vertices of DensePose's smpl_27554 mesh (6890 SMPL + 20664 edge midpoints).
CSE_NUM_VERTICES = 27554
SMPL_NUM_VERTICES = 6890

# Member suffixes of one sample (after the "<key>." prefix). E_mask may be stored as
# "E_mask.png" or "e_mask.png": look members up case-insensitively, write them back verbatim.
MEMBER_IMAGE = "image.png"
MEMBER_MASK = "mask.png"
MEMBER_MASKRCNN = "maskrcnn_mask.png"
MEMBER_EMASK = "E_mask.png"
MEMBER_VERTICES = "vertices.npy"
MEMBER_KEYPOINTS = "keypoints.npy"
MEMBER_KEYPOINTS_ORIGINAL = "keypoints_original.npy"
MEMBER_KEYPOINTS_ESTIMATED = "keypoints_estimated.npy"

UNITS_NORMALIZED = "normalized"
UNITS_PIXELS = "pixels"
# Keypoints are pixels when any |x| or |y| in the shard exceeds this (fdh-format.md).
PIXEL_UNITS_THRESHOLD = 1.5
