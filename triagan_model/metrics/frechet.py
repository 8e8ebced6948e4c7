"""Fréchet distance between Gaussians and streaming feature statistics (FID's two halves).

FID = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Heusel et al. 2017). The matrix square
root uses scipy.linalg.sqrtm like pytorch-fid / torch-fidelity, in float64, with their guard: when
the product is singular (few samples) a small multiple of the identity is added to both
covariances; a complex result with a non-negligible imaginary part is an error, not a number.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import scipy.linalg

from triagan_model.atomic import atomic_path


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
    s1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    s2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape}")
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.max(np.abs(covmean.imag))
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"matrix square root has an imaginary component of {imag:.3g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


class FeatureStats:
    """Running mean and covariance of feature vectors, accumulated in float64.

    Batches are merged with Chan et al.'s pairwise update (mean and centred sum of squares M2),
    which avoids the cancellation of sum(x x^T) - n mu mu^T when features have a large mean.
    The covariance is the unbiased one (M2 / (n - 1)), as `np.cov(rowvar=False)` in pytorch-fid
    and torch-fidelity.
    """

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim
        self.count = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    def update(self, features: Any) -> None:
        """Add a (N, D) batch (numpy array or torch tensor)."""
        if hasattr(features, "detach"):
            features = features.detach().cpu().numpy()
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"features must be (N, D), got {x.shape}")
        if self.dim is None:
            self.dim = x.shape[1]
        if x.shape[1] != self.dim:
            raise ValueError(f"feature dimension {x.shape[1]} != {self.dim}")
        n_b = x.shape[0]
        if n_b == 0:
            return
        mean_b = x.mean(axis=0)
        centred = x - mean_b
        m2_b = centred.T @ centred
        if self._mean is None:
            self._mean, self._m2, self.count = mean_b, m2_b, n_b
            return
        n = self.count + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / n)
        self._m2 = self._m2 + m2_b + np.outer(delta, delta) * (self.count * n_b / n)
        self.count = n

    @property
    def mean(self) -> np.ndarray:
        if self.count == 0:
            raise ValueError("no features accumulated")
        return self._mean

    @property
    def cov(self) -> np.ndarray:
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 features, have {self.count}")
        return self._m2 / (self.count - 1)

    def save(self, path: str | os.PathLike, **meta: str) -> None:
        """Write mean, M2, count and string metadata to .npz atomically (temp name + rename)."""
        with atomic_path(path) as tmp:
            np.savez(tmp, mean=self.mean, m2=self._m2, count=np.int64(self.count),
                     **{f"meta_{k}": np.str_(v) for k, v in meta.items()})  # fmt: skip

    @classmethod
    def load(cls, path: str | os.PathLike) -> tuple[FeatureStats, dict[str, str]]:
        """Read what `save` wrote; returns the statistics and their metadata."""
        with np.load(path, allow_pickle=False) as data:
            stats = cls(int(data["mean"].shape[0]))
            stats._mean, stats._m2 = data["mean"].copy(), data["m2"].copy()
            stats.count = int(data["count"])
            meta = {k[5:]: str(data[k]) for k in data.files if k.startswith("meta_")}
        return stats, meta


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)
