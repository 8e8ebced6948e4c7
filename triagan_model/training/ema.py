"""Exponential moving average of G's weights (triagan-spec "Training"; StyleGAN2-ADA's rule).

Per step of ``batch`` images taken after ``cur_nimg`` images of the stage, every parameter does
    ema <- beta * ema + (1 - beta) * param,
    beta = 0.5 ** (batch / half_life),  half_life = min(batch * S, rampup * cur_nimg)
(``EMAConfig.beta_at``) with S the steady-state half-life in steps: DeepPrivacy2's 312.5 by
default (beta 0.997784 per step), or the seed's 0.9976 per step (S = 288.5) with
``rule="seed"``; StyleGAN2's ramp-up caps the half-life at 5 % of the images seen, so the first
step copies G (beta = 0). Buffers (``w_avg``, constant noise) are copied, as StyleGAN2.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_ema(generator: nn.Module) -> nn.Module:
    """A frozen copy of ``generator`` in eval mode."""
    ema = copy.deepcopy(generator).eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: nn.Module, generator: nn.Module, beta: float) -> None:
    """ema <- lerp(param, ema, beta) for parameters; buffers copied."""
    for p_ema, p in zip(ema.parameters(), generator.parameters(), strict=True):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(ema.buffers(), generator.buffers(), strict=True):
        b_ema.copy_(b)
