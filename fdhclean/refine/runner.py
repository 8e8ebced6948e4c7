"""Run `fdhclean refine` for one rank: pick its shards, skip completed ones, clean the rest.

Scale-out: shards are split by rank/world size (`--rank/--world-size` or torchrun's RANK /
WORLD_SIZE), so a SLURM array or torchrun scales it out. Resume: rerun the same command; shards
with a completion marker written under the same settings are skipped. The run that completes
the split's last shard writes the manifest (`finalize`). With `--workers N`, N processes each
clean whole shards end to end (with a model, each runs its own replica of it on the device).
"""

from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fdhclean.manifest import Manifest
from fdhclean.parts import PartTable
from fdhclean.refine.estimates import EstimateSource, open_estimate_source
from fdhclean.refine.finalize import (
    RUN_RECORD,
    IncompleteSplitError,
    PredictionsChangedError,
    completed_results,
    finalize_split,
)
from fdhclean.refine.lock import ShardInUseError
from fdhclean.refine.originals import ReportOriginals, StoredOriginals
from fdhclean.refine.settings import RefineSettings
from fdhclean.refine.shard_task import ShardResult, VoteContext, process_shard
from fdhclean.refine.signals import RefineInterrupted, become_worker, interrupts_raise, kill_workers
from fdhclean.rules import DEFAULT_RULES, load_rules
from fdhclean.shards import ShardReadError, atomic_write_bytes, list_shards, shards_for_rank


class ConfigurationMismatchError(RuntimeError):
    """OUT was made with other settings and `--overwrite` was not given."""


@dataclass
class ShardDone:
    """How one shard of this run ended: cleaned (`result`), failed (`error`, why), or left to
    the live process that holds its lock (`busy`, who)."""

    path: Path
    result: ShardResult | None = None
    error: str | None = None
    busy: str | None = None


