"""FID and FID_CLIP (triagan-spec.md, Evaluation) over a small registry of feature networks.

Each feature network is described as data (style.md items 8 and 10): a builder that loads it
from a LOCAL weights file (no downloads: the machines running this are offline), the expected
file name, and the preprocessing from generator space ([-1, 1], any H x W) to its input.
  inception    torch-fidelity's FeatureExtractorInceptionV3, 2048-d pool features; it takes
               uint8 images and resizes them to 299x299 itself (TF1-compatible bilinear).
               File: weights-inception-2015-12-05-6726825d.pth (torch-fidelity's release).
  clip-vit-b32 OpenAI's CLIP ViT-B/32 image tower, 512-d embeddings. File: ViT-B-32.pt (OpenAI's
               release, a TorchScript archive) or a state dict of that tower
               (``clip_loader.py``). Preprocessing is DeepPrivacy2's (``dp2/metrics/fid_clip.py``
               with ``dp2.utils.denormalize_img``, torchvision 0.14 of its Docker image): [-1, 1]
               -> [0, 1] clamped and quantised to 1/255 (real and generated images alike), bicubic
               resize of the whole crop to 224x224 without antialiasing and WITHOUT a clamp after
               it, OpenAI's mean/std.
  clip-vit-b32-antialias
               the same network with this project's earlier preprocessing (a named option):
               antialiased bicubic resize, clamp to [-1, 1] after it, no quantisation.
  test-random  a tiny randomly initialised CNN (fixed seed, no file) so the whole FID path runs
               in tests and CPU smoke runs; its numbers mean nothing.
Weights are looked up as `weights_path` if given, else $TRIAGAN_WEIGHTS/<file>, else
~/.cache/triagan/weights/<file>.
Real statistics are cached in `cache_dir` as .npz keyed by manifest sha256 + extractor +
resolution + sample count. `evaluate_fid` generates one image per real one FROM THAT REAL
SAMPLE'S CONDITIONING (the reference's FID_CLIP called the generator without the batch).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from triagan_model.data.manifest import file_sha256
from triagan_model.metrics.frechet import FeatureStats, fid_from_stats

WEIGHTS_ENV = "TRIAGAN_WEIGHTS"
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_SIZE = (224, 224)


class MissingWeightsError(FileNotFoundError):
    """A feature network's local weights file is not there (nothing is ever downloaded)."""


@dataclass(frozen=True)
class ExtractorSpec:
    name: str
    builder: Callable[[Path | None], nn.Module]  # weights file (None when weights_file is None)
    # [-1, 1] float (B, 3, H, W) -> network input, resizing included
    preprocess: Callable[[torch.Tensor], torch.Tensor]
    input_size: tuple[int, int] | None  # (H, W) fed to the network; None = network resizes
    weights_file: str | None
    dim: int
    # names the preprocessing in the real-statistics cache file, so statistics computed with an
    # earlier preprocessing under the same extractor name are never reused
    preprocessing: str = ""


_REGISTRY: dict[str, ExtractorSpec] = {}


def register_extractor(spec: ExtractorSpec) -> None:
    _REGISTRY[spec.name] = spec


def extractor_names() -> list[str]:
    return sorted(_REGISTRY)


def get_extractor_spec(name: str) -> ExtractorSpec:
    if name not in _REGISTRY:
        raise KeyError(f"unknown feature extractor {name!r}; known: {extractor_names()}")
    return _REGISTRY[name]


def default_weights_dir() -> Path:
    env = os.environ.get(WEIGHTS_ENV)
    return Path(env) if env else Path.home() / ".cache" / "triagan" / "weights"


def resolve_weights(spec: ExtractorSpec, weights_path: str | os.PathLike | None) -> Path | None:
    if spec.weights_file is None:
        return None
    path = Path(weights_path) if weights_path else default_weights_dir() / spec.weights_file
    if not path.is_file():
        raise MissingWeightsError(
            f"feature extractor {spec.name!r} needs its weights file {spec.weights_file} at "
            f"{path} (pass weights_path= or set ${WEIGHTS_ENV}); nothing is downloaded"
        )
    return path


