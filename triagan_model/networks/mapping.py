"""Mapping network z (64) -> w (512) with a tracked w_avg (triagan-spec "Generator", "Sampling")."""

from __future__ import annotations

import torch
from torch import nn

from triagan_model.networks.layers import EqualizedLinear


class MappingNetwork(nn.Module):
    """StyleGAN2 mapping: pixel-norm(z) -> ``num_layers`` FC layers (lrelu, lr multiplier 0.01).

    ``w_avg`` is a buffer updated as ``lerp(mean(w), w_avg, beta)`` (beta 0.998) when the caller
    passes ``update_w_avg=True`` (the training step for G); truncation pulls w toward it.
    """

    def __init__(
        self,
        z_dim: int = 64,
        w_dim: int = 512,
        num_layers: int = 2,
        lr_multiplier: float = 0.01,
        w_avg_beta: float = 0.998,
    ) -> None:
        super().__init__()
        self.z_dim, self.w_dim, self.w_avg_beta = z_dim, w_dim, w_avg_beta
        dims = [z_dim] + [w_dim] * num_layers
        self.layers = nn.ModuleList(
            EqualizedLinear(a, b, lr_multiplier=lr_multiplier, activation="lrelu")
            for a, b in zip(dims[:-1], dims[1:], strict=True)
        )
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, update_w_avg: bool = False) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must have shape (B, {self.z_dim}), got {tuple(z.shape)}")
        x = z.float()
        x = x * (x.square().mean(1, keepdim=True) + 1e-8).rsqrt()  # pixel norm of z
        for layer in self.layers:
            x = layer(x)
        if update_w_avg:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().float().mean(0).lerp(self.w_avg, self.w_avg_beta))
        return x

    def truncate(
        self, w: torch.Tensor, psi: float, centre: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``centre + psi * (w - centre)``; ``centre`` defaults to ``w_avg`` (psi 0 -> centre)."""
        c = self.w_avg if centre is None else centre
        return c.to(w.dtype).lerp(w, psi)