@dataclass
class RefineOutcome:
    results: list[ShardResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    busy: dict[str, str] = field(default_factory=dict)  # shard -> message naming the holder
    manifest: Manifest | None = None
    pending_elsewhere: int = 0

    def add(self, item: ShardDone) -> None:
        if item.result is not None:
            self.results.append(item.result)
        elif item.busy is not None:
            self.busy[item.path.name] = item.busy
        else:
            self.failed[item.path.name] = item.error or "failed"

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def run_refine(
    settings: RefineSettings,
    progress: Callable[[ShardResult | None, int], None] | None = None,
) -> RefineOutcome:
    """Clean this rank's shards of the split; finalise the split when it is complete.

    `progress(result, total)` is called once with `(None, number of shards to do)` and then
    after every shard (a failed shard passes an empty result). SIGTERM / SIGINT raise
    `RefineInterrupted` (see `refine.signals`).
    """
    with interrupts_raise():
        return _run_refine(settings, progress)


def _run_refine(settings: RefineSettings, progress) -> RefineOutcome:
    split_out = settings.split_out
    check_output_apart(settings)
    split_out.mkdir(parents=True, exist_ok=True)
    all_shards = list_shards(settings.data_root, settings.split)
    mine = shards_for_rank(all_shards, settings.rank, settings.world_size)
    table = PartTable.load(settings.part_table)
    rules = load_rules(settings.rules) if settings.rules else DEFAULT_RULES
    source = open_estimate_source(settings)
    record = run_record(settings, table, rules, source)
    claim_output(split_out, record, settings.overwrite)
    ctx = VoteContext(
        vertex_parts=table.vertex_parts,
        accepted=rules.masks(table.part_names),
        orig_min_score=settings.orig_min_score,
        new_min_score=settings.new_min_score,
        tie_policy=settings.tie_policy,
        fingerprint=record["fingerprint"],
        originals=ReportOriginals() if settings.revote else StoredOriginals(),
    )
    input_dir = settings.data_root / settings.split
    names = [p.name for p in mine]
    done = completed_results(split_out, names, record["fingerprint"], input_dir, True)
    outcome = RefineOutcome(skipped=sorted(done))
    todo = [p for p in mine if p.name not in done]
    if progress is not None:
        progress(None, len(todo))
    try:
        for item in _run_shards(todo, split_out, ctx, source, settings.workers):
            outcome.add(item)
            if progress is not None:
                progress(item.result or ShardResult(item.path.name), len(todo))
    except RefineInterrupted as exc:
        exc.outcome = outcome
        raise
    _finalize(settings, outcome, [p.name for p in all_shards], record["fingerprint"])
    return outcome


def _finalize(settings: RefineSettings, outcome: RefineOutcome, names, fingerprint) -> None:
    """Write the manifest when the split is complete, else count what other ranks still owe."""
    split_out = settings.split_out
    try:
        outcome.manifest = finalize_split(split_out)
    except PredictionsChangedError as exc:  # the shards are complete; only the manifest waits
        outcome.failed["manifest.json"] = str(exc)
    except OSError as exc:  # disk full / read-only at the end: the shards are complete
        outcome.failed["manifest.json"] = (
            f"cannot write the manifest into {split_out}: {exc}; free space, then run "
            f"`fdhclean finalize {settings.out} --split {settings.split}`"
        )
    except IncompleteSplitError:
        input_dir = settings.data_root / settings.split
        complete = completed_results(split_out, names, fingerprint, input_dir)
        outcome.pending_elsewhere = len(names) - len(complete) - len(outcome.failed)


def check_output_apart(settings: RefineSettings) -> None:
    """Inputs are never written to: OUT/SPLIT must be neither the input split nor inside it,
    and must not contain it (cleaned shards keep the input's file names)."""
    inputs = (settings.data_root / settings.split).resolve()
    output = settings.split_out.resolve()
    if output == inputs or output.is_relative_to(inputs) or inputs.is_relative_to(output):
        raise ValueError(
            f"--out {settings.out} would write into the input split {inputs}: cleaned shards "
            "keep the input's names, so choose an output root apart from --data-root"
        )


def run_record(settings: RefineSettings, table: PartTable, rules, source: EstimateSource):
    """What the outputs depend on; its hash is the fingerprint every marker must carry."""
    provenance = {
        "part_table_sha256": table.sha256,
        "rules_sha256": rules.sha256,
        "rules": {k: list(v) for k, v in rules.accepted.items()},
        "estimator": source.provenance(),
        "orig_min_score": settings.orig_min_score,
        "new_min_score": settings.new_min_score,
        "tie_policy": settings.tie_policy,
        "data_root": str(settings.data_root),
    }
    parent = settings.parent_manifest
    default_parent = settings.data_root / settings.split / "manifest.json"
    if parent is None and default_parent.is_file():
        parent = default_parent  # re-cleaning a cleaned (manifested) set
    content = {"settings": settings.output_fingerprint(), "provenance": provenance}
    fingerprint = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    return {
        "fingerprint": fingerprint,
        "split": settings.split,
        "data_root": str(settings.data_root),
        "parent_manifest": str(parent) if parent else None,
        **content,
    }


def claim_output(split_out: Path, record: dict[str, Any], overwrite: bool) -> None:
    """Refuse an OUT made with other settings unless overwriting; then record ours."""
    path = split_out / RUN_RECORD
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous.get("fingerprint") != record["fingerprint"]:
            if not overwrite:
                changed = _changed_settings(previous, record)
                raise ConfigurationMismatchError(
                    f"{split_out} holds a run made with other settings ({changed}); use a new "
                    f"--out, or --overwrite to redo every shard with the new settings"
                )
            (split_out / "manifest.json").unlink(missing_ok=True)
    atomic_write_bytes(path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())


def _changed_settings(previous: dict[str, Any], record: dict[str, Any]) -> str:
    changed = []
    for group in ("settings", "provenance"):
        old, new = previous.get(group, {}), record[group]
        changed += [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return "differs in: " + ", ".join(changed) if changed else "different fingerprint"


# --- execution -------------------------------------------------------------------------------

_WORKER_STATE: dict[str, Any] = {}


class WorkerSetupError(ValueError):
    """A worker process could not set up its source (e.g. build its estimator): the run
    stops with that message, as when this process could not (exit 2)."""


def _init_worker(
    split_out: Path, ctx: VoteContext, source: EstimateSource, parent: int, workers: int
) -> None:
    become_worker(parent)
    _WORKER_STATE.update(split_out=split_out, ctx=ctx, source=source, error=None)
    try:
        source.start_worker(workers)
    except Exception as exc:  # noqa: BLE001 - raised again with each task (see _worker_task)
        # an initializer that raises breaks the whole pool with a message naming no cause
        _WORKER_STATE["error"] = str(exc) or type(exc).__name__


def _worker_task(shard_path: Path) -> ShardResult:
    state = _WORKER_STATE
    if state["error"] is not None:
        raise WorkerSetupError(state["error"])
    estimates = state["source"].for_shard(shard_path)
    return process_shard(shard_path, state["split_out"], state["ctx"], estimates)


def _run_shards(
    todo: list[Path], split_out: Path, ctx: VoteContext, source: EstimateSource, workers: int
) -> Iterator[ShardDone]:
    """Yield how each shard ended, as shards finish; one bad shard fails alone.

    Each shard is cleaned end to end where it is processed (`source.for_shard`: estimates
    looked up, or a model run, block by block of the one pass over the shard): in this
    process, or in `workers` worker processes.
    """
    if workers <= 0:
        for path in todo:
            try:
                result = process_shard(path, split_out, ctx, source.for_shard(path))
                yield ShardDone(path, result=result)
            except Exception as exc:  # noqa: BLE001 - recorded per shard, exit code non-zero
                yield _shard_error(path, exc)
        return
    yield from _run_pool(todo, split_out, ctx, source, workers)


def _run_pool(todo, split_out, ctx, source: EstimateSource, workers: int) -> Iterator[ShardDone]:
    """Shard-parallel: each worker cleans whole shards (with a model: its own replica)."""
    initargs = (split_out, ctx, source.for_workers(), os.getpid(), workers)
    source.release()  # a model: only the workers' replicas hold device memory from now on
    # CUDA cannot be used in a forked child; forking is cheaper where no model is involved
    mp_context = multiprocessing.get_context("spawn" if source.spawn else None)
    pool = ProcessPoolExecutor(
        workers, mp_context=mp_context, initializer=_init_worker, initargs=initargs
    )
    try:
        pending: list[tuple[Path, Future]] = []
        seen: set[Path] = set()
        for path in todo:
            try:
                future = pool.submit(_worker_task, path)
            except BrokenProcessPool:  # a worker died: fail the rest
                seen.add(path)
                yield ShardDone(path, error=_POOL_DIED)
                break
            seen.add(path)
            pending.append((path, future))
            while len(pending) > workers + 1 or (pending and pending[0][1].done()):
                yield _collect(*pending.pop(0))
        for item in pending:
            yield _collect(*item)
        for path in (p for p in todo if p not in seen):  # left after the pool broke
            yield ShardDone(path, error=_POOL_DIED)
    except BaseException:  # interrupted, a worker without its estimator: abandon, never wait
        kill_workers(pool)
        raise
    pool.shutdown(wait=True)


def _collect(path: Path, future: Future) -> ShardDone:
    try:
        return ShardDone(path, result=future.result())
    except WorkerSetupError:  # not this shard's fault: every shard would fail so; stop the run
        raise
    except Exception as exc:  # noqa: BLE001 - recorded per shard, exit code non-zero
        return _shard_error(path, exc)


_POOL_DIED = "a worker process died (out of memory?); rerun to resume"


def _shard_error(path: Path, exc: BaseException) -> ShardDone:
    if isinstance(exc, BrokenProcessPool):  # every shard in flight fails with the one message
        return ShardDone(path, error=_POOL_DIED)
    if isinstance(exc, ShardInUseError):
        return ShardDone(path, busy=str(exc))
    if isinstance(exc, ShardReadError):
        return ShardDone(path, error=str(exc))
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRORS:
        return ShardDone(path, error=f"shard {path.name}: cannot write its outputs: {exc}")
    return ShardDone(path, error=f"shard {path} failed: {type(exc).__name__}: {exc}")


_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES)


def summary_lines(totals: dict[str, Any]) -> list[str]:
    """The closing summary of spec section 6: updated X of Y (Z %), ties, errors by code."""
    samples, updated = int(totals["samples"]), int(totals["updated"])
    share = 100.0 * updated / samples if samples else 0.0
    errors = ", ".join(f"{k} {v}" for k, v in totals["errors"].items()) or "none"
    return [
        f"updated {updated} of {samples} ({share:.1f} %)",
        f"ties {totals['ties']}",
        f"errors: {errors}",
    ]
