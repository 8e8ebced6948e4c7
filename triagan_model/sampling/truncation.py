"""Truncation of w (triagan-spec "Sampling").

- Toward ``w_avg``: w' = w_avg + psi (w - w_avg) (psi 1 = none, psi 0 = the average).
- Multi-modal (Self-Distilled StyleGAN, Mokady et al. 2022): k-means centres of many mapped w;
  w' = c + psi (w - c), the centre c chosen by ``centre_rule``: ``"nearest"`` (the default, the
  paper's and Self-Distilled StyleGAN's rule: the centre nearest to w) or ``"index"``
  (DeepPrivacy2's anonymiser: ``centres[z_idx % K]``, z_idx the integer the sample's latent was
  drawn from, so the centre is independent of w).
- psi must lie in [0, 1]: DeepPrivacy2 clamps psi to [0, 1] without a word
  (``dp2/generator/base.py``); here a psi outside is refused (``check_psi``, exit 2 in the CLI)
  so that a typo never silently samples at another truncation.

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
CENTRE_RULES: tuple[str, ...] = ("nearest", "index")


def check_psi(psi: float) -> float:
    """``psi`` if 0 <= psi <= 1, else a ValueError (DeepPrivacy2 would clamp it silently)."""
    if not 0.0 <= float(psi) <= 1.0:  # also refuses NaN
        raise ValueError(
            f"truncation psi {psi} is outside [0, 1] (1 = none, 0 = the centre); DeepPrivacy2 "
            f"clamps it to {min(max(float(psi), 0.0), 1.0)}: pass that value if you meant it"
        )
    return float(psi)


def check_centre_rule(rule: str) -> str:
    if rule not in CENTRE_RULES:
        raise ValueError(f"unknown centre rule {rule!r}; one of {CENTRE_RULES}")
    return rule


def truncate(w: torch.Tensor, w_avg: torch.Tensor, psi: float) -> torch.Tensor:
    """w_avg + psi (w - w_avg)."""
    return w_avg.to(w.dtype).lerp(w, check_psi(psi))


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


def centre_indices(
    w: torch.Tensor,
    centres: torch.Tensor,
    centre_rule: str = "nearest",
    z_indices: torch.Tensor | list[int] | None = None,
) -> torch.Tensor:
    """(N,) index of the centre each w is truncated toward (module docstring)."""
    if check_centre_rule(centre_rule) == "nearest":
        return nearest_centre(w, centres)[0]
    if z_indices is None:
        raise ValueError("centre rule 'index' needs the latents' integer indices (z_indices)")
    z_idx = torch.as_tensor(z_indices, dtype=torch.long, device=w.device).reshape(-1)
    if z_idx.shape[0] != w.shape[0]:
        raise ValueError(f"{z_idx.shape[0]} z_indices for {w.shape[0]} latents")
    return z_idx.remainder(centres.shape[0])  # DP2: z_idx % len(w_centers), never negative


def truncate_to_centres(
    w: torch.Tensor,
    centres: torch.Tensor,
    psi: float,
    centre_rule: str = "nearest",
    z_indices: torch.Tensor | list[int] | None = None,
) -> torch.Tensor:
    """Multi-modal truncation: w' = c + psi (w - c), c chosen by ``centre_rule``."""
    psi = check_psi(psi)
    idx = centre_indices(w, centres, centre_rule, z_indices)
    return centres.to(w.device, w.dtype)[idx].lerp(w, psi)


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


def load_centres(path: str | os.PathLike, w_dim: int | None = None) -> tuple[torch.Tensor, dict]:
    """(centres (K, D), metadata) of a ``save_centres`` file; every defect of the file is a
    ValueError naming it (a FileNotFoundError when it is absent); with ``w_dim``, D must match
    the generator's (a mismatch would otherwise fail deep inside the mapping network)."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"centres file not found: {p} (write it with `triagan clusters`)")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != CENTRES_FORMAT:
                raise ValueError(f"{p}: not a {CENTRES_FORMAT} file")
            if "centres" not in set(f.keys()):
                raise ValueError(f"{p}: has no tensor 'centres'")
            centres, info = f.get_tensor("centres"), json.loads(meta.get("meta", "{}"))
    except (SafetensorError, json.JSONDecodeError, OSError) as exn:
        raise ValueError(
            f"{p}: unreadable centres file ({type(exn).__name__}: {exn}); write it again with "
            "`triagan clusters` (or `triagan import-dp2`)"
        ) from None
    if centres.ndim != 2 or centres.shape[0] == 0:
        raise ValueError(f"{p}: centres have shape {tuple(centres.shape)}, not (K, D)")
    if w_dim is not None and centres.shape[1] != w_dim:
        raise ValueError(
            f"{p}: centres are {centres.shape[1]}-dimensional but the generator's w has "
            f"{w_dim} dimensions; use the centres computed for these weights (`triagan clusters`)"
        )
    return centres, info
