"""Adversarial losses as small objects (triagan-spec "Losses"; edm2's loss classes): hinge (Config
A) and masked hinge (B on). ``loss.d_loss(D, real, fake, mask)`` and ``loss.g_loss(D, fake)`` call
``D`` themselves, so the loop never switches on the loss kind.

``D(img)`` returns its logits grouped as the reference's projected D does: one list per feature
network (config order), each that network's logit maps (B, 1, h, w). As DeepPrivacy2
(``dp2/loss/projected_gan_loss.py``), each feature network's maps are pooled into one loss term
(every logit position of every map counts once) and the networks' terms are summed.

Hinge, per feature network with logits l over all positions p of its maps:
    L_D = mean_p relu(1 - l_real) + mean_p relu(1 + l_fake)

Masked hinge: the generated image is composited (its known region IS the real image), so D is
asked to call the known region of a generated image real. A logit position is "generated"
(f = 1) when any pixel under it is unknown: f = adaptive_max_pool(1 - mask) at the map's size,
r = 1 - f. With N_f = sum f and N_r = sum r over the network's maps and the batch:
    L_D = sum f relu(1 + l_fake) / N_f                       generated region of fakes: fake
        + sum r relu(1 - l_fake) / (2 N_r)                   known region of fakes: real
        + sum r relu(1 - l_real) / (2 N_r)                   known region of reals: real
        + sum f relu(1 - l_real) / N_r                       person region of reals: real
The last divisor is DeepPrivacy2's (``masked_hinge_D_loss``): N_r, the count of REAL positions,
although the term sums over generated ones, so the term weighs N_f / N_r against the others.
``norm="own-positions"`` (this project's earlier rule, a named option) divides it by N_f
instead, making every term a mean over its own positions; the two totals differ by the size of
the region to generate (``bench/recipe.py`` measures the ratio). N_f and N_r are clamped to >= 1:
DeepPrivacy2 divides by them as they are, so a batch without any generated (or any known) logit
position gives it a NaN (or inf) loss, and here a finite one.

G loss, both: -mean_p l_fake per feature network, summed (no R1, no path length).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Logits = list[list[torch.Tensor]]  # per feature network, its logit maps (D's output)
DiscriminatorFn = Callable[[torch.Tensor], Logits]
MASKED_HINGE_NORMS = ("reference", "own-positions")


@dataclass
class DLoss:
    """D's loss terms (their sum is what D minimises) and the mean logits, for the statistics."""

    real: torch.Tensor
    fake: torch.Tensor
    real_score: torch.Tensor
    fake_score: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.real + self.fake


def _flat(maps: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([m.float().flatten(1) for m in maps], 1)


def _mean_logit(logits: Logits) -> torch.Tensor:
    return torch.cat([m.detach().float().flatten() for maps in logits for m in maps]).mean()


def hinge_d_terms(real: Logits, fake: Logits) -> tuple[torch.Tensor, torch.Tensor]:
    """(real term, fake term) of the plain hinge loss, summed over feature networks."""
    real_loss = sum(F.relu(1 - _flat(r)).mean() for r in real)
    fake_loss = sum(F.relu(1 + _flat(f)).mean() for f in fake)
    return real_loss, fake_loss


def generated_positions(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """1 where a logit position sees any unknown pixel (mask: 1 = known), else 0."""
    return F.adaptive_max_pool2d(1 - mask.float(), output_size=size)


def masked_hinge_d_terms(
    real: Logits, fake: Logits, mask: torch.Tensor, norm: str = "reference"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(real term, fake term) of the masked hinge loss (module docstring), summed over networks."""
    if norm not in MASKED_HINGE_NORMS:
        raise ValueError(f"unknown masked hinge norm {norm!r}; known: {MASKED_HINGE_NORMS}")
    real_loss = fake_loss = torch.zeros((), device=mask.device)
    for r_maps, f_maps in zip(real, fake, strict=True):
        gen = [generated_positions(mask, tuple(m.shape[-2:])) for m in f_maps]
        n_f = sum(g.sum() for g in gen).clamp(min=1)
        n_r = sum((1 - g).sum() for g in gen).clamp(min=1)
        fourth = n_r if norm == "reference" else n_f
        for rl, fl, f in zip(r_maps, f_maps, gen, strict=True):
            rl, fl, r = rl.float(), fl.float(), 1 - f
            fake_loss = fake_loss + (F.relu(1 + fl) * f).sum() / n_f
            real_loss = real_loss + (F.relu(1 - fl) * r).sum() / (2 * n_r)
            real_loss = real_loss + (F.relu(1 - rl) * r).sum() / (2 * n_r)
            real_loss = real_loss + (F.relu(1 - rl) * f).sum() / fourth
    return real_loss, fake_loss


def g_terms(fake: Logits) -> torch.Tensor:
    """-mean(D logits) per feature network, summed."""
    return sum(-_flat(f).mean() for f in fake)


class HingeLoss:
    """Config A's hinge loss; G: -mean(D logits)."""

    def d_loss(
        self, D: DiscriminatorFn, real: torch.Tensor, fake: torch.Tensor, mask: torch.Tensor
    ) -> DLoss:
        # reals first, then fakes: the order D draws its augmentation in (as the reference)
        real_logits, fake_logits = D(real), D(fake)
        r, f = self.terms(real_logits, fake_logits, mask)
        return DLoss(r, f, _mean_logit(real_logits), _mean_logit(fake_logits))

    def terms(
        self, real: Logits, fake: Logits, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return hinge_d_terms(real, fake)

    def g_loss(self, D: DiscriminatorFn, fake: torch.Tensor) -> torch.Tensor:
        return g_terms(D(fake))


class MaskedHingeLoss(HingeLoss):
    """Config B on: the known region of a generated image counts as real (module docstring)."""

    def __init__(self, norm: str = "reference") -> None:
        if norm not in MASKED_HINGE_NORMS:
            raise ValueError(f"unknown masked hinge norm {norm!r}; known: {MASKED_HINGE_NORMS}")
        self.norm = norm

    def terms(
        self, real: Logits, fake: Logits, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return masked_hinge_d_terms(real, fake, mask, self.norm)


LOSS_KINDS = ("hinge", "masked-hinge")


def build_loss(kind: str, masked_hinge_norm: str = "reference") -> HingeLoss:
    """The loss object of a ``LossConfig`` (``kind``, ``masked_hinge_norm``)."""
    if kind == "hinge":
        return HingeLoss()
    if kind == "masked-hinge":
        return MaskedHingeLoss(masked_hinge_norm)
    raise ValueError(f"unknown loss kind {kind!r}; known: {LOSS_KINDS}")