class _Frozen(nn.Module):
    """Eval mode and no gradients by construction: `train()` cannot switch it back."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> _Frozen:
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FeatureExtractor:
    """A built feature network: images in [-1, 1] (B,3,H,W) -> float32 features (B, D)."""

    def __init__(self, name: str, weights_path: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu") -> None:  # fmt: skip
        self.spec = get_extractor_spec(name)
        self.name = name
        self.device = torch.device(device)
        weights = resolve_weights(self.spec, weights_path)
        # the real statistics' cache key: other weights must never reuse them
        self.weights_sha256 = file_sha256(weights) if weights is not None else "none"
        prep = self.spec.preprocessing
        self.cache_name = f"{name}.{prep}" if prep else name
        self.net = _Frozen(self.spec.builder(weights))
        self.net.to(self.device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.net(self.spec.preprocess(images.to(self.device, torch.float32)))
        if isinstance(feats, tuple | list):
            feats = feats[0]
        return feats.reshape(feats.shape[0], -1).float()


# --- the registered networks ---------------------------------------------------------------


def _build_inception(path: Path | None) -> nn.Module:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    return FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)
    )


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def _build_clip(path: Path | None) -> nn.Module:
    from triagan_model.metrics.clip_loader import load_clip_visual

    return load_clip_visual(path)  # forward() gives the projected embedding


def _clip_normalise(x01: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(_OPENAI_MEAN, device=x01.device).view(1, 3, 1, 1)
    std = torch.tensor(_OPENAI_STD, device=x01.device).view(1, 3, 1, 1)
    return (x01 - mean) / std


def clip_preprocess_dp2(x: torch.Tensor) -> torch.Tensor:
    """DeepPrivacy2's FID_CLIP input: quantise to 1/255, bicubic 224x224 (no antialias, no clamp
    after it: bicubic overshoot stays), OpenAI's mean/std."""
    x01 = torch.round((x * 0.5 + 0.5).float().clamp(0, 1) * 255) / 255  # dp2 denormalize_img
    if tuple(x01.shape[-2:]) != CLIP_SIZE:
        # torchvision 0.14's Resize on a float tensor: interpolate(bicubic, align_corners=False)
        x01 = F.interpolate(x01, size=CLIP_SIZE, mode="bicubic", align_corners=False)
    return _clip_normalise(x01)


def clip_preprocess_antialias(x: torch.Tensor) -> torch.Tensor:
    """The project's earlier FID_CLIP input: antialiased bicubic, clamped, not quantised."""
    if tuple(x.shape[-2:]) != CLIP_SIZE:
        x = F.interpolate(x, size=CLIP_SIZE, mode="bicubic", align_corners=False, antialias=True)
    return _clip_normalise((x.clamp(-1, 1) + 1.0) / 2.0)


def _build_test_random(path: Path | None) -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(),
    )  # fmt: skip
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return net


register_extractor(ExtractorSpec("inception", _build_inception, _to_uint8, None,
                                 "weights-inception-2015-12-05-6726825d.pth", 2048))  # fmt: skip
register_extractor(ExtractorSpec("clip-vit-b32", _build_clip, clip_preprocess_dp2, CLIP_SIZE,
                                 "ViT-B-32.pt", 512, preprocessing="dp2"))  # fmt: skip
register_extractor(ExtractorSpec("clip-vit-b32-antialias", _build_clip, clip_preprocess_antialias,
                                 CLIP_SIZE, "ViT-B-32.pt", 512))  # fmt: skip
register_extractor(ExtractorSpec("test-random", _build_test_random, lambda x: x.clamp(-1, 1), None,
                                 None, 64))  # fmt: skip


# --- statistics and the evaluation loop ----------------------------------------------------


def stats_cache_path(
    cache_dir: str | os.PathLike,
    manifest_sha: str,
    extractor: str,
    resolution: tuple[int, int],
    max_samples: int | None,
    weights_sha: str = "none",
) -> Path:
    count = "all" if max_samples is None else str(max_samples)
    name = (f"{manifest_sha[:16]}-{extractor}-{weights_sha[:12]}-{resolution[0]}x{resolution[1]}"
            f"-{count}.npz")  # fmt: skip
    return Path(cache_dir) / name


