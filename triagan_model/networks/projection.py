"""Frozen random projection after a feature network (Projected GAN; triagan-spec
"Structure that reproduces the discriminator's 5.3M trainable parameters").

Cross-channel mixing (CCM): one 1x1 conv per map, to ``cout * (1, 2, 4, 8)`` channels
(64/128/256/512). Cross-scale mixing (CSM), from the coarsest map up: each step adds the finer
channel-mixed map, upsamples x2 (bilinear, align_corners=True as the reference) and applies a 1x1
conv that halves the channels (the finest keeps them). Outputs: ``cout * (1, 1, 2, 4)`` channels
(64, 64, 128, 256) at twice each input map's resolution, finest first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FusionBlock(nn.Module):
    def __init__(self, channels: int, halve: bool) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(channels, channels // 2 if halve else channels, 1)

    def forward(self, x: torch.Tensor, finer: torch.Tensor | None) -> torch.Tensor:
        if finer is not None:
            x = x + finer
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class RandomProjection(nn.Module):
    def __init__(self, in_channels: tuple[int, ...], cout: int = 64) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"the projection takes four feature maps, got {len(in_channels)}")
        mixed = [cout, cout * 2, cout * 4, cout * 8]
        self.ccm = nn.ModuleList(
            nn.Conv2d(c, m, 1) for c, m in zip(in_channels, mixed, strict=True)
        )
        self.csm = nn.ModuleList(FusionBlock(m, halve=i > 0) for i, m in enumerate(mixed))
        self.out_channels = (cout, cout, cout * 2, cout * 4)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        mixed = [conv(f) for conv, f in zip(self.ccm, feats, strict=True)]
        out: list[torch.Tensor] = [None] * 4  # type: ignore[list-item]
        out[3] = self.csm[3](mixed[3], None)
        for i in (2, 1, 0):
            out[i] = self.csm[i](out[i + 1], mixed[i])
        return out
