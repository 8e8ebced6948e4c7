"""Plan, generate and paste one frame's persons (anonymize-spec 3.6, 4.2 step 6).

Persons are processed in DP2's order, mask area ascending (ties by y0, x0, input index), so the
largest person is pasted last, on top. DP2 crops every person from the image as already
anonymised by the persons before it; here a person's *layer* is 1 + the highest layer of the
earlier persons whose expanded boxes intersect its own, and one batched generator call runs per
layer after the earlier layers are pasted. Persons in one layer have disjoint boxes, so their
crops read no pixel another member of the layer writes: batched equals one by one, exactly.

Paste-back as DP2: the generated crop ((out + 1) / 2, clamped, x 255) is resized to the box
BICUBIC with antialias, the crop's known mask NEAREST, the padding stripped, and the pixels the
mask marks unknown replaced by round(clamp(., 0, 255)). Every other pixel keeps its value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from triagan_model.anonymize.boxes import (
    MIN_BOX_AREA,
    TARGET_HW,
    box_area,
    boxes_intersect,
    expand_box,
    mask_box,
)
from triagan_model.anonymize.crops import (
    CropMasks,
    crop_keypoints,
    crop_masks,
    cut_pad_resize,
    dilate,
    dilation_radius,
)


@dataclass
class Person:
    """One detected person in a frame: a full-frame boolean mask, optional (17, 3) keypoints in
    frame pixels with scores, the detector's score; `track` is set by the video tracker."""

    mask: np.ndarray
    keypoints: np.ndarray | None = None
    score: float = 1.0
    track: int | None = None
    held: bool = False


@dataclass
class Planned:
    """A person after expansion and filtering, in processing order."""

    index: int  # position in the frame's input list
    key: str  # identity key (latent)
    tight: tuple[int, int, int, int] | None
    box: tuple[int, int, int, int] | None  # expanded crop box
    area: int
    status: str = "anonymized"  # anonymized | held | too-small
    masks: CropMasks | None = None
    keypoints: np.ndarray | None = None  # (17, 3) normalised to the box, v in {0, 1}
    layer: int = 0
    extra: dict = field(default_factory=dict)


# synthesise(batch) -> (B, 3, h, w) float in [-1, 1]; batch holds "img" (B, 3, 288, 160)
# float in [-1, 1], "mask" and "maskrcnn_mask" (B, 1, 288, 160) float, "keypoints" (B, 17, 3)
# normalised, "keys" list[str].
Synthesise = Callable[[dict], torch.Tensor]


def plan_persons(
    persons: Sequence[Person],
    image_hw: tuple[int, int],
    keys: Sequence[str],
    *,
    keypoint_threshold: float = 0.3,
    min_box_area: int = MIN_BOX_AREA,
    target_hw: tuple[int, int] = TARGET_HW,
) -> list[Planned]:
    """Expand, filter and order the persons; too-small ones stay in the list (status)."""
    out = []
    for i, (p, key) in enumerate(zip(persons, keys, strict=True)):
        m = np.asarray(p.mask, bool)
        tight, area = mask_box(m), int(m.sum())
        plan = Planned(i, key, tight, None, area, status="held" if p.held else "anonymized")
        if tight is not None:
            plan.box = expand_box(tight, image_hw, area, target_hw)
        if tight is None or box_area(plan.box) < min_box_area:
            plan.status = "too-small"
        else:
            plan.masks = crop_masks(m, plan.box, target_hw)
            if plan.masks.mask.all():
                plan.status = "too-small"  # nothing left to generate at 288x160
            kp = p.keypoints if p.keypoints is not None else np.zeros((17, 3), np.float32)
            plan.keypoints = crop_keypoints(kp, plan.box, keypoint_threshold)
        out.append(plan)
    out.sort(key=lambda q: (q.area, q.tight[1] if q.tight else 0, q.tight[0] if q.tight else 0,
                            q.index))  # fmt: skip
    _assign_layers([q for q in out if q.status != "too-small"])
    return out


def _assign_layers(plans: list[Planned]) -> None:
    for j, q in enumerate(plans):
        q.layer = 1 + max((p.layer for p in plans[:j] if boxes_intersect(p.box, q.box)),
                          default=-1)  # fmt: skip


def paste(image: np.ndarray, box, generated: torch.Tensor, known: np.ndarray) -> None:
    """Paste a generated crop (3, h, w) float in [0, 255] into `image` (H, W, 3) uint8, in
    place, where the crop's known mask (288, 160) bool is False."""
    hgt, wid = image.shape[:2]
    x0, y0, x1, y1 = box
    size = (y1 - y0, x1 - x0)
    g = generated.float()[None]
    if tuple(g.shape[-2:]) != size:
        g = F.interpolate(g, size=size, mode="bicubic", align_corners=False, antialias=True)
    m = torch.from_numpy(np.ascontiguousarray(known)).float()[None, None]
    m = F.interpolate(m, size=size, mode="nearest")[0, 0] > 0.5
    px0, py0, px1, py1 = max(-x0, 0), max(-y0, 0), max(x1 - wid, 0), max(y1 - hgt, 0)
    g = g[0, :, py0 : size[0] - py1, px0 : size[1] - px1]
    m = m[py0 : size[0] - py1, px0 : size[1] - px1]
    region = image[max(y0, 0) : min(y1, hgt), max(x0, 0) : min(x1, wid)]
    new = g.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    sel = ~m.numpy()
    region[sel] = new[sel]


