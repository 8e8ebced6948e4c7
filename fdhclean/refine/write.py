"""Writing one sample of a cleaned shard: its `keypoints.npy` as the vote decided, and the two
provenance members every sample carries (refine-spec section 6)."""

from __future__ import annotations

import numpy as np

from fdhclean.fdh import (
    MEMBER_KEYPOINTS,
    MEMBER_KEYPOINTS_ESTIMATED,
    MEMBER_KEYPOINTS_ORIGINAL,
    NUM_KEYPOINTS,
    UNITS_PIXELS,
)
from fdhclean.refine.sample import STATUS_OK, Sample
from fdhclean.shards import ShardWriter, copy_sample_members, encode_npy
from fdhclean.tar_reader import NOT_UTF8
from fdhclean.vote import chosen_keypoints


def write_sample(writer: ShardWriter, s: Sample, new_min_score: float, units: str) -> None:
    """Append `s` to the cleaned shard: every member byte for byte but `keypoints.npy` (the
    estimate where the vote chose it and the dtype can hold it) and the provenance members."""
    if not s.raw.members or renamed(s):  # a bad-member already: nothing (or nothing under its
        # own name) to copy; the sample stays as a placeholder (its provenance members) so the
        # cleaned shard, marker and manifest count alike, and no member is written renamed
        why = "no regular member" if not s.raw.members else "a member name is not UTF-8"
        s.error = f"{s.error}; {why}, so only a placeholder in the cleaned shard"
        writer.write(s.key, provenance_members(s, units))
        return
    replace: dict[str, bytes] = {}
    add: dict[str, bytes] = {}
    if s.status == STATUS_OK:
        if s.updated:
            kp = chosen_keypoints(s.keypoints, s.estimate_norm, True, new_min_score, units)
            kept = unstorable(kp, s.estimate_norm, units, new_min_score)
            if kept is not None:  # never write a value the stored dtype cannot hold
                s.updated = False
                s.error = f"kept the original: {kept}"
            else:
                replace[MEMBER_KEYPOINTS] = encode_npy(kp)
        if not s.updated and s.restore_keypoints is not None:  # a revote keeps an original
            replace[MEMBER_KEYPOINTS] = s.restore_keypoints
    for name, data in provenance_members(s, units).items():
        (replace if s.raw.find(name) else add)[name] = data  # re-cleaning replaces them
    writer.write(s.key, copy_sample_members(s.raw, replace=replace, add=add))


def renamed(s: Sample) -> bool:
    """Whether the reader escaped a member name (`\\xNN`): written back, the member would
    carry another name than in the input."""
    return any(NOT_UTF8 in problem for problem in s.raw.problems)


_NO_KEYPOINTS = np.zeros((NUM_KEYPOINTS, 3), np.float32)  # COCO's "not labelled": v = 0


def provenance_members(s: Sample, units: str) -> dict[str, bytes]:
    """`keypoints_original.npy` and `keypoints_estimated.npy` (normalised float32) for EVERY
    sample, so each sample of a cleaned shard has the same member set: DP2's loader batches
    with a dict collate over the first sample's keys, and a sample without them fails it
    (KeyError) or, first in a batch, drops them for the batch. An error sample carries what
    is known (its readable original, its estimate if any), else all-zero keypoints (v = 0);
    the manifest's `error_samples` and the report say it is not to be trained on. An error
    sample that has them already (a re-clean) keeps its own."""
    if s.status != STATUS_OK and s.raw.find(MEMBER_KEYPOINTS_ORIGINAL) is not None:
        return {}
    original = s.normalised_original(units)
    estimate = s.estimate_norm
    return {
        MEMBER_KEYPOINTS_ORIGINAL: _npy32(original),
        MEMBER_KEYPOINTS_ESTIMATED: _npy32(estimate),
    }


def _npy32(kp: np.ndarray | None) -> bytes:
    if kp is None:
        return encode_npy(_NO_KEYPOINTS)
    return encode_npy(np.asarray(kp, dtype=np.float64).reshape(NUM_KEYPOINTS, 3).astype(np.float32))


def unstorable(stored: np.ndarray, estimate_norm: np.ndarray, units: str, min_score: float):
    """Why `stored` (the estimate cast to keypoints.npy's dtype) does not hold the estimate,
    or None. Integer storage rounds to whole pixels (<= 0.5 off); anything further (uint8
    wrapping y = 268 to 12, overflow, normalised units in integers) is refused."""
    dtype = stored.dtype
    if not np.issubdtype(dtype, np.integer):
        if not np.isfinite(stored.astype(np.float64)).all():
            return f"the estimate overflows keypoints.npy's dtype {dtype}"
        return None
    if units != UNITS_PIXELS:
        return f"keypoints.npy stores normalised units as {dtype}: an estimate would be lost"
    wanted = chosen_keypoints(
        np.zeros(stored.shape, np.float64), estimate_norm, True, min_score, units
    ).reshape(-1, 3)
    got = stored.astype(np.float64).reshape(-1, 3)
    far = np.abs(got - np.rint(wanted)) > 0
    if far.any():
        j, c = np.argwhere(far)[0]
        return (
            f"keypoint {j} {'xyv'[c]} = {wanted[j, c]:.1f} does not fit keypoints.npy's dtype "
            f"{dtype} (it would be stored as {got[j, c]:.0f})"
        )
    return None