def feature_stats(
    images: Iterable[torch.Tensor], extractor: FeatureExtractor, max_samples: int | None = None
) -> FeatureStats:
    """Statistics of `extractor` features over batches of images in [-1, 1]."""
    stats = FeatureStats(extractor.spec.dim)
    for batch in images:
        if max_samples is not None:
            batch = batch[: max_samples - stats.count]
        if len(batch):
            stats.update(extractor(batch))
        if max_samples is not None and stats.count >= max_samples:
            break
    return stats


def _take(batch: dict[str, Any], n: int) -> dict[str, Any]:
    return {k: v[:n] for k, v in batch.items()}


def _load_cached(path: Path, manifest_sha: str, name: str) -> FeatureStats | None:
    if not path.is_file():
        return None
    stats, meta = FeatureStats.load(path)
    if meta.get("manifest_sha256") != manifest_sha or meta.get("extractor") != name:
        raise ValueError(f"{path}: cached statistics are {meta}, not {name} of {manifest_sha}")
    return stats


def _accumulate(
    loader: Iterable[dict[str, Any]],
    generate: Callable[[dict[str, Any]], torch.Tensor] | None,
    real: dict[str, FeatureStats],
    todo: list[FeatureExtractor],
    fake: dict[str, FeatureStats],
    extractors: list[FeatureExtractor],
    max_samples: int | None,
) -> None:
    seen = 0
    for batch in loader:
        if max_samples is not None:
            batch = _take(batch, max_samples - seen)
        for ex in todo:
            real[ex.name].update(ex(batch["img"]))
        if generate is not None:
            images = generate(batch)
            if tuple(images.shape) != tuple(batch["img"].shape):
                raise ValueError(
                    f"generate returned {tuple(images.shape)}, expected {tuple(batch['img'].shape)}"
                )
            for ex in extractors:
                fake[ex.name].update(ex(images))
        seen += len(batch["key"])
        if max_samples is not None and seen >= max_samples:
            break


def evaluate_fid(
    manifest_path: str | os.PathLike,
    generate: Callable[[dict[str, Any]], torch.Tensor] | None,
    extractors: Iterable[FeatureExtractor],
    *,
    resolution: tuple[int, int] = (288, 160),
    batch_size: int = 32,
    max_samples: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    num_workers: int = 0,
) -> dict[str, float]:
    """FID per extractor name between the manifest's images and `generate(batch)`.

    The loader reads the manifest in order without flips; `generate` receives each real batch
    (its conditioning) and returns images in [-1, 1] of the same shape, one per real image.
    With `generate=None` only the real statistics are computed (and cached); returns {}.
    """
    from triagan_model.data.loader import build_loader
    from triagan_model.data.manifest import manifest_sha256

    extractors = list(extractors)
    sha = manifest_sha256(manifest_path)
    cache = {}
    if cache_dir is not None:
        cache = {ex.name: stats_cache_path(cache_dir, sha, ex.cache_name, resolution, max_samples,
                                           ex.weights_sha256)
                 for ex in extractors}  # fmt: skip
    real = {ex.name: _load_cached(cache[ex.name], sha, ex.name) if cache else None
            for ex in extractors}  # fmt: skip
    todo = [ex for ex in extractors if real[ex.name] is None]
    for ex in todo:
        real[ex.name] = FeatureStats(ex.spec.dim)
    fake = {ex.name: FeatureStats(ex.spec.dim) for ex in extractors}
    if todo or generate is not None:
        loader = build_loader(
            manifest_path, resolution=resolution, batch_size=batch_size, seed=0,
            num_workers=num_workers, shuffle=False, flip=False, infinite=False,
        )  # fmt: skip
        _accumulate(loader, generate, real, todo, fake, extractors, max_samples)
    for ex in todo:
        if cache:
            real[ex.name].save(cache[ex.name], manifest_sha256=sha, extractor=ex.name,
                               resolution=f"{resolution[0]}x{resolution[1]}")  # fmt: skip
    if generate is None:
        return {}
    return {ex.name: fid_from_stats(real[ex.name], fake[ex.name]) for ex in extractors}
