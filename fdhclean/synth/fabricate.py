"""One synthetic FDH sample: members as stored in its shard, its truth row, its predictions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fdhclean.decode import encode_npy
from fdhclean.fdh import (
    FLIP_PERMUTATION,
    IMAGE_H,
    IMAGE_W,
    MEMBER_IMAGE,
    MEMBER_KEYPOINTS,
    MEMBER_MASK,
    MEMBER_MASKRCNN,
    MEMBER_VERTICES,
    UNITS_NORMALIZED,
    UNITS_PIXELS,
)
from fdhclean.synth import annotations as ann
from fdhclean.synth.body import ACCEPTED, draw_figure, ground_truth_keypoints
from fdhclean.synth.paint import VertexPools, masks, paint_image, png_bytes

MIN_VISIBLE = 6  # redraw poses that leave fewer keypoints to vote on


@dataclass(frozen=True)
class ShardVariant:
    """How one shard stores its members (fdh-format.md lists each reading)."""

    vertices_shape: tuple[int, ...]
    vertices_dtype: str
    emask_member: str
    mask_max: int
    units: str


VARIANTS = (
    ShardVariant((IMAGE_H, IMAGE_W), "uint16", "E_mask.png", 1, UNITS_NORMALIZED),
    ShardVariant((1, IMAGE_H, IMAGE_W), "int32", "E_mask.png", 255, UNITS_PIXELS),
    ShardVariant((IMAGE_H, IMAGE_W), "int64", "e_mask.png", 255, UNITS_NORMALIZED),
    ShardVariant((1, IMAGE_H, IMAGE_W), "uint16", "E_mask.png", 1, UNITS_NORMALIZED),
)
# Shard i of a split uses VARIANTS[order[i % 4]]: with two shards per split (the default) the
# two splits together show every variant, each split has a pixel-unit shard.
VARIANT_ORDER = {"train": (0, 1, 2, 3), "val": (2, 1, 3, 0)}


def shard_variant(split: str, shard: int) -> ShardVariant:
    order = VARIANT_ORDER.get(split, VARIANT_ORDER["train"])
    return VARIANTS[order[shard % len(order)]]


@dataclass(frozen=True)
class SynthContext:
    """Per-dataset lookups shared by every sample."""

    pools: VertexPools
    vertex_bits: np.ndarray  # uint32 per CSE vertex (refine-spec section 1 table)
    accepted: np.ndarray  # uint32 (17,) accepted-part bitmasks


def accepted_bits() -> np.ndarray:
    weights = (np.uint32(1) << np.arange(ACCEPTED.shape[1], dtype=np.uint32))[None, :]
    return (ACCEPTED.astype(np.uint32) * weights).sum(axis=1).astype(np.uint32)


@dataclass(frozen=True)
class SynthSample:
    members: dict[str, bytes]
    truth: dict
    entries: list[dict]  # COCO results entries for this key (0, 1 or 2)


def _figure(rng: np.random.Generator):
    for _ in range(100):
        figure = draw_figure(rng)
        gt = ground_truth_keypoints(figure, rng)
        if (gt[:, 2] > 0).sum() >= MIN_VISIBLE:
            return figure, gt
    raise RuntimeError("no pose with enough visible keypoints in 100 draws")


def _stored_keypoints(kp_px: np.ndarray, units: str) -> np.ndarray:
    out = kp_px if units == UNITS_PIXELS else ann.to_norm(kp_px)
    return np.asarray(out, dtype=np.float32)


def _better(plan: ann.SamplePlan, orig: tuple[str, ...], est: tuple[str, ...]) -> str:
    if not plan.has_prediction or bool(orig) == bool(est):
        return "unclear"
    return "estimate" if orig else "original"


def _predictions(key, plan, gt, figure, orig_applied, missing, scene, rng):
    """(entries, applied estimate corruptions, low-score count) for one key."""
    clean_vs_missing = orig_applied == (ann.MISSING,) and not plan.est
    # A clean estimate must still out-count an original that only lost `missing` keypoints.
    max_low = missing - 1 if clean_vs_missing else 3
    est, applied, n_low = ann.simulate_estimate(gt, figure.joints, plan.est, max_low, scene, rng)
    score = rng.uniform(0.6, 0.95)
    entries = [ann.coco_entry(key, est, score)]
    if plan.duplicate:  # a worse, mirrored detection with a lower score: the best must win
        worse = ann.coco_entry(key, est[list(FLIP_PERMUTATION)], score - rng.uniform(0.1, 0.3))
        entries.insert(int(rng.integers(2)), worse)
    return entries, applied, n_low


def make_sample(
    key: str,
    shard: str,
    index: int,
    plan: ann.SamplePlan,
    variant: ShardVariant,
    ctx: SynthContext,
    rng: np.random.Generator,
) -> SynthSample:
    """Draw, paint, annotate and check one sample (the vote must agree with `better`)."""
    figure, gt = _figure(rng)
    image = paint_image(figure, rng)
    e_mask, mask, maskrcnn = masks(figure)
    vertices = ctx.pools.draw(figure.labels, rng)
    pixel_bits = np.where(e_mask, ctx.vertex_bits[vertices], np.uint32(0)).astype(np.uint32)
    scene = ann.Scene(pixel_bits, ctx.accepted, np.flatnonzero(maskrcnn))
    orig, orig_applied = ann.corrupt(gt, plan.orig, ann.ORIG_MIN_SCORE, scene, rng)
    missing = int((gt[:, 2] > 0).sum() - (orig[:, 2] > 0).sum())
    entries, est_applied, n_low = [], (), 0
    if plan.has_prediction:
        entries, est_applied, n_low = _predictions(
            key, plan, gt, figure, orig_applied, missing, scene, rng
        )
    better = _better(plan, orig_applied, est_applied)
    stored = _stored_keypoints(orig, variant.units)
    _check(key, gt, stored, variant.units, entries, better, scene)
    members = {
        MEMBER_IMAGE: png_bytes(image),
        MEMBER_MASK: png_bytes(mask.astype(np.uint8) * np.uint8(variant.mask_max)),
        MEMBER_MASKRCNN: png_bytes(maskrcnn.astype(np.uint8) * np.uint8(variant.mask_max)),
        variant.emask_member: png_bytes(e_mask.astype(np.uint8) * np.uint8(variant.mask_max)),
        MEMBER_VERTICES: encode_npy(
            vertices.astype(variant.vertices_dtype).reshape(variant.vertices_shape)
        ),
        MEMBER_KEYPOINTS: encode_npy(stored),
    }
    truth = {
        "key": key,
        "shard": shard,
        "index": index,
        "keypoint_units": variant.units,
        "true_keypoints": ann.to_norm(gt).astype(np.float32).reshape(-1),
        "orig_corruptions": ",".join(orig_applied),
        "est_corruptions": ",".join(est_applied),
        "has_prediction": plan.has_prediction,
        "better": better,
        "est_low_score": n_low,
        "est_duplicate": plan.has_prediction and plan.duplicate,
        "facing_camera": figure.facing_camera,
        "visible": int((gt[:, 2] > 0).sum()),
    }
    return SynthSample(members, truth, entries)


def _check(key, gt, stored, units, entries, better, scene) -> None:
    """The generator's own guarantees, on the values exactly as written (float32, JSON)."""
    correct, considered, _ = ann.score(ann.to_norm(gt), ann.ORIG_MIN_SCORE, scene)
    if correct != considered:
        raise RuntimeError(f"sample {key}: ground truth has keypoints off their parts")
    if better == "unclear":
        return
    orig = np.asarray(stored, dtype=np.float64)
    if units == UNITS_PIXELS:
        orig = ann.to_norm(orig)
    best = max(entries, key=lambda e: e["score"])
    wins = ann.estimate_wins(orig, ann.to_norm(ann.entry_keypoints(best)), scene)
    if wins != (better == "estimate"):
        raise RuntimeError(f"sample {key}: the vote disagrees with better={better!r}")
