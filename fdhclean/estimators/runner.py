"""Run an estimator over a stream of samples, cropping and decoding in worker processes.

Backends whose `stages()` (the `PoseEstimator` protocol) gives the three top-down stages are
pipelined: worker processes crop the next batches and decode the previous ones while the model
runs in this process. Backends whose `stages()` is None (vitpose-mmpose) get plain batched
`estimate` calls. At most a few batches are in
flight, so memory stays bounded however long the stream is.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Executor, Future, ProcessPoolExecutor

import numpy as np

from fdhclean.estimators.inputs import decode_for_pose
from fdhclean.estimators.protocol import PoseEstimator, TopDownStages
from fdhclean.refine.signals import become_worker  # (stdlib only: no refine machinery)

# key, uint8 (H, W, 3) RGB image, int (4,) box -- or key, raw members, None (decoded in the
# workers by `inputs.decode_for_pose`)
PoseInput = tuple[str, np.ndarray | Mapping[str, bytes], np.ndarray | None]
Result = tuple[str, "np.ndarray | None"]  # None: the estimator failed on this sample


class _InlineExecutor(Executor):
    """workers=0: run submitted work immediately in this process."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def _prepare(preprocess: Callable, items: list[PoseInput]):
    """Worker: crop + normalise one batch; a sample that fails becomes None (reported)."""
    keys, inputs, metas = [], [], []
    for key, image, box in items:
        try:
            if box is None:
                image, box = decode_for_pose(image)
            x, meta = preprocess(image, box)
        except (ValueError, IndexError, KeyError):  # undecodable, bad shape, empty box
            x, meta = None, None
        keys.append(key)
        inputs.append(x)
        metas.append(meta)
    return keys, inputs, metas


def _decode(decode: Callable, keys, heatmaps, metas, ok) -> list[Result]:
    """Worker: heatmaps -> keypoints, re-inserting the failed samples as None."""
    kps = decode(heatmaps, metas) if len(heatmaps) else np.zeros((0, 17, 3), np.float32)
    found = iter(kps)
    return [(key, next(found) if good else None) for key, good in zip(keys, ok, strict=True)]


def _batches(samples: Iterable[PoseInput], size: int) -> Iterator[list[PoseInput]]:
    it = iter(samples)
    while batch := list(itertools.islice(it, size)):
        yield batch


def _pipelined(
    stages: TopDownStages, batches, pool: Executor, depth: int
) -> Iterator[list[Result]]:
    prepared: deque[Future] = deque()
    decoded: deque[Future] = deque()
    batches = iter(batches)
    for batch in itertools.islice(batches, depth):
        prepared.append(pool.submit(_prepare, stages.preprocess, batch))
    while prepared:
        keys, inputs, metas = prepared.popleft().result()
        nxt = next(batches, None)
        if nxt is not None:
            prepared.append(pool.submit(_prepare, stages.preprocess, nxt))
        heatmaps, ok = _predict(stages.predict_heatmaps, inputs)
        good_metas = np.array([m for m, good in zip(metas, ok, strict=True) if good]).reshape(-1, 4)
        decoded.append(pool.submit(_decode, stages.decode, keys, heatmaps, good_metas, ok))
        while len(decoded) > depth or (decoded and decoded[0].done()):
            yield decoded.popleft().result()
    while decoded:
        yield decoded.popleft().result()


def _predict(predict_heatmaps: Callable, inputs: list) -> tuple[np.ndarray, list[bool]]:
    """Heatmaps of the prepared inputs, and which inputs have one. If the model fails on the
    batch (e.g. out of memory), each input is tried alone, so only the inputs it really fails
    on are lost (reported as no-estimate) and the run goes on."""
    ok = [x is not None for x in inputs]
    good = [x for x in inputs if x is not None]
    if not good:
        return np.zeros((0,)), ok
    try:
        return predict_heatmaps(np.stack(good)), ok
    except (RuntimeError, ValueError):
        maps = []
        for i, x in enumerate(inputs):
            if x is None:
                continue
            try:
                maps.append(predict_heatmaps(x[None])[0])
            except (RuntimeError, ValueError):
                ok[i] = False
        return (np.stack(maps) if maps else np.zeros((0,))), ok


def _decoded(batch: list[PoseInput]) -> list[PoseInput | None]:
    """Decode raw samples here (backends without crop workers); None where undecodable."""
    out: list[PoseInput | None] = []
    for key, image, box in batch:
        try:
            out.append((key, *decode_for_pose(image)) if box is None else (key, image, box))
        except (ValueError, KeyError):
            out.append(None)
    return out


def _estimate_one(estimator: PoseEstimator, image: np.ndarray, box) -> np.ndarray | None:
    try:
        return estimator.estimate(image[None], np.asarray(box)[None])[0]
    except (ValueError, IndexError):
        return None


def _plain(estimator: PoseEstimator, batches) -> Iterator[list[Result]]:
    for batch in batches:
        decoded = _decoded(batch)
        good = [s for s in decoded if s is not None]
        try:
            kps = iter(
                estimator.estimate(np.stack([s[1] for s in good]), np.stack([s[2] for s in good]))
                if good
                else []
            )
        except (ValueError, IndexError):  # retry one by one to isolate the bad sample
            kps = iter([_estimate_one(estimator, s[1], s[2]) for s in good])
        yield [
            (raw[0], None if s is None else next(kps))
            for raw, s in zip(batch, decoded, strict=True)
        ]


def estimate_samples(
    estimator: PoseEstimator,
    samples: Iterable[PoseInput],
    *,
    batch_size: int = 32,
    workers: int = 0,
    progress: bool = True,
    total: int | None = None,
) -> Iterator[Result]:
    """Yield (key, float32 (17, 3) keypoints in pixels + score) in input order.

    A sample the estimator cannot handle (undecodable image shape, empty box) yields
    (key, None): refine reports it as `no-estimate`. `workers` > 0 crops and decodes in that
    many spawned processes (numpy/scipy only) while the model runs here.
    """
    from tqdm import tqdm

    batches = _batches(samples, batch_size)
    bar = tqdm(total=total, unit="img", desc=estimator.name, disable=not progress)
    stages = estimator.stages()
    if stages is not None:
        if workers > 0:
            ctx = multiprocessing.get_context("spawn")
            # Each crop worker dies with this process (SIGKILL included), never left blocked
            # on its queue, reparented to init, holding memory.
            pool: Executor = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=ctx,
                initializer=become_worker,
                initargs=(os.getpid(),),
            )
        else:
            pool = _InlineExecutor()
        stream = _pipelined(stages, batches, pool, depth=max(2, 2 * workers))
    else:
        pool, stream = _InlineExecutor(), _plain(estimator, batches)
    try:
        for results in stream:
            bar.update(len(results))
            for key, kp in results:  # a non-finite estimate (fp16/bf16 overflow) is a failure
                yield key, kp if kp is not None and np.isfinite(kp).all() else None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