def _crop_batch(image: np.ndarray, plans: list[Planned], target_hw, rule: str) -> dict:
    im = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    imgs = torch.stack([cut_pad_resize(im, q.box, target_hw, rule) for q in plans]).float()

    def stack(name):  # noqa: E306
        return torch.stack([torch.from_numpy(getattr(q.masks, name)) for q in plans])[:, None]

    return {
        "img": imgs / 127.5 - 1.0,
        "mask": stack("mask").float(),
        "maskrcnn_mask": stack("maskrcnn_mask").float(),
        "keypoints": torch.from_numpy(np.stack([q.keypoints for q in plans])),
        "keys": [q.key for q in plans],
    }


def compose(
    image: np.ndarray,
    plans: list[Planned],
    synthesise: Synthesise,
    *,
    batch_size: int = 16,
    target_hw: tuple[int, int] = TARGET_HW,
    timings: dict | None = None,
    crop_rule: str = "reference",
) -> np.ndarray:
    """A new image with every planned (not too-small) person replaced; `image` is not changed."""
    import time

    out = np.array(image, dtype=np.uint8, copy=True)
    todo = [q for q in plans if q.status != "too-small"]
    for layer in sorted({q.layer for q in todo}):
        members = [q for q in todo if q.layer == layer]
        for start in range(0, len(members), batch_size):
            part = members[start : start + batch_size]
            t0 = time.perf_counter()
            batch = _crop_batch(out, part, target_hw, crop_rule)
            t1 = time.perf_counter()
            gen = synthesise(batch).detach().float().cpu()
            gen = (gen + 1).div(2).clamp(0, 1).mul(255)
            t2 = time.perf_counter()
            for q, g in zip(part, gen, strict=True):
                paste(out, q.box, g, q.masks.mask)
            t3 = time.perf_counter()
            if timings is not None:
                for k, dt in (("crop", t1 - t0), ("generate", t2 - t1), ("paste", t3 - t2)):
                    timings[k] = timings.get(k, 0.0) + dt
    return out


SMALL_PERSON_POLICIES = ("blur", "pixelate", "maskout", "keep")


def _gaussian_blur(image: np.ndarray, sigma: float = 7.0, kernel: int = 21) -> np.ndarray:
    """DP2's blur baseline (sigma 7, kernel 21), reflect padding, separable."""
    r = kernel // 2
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(x * x) / (2 * sigma * sigma))
    k = k / k.sum()
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()[None]
    pad_h, pad_w = min(r, t.shape[-2] - 1), min(r, t.shape[-1] - 1)
    t = F.pad(t, (pad_w, pad_w, pad_h, pad_h), mode="reflect") if pad_h and pad_w else t
    c = t.shape[1]
    kh = k[r - pad_h : r + pad_h + 1].view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    kw = k[r - pad_w : r + pad_w + 1].view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    t = F.conv2d(F.conv2d(t, kh, groups=c), kw, groups=c)
    return t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def small_person_region(mask: np.ndarray, box, target_hw=TARGET_HW) -> np.ndarray:
    """The mask dilated by the crop's dilation radius in frame pixels (at least 1)."""
    height = (box[3] - box[1]) if box is not None else 1
    radius = max(1, int(round(dilation_radius(target_hw) * height / target_hw[0])))
    return dilate(np.asarray(mask, bool), radius)


def apply_small_person(image: np.ndarray, mask: np.ndarray, box, policy: str) -> None:
    """Obscure a person too small for the generator, in place, by `policy`."""
    if policy == "keep" or not np.asarray(mask).any():
        return
    region = small_person_region(mask, box)
    ys, xs = np.nonzero(region)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    if policy == "maskout":
        image[region] = 128
        return
    if policy == "blur":
        m = 11  # the kernel's reach, so the blur sees real context around the person
        cy0, cx0 = max(0, y0 - m), max(0, x0 - m)
        sub = image[cy0 : y1 + m, cx0 : x1 + m]
        blurred = _gaussian_blur(sub)
        sel = region[cy0 : y1 + m, cx0 : x1 + m]
        sub[sel] = blurred[sel]
        return
    if policy == "pixelate":  # an 8x8 grid of cell means over the region's box
        sub = image[y0:y1, x0:x1]
        ry = np.linspace(0, y1 - y0, 9).astype(int)
        rx = np.linspace(0, x1 - x0, 9).astype(int)
        out = sub.copy()
        for a in range(8):
            for b in range(8):
                cell = sub[ry[a] : ry[a + 1], rx[b] : rx[b + 1]]
                if cell.size:
                    out[ry[a] : ry[a + 1], rx[b] : rx[b + 1]] = cell.reshape(-1, 3).mean(0)
        sel = region[y0:y1, x0:x1]
        sub[sel] = out[sel]
        return
    raise ValueError(f"unknown small-person policy {policy!r}; one of {SMALL_PERSON_POLICIES}")
