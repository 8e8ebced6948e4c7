"""Adversarial losses (triagan-spec "Losses"): hinge, masked hinge, and G's -mean(D logits).

D returns one logit map per head, 4 heads per feature network (``groups`` = maps per network,
config order). As the reference, each feature network's maps are pooled into one loss term
(every logit position of every map counts once) and the networks' terms are summed.

Hinge (Config A), per feature network with logits l over all positions p of its maps:
    L_D = mean_p relu(1 - l_real) + mean_p relu(1 + l_fake)

Masked hinge (Config B on): the generated image is composited (its known region IS the real
image), so D is asked to call the known region of a generated image real. A logit position is
"generated" (f = 1) when any pixel under it is unknown: f = adaptive_max_pool(1 - mask) at the
map's size (the reference's rule), r = 1 - f. With N_f = sum f and N_r = sum r over the maps
and the batch:
    L_D = sum f relu(1 + l_fake) / N_f                       generated region of fakes: fake
        + sum r relu(1 - l_fake) / (2 N_r)                   known region of fakes: real
        + sum r relu(1 - l_real) / (2 N_r)                   known region of reals: real
        + sum f relu(1 - l_real) / N_f                       person region of reals: real
The reference divides the last term by N_r (a mean over the wrong set of positions, which
weights it by N_f / N_r); here every term is a mean over its own positions. N_f, N_r are
clamped to >= 1 (a batch without unknown pixels).

G loss, both variants: -mean_p l_fake per feature network, summed (no R1, no path length).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _split(logits: list[torch.Tensor], groups: list[int]) -> list[list[torch.Tensor]]:
    if sum(groups) != len(logits):
        raise ValueError(f"{len(logits)} logit maps do not split into groups {groups}")
    out, i = [], 0
    for n in groups:
        out.append([t.float() for t in logits[i : i + n]])
        i += n
    return out


def _flat(maps: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([m.flatten(1) for m in maps], 1)


def hinge_d_loss(
    real: list[torch.Tensor], fake: list[torch.Tensor], groups: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(real term, fake term) of the plain hinge loss, summed over feature networks."""
    real_loss = sum(F.relu(1 - _flat(r)).mean() for r in _split(real, groups))
    fake_loss = sum(F.relu(1 + _flat(f)).mean() for f in _split(fake, groups))
    return real_loss, fake_loss


def generated_positions(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """1 where a logit position sees any unknown pixel (mask: 1 = known), else 0."""
    return F.adaptive_max_pool2d(1 - mask.float(), output_size=size)


def masked_hinge_d_loss(
    real: list[torch.Tensor], fake: list[torch.Tensor], mask: torch.Tensor, groups: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(real term, fake term) of the masked hinge loss (module docstring), summed over networks."""
    real_loss = fake_loss = torch.zeros((), device=mask.device)
    for r_maps, f_maps in zip(_split(real, groups), _split(fake, groups), strict=True):
        gen = [generated_positions(mask, tuple(m.shape[-2:])) for m in f_maps]
        n_f = sum(g.sum() for g in gen).clamp(min=1)
        n_r = sum((1 - g).sum() for g in gen).clamp(min=1)
        for rl, fl, f in zip(r_maps, f_maps, gen, strict=True):
            r = 1 - f
            fake_loss = fake_loss + (F.relu(1 + fl) * f).sum() / n_f
            real_loss = real_loss + (F.relu(1 - fl) * r).sum() / (2 * n_r)
            real_loss = real_loss + (F.relu(1 - rl) * r).sum() / (2 * n_r)
            real_loss = real_loss + (F.relu(1 - rl) * f).sum() / n_f
    return real_loss, fake_loss


def d_loss(
    kind: str,
    real: list[torch.Tensor],
    fake: list[torch.Tensor],
    mask: torch.Tensor,
    groups: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    if kind == "hinge":
        return hinge_d_loss(real, fake, groups)
    if kind == "masked-hinge":
        return masked_hinge_d_loss(real, fake, mask, groups)
    raise ValueError(f"unknown loss kind {kind!r}")


def g_loss(fake: list[torch.Tensor], groups: list[int]) -> torch.Tensor:
    """-mean(D logits) per feature network, summed."""
    return sum(-_flat(f).mean() for f in _split(fake, groups))
