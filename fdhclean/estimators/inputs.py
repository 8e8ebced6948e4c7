"""Estimator inputs decoded where the work is: in the crop workers, not in the model process.

A sample reaches `estimate_samples` either decoded, `(key, image, box)`, or raw,
`(key, members, None)` with the shard members the estimator needs (`image.png`, `E_mask.png`,
and `mask.png` for samples whose E_mask is empty). Raw samples are decoded and boxed
(refine-spec section 5) by `decode_for_pose` in the worker processes, so PNG decoding runs in
parallel with the model instead of in front of it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fdhclean.box import person_box
from fdhclean.decode import decode_image, decode_mask
from fdhclean.fdh import MEMBER_EMASK, MEMBER_IMAGE, MEMBER_MASK

POSE_MEMBERS = (MEMBER_IMAGE, MEMBER_EMASK, MEMBER_MASK)


def pose_members(find, get) -> dict[str, bytes]:
    """The members `decode_for_pose` needs, from a RawSample's case-insensitive `find`/`get`."""
    return {name: get(name) for name in POSE_MEMBERS if find(name) is not None}


def decode_for_pose(members: Mapping[str, bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (H,W,3) image, int (4,) person box); ValueError/KeyError when undecodable."""
    image = decode_image(members[MEMBER_IMAGE])
    emask = decode_mask(members[MEMBER_EMASK])
    known = np.ones_like(emask) if emask.any() else decode_mask(members[MEMBER_MASK])
    box, _source = person_box(emask, known)
    return image, np.asarray(box)
