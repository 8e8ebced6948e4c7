"""What D sees: Gaussian blur fading out, and differentiable augmentation (triagan-spec
"Discriminator", last bullet).

Blur: the reference's (StyleGAN3's) filter, taps exp2(-(x / sigma)^2) for |x| <= round(3 sigma),
normalised, applied separably (along x, then y) to real and generated images alike; sigma
fades linearly from ``blur_init_sigma`` to 0 over the first ``fade_kimg`` of each stage. The
border is zero-padded by default (``border="zeros"``), as the reference (DeepPrivacy2's ``blur``
calls StyleGAN3's ``upfirdn2d.filter2d``, which pads with zeros, on the [-1, 1] image): a band
of round(3 sigma) pixels at the edges is pulled towards grey (0), most at the small stages.
``border="replicate"`` (this project's earlier rule, a named option) repeats the edge pixels
instead, keeping a constant image constant.

DiffAugment (Zhao et al. 2020) colour and cutout, applied per feature network to its normalised
input by ``ProjectedDiscriminator.forward(img, augment=...)``, as Projected GAN and the
reference: brightness +U(-0.5, 0.5), saturation x U(0, 2), contrast x U(0.5, 1.5); cutout
zeroes one rectangle per image, 0.2 of each side (Projected GAN's ratio; DiffAugment's default
is 0.5). All draws come from the global torch RNG (part of the resumable training state).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

CUTOUT_RATIO = 0.2  # Projected GAN's DiffAugment cutout size (fraction of each side)
REFERENCE_STAGE_KIMG = 50_000.0  # Configs A-D: 50M images per stage


def blur_sigma(cur_nimg: int, init_sigma: float, fade_kimg: float) -> float:
    """Linear fade from init_sigma at the stage's first image to 0 after fade_kimg."""
    if fade_kimg <= 0:
        return 0.0
    return init_sigma * max(0.0, 1.0 - cur_nimg / (fade_kimg * 1000))


BLUR_BORDERS = ("zeros", "replicate")


def blur(img: torch.Tensor, sigma: float, border: str = "zeros") -> torch.Tensor:
    """Separable Gaussian-like blur (the reference's taps); identity when round(3 sigma) == 0."""
    if border not in BLUR_BORDERS:
        raise ValueError(f"unknown blur border {border!r}; known: {BLUR_BORDERS}")
    radius = int(round(sigma * 3))
    if radius == 0:
        return img
    x = torch.arange(-radius, radius + 1, device=img.device, dtype=torch.float32)
    taps = (x / sigma).square().neg().exp2()
    taps = (taps / taps.sum()).to(img.dtype)
    c = img.shape[1]
    mode = "constant" if border == "zeros" else "replicate"
    out = F.pad(img, (radius, radius, radius, radius), mode=mode)
    out = F.conv2d(out, taps.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, taps.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _rand(x: torch.Tensor) -> torch.Tensor:
    return torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device)


def color(x: torch.Tensor) -> torch.Tensor:
    x = x + (_rand(x) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_rand(x) * 2) + mean
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (_rand(x) + 0.5) + mean


def cutout(x: torch.Tensor, ratio: float = CUTOUT_RATIO) -> torch.Tensor:
    """Zero one rectangle of (ratio * H, ratio * W) per image at a uniformly drawn centre."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    if ch == 0 or cw == 0:
        return x
    oy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=x.device)
    ox = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=x.device)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    ry, rx = ys - oy + ch // 2, xs - ox + cw // 2  # position inside the rectangle
    inside = (ry >= 0) & (ry < ch) & (rx >= 0) & (rx < cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


POLICIES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"color": color, "cutout": cutout}


def diff_augment(policy: tuple[str, ...]) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The augmentation callable for D (None when the policy is empty)."""
    unknown = [p for p in policy if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown DiffAugment policies {unknown}; known: {sorted(POLICIES)}")
    if not policy:
        return None
    fns = [POLICIES[p] for p in policy]

    def augment(x: torch.Tensor) -> torch.Tensor:
        for fn in fns:
            x = fn(x)
        return x

    return augment


def stage_blur_fade_kimg(blur_fade_kimg: float, stage_kimg: float, tiny: bool) -> float:
    """The fade length of one stage: the configured 4M images, scaled for tiny configs.

    Tiny configs show D a few dozen images per stage, so the fade keeps the paper's proportion
    of a stage instead: 4M of Config A-D's 50M images per stage (8 %).
    """
    if not tiny:
        return blur_fade_kimg
    return blur_fade_kimg * stage_kimg / REFERENCE_STAGE_KIMG
