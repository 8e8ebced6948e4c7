"""Evaluate a trained generator (triagan-spec "Evaluation"): FID, FID_CLIP and OKS.

- FID / FID_CLIP: one generated image per real image of the manifest, generated from THAT
  sample's conditioning, no truncation, compared at the generator's resolution with the real
  images resized the same way (``triagan_model.metrics.fid``; real statistics cached per
  manifest sha256). Metric names: ``fid`` (Inception, torch-fidelity), ``fid_clip`` (CLIP
  ViT-B/32), or ``fid:<extractor>`` for any registered extractor (``fid:test-random`` in tests).
- OKS: generate at truncation 0, estimate keypoints on the generated image (upsampled to the
  288x160 crop), compare with the conditioning keypoints (ground truth) with COCO's formula;
  area = the whole crop by default (as the paper), or the region to generate. The estimate comes
  from a callable (``oks_with_estimator``) or from a COCO results file on images written by
  ``triagan generate`` (``oks_from_results``).
Results are appended as JSON lines to ``OUT/metric-<name>.jsonl``.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from triagan_model.data.fdh import IMAGE_H, IMAGE_W
from triagan_model.metrics.oks import mean_oks, read_coco_results, region_area
from triagan_model.sampling.generate import (
    Truncation,
    generate_batch,
    image_id,
    manifest_batches,
    region_box,
    sample_z,
)

FID_EXTRACTORS = {"fid": "inception", "fid_clip": "clip-vit-b32"}
# (images uint8 (N, 288, 160, 3), boxes int (N, 4) x0, y0, x1, y1) -> (N, 17, >=2) pixels
Estimator = Callable[[np.ndarray, np.ndarray], np.ndarray]


def parse_metrics(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    for m in names:
        if m not in FID_EXTRACTORS and m != "oks" and not m.startswith("fid:"):
            raise ValueError(f"unknown metric {m!r}; use fid, fid_clip, oks or fid:<extractor>")
    return names


def extractor_of(metric: str) -> str:
    return FID_EXTRACTORS.get(metric) or metric.split(":", 1)[1]


def fid_metrics(
    G: torch.nn.Module,
    manifest: str | os.PathLike,
    metrics: list[str],
    *,
    batch_size: int = 32,
    max_samples: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    weights_paths: dict[str, str] | None = None,
) -> dict[str, float]:
    """FID per metric name, one generated image per real one, no truncation."""
    from triagan_model.metrics.fid import FeatureExtractor, evaluate_fid

    device = next(G.parameters()).device
    extractors = [FeatureExtractor(extractor_of(m), (weights_paths or {}).get(m), device)
                  for m in metrics]  # fmt: skip
    position = itertools.count()

    def generate(batch: dict[str, Any]) -> torch.Tensor:
        idx = [next(position) for _ in batch["key"]]
        return generate_batch(G, batch, sample_z(idx, G.cfg.z_dim, seed)).cpu()

    by_extractor = evaluate_fid(manifest, generate, extractors, resolution=G.cfg.resolution,
                                batch_size=batch_size, max_samples=max_samples,
                                cache_dir=cache_dir)  # fmt: skip
    return {m: by_extractor[extractor_of(m)] for m in metrics}


def _full_res_batches(manifest, batch_size: int, num: int | None) -> Iterator[dict[str, Any]]:
    return manifest_batches(manifest, (IMAGE_H, IMAGE_W), batch_size, num)


def conditioning(
    manifest: str | os.PathLike, num: int | None = None, batch_size: int = 64
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """{key: (17,3) normalised conditioning keypoints} and {key: region-to-generate area} (px
    of the 288x160 crop) of the manifest's first ``num`` samples."""
    kps, areas = {}, {}
    for batch in _full_res_batches(manifest, batch_size, num):
        for key, kp, mask in zip(batch["key"], batch["keypoints"], batch["mask"], strict=True):
            kps[key] = kp.numpy()
            areas[key] = region_area(mask.numpy())
    return kps, areas


def oks_from_results(
    manifest: str | os.PathLike,
    results: str | os.PathLike,
    image_size: tuple[int, int],
    *,
    area: str = "crop",
    index: str | os.PathLike | None = None,
    num: int | None = None,
) -> tuple[float, int]:
    """Mean OKS of a COCO results file on generated images of ``image_size`` (H, W).

    Image ids map to keys through ``index`` (``triagan generate``'s index.json) when given,
    else image_id = int(key). Coordinates are scaled to the 288x160 crop.
    """
    kps, areas = conditioning(manifest, num)
    dets = read_coco_results(results)
    if index is not None:
        doc = json.loads(Path(index).read_text())
        ids = {int(e["image_id"]): e["key"] for e in doc["images"]}
    else:
        ids = {image_id(k, -1): k for k in kps}
    h, w = image_size
    scaled = {}
    for iid, det in dets.items():
        key = ids.get(iid)
        if key is None or key not in kps:
            continue
        d = det.copy()
        d[:, 0] *= IMAGE_W / w
        d[:, 1] *= IMAGE_H / h
        scaled[key] = d
    return _mean_oks(kps, scaled, areas if area == "region" else None)


def _mean_oks(kps, dets_by_key, areas) -> tuple[float, int]:
    """``mean_oks`` keyed by int ids (its contract), from key-indexed detections."""
    keyed = {str(i): kps[k] for i, k in enumerate(dets_by_key)}
    dets = {i: d for i, d in enumerate(dets_by_key.values())}
    ar = None if areas is None else {str(i): areas[k] for i, k in enumerate(dets_by_key)}
    return mean_oks(keyed, dets, ar)


@torch.no_grad()
def oks_with_estimator(
    G: torch.nn.Module,
    manifest: str | os.PathLike,
    estimate: Estimator,
    *,
    area: str = "crop",
    num: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
) -> tuple[float, int]:
    """Generate at truncation 0, estimate keypoints with ``estimate`` and score them."""
    kps, areas, dets = {}, {}, {}
    low = manifest_batches(manifest, G.cfg.resolution, batch_size, num)
    full = _full_res_batches(manifest, batch_size, num)
    position = itertools.count()
    for small, big in zip(low, full, strict=True):
        idx = [next(position) for _ in small["key"]]
        fake = generate_batch(G, small, sample_z(idx, G.cfg.z_dim, seed), Truncation(0.0))
        fake = F.interpolate(fake.float().cpu(), size=(IMAGE_H, IMAGE_W), mode="bilinear",
                             align_corners=False, antialias=False)  # fmt: skip
        images = ((fake.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        images = images.permute(0, 2, 3, 1).numpy()
        boxes = np.array([region_box(m.numpy()) for m in big["mask"]], np.int64)
        est = np.asarray(estimate(images, boxes))
        for j, key in enumerate(big["key"]):
            kps[key] = big["keypoints"][j].numpy()
            areas[key] = region_area(big["mask"][j].numpy())
            dets[key] = est[j]
    return _mean_oks(kps, dets, areas if area == "region" else None)


def append_result(out_dir: str | os.PathLike, metric: str, value: float, **info: Any) -> Path:
    """Append one JSON line to OUT/metric-<name>.jsonl (``fid:x`` -> ``metric-fid-x.jsonl``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"metric-{metric.replace(':', '-')}.jsonl"
    record = {"metric": metric, "value": value,
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **info}  # fmt: skip
    with path.open("a") as f:
        f.write(json.dumps(record, sort_keys=True, default=str) + "\n")
    return path
