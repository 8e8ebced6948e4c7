"""TriA-GAN generator: a style-modulated U-Net (triagan-spec "Generator" and "Structure that
reproduces the seed's parameter counts exactly").

Levels are indexed from the LOWEST resolution up (``encoder.levels.0`` and ``decoder.levels.0``
work at 9x5 in every stage), so a stage at the next resolution appends one level at the top and
loads every earlier tensor by name (see ``triagan_model.weights.load_matching``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from triagan_model.networks.layers import FIRResample, ModulatedConv2d, ResidualBlock
from triagan_model.networks.mapping import MappingNetwork

if TYPE_CHECKING:
    from triagan_model.configs import GeneratorConfig

# from_rgb's weight gain counts the reference's 7 input groups (image 3 + mask + person mask +
# keypoint maps + limb maps), not the 30 channels: 1/sqrt(7 * 7^2). Kept so that the authors'
# released weights (import-dp2) produce the same outputs.
FROM_RGB_INPUT_GROUPS = 7


def level_dims(cfg: GeneratorConfig) -> list[int]:
    """Widths from the working resolution (index 0) down to 9x5 (last): ``dim * mult``."""
    return [cfg.dim * m for m in cfg.dim_mults]


def level_hw(cfg: GeneratorConfig, top_index: int) -> tuple[int, int]:
    """Spatial size of the level ``top_index`` steps below the working resolution."""
    h, w = cfg.resolution
    return (h >> top_index, w >> top_index)


class Encoder(nn.Module):
    """Encoder: ``levels[k]`` holds the blocks of the level k steps above the lowest one."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        dims, n = level_dims(cfg), len(cfg.dim_mults)
        levels = []
        for k in range(n):
            i = n - 1 - k  # index from the top
            d_in, d_next = dims[i], dims[min(i + 1, n - 1)]
            blocks = nn.ModuleList()
            for b in range(cfg.num_blocks):
                # The last block of a level already maps to the next lower level's width.
                d_out = d_next if b == cfg.num_blocks - 1 else d_in
                blocks.append(
                    ResidualBlock(d_in, d_in, d_out, w_dim=cfg.w_dim, layer_scale=cfg.layer_scale)
                )
            levels.append(blocks)
        self.levels = nn.ModuleList(levels)
        self.down = FIRResample("down")

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = []
        for k in reversed(range(len(self.levels))):
            for block in self.levels[k]:
                x = block(x, w)
                feats.append(x)
            if k != 0:
                x = self.down(x)
        return x, feats


class Decoder(nn.Module):
    """Decoder: 2 middle blocks at 9x5, then ``levels[k]`` from the lowest level up.

    Before the first block of every level but the lowest, the matching encoder feature goes
    through ``unet_skips[str(k)]`` (instance norm -> lrelu -> 1x1 conv, no bias, no modulation)
    and is added; that block's residual branches then use gain sqrt(1/3) instead of sqrt(1/2).
    """

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        dims, n = level_dims(cfg), len(cfg.dim_mults)
        blk = {"w_dim": cfg.w_dim, "layer_scale": cfg.layer_scale}
        low_hw = level_hw(cfg, n - 1) if cfg.noise else None
        self.middle = nn.ModuleList(
            ResidualBlock(dims[-1], dims[-1], dims[-1], noise_hw=low_hw, **blk)
            for _ in range(cfg.n_middle_blocks)
        )
        self.levels = nn.ModuleList()
        self.unet_skips = nn.ModuleDict()
        for k in range(n):
            i = n - 1 - k
            d_out, d_in = dims[i], dims[min(i + 1, n - 1)]
            noise_hw = level_hw(cfg, i) if cfg.noise else None
            blocks = nn.ModuleList()
            for b in range(cfg.num_blocks):
                has_unet = b == 0 and k != 0
                gain = math.sqrt(1 / 3) if has_unet else math.sqrt(1 / 2)
                c_in = d_in if b == 0 else d_out
                blocks.append(
                    ResidualBlock(c_in, c_in, d_out, skip_gain=gain, noise_hw=noise_hw, **blk)
                )
                if has_unet:
                    self.unet_skips[str(k)] = ModulatedConv2d(
                        c_in, c_in, 1, norm=True, activation="lrelu", bias=False, gain=gain
                    )
            self.levels.append(blocks)
        self.up = FIRResample("up")

    def forward(
        self, x: torch.Tensor, w: torch.Tensor, feats: list[torch.Tensor], noise_mode: str
    ) -> torch.Tensor:
        for block in self.middle:
            x = block(x, w, noise_mode)
        skips = iter(reversed(feats))
        for k, blocks in enumerate(self.levels):
            for b, block in enumerate(blocks):
                skip_x = next(skips)
                if b == 0 and k != 0:
                    x = x + self.unet_skips[str(k)](skip_x)
                x = block(x, w, noise_mode)
            if k != len(self.levels) - 1:
                x = self.up(x)
        return x


