"""One shard, end to end: read -> decode -> estimates -> score + vote -> write shard + report.

This is the unit of work, output and resume (style.md point 4): outputs go to temporary names
and are renamed, and the completion marker is written last, so a shard is either complete or
redone by the next run. It knows nothing about ranks or pools (`runner` does).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fdhclean.decode import UnitsDecision
from fdhclean.fdh import (
    IMAGE_H,
    IMAGE_W,
    MEMBER_KEYPOINTS,
    MEMBER_KEYPOINTS_ESTIMATED,
    MEMBER_KEYPOINTS_ORIGINAL,
    NUM_KEYPOINTS,
    UNITS_NORMALIZED,
    UNITS_PIXELS,
)
from fdhclean.refine.lock import shard_lock
from fdhclean.refine.originals import OriginalSource, StoredOriginals
from fdhclean.refine.report import empty_row, flat_keypoints, write_report
from fdhclean.refine.sample import STATUS_NO_ESTIMATE, STATUS_OK, Sample, decode_sample
from fdhclean.shards import (
    ShardReader,
    ShardWriter,
    atomic_write_bytes,
    copy_sample_members,
    encode_npy,
    to_normalized,
)
from fdhclean.vote import Scores, chosen_keypoints, decide, score_keypoints

CHUNK = 256  # samples scored together: bounds the stacked (N,288,160) maps to ~60 MB


@dataclass(frozen=True)
class VoteContext:
    """Everything the vote of one shard depends on (picklable, sent to worker processes)."""

    vertex_parts: np.ndarray
    accepted: np.ndarray
    orig_min_score: float = 0.0
    new_min_score: float = 0.3
    tie_policy: str = "new"
    fingerprint: str = ""  # of everything the outputs depend on; stored in each marker
    # Where the original annotation comes from: the shard (refine) or a parent report (revote).
    originals: OriginalSource = field(default_factory=StoredOriginals)


@dataclass
class ShardResult:
    """What one shard produced; stored as its completion marker and summed by `finalize`."""

    shard: str
    samples: int = 0
    updated: int = 0
    ties: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    box_sources: dict[str, int] = field(default_factory=dict)
    keypoint_units: str = "normalized"
    input_bytes: int = 0
    input_sha256: str = ""
    output_bytes: int = 0
    output_sha256: str = ""
    seconds: float = 0.0
    fingerprint: str = ""
    # why the units are in doubt ("" when every sample with a visible keypoint agreed)
    units_ambiguous: str = ""
    # key -> status of every sample whose status is an error (the manifest lists them, so
    # training can skip them without reading the report)
    error_samples: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardResult:
        return cls(**data)


def output_paths(split_out: Path, shard_name: str) -> tuple[Path, Path, Path]:
    """(cleaned shard, report file, completion marker) of one input shard."""
    stem = shard_name.removesuffix(".tar")
    return (
        split_out / shard_name,
        split_out / "report" / f"{stem}.parquet",
        split_out / ".done" / f"{stem}.json",
    )


def process_shard(
    shard_path: Path,
    split_out: Path,
    ctx: VoteContext,
    estimates: Mapping[str, np.ndarray],
) -> ShardResult:
    """Clean one shard. `estimates`: key -> (17,3) pixel coordinates + score (missing = none).

    Raises `ShardReadError` when the shard cannot be read; per-sample problems become status
    codes in the report instead.
    """
    with shard_lock(split_out, shard_path.name):  # ShardInUseError: another process has it
        done = _completed_meanwhile(shard_path, split_out, ctx)
        if done is not None:
            return done
        start = time.perf_counter()
        remove_stale_temporaries(split_out, shard_path.name)  # ours alone: we hold the lock
        result = _process(shard_path, split_out, ctx, estimates)
        result.seconds = round(time.perf_counter() - start, 3)
        result.fingerprint = ctx.fingerprint
        marker_path = output_paths(split_out, shard_path.name)[2]
        atomic_write_bytes(marker_path, (json.dumps(asdict(result), indent=1) + "\n").encode())
    return result


def _completed_meanwhile(shard_path: Path, split_out: Path, ctx: VoteContext):
    """The shard's result when another process completed it since this run listed its
    work (it held the lock then); None when it still has to be cleaned."""
    from fdhclean.refine.finalize import completed_results  # (finalize imports this module)

    done = completed_results(
        split_out, [shard_path.name], ctx.fingerprint, shard_path.parent, verify_inputs=True
    )
    return done.get(shard_path.name)


def remove_stale_temporaries(split_out: Path, shard_name: str) -> list[Path]:
    """Temporary files a killed run left for this shard's outputs (`.<name>.*.tmp`): a rerun
    that redoes the shard removes them (a clean failure removes its own already)."""
    stale = []
    for path in output_paths(split_out, shard_name):
        if path.parent.is_dir():
            stale += path.parent.glob(f".{path.name}.*.tmp")
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _process(shard_path, split_out, ctx, estimates) -> ShardResult:
    # input and output are hashed while their bytes pass (no re-read of either file)
    reader = ShardReader(shard_path)
    samples = [decode_sample(raw, ctx.vertex_parts.shape[0]) for raw in reader]
    decision = ctx.originals.prepare(shard_path, samples)
    units = decision.units
    attach_estimates(samples, estimates)
    updated, tie, orig, new = vote_samples(samples, ctx)

    tar_path, report_path, marker_path = output_paths(split_out, shard_path.name)
    for path in (tar_path, report_path, marker_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    rows, writer = write_cleaned_shard(tar_path, samples, updated, ctx.new_min_score, units)
    fill_report_rows(rows, samples, updated, tie, orig, new, units)
    write_report(report_path, rows)
    result = summarise(shard_path, tar_path, samples, updated, tie, units)
    result.units_ambiguous = units_warning(decision)
    result.input_sha256, result.output_sha256 = reader.sha256, writer.sha256
    return result


def units_warning(decision: UnitsDecision) -> str:
    if not decision.dissent:
        return ""
    voters = decision.pixel_votes + decision.normalized_votes
    other = UNITS_NORMALIZED if decision.units == UNITS_PIXELS else UNITS_PIXELS
    return (
        f"{decision.dissent} of {voters} samples with visible keypoints look like {other} "
        f"(|x| or |y| > 1.5 decides pixels); the shard was read as {decision.units}"
    )


def attach_estimates(samples: Sequence[Sample], estimates: Mapping[str, np.ndarray]) -> None:
    """Attach normalised float64 estimates (pixels / (W, H); a revote's estimates come
    normalised already, `estimates.normalized`, so the report's values are replayed exactly)."""
    scale = 1.0 if getattr(estimates, "normalized", False) else np.array([IMAGE_W, IMAGE_H, 1.0])
    for s in samples:
        if s.status != STATUS_OK:
            continue
        est = estimates.get(s.key)
        if est is None:
            s.fail(STATUS_NO_ESTIMATE, _no_estimate_reason(s.key, estimates))
            continue
        est = np.asarray(est, dtype=np.float64).reshape(17, 3)
        if not np.isfinite(est).all():
            s.fail(STATUS_NO_ESTIMATE, "the estimate contains NaN or inf")
            continue
        s.estimate_norm = est / scale


def _no_estimate_reason(key: str, estimates: Mapping[str, np.ndarray]) -> str:
    if getattr(estimates, "integer_keys", False):
        try:
            int(key)
        except ValueError:
            return f"key {key!r} is not an integer, so no COCO image_id can match it"
    return "no prediction for this key"


def vote_samples(samples: Sequence[Sample], ctx: VoteContext):
    """Score both annotations of every `ok` sample in chunks; returns per-sample arrays.

    Arrays are aligned with `samples`; entries of samples that were not voted are meaningless.
    """
    n = len(samples)
    updated = np.zeros(n, dtype=bool)
    tie = np.zeros(n, dtype=bool)
    orig: dict[int, dict[str, Any]] = {}
    new: dict[int, dict[str, Any]] = {}
    ok = [i for i, s in enumerate(samples) if s.status == STATUS_OK]
    for lo in range(0, len(ok), CHUNK):
        idx = ok[lo : lo + CHUNK]
        emask = np.stack([samples[i].emask for i in idx])
        vertices = np.stack([samples[i].vertices for i in idx])
        o = _score(
            ctx, np.stack([samples[i].orig_norm for i in idx]), ctx.orig_min_score, emask, vertices
        )
        w = _score(
            ctx,
            np.stack([samples[i].estimate_norm for i in idx]),
            ctx.new_min_score,
            emask,
            vertices,
        )
        up, ti = decide(o, w, ctx.tie_policy)
        updated[idx], tie[idx] = up, ti
        for j, i in enumerate(idx):
            orig[i], new[i] = o.row(j), w.row(j)
            samples[i].emask = samples[i].vertices = None  # done with the maps
    return updated, tie, orig, new


def _score(ctx: VoteContext, kp, min_score, emask, vertices) -> Scores:
    return score_keypoints(kp, min_score, emask, vertices, ctx.vertex_parts, ctx.accepted)


def write_cleaned_shard(
    tar_path: Path,
    samples: Sequence[Sample],
    updated: np.ndarray,
    new_min_score: float,
    units: str,
) -> list[dict[str, Any]]:
    """Write the cleaned shard (same samples, same order); returns the report rows begun and
    the closed writer (its sha256 and size)."""
    rows = []
    with ShardWriter(tar_path) as writer:
        for i, s in enumerate(samples):
            replace: dict[str, bytes] = {}
            add: dict[str, bytes] = {}
            if s.status == STATUS_OK:
                kept = None
                if updated[i]:
                    kp = chosen_keypoints(s.keypoints, s.estimate_norm, True, new_min_score, units)
                    kept = unstorable(kp, s.estimate_norm, units, new_min_score)
                if kept is not None:  # never write a value the stored dtype cannot hold
                    updated[i] = False
                    s.error = f"kept the original: {kept}"
                elif updated[i]:
                    replace[MEMBER_KEYPOINTS] = encode_npy(kp)
                elif s.restore_keypoints is not None:  # a revote keeps a replaced original
                    replace[MEMBER_KEYPOINTS] = s.restore_keypoints
            for name, data in provenance_members(s, units).items():
                (replace if s.raw.find(name) else add)[name] = data  # re-cleaning replaces
            rows.append(empty_row())
            members = copy_sample_members(s.raw, replace=replace, add=add)
            if not members:  # only links etc. (a bad-member already): nothing to copy
                s.error = f"{s.error}; no regular member, so absent from the cleaned shard"
                continue
            writer.write(s.key, members)
    return rows, writer


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
    original = _normalised_original(s, units)
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


def fill_report_rows(rows, samples, updated, tie, orig, new, units) -> None:
    for i, (row, s) in enumerate(zip(rows, samples, strict=True)):
        row.update(
            key=s.key,
            shard=s.raw.shard,
            index=s.raw.index,
            status=s.status,
            error=s.error,
            updated=bool(updated[i]) if s.status == STATUS_OK else False,
            tie=bool(tie[i]) if s.status == STATUS_OK else False,
            orig_keypoints=flat_keypoints(_normalised_original(s, units)),
            new_keypoints=flat_keypoints(s.estimate_norm),
            box=list(s.box) if s.box else None,
            box_source=s.box_source,
            keypoint_units=units,
        )
        for side, scores in (("orig", orig.get(i)), ("new", new.get(i))):
            if scores is not None:
                for name, value in scores.items():
                    row[f"{side}_{name}"] = value


def _normalised_original(s: Sample, units: str) -> np.ndarray | None:
    if s.orig_norm is not None:
        return s.orig_norm
    if s.keypoints is None:
        return None
    return to_normalized(np.asarray(s.keypoints, dtype=np.float64).reshape(17, 3), units)


def summarise(shard_path, tar_path, samples, updated, tie, units) -> ShardResult:
    ok = np.array([s.status == STATUS_OK for s in samples], dtype=bool)
    return ShardResult(
        shard=shard_path.name,
        samples=len(samples),
        updated=int((updated & ok).sum()),
        ties=int((tie & ok).sum()),
        errors=dict(sorted(Counter(s.status for s in samples if s.status != STATUS_OK).items())),
        box_sources=dict(sorted(Counter(s.box_source for s in samples if s.box_source).items())),
        keypoint_units=units,
        error_samples={s.key: s.status for s in samples if s.status != STATUS_OK},
        input_bytes=shard_path.stat().st_size,
        output_bytes=tar_path.stat().st_size,
    )
