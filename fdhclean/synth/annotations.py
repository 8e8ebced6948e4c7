"""Recorded corruptions of the original keypoints, simulated estimates, and the spec's vote.

Every sample gets a plan (which corruptions its original annotation and its estimate carry).
`better` is the annotation that is truly better: "estimate" when only the original is corrupted,
"original" when only the estimate is, "unclear" otherwise. Corruptions are built so the vote of
refine-spec sections 3-4 agrees: a swap or an off-body keypoint always leaves a considered
keypoint on a wrong part (checked here through the part table, with retries and a fallback),
and a clean estimate never has more low-score keypoints than the original has missing ones.
Keypoints are handled in pixel units (x in [0, W)) until they are written.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fdhclean.fdh import FLIP_PERMUTATION, IMAGE_H, IMAGE_W, NUM_KEYPOINTS

H, W = IMAGE_H, IMAGE_W
ORIG_MIN_SCORE = 0.0  # refine-spec section 3 defaults
NEW_MIN_SCORE = 0.3
LIMB_PAIRS = ((5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))  # shoulders .. ankles
MARGIN = 0.15  # sub-pixel margin (see body.SUBPIXEL_MARGIN)

SWAP_PAIR, SWAP_ALL, OFF_BODY, MISSING = "swap_pair", "swap_all", "off_body", "missing"
# Interleaved so that any prefix of the cycle is diverse; a split takes the cycle's first n
# entries (repeated as needed) and shuffles them, so every kind shows up from 20 samples on.
ORIG_CYCLE = (
    (SWAP_PAIR,), (), (MISSING,), (OFF_BODY,), (), (SWAP_ALL,), (), (MISSING,), (),
    (SWAP_PAIR,), (MISSING, OFF_BODY), (), (OFF_BODY,), (), (SWAP_PAIR,), (), (SWAP_ALL,), (),
    (MISSING,), (),
)  # fmt: skip
EST_CYCLE = (
    (), (OFF_BODY,), (), (SWAP_PAIR,), (), (), (SWAP_ALL,), (), (OFF_BODY,), (), (), (),
    (SWAP_PAIR,), (), (), (OFF_BODY,), (), (), (), (),
)  # fmt: skip


@dataclass(frozen=True)
class SamplePlan:
    """What one sample's annotations carry (the applied names may fall back, see below)."""

    orig: tuple[str, ...]
    est: tuple[str, ...]
    has_prediction: bool
    duplicate: bool  # a second, worse prediction entry with a lower score


def _cycled(cycle: tuple, n: int, rng: np.random.Generator) -> list:
    items = [cycle[i % len(cycle)] for i in range(n)]
    return [items[i] for i in rng.permutation(n)]