class TriaGANGenerator(nn.Module):
    """The generator. Input: the 30-channel condition of ``conditioning.build_condition``.

    ``forward(cond, z=None, w=None)`` returns ``{"img": composited, "unmasked": raw}``: the raw
    output (no tanh) and the same with the known pixels put back, ``mask * image + (1 - mask) *
    raw``. The known pixels come from the condition itself (channels 0-2 are ``image * mask``,
    channel 3 is the binary mask), so the known region is returned unchanged bit for bit.
    """

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h, w = cfg.resolution
        n = len(cfg.dim_mults)
        if h % (1 << (n - 1)) or w % (1 << (n - 1)):
            raise ValueError(f"resolution {cfg.resolution} does not halve {n - 1} times exactly")
        self.mapping = MappingNetwork(
            cfg.z_dim, cfg.w_dim, cfg.mapping_layers, cfg.mapping_lr_multiplier, cfg.w_avg_beta
        )
        gain = 1.0 / math.sqrt(FROM_RGB_INPUT_GROUPS * 7**2)
        self.from_rgb = ModulatedConv2d(
            cfg.cond_channels, cfg.dim * cfg.dim_mults[0], 7, activation="linear", weight_gain=gain
        )
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.to_rgb = ModulatedConv2d(cfg.dim * cfg.dim_mults[0], 3, 1, activation="linear")

    def make_z(self, batch: int, device: torch.device | str | None = None) -> torch.Tensor:
        return torch.randn(batch, self.cfg.z_dim, device=device)

    def forward(
        self,
        cond: torch.Tensor,
        z: torch.Tensor | None = None,
        w: torch.Tensor | None = None,
        *,
        update_w_avg: bool = False,
        noise_mode: str | None = None,
    ) -> dict[str, torch.Tensor]:
        """``noise_mode``: "random" (default in train mode), "const" (eval default), "none"."""
        expected = (self.cfg.cond_channels, *self.cfg.resolution)
        if cond.ndim != 4 or tuple(cond.shape[1:]) != expected:
            raise ValueError(f"cond must have shape (B, {expected}), got {tuple(cond.shape)}")
        if noise_mode is None:
            noise_mode = "random" if self.training else "const"
        if w is None:
            z = self.make_z(cond.shape[0], cond.device) if z is None else z
            w = self.mapping(z, update_w_avg=update_w_avg)
        x = self.from_rgb(cond)
        x, feats = self.encoder(x, w)
        raw = self.to_rgb(self.decoder(x, w, feats, noise_mode))
        # Composite in float32: under bf16 autocast the known pixels must still come back bit
        # for bit (D sees real images in float32 too).
        mask = cond[:, 3:4]
        raw = raw.float()
        img = torch.where(mask > 0.5, cond[:, :3].float(), raw)
        return {"img": img, "unmasked": raw}
