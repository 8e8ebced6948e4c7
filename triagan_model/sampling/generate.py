"""Generate images from a trained generator for the samples of a manifest or one given input.

Latents are per sample: z_i comes from a generator seeded with (seed, i), i the sample's
position in manifest order, so a sample's image does not depend on the batch size. Noise is the
generator's constant noise. Outputs in OUT/:
    images/<key>.png     the generated image at the generator's resolution
    grids/grid-NNNN.png  rows of original | condition | generated (8 samples per grid)
    index.json           image_id -> key, file, size, conditioning keypoints (normalised) and
                         the box of the region to generate: what an external pose estimator
                         and `triagan evaluate --metrics oks --keypoints-results` need
COCO image ids are int(key) for FDH's integer keys, else the sample's position.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from triagan_model.networks.conditioning import build_condition
from triagan_model.sampling.truncation import (
    check_centre_rule,
    check_psi,
    truncate,
    truncate_to_centres,
)

INDEX_FORMAT = "triagan-generated"
GRID_ROWS = 8


@dataclass(frozen=True)
class Truncation:
    psi: float = 1.0  # 1 = no truncation, 0 = the centre itself; in [0, 1]
    centres: torch.Tensor | None = None  # multi-modal truncation toward k-means centres
    centre_rule: str = "nearest"  # nearest (the paper's) | index (DP2's z_idx % K)

    def __post_init__(self) -> None:
        check_psi(self.psi)
        check_centre_rule(self.centre_rule)


def sample_z(indices: list[int], z_dim: int, seed: int) -> torch.Tensor:
    """One latent per sample index, independent of batching."""
    rows = []
    for i in indices:
        h = hashlib.sha256(f"triagan-z:{seed}:{i}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(h[:8], "little") % 2**63)
        rows.append(torch.randn(z_dim, generator=gen))
    return torch.stack(rows)


@torch.no_grad()
def generate_batch(
    G: torch.nn.Module,
    batch: dict[str, Any],
    z: torch.Tensor,
    trunc: Truncation = Truncation(),
    z_indices: list[int] | None = None,
) -> torch.Tensor:
    """Composited images in [-1, 1] for a loader-style batch (img, mask, maskrcnn_mask, kp).
    ``z_indices``: the integers the latents were drawn from (``sample_z``), for the "index"
    centre rule."""
    dev = next(G.parameters()).device
    res = G.cfg.resolution
    img, mask, person = (batch[k].to(dev) for k in ("img", "mask", "maskrcnn_mask"))
    cond = build_condition(img, mask, person, batch["keypoints"].to(dev), res,
                           mode=G.cfg.conditioning_mode)  # fmt: skip
    w = G.mapping(z.to(dev))
    if trunc.centres is not None:
        w = truncate_to_centres(w, trunc.centres.to(dev), trunc.psi, trunc.centre_rule, z_indices)
    elif trunc.psi != 1.0:
        w = truncate(w, G.mapping.w_avg, trunc.psi)
    return G(cond, w=w, noise_mode="const")["img"]


def region_box(mask: np.ndarray) -> list[int]:
    """[x0, y0, x1, y1] (exclusive max) of the region to generate (mask == 0); whole image if
    there is none."""
    m = np.asarray(mask).reshape(mask.shape[-2:]) <= 0
    h, w = m.shape
    if not m.any():
        return [0, 0, w, h]
    rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def image_id(key: str, position: int) -> int:
    return int(key) if str(key).isdigit() else position


def manifest_batches(manifest: str | os.PathLike, resolution, batch_size: int, num: int | None):
    """Batches of the manifest in order, no flips, at most ``num`` samples in total."""
    from triagan_model.data.loader import build_loader

    loader = build_loader(manifest, resolution=resolution, batch_size=batch_size, seed=0,
                          shuffle=False, flip=False, infinite=False)  # fmt: skip
    seen = 0
    for batch in loader:
        if num is not None:
            batch = {k: v[: num - seen] for k, v in batch.items()}
        if len(batch["key"]):
            yield batch
        seen += len(batch["key"])
        if num is not None and seen >= num:
            return


def single_input_batch(
    image: str, mask: str, keypoints: str, resolution, person_mask: str | None = None,
    keypoint_units: str = "normalized",
) -> dict[str, Any]:  # fmt: skip
    """A one-sample batch from files: image PNG, mask PNG (nonzero = known background),
    keypoints .npy or .json (17 x [x, y, v]); the person mask defaults to the mask."""
    from PIL import Image

    from triagan_model.data import transforms as T

    def png(path: str, mode: str) -> np.ndarray:
        with Image.open(path) as im:
            return np.asarray(im.convert(mode))

    img = torch.from_numpy(png(image, "RGB").copy()).permute(2, 0, 1).float()
    m = torch.from_numpy(png(mask, "L") > 0)[None].float()
    pm = torch.from_numpy(png(person_mask, "L") > 0)[None].float() if person_mask else m.clone()
    if keypoints.endswith(".json"):
        kp = np.asarray(json.loads(Path(keypoints).read_text()), np.float32)
    else:
        kp = np.load(keypoints, allow_pickle=False)
    if kp.size != 51:
        raise ValueError(f"{keypoints}: expected 17 x [x, y, v] keypoints, got shape {kp.shape}")
    if keypoint_units == "pixels":  # pixels of the given image: normalise by its size
        kp = kp.reshape(17, 3).astype(np.float32).copy()
        kp[:, 0] /= img.shape[2]
        kp[:, 1] /= img.shape[1]
        keypoint_units = "normalized"
    kp_norm = torch.from_numpy(T.keypoints_to_normalized(kp, keypoint_units))
    sample = {"key": Path(image).stem, "img": img, "mask": m, "maskrcnn_mask": pm,
              "keypoints": kp_norm}  # fmt: skip
    if img.shape[1:] != m.shape[1:] or img.shape[1:] != pm.shape[1:]:
        raise ValueError(f"{image} and its masks differ in size")
    sample = T.to_model_space(T.resize_sample(sample, tuple(resolution)))
    batch = {k: v[None] for k, v in sample.items() if torch.is_tensor(v)}
    batch["key"] = [sample["key"]]
    return batch


def _png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_outputs(
    batches: Iterator[dict[str, Any]],
    G: torch.nn.Module,
    out: str | os.PathLike,
    *,
    trunc: Truncation,
    seed: int,
    meta: dict[str, Any],
) -> Path:
    """Generate for every batch; write images, grids and index.json (module docstring)."""
    from triagan_model.training.plots import save_grid, to_uint8

    out = Path(out)
    entries, rows, n_grid, position = [], [], 0, 0
    scale = max(1, 144 // G.cfg.resolution[0])
    for batch in batches:
        idx = list(range(position, position + len(batch["key"])))
        fake = generate_batch(G, batch, sample_z(idx, G.cfg.z_dim, seed), trunc, idx).cpu()
        for j, (key, arr) in enumerate(zip(batch["key"], to_uint8(fake), strict=True)):
            _write(out / "images" / f"{key}.png", _png_bytes(arr))
            entries.append({"image_id": image_id(key, idx[j]), "key": key,
                            "file": f"images/{key}.png", "height": arr.shape[0],
                            "width": arr.shape[1],
                            "keypoints": batch["keypoints"][j].tolist(),
                            "box": region_box(batch["mask"][j].numpy())})  # fmt: skip
        rows.append((batch["img"], batch["condition"], fake))
        position += len(batch["key"])
        while sum(len(r[0]) for r in rows) >= GRID_ROWS:
            rows, n_grid = _flush_grid(rows, out, n_grid, scale, save_grid)
    if rows:
        _flush_grid(rows, out, n_grid, scale, save_grid, final=True)
    doc = {"format": INDEX_FORMAT, "version": 1, "psi": trunc.psi, "seed": seed,
           "centre_rule": trunc.centre_rule if trunc.centres is not None else None,
           "resolution": list(G.cfg.resolution), **meta, "images": entries}  # fmt: skip
    _write(out / "index.json", (json.dumps(doc) + "\n").encode())
    return out / "index.json"


def _flush_grid(rows, out: Path, n: int, scale: int, save_grid, final: bool = False):
    cols = [torch.cat([r[c] for r in rows]) for c in range(3)]
    take = len(cols[0]) if final else GRID_ROWS
    save_grid([c[:take] for c in cols], out / "grids" / f"grid-{n:04d}.png", scale=scale)
    rest = [tuple(c[take:] for c in cols)] if len(cols[0]) > take else []
    return rest, n + 1
