"""Keypoint -> accepted body parts (refine-spec section 2).

A keypoint counts as correct when the body part under it (via CSE and the part table) is one
of its accepted parts. The default table follows the paper's example ("eye" must land on
"head") and extends it to the limbs; users can replace it with a TOML file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from fdhclean.fdh import COCO_KEYPOINTS, PART_NAMES
from fdhclean.parts import part_bits


@dataclass(frozen=True)
class RuleTable:
    """`accepted[keypoint]` = the part names a keypoint may land on (all 17 COCO keypoints)."""

    accepted: Mapping[str, tuple[str, ...]]

    def __post_init__(self) -> None:
        missing = [k for k in COCO_KEYPOINTS if k not in self.accepted]
        unknown = sorted(set(self.accepted) - set(COCO_KEYPOINTS))
        if missing or unknown:
            raise ValueError(
                "a rule table must name exactly the 17 COCO keypoints; "
                f"missing: {missing or 'none'}; unknown: {unknown or 'none'}"
            )
        table: dict[str, tuple[str, ...]] = {}
        for kp in COCO_KEYPOINTS:
            parts = self.accepted[kp]
            if isinstance(parts, str) or not all(isinstance(p, str) for p in parts):
                raise ValueError(f"rule for {kp!r} must be a list of part names, got {parts!r}")
            parts = tuple(parts)
            if not parts:
                raise ValueError(f"rule for {kp!r} accepts no part (it could never be correct)")
            if len(set(parts)) != len(parts):
                raise ValueError(f"rule for {kp!r} lists a part twice: {list(parts)}")
            table[kp] = parts
        object.__setattr__(self, "accepted", table)

    def to_json(self) -> str:
        """Canonical JSON: keys sorted, each part list sorted, no whitespace."""
        canon = {kp: sorted(parts) for kp, parts in self.accepted.items()}
        return json.dumps(canon, sort_keys=True, separators=(",", ":"))

    @property
    def sha256(self) -> str:
        """sha256 of `to_json()` (UTF-8): independent of key and list order."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def masks(self, part_names: Iterable[str] = PART_NAMES) -> np.ndarray:
        """uint32 (17,) accepted-part bitmasks in COCO order for a part table's names."""
        names = tuple(part_names)
        try:
            return np.array(
                [part_bits(self.accepted[kp], names) for kp in COCO_KEYPOINTS], dtype=np.uint32
            )
        except ValueError as exc:
            raise ValueError(f"rule table does not fit the part table: {exc}") from None


def _mirror(rules: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """Add right_* rules as the mirror of the left_* ones (leftArm -> rightArm, ...)."""
    out = dict(rules)
    for kp, parts in rules.items():
        if kp.startswith("left_"):
            out["right_" + kp[len("left_") :]] = tuple(
                "right" + p[len("left") :] if p.startswith("left") else p for p in parts
            )
    return out


DEFAULT_RULES = RuleTable(
    _mirror(
        {
            "nose": ("head",),
            "left_eye": ("head",),
            "left_ear": ("head",),
            "left_shoulder": ("leftShoulder", "leftArm"),
            "left_elbow": ("leftArm", "leftForeArm"),
            "left_wrist": ("leftForeArm", "leftHand", "leftHandIndex1"),
            "left_hip": ("hips", "leftUpLeg"),
            "left_knee": ("leftUpLeg", "leftLeg"),
            "left_ankle": ("leftLeg", "leftFoot", "leftToeBase"),
        }
    )
)


def load_rules(path: str | os.PathLike[str], part_names: Iterable[str] = PART_NAMES) -> RuleTable:
    """Read a TOML rule table: `keypoint = ["part", ...]` for all 17 COCO keypoints.

    Part names must be among `part_names` (the canonical SMPL parts by default).
    """
    try:
        with open(path, "rb") as stream:
            raw = tomllib.load(stream)
    except FileNotFoundError:
        raise FileNotFoundError(f"rule table {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"rule table {path}: invalid TOML ({exc})") from exc
    try:
        for kp, parts in raw.items():
            if not isinstance(parts, list):
                raise ValueError(f"rule for {kp!r} must be a list of part names, got {parts!r}")
        table = RuleTable({kp: tuple(parts) for kp, parts in raw.items()})
        table.masks(part_names)
    except ValueError as exc:
        raise ValueError(f"rule table {path}: {exc}") from None
    return table