def plan_split(n: int, rng: np.random.Generator) -> list[SamplePlan]:
    """Plans for a split of n samples: ~4 % without prediction, ~8 % with a duplicate entry."""
    orig, est = _cycled(ORIG_CYCLE, n, rng), _cycled(EST_CYCLE, n, rng)
    order = rng.permutation(n)
    no_pred = set(order[: max(1, n // 25)].tolist()) if n >= 2 else set()
    dup = set(order[len(no_pred) : len(no_pred) + max(1, n // 12)].tolist())
    return [
        SamplePlan(orig[i], est[i] if i not in no_pred else (), i not in no_pred, i in dup)
        for i in range(n)
    ]


@dataclass(frozen=True)
class Scene:
    """What scoring needs: per-pixel part bitmask (0 off the body) and accepted bitmasks."""

    pixel_bits: np.ndarray  # uint32 (H, W): part bits of the pixel's vertex where E_mask = 1
    accepted: np.ndarray  # uint32 (17,)
    background: np.ndarray  # int64 flat indices of pixels with no person at all


def score(kp_norm: np.ndarray, min_score: float, scene: Scene) -> tuple[int, int, np.ndarray]:
    """(correct, considered, correct flags) of normalised keypoints (refine-spec section 3)."""
    kp = np.asarray(kp_norm, dtype=np.float64)
    x, y, v = kp[:, 0], kp[:, 1], kp[:, 2]
    considered = (v > min_score) & (x >= 0) & (x < 1) & (y >= 0) & (y < 1)
    px = np.clip(np.floor(x * W), 0, W - 1).astype(np.int64)
    py = np.clip(np.floor(y * H), 0, H - 1).astype(np.int64)
    correct = considered & ((scene.pixel_bits[py, px] & scene.accepted) != 0)
    return int(correct.sum()), int(considered.sum()), correct


def estimate_wins(orig_norm: np.ndarray, est_norm: np.ndarray, scene: Scene) -> bool:
    """refine-spec section 4 with the default tie policy `new`: tuples (frac, correct)."""
    oc, on, _ = score(orig_norm, ORIG_MIN_SCORE, scene)
    nc, nn, _ = score(est_norm, NEW_MIN_SCORE, scene)
    orig = (oc / on if on else 0.0, oc)
    new = (nc / nn if nn else 0.0, nc)
    return new >= orig


def to_norm(kp_px: np.ndarray) -> np.ndarray:
    out = np.array(kp_px, dtype=np.float64)
    out[:, 0] /= W
    out[:, 1] /= H
    return out


def _pixel_point(flat_index: int, rng: np.random.Generator) -> tuple[float, float]:
    py, px = divmod(int(flat_index), W)
    fx, fy = rng.uniform(MARGIN, 1.0 - MARGIN, size=2)
    return px + fx, py + fy


def _vote_sees_error(kp_px, min_score, scene) -> bool:
    """True when some considered keypoint is wrong (the corruption is visible to the vote)."""
    correct, considered, _ = score(to_norm(kp_px), min_score, scene)
    return correct < considered


def _swap_pair(kp, min_score, scene, rng) -> np.ndarray | None:
    for a, b in (LIMB_PAIRS[i] for i in rng.permutation(len(LIMB_PAIRS))):
        if kp[a, 2] <= min_score and kp[b, 2] <= min_score:
            continue
        out = kp.copy()
        out[[a, b]] = kp[[b, a]]
        if _vote_sees_error(out, min_score, scene):
            return out
    return None


def _swap_all(kp, min_score, scene, rng) -> np.ndarray | None:
    out = kp[list(FLIP_PERMUTATION)]
    return out if _vote_sees_error(out, min_score, scene) else None


def _off_body(kp, min_score, scene, rng, score_range=None) -> np.ndarray | None:
    visible = np.flatnonzero(kp[:, 2] > min_score)
    if visible.size == 0 or scene.background.size == 0:
        return None
    out = kp.copy()
    for k in rng.choice(visible, size=min(visible.size, int(rng.integers(1, 3))), replace=False):
        out[k, :2] = _pixel_point(rng.choice(scene.background), rng)
        if score_range is not None:
            out[k, 2] = rng.uniform(*score_range)
    return out


def corrupt(
    kp_px: np.ndarray, kinds: tuple[str, ...], min_score: float, scene, rng, high=None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Apply `kinds` in order; a swap that the vote could not see falls back to off_body.

    Returns the keypoints and the names actually applied. `high` is the score range given to
    off-body estimate keypoints (a confident mistake).
    """
    out, applied = np.array(kp_px, dtype=np.float64), []
    for kind in kinds:
        if kind == MISSING:
            visible = np.flatnonzero(out[:, 2] > 0)
            # Keep at least three: a sample with nothing left to vote on tests nothing.
            count = min(int(rng.integers(1, 4)), visible.size - 3)
            if count < 1:
                continue
            drop = rng.choice(visible, size=count, replace=False)
            out[drop] = 0.0
            applied.append(MISSING)
            continue
        new = None
        if kind == SWAP_PAIR:
            new = _swap_pair(out, min_score, scene, rng)
        elif kind == SWAP_ALL:
            new = _swap_all(out, min_score, scene, rng)
        if new is None:
            new, kind = _off_body(out, min_score, scene, rng, high), OFF_BODY
        if new is None:
            raise RuntimeError("cannot corrupt a sample without visible keypoints or background")
        out = new
        applied.append(kind)
    return out, tuple(dict.fromkeys(applied))


def _jitter(gt_px: np.ndarray, scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Ground truth moved by ~1 px, kept only where it stays on an accepted part."""
    out = gt_px.copy()
    cand = gt_px[:, :2] + rng.normal(0.0, 1.0, size=(NUM_KEYPOINTS, 2))
    cell = np.floor(cand)
    cand = cell + np.clip(cand - cell, MARGIN, 1.0 - MARGIN)
    inside = (cand[:, 0] >= 0) & (cand[:, 0] < W) & (cand[:, 1] >= 0) & (cand[:, 1] < H)
    px = np.clip(cell[:, 0], 0, W - 1).astype(np.int64)
    py = np.clip(cell[:, 1], 0, H - 1).astype(np.int64)
    ok = inside & ((scene.pixel_bits[py, px] & scene.accepted) != 0) & (gt_px[:, 2] > 0)
    out[ok, :2] = cand[ok]
    return out


def simulate_estimate(
    gt_px: np.ndarray,
    joints: np.ndarray,
    kinds: tuple[str, ...],
    max_low: int,
    scene: Scene,
    rng: np.random.Generator,
) -> tuple[np.ndarray, tuple[str, ...], int]:
    """A pose estimate in pixels with scores: (keypoints, applied corruptions, low-score count).

    Visible joints: jittered ground truth, score 0.6-0.95. Joints the annotation lacks (out of
    frame or hidden): the joint clamped into the frame at score < 0.3. Up to `max_low` visible
    joints get a low score too (the estimator unsure), which the vote ignores.
    """
    visible = gt_px[:, 2] > 0
    est = _jitter(gt_px, scene, rng)
    est[:, 2] = rng.uniform(0.6, 0.95, size=NUM_KEYPOINTS)
    hidden = ~visible
    est[hidden, 0] = np.clip(joints[hidden, 0], MARGIN, W - MARGIN)
    est[hidden, 1] = np.clip(joints[hidden, 1], MARGIN, H - MARGIN)
    est[hidden, 2] = rng.uniform(0.02, 0.25, size=int(hidden.sum()))
    n_low = min(int(rng.choice([0, 0, 1, 1, 2, 3])), max(max_low, 0), int(visible.sum()) - 3)
    n_low = max(n_low, 0)
    low = rng.choice(np.flatnonzero(visible), size=n_low, replace=False)
    est[low, 2] = rng.uniform(0.05, 0.28, size=n_low)
    est, applied = corrupt(est, kinds, NEW_MIN_SCORE, scene, rng, high=(0.7, 0.9))
    return est, applied, n_low


def coco_entry(key: str, est_px: np.ndarray, entry_score: float) -> dict:
    """One COCO results entry (refine-spec section 7), rounded so floors stay exact."""
    flat = []
    for x, y, s in est_px:
        flat += [round(float(x), 3), round(float(y), 3), round(float(s), 4)]
    return {
        "image_id": int(key),
        "category_id": 1,
        "keypoints": flat,
        "score": round(float(entry_score), 4),
    }


def entry_keypoints(entry: dict) -> np.ndarray:
    """(17, 3) pixel keypoints of a COCO results entry."""
    return np.asarray(entry["keypoints"], dtype=np.float64).reshape(NUM_KEYPOINTS, 3)
