"""One shard, end to end: read -> decode -> estimates -> score + vote -> write shard + report.

This is the unit of work, output and resume (style.md point 4): outputs go to temporary names
and are renamed, and the completion marker is written last, so a shard is either complete or
redone by the next run. It knows nothing about ranks or pools (`runner` does).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fdhclean.decode import UnitsDecision
from fdhclean.fdh import (
    IMAGE_H,
    IMAGE_W,
    UNITS_NORMALIZED,
    UNITS_PIXELS,
)
from fdhclean.refine.estimates import BlockEstimates, Estimates
from fdhclean.refine.lock import shard_lock
from fdhclean.refine.originals import OriginalSource, ShardOriginals, StoredOriginals
from fdhclean.refine.report import write_report
from fdhclean.refine.sample import STATUS_NO_ESTIMATE, STATUS_OK, Sample, decode_sample
from fdhclean.refine.write import write_sample
from fdhclean.shards import (
    RawSample,
    ShardReader,
    ShardWriter,
    atomic_write_bytes,
)
from fdhclean.vote import Scores, decide, keypoint_pixels, score_lookups

CHUNK = 64  # samples decoded, voted and written together: ~25 MB of members, cache-warm


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
    cpu_seconds: float = 0.0
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
    estimates: BlockEstimates | Mapping[str, np.ndarray],
) -> ShardResult:
    """Clean one shard. `estimates`: asked per block (a model runs inside this one pass), or a
    plain mapping key -> (17,3) pixel coordinates + score (missing = none).

    Raises `ShardReadError` when the shard cannot be read; per-sample problems become status
    codes in the report instead.
    """
    with shard_lock(split_out, shard_path.name) as locked:  # ShardInUseError: another has it
        done = _completed_meanwhile(shard_path, split_out, ctx)
        if done is not None:
            return done
        start, cpu = time.perf_counter(), time.process_time()
        if locked:  # ours alone; unlocked (no flock), a live run's temporaries may be there
            remove_stale_temporaries(split_out, shard_path.name)
        result = _process(shard_path, split_out, ctx, estimates)
        result.seconds = round(time.perf_counter() - start, 3)
        result.cpu_seconds = round(time.process_time() - cpu, 3)  # this process, all threads
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


def _process(shard_path: Path, split_out: Path, ctx: VoteContext, estimates) -> ShardResult:
    """Clean the shard in one streaming pass (two only for a shard whose units its first
    block mispredicts: `originals.finish` says so, see `_StoredShard`)."""
    originals: ShardOriginals | None = ctx.originals.open(shard_path)
    while originals is not None:
        result, originals = _one_pass(shard_path, split_out, ctx, estimates, originals)
    return result


def _one_pass(shard_path: Path, split_out: Path, ctx: VoteContext, estimates, originals):
    """Stream the shard in blocks of CHUNK samples: read, decode, vote, write, report row.

    Memory holds one block of samples plus the report rows, whatever the shard's size. Input
    and output are hashed while their bytes pass (no re-read of either file). Returns (result,
    None), or (None, the originals to redo the shard with): nothing is kept of this pass.
    """
    tar_path, report_path, marker_path = output_paths(split_out, shard_path.name)
    for path in (tar_path, report_path, marker_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    reader = ShardReader(shard_path)
    rows: list[dict[str, Any]] = []
    with ShardWriter(tar_path) as writer:
        # a model's batches of --batch-size are cut from a block's samples: never fewer
        for block in _blocks(reader, max(CHUNK, _batch_size(estimates))):
            samples = [decode_sample(raw, ctx.vertex_parts.shape[0]) for raw in block]
            originals.apply(samples)
            attach_estimates(samples, estimates)
            vote_samples(samples, ctx)
            units = originals.units.units
            for s in samples:
                write_sample(writer, s, ctx.new_min_score, units)
                rows.append(s.report_row(units))
        redo = originals.finish(len(rows))
        if redo is not None:
            writer.abort()
            return None, redo
    units = originals.units.units
    write_report(report_path, rows)
    result = summarise(shard_path, rows, units)
    result.units_ambiguous = units_warning(originals.units)
    result.input_bytes, result.input_sha256 = reader.bytes_read, reader.sha256
    result.output_bytes, result.output_sha256 = writer.bytes, writer.sha256
    return result, None


def _blocks(samples: Iterable[RawSample], size: int) -> Iterator[list[RawSample]]:
    block: list[RawSample] = []
    for raw in samples:
        block.append(raw)
        if len(block) == size:
            yield block
            block = []
    if block:
        yield block


def units_warning(decision: UnitsDecision) -> str:
    if not decision.dissent:
        return ""
    voters = decision.pixel_votes + decision.normalized_votes
    other = UNITS_NORMALIZED if decision.units == UNITS_PIXELS else UNITS_PIXELS
    return (
        f"{decision.dissent} of {voters} samples with visible keypoints look like {other} "
        f"(|x| or |y| > 1.5 decides pixels); the shard was read as {decision.units}"
    )


def _batch_size(estimates: BlockEstimates | Mapping) -> int:
    return 0 if isinstance(estimates, Mapping) else estimates.batch_size


def attach_estimates(samples: Sequence[Sample], estimates: BlockEstimates | Mapping) -> None:
    """Attach normalised float64 estimates of a block's `ok` samples (pixels / (W, H); a
    revote's come normalised already, so the report's values are replayed exactly). A plain
    mapping is pixels."""
    if isinstance(estimates, Mapping):
        estimates = Estimates(estimates)
    scale = 1.0 if estimates.normalized else np.array([IMAGE_W, IMAGE_H, 1.0])
    ok = [s for s in samples if s.status == STATUS_OK]
    for s, est in zip(ok, estimates.for_samples(ok), strict=True):
        if est is None:
            s.fail(STATUS_NO_ESTIMATE, estimates.missing_reason(s.key))
            continue
        est = np.asarray(est, dtype=np.float64).reshape(17, 3)
        if not np.isfinite(est).all():
            s.fail(STATUS_NO_ESTIMATE, "the estimate contains NaN or inf")
            continue
        s.estimate_norm = est / scale


def vote_samples(samples: Sequence[Sample], ctx: VoteContext) -> None:
    """Score both annotations of every `ok` sample at once and record the decision on it.

    The rule reads E_mask and the vertex map only at the keypoints' pixels (refine-spec
    section 3), so those 2 x 17 values are looked up per sample instead of stacking whole
    (N, 288, 160) maps; the arithmetic is `score_keypoints`' own (`vote.keypoint_pixels`,
    `vote.score_lookups`), so the scores are identical.
    """
    ok = [s for s in samples if s.status == STATUS_OK]
    if not ok:
        return
    orig = _score(ctx, ok, np.stack([s.orig_norm for s in ok]), ctx.orig_min_score)
    new = _score(ctx, ok, np.stack([s.estimate_norm for s in ok]), ctx.new_min_score)
    updated, tie = decide(orig, new, ctx.tie_policy)
    for j, s in enumerate(ok):
        s.updated, s.tie = bool(updated[j]), bool(tie[j])
        s.orig_scores, s.new_scores = orig.row(j), new.row(j)
        s.emask = s.vertices = None  # done with the maps


def _score(ctx: VoteContext, ok: Sequence[Sample], kp: np.ndarray, min_score: float) -> Scores:
    considered, px, py = keypoint_pixels(kp, min_score, IMAGE_H, IMAGE_W)
    emask_at = np.stack([s.emask[y, x] for s, y, x in zip(ok, py, px, strict=True)])
    # int64 per sample: the maps keep their stored dtypes, which may differ between samples
    vertex_at = np.stack(
        [s.vertices[y, x].astype(np.int64) for s, y, x in zip(ok, py, px, strict=True)]
    )
    return score_lookups(considered, emask_at, vertex_at, ctx.vertex_parts, ctx.accepted)


def summarise(shard_path: Path, rows: Sequence[dict[str, Any]], units: str) -> ShardResult:
    """The shard's totals, from its report rows (the samples are gone by now)."""
    errors = {row["key"]: row["status"] for row in rows if row["status"] != STATUS_OK}
    return ShardResult(
        shard=shard_path.name,
        samples=len(rows),
        updated=sum(bool(row["updated"]) for row in rows),
        ties=sum(bool(row["tie"]) for row in rows),
        errors=dict(sorted(Counter(errors.values()).items())),
        box_sources=dict(sorted(Counter(r["box_source"] for r in rows if r["box_source"]).items())),
        keypoint_units=units,
        error_samples=errors,
    )
