"""Truncation of w (triagan-spec "Sampling").

- Toward ``w_avg``: w' = w_avg + psi (w - w_avg) (psi 1 = none, psi 0 = the average).
- Multi-modal (Self-Distilled StyleGAN, Mokady et al. 2022): k-means centres of many mapped w;
  each w moves toward its NEAREST centre, w' = c + psi (w - c). The reference picks a centre by
  index instead; the nearest-centre rule is the paper's.

``kmeans`` is a small torch implementation (scikit-learn is not a dependency): k-means++
seeding (Arthur & Vassilvitskii 2007) then Lloyd iterations, squared Euclidean distance,
distances computed in chunks so 600K x 512 points fit in memory; an emptied cluster is re-seeded
with the point farthest from its centre.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

CENTRES_FORMAT = "triagan-w-centres"


def truncate(w: torch.Tensor, w_avg: torch.Tensor, psi: float) -> torch.Tensor:
    """w_avg + psi (w - w_avg)."""
    return w_avg.to(w.dtype).lerp(w, psi)


def _sq_dists(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(N, K) squared distances, clamped at 0 (the expansion can go slightly negative)."""
    d = x.square().sum(1, keepdim=True) - 2 * x @ c.T + c.square().sum(1)[None]
    return d.clamp_min(0)


def nearest_centre(
    w: torch.Tensor, centres: torch.Tensor, chunk: int = 65536
) -> tuple[torch.Tensor, torch.Tensor]:
    """(index (N,), squared distance (N,)) of each row's nearest centre."""
    idx, dist = [], []
    c = centres.to(w.dtype)
    for part in w.split(chunk):
        d = _sq_dists(part, c)
        m = d.min(1)
        idx.append(m.indices)
        dist.append(m.values)
    return torch.cat(idx), torch.cat(dist)


def truncate_to_centres(w: torch.Tensor, centres: torch.Tensor, psi: float) -> torch.Tensor:
    """Multi-modal truncation: w' = c + psi (w - c), c the nearest centre of each w."""
    idx, _ = nearest_centre(w, centres)
    return centres.to(w.dtype)[idx].lerp(w, psi)


def _kmeans_pp(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=gen))
    centres = [x[first]]
    closest = _sq_dists(x, x[first][None])[:, 0]
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than k: duplicate an arbitrary point
            pick = int(torch.randint(n, (1,), generator=gen))
        else:
            pick = int(torch.multinomial(closest / total, 1, generator=gen))
        centres.append(x[pick])
        closest = torch.minimum(closest, _sq_dists(x, x[pick][None])[:, 0])
    return torch.stack(centres)


def kmeans(
    x: torch.Tensor, k: int, *, iters: int = 50, seed: int = 0, tol: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """(centres (k, D), assignment (N,)) of Lloyd's k-means with k-means++ seeding."""
    if x.ndim != 2 or not 0 < k <= x.shape[0]:
        raise ValueError(f"kmeans needs (N, D) points with N >= k; got {tuple(x.shape)}, k={k}")
    x = x.float()
    gen = torch.Generator().manual_seed(seed)
    centres = _kmeans_pp(x.cpu(), k, gen).to(x.device)
    assign = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for _ in range(iters):
        assign, dist = nearest_centre(x, centres)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        new = sums / counts.clamp_min(1)[:, None]
        for j in torch.nonzero(counts == 0).flatten().tolist():
            far = int(dist.argmax())  # re-seed an empty cluster with the worst-served point
            new[j], dist[far] = x[far], 0
        shift = (new - centres).square().sum(1).max()
        centres = new
        if shift <= tol:
            break
    assign, _ = nearest_centre(x, centres)
    return centres, assign


def save_centres(path: str | os.PathLike, centres: torch.Tensor, **meta) -> Path:
    """Centres as safetensors (tensor ``centres``) with JSON metadata (weights hash, K, N)."""
    from safetensors.torch import save_file

    from triagan_model.atomic import atomic_path

    out = Path(path)
    info = {"format": CENTRES_FORMAT, "meta": json.dumps(meta, default=str)}
    with atomic_path(out) as tmp:
        save_file({"centres": centres.detach().float().cpu().contiguous()}, tmp, metadata=info)
    return out


def load_centres(path: str | os.PathLike) -> tuple[torch.Tensor, dict]:
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"centres file not found: {p} (write it with `triagan clusters`)")
    with safe_open(str(p), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != CENTRES_FORMAT:
            raise ValueError(f"{p}: not a {CENTRES_FORMAT} file")
        return f.get_tensor("centres"), json.loads(meta.get("meta", "{}"))
