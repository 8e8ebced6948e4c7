"""The training recipe's reference-exact defaults against the options they replaced: how much
each changes what it computes (figures for the README's "Deviations" notes).

- masked hinge: D's total loss with DeepPrivacy2's divisor ("reference") over the project's
  earlier one ("own-positions"), by the share of the image to generate. Logits come from the
  E-tiny discriminator (random heads, random feature networks: both feature-network kinds, the
  reference's logit-map sizes) on random images, with an elliptic "person" region of growing
  area; N_f / N_r is the share of generated logit positions after D's max-pooling of the mask.
- D-input blur: zero padding (the reference) against replicate padding, sigma 4 (a stage's first
  image) to 1, at every stage resolution: mean |difference| over the image and in the border band
  of round(3 sigma) pixels, on random images in [-1, 1]; and what zero padding leaves of a
  constant image of value 1 at sigma 4 (replicate padding leaves it at 1).
- EMA: beta per step and half-life in steps of both rules at Config E's batches, and the step
  from which the ramp-up no longer caps the half-life.
- FID_CLIP input: DeepPrivacy2's preprocessing against the earlier antialiased one on random
  288x160 images (units: the normalised CLIP input).

    python bench/recipe.py
"""

from __future__ import annotations

import math
import warnings


def _ellipse_mask(hw: tuple[int, int], share: float, b: int):
    """1 = known; an axis-aligned ellipse with ``share`` of the image unknown."""
    import torch

    h, w = hw
    ys = (torch.arange(h) + 0.5 - h / 2).view(h, 1) / (h / 2)
    xs = (torch.arange(w) + 0.5 - w / 2).view(1, w) / (w / 2)
    r = math.sqrt(share / (math.pi / 4))  # ellipse of radii r * (h/2, w/2): area share
    inside = (ys.square() + xs.square()) <= r * r
    return (~inside).float().expand(b, 1, h, w).clone()


def masked_hinge(hw=(72, 40), b=4) -> list[str]:
    import torch

    from triagan_model.configs import get_config
    from triagan_model.networks.discriminator import ProjectedDiscriminator
    from triagan_model.training.losses import generated_positions, masked_hinge_d_terms

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        D = ProjectedDiscriminator(get_config("E-tiny").discriminator).eval()
    gen = torch.Generator().manual_seed(0)
    real, fake = (torch.rand(b, 3, *hw, generator=gen) * 2 - 1 for _ in range(2))
    with torch.no_grad():
        rl, fl = D(real), D(fake)
    lines = [
        f"masked hinge at {hw[0]}x{hw[1]}, E-tiny D (random), batch {b}:",
        "  share to generate | N_f/N_r (per network) | total reference / own-positions",
    ]
    for share in (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7):
        mask = _ellipse_mask(hw, share, b)
        ratios = []
        for maps in fl:
            n_f = sum(generated_positions(mask, tuple(m.shape[-2:])).sum() for m in maps)
            n_r = sum(m.numel() for m in maps) - n_f
            ratios.append(f"{float(n_f / n_r):.2f}")
        ref = sum(masked_hinge_d_terms(rl, fl, mask, "reference"))
        own = sum(masked_hinge_d_terms(rl, fl, mask, "own-positions"))
        lines.append(f"  {share:17.2f} | {', '.join(ratios):21} | {float(ref / own):.3f}")
    return lines


def blur_border() -> list[str]:
    import torch

    from triagan_model.training.augment import blur

    gen = torch.Generator().manual_seed(0)
    lines = ["D-input blur, zero padding vs replicate, mean |difference| (image / border band):"]
    for h, w in ((18, 10), (36, 20), (72, 40), (144, 80), (288, 160)):
        img = torch.rand(8, 3, h, w, generator=gen) * 2 - 1
        cells = []
        for sigma in (4.0, 2.0, 1.0):
            r = int(round(3 * sigma))
            d = (blur(img, sigma) - blur(img, sigma, "replicate")).abs()
            band = torch.ones(h, w, dtype=torch.bool)
            band[r : h - r, r : w - r] = False
            edge = float(d[..., band].mean())
            cells.append(f"sigma {sigma:g}: {float(d.mean()):.3f} / {edge:.3f}")
        flat = blur(torch.ones(1, 3, h, w), 4.0)  # a constant image: replicate keeps it at 1
        cells.append(f"constant image at sigma 4: mean {float(flat.mean()):.3f}, "
                     f"corner {float(flat[0, 0, 0, 0]):.3f}")  # fmt: skip
        lines.append(f"  {h}x{w}: " + ", ".join(cells))
    return lines


def ema() -> list[str]:
    from triagan_model.configs import EMAConfig

    lines = ["EMA steady state (beta per step, half-life in steps) and end of the ramp-up:"]
    for rule in ("reference", "seed"):
        cfg = EMAConfig(rule=rule)
        beta = cfg.beta_at(10**15, 1024)
        steps = math.log(0.5) / math.log(beta)
        ramp = steps / cfg.rampup  # half-life capped while rampup * nimg < batch * steps
        lines.append(f"  {rule:9}: beta {beta:.6f}, half-life {steps:.1f} steps (any batch); "
                     f"ramp-up until step {ramp:.0f}")  # fmt: skip
    return lines


def fid_clip_input() -> list[str]:
    import torch

    from triagan_model.metrics.fid import clip_preprocess_antialias, clip_preprocess_dp2

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 288, 160, generator=gen) * 2 - 1
    smooth = torch.nn.functional.interpolate(torch.rand(8, 3, 18, 10, generator=gen) * 2 - 1,
                                             size=(288, 160), mode="bilinear")  # fmt: skip
    lines = ["FID_CLIP input, DP2's preprocessing vs the antialiased one (normalised units):"]
    for name, img in (("random pixels", x), ("smooth images", smooth)):
        d = (clip_preprocess_dp2(img) - clip_preprocess_antialias(img)).abs()
        lines.append(f"  {name}: mean {float(d.mean()):.3f}, max {float(d.max()):.3f}")
    return lines


def main() -> None:
    import torch

    torch.set_num_threads(2)
    for part in (masked_hinge, blur_border, ema, fid_clip_input):
        print("\n".join(part()))


if __name__ == "__main__":
    main()
