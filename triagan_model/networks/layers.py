"""Building blocks of the TriA-GAN generator (triagan-spec "Generator").

Equalised learning rate (StyleGAN): parameters are stored at unit scale (``randn``) and scaled at
run time by ``lr_multiplier / sqrt(fan_in)``, so Adam's per-parameter step is the same for every
layer. The FIR resampling uses the [1, 3, 3, 1] filter of StyleGAN2's ``upfirdn2d``, written with
plain depthwise convolutions (no custom CUDA ops), with the same padding and gain, so that weights
trained by the reference implementation give the same outputs here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)  # StyleGAN's bias_act default gain for "lrelu"
INSTANCE_NORM_EPS = 1e-5  # torch.nn.InstanceNorm2d's default, as the reference


def fir_filter_2d(taps: tuple[float, ...] = (1.0, 3.0, 3.0, 1.0)) -> torch.Tensor:
    """Separable 2D FIR filter normalised to sum 1 (StyleGAN2 ``setup_filter``)."""
    f = torch.tensor(taps, dtype=torch.float32)
    f2 = torch.outer(f, f)
    return f2 / f2.sum()


class FIRResample(nn.Module):
    """2x up- or downsampling with the [1,3,3,1] FIR filter (StyleGAN2 ``upfirdn2d``).

    Down: ``conv2d(stride=2, padding=1)`` with the filter, i.e. upfirdn2d's padding
    ``(fw - down + 1) // 2 = 1`` each side; 18x10 -> 9x5. Up: a transposed depthwise convolution
    with the filter times ``up**2 = 4`` and padding 1, which equals upfirdn2d's zero insertion with
    padding (2, 1); 9x5 -> 18x10. The filter is a non-persistent buffer: it is a constant, not a
    weight, so it stays out of checkpoints.
    """

    def __init__(self, mode: str) -> None:
        super().__init__()
        if mode not in ("up", "down"):
            raise ValueError(f"FIRResample mode must be 'up' or 'down', got {mode!r}")
        self.mode = mode
        gain = 4.0 if mode == "up" else 1.0
        self.register_buffer("filter", fir_filter_2d() * gain, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        weight = self.filter.to(x.dtype)[None, None].expand(c, 1, 4, 4)
        if self.mode == "down":
            return F.conv2d(x, weight, stride=2, padding=1, groups=c)
        return F.conv_transpose2d(x, weight, stride=2, padding=1, groups=c)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, taps=[1,3,3,1]"


class EqualizedLinear(nn.Module):
    """Fully connected layer with equalised learning rate (StyleGAN2 ``FullyConnectedLayer``).

    ``activation`` is ``"linear"`` or ``"lrelu"`` (slope 0.2, output times sqrt(2)).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        bias_init: float = 0.0,
        lr_multiplier: float = 1.0,
        activation: str = "linear",
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.bias * self.bias_gain if self.bias is not None else None
        x = F.linear(x, self.weight * self.weight_gain, b)
        if self.activation == "lrelu":
            x = F.leaky_relu(x, LRELU_SLOPE) * LRELU_GAIN
        return x

    def extra_repr(self) -> str:
        out_f, in_f = self.weight.shape
        return f"{in_f} -> {out_f}, activation={self.activation}"


class ModulatedConv2d(nn.Module):
    """One generator convolution: IN -> style modulation -> activation -> conv (-> noise).

    The order is the seed's "instance normalization -> style modulation -> convolution" with the
    leaky ReLU before the convolution, as the reference ``Conv2d.forward``. Every part is optional
    so the same class serves the modulated 3x3 convs (norm, style, lrelu), the U-Net skips (norm,
    lrelu, no style), the block skips and from_rgb/to_rgb (plain, linear).

    ``gain`` scales weight and bias (the residual branches' sqrt(1/n) of the reference). With
    ``noise_hw`` set (decoder convs of Config E) a scalar ``noise_strength`` and a fixed
    ``noise_const`` map (used in "const" noise mode, as the reference's eval mode) are added.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        w_dim: int | None = None,
        norm: bool = False,
        activation: str = "lrelu",
        bias: bool = True,
        gain: float = 1.0,
        weight_gain: float | None = None,
        noise_hw: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if activation not in ("lrelu", "linear"):
            raise ValueError(f"unknown activation {activation!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm, self.activation, self.gain = norm, activation, gain
        self.padding = kernel_size // 2
        self.weight_gain = (
            weight_gain
            if weight_gain is not None
            else 1.0 / math.sqrt(in_channels * kernel_size**2)
        )
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        if w_dim is not None:
            # gamma(w) starts at 1 and beta(w) at 0: the modulation is the identity at init.
            self.style_gamma = EqualizedLinear(w_dim, in_channels, bias_init=1.0)
            self.style_beta = EqualizedLinear(w_dim, in_channels, bias_init=0.0)
        else:
            self.style_gamma = self.style_beta = None
        self.noise_hw = tuple(noise_hw) if noise_hw is not None else None
        if self.noise_hw is not None:
            self.noise_strength = nn.Parameter(torch.zeros([]))
            self.register_buffer("noise_const", torch.randn(self.noise_hw))

    def forward(
        self, x: torch.Tensor, w: torch.Tensor | None = None, noise_mode: str = "random"
    ) -> torch.Tensor:
        if self.norm:
            x = F.instance_norm(x, eps=INSTANCE_NORM_EPS)
        if self.style_gamma is not None:
            if w is None:
                raise ValueError("a modulated convolution needs the style vector w")
            gamma = self.style_gamma(w).to(x.dtype)[:, :, None, None]
            beta = self.style_beta(w).to(x.dtype)[:, :, None, None]
            x = torch.addcmul(beta, x, gamma)
        if self.activation == "lrelu":
            x = F.leaky_relu(x, LRELU_SLOPE) * LRELU_GAIN
        weight = (self.weight * (self.weight_gain * self.gain)).to(x.dtype)
        bias = (self.bias * self.gain).to(x.dtype) if self.bias is not None else None
        x = F.conv2d(x, weight, bias, padding=self.padding)
        if self.noise_hw is not None and noise_mode != "none":
            x = x + self._noise(x, noise_mode) * self.noise_strength.to(x.dtype)
        return x

    def _noise(self, x: torch.Tensor, noise_mode: str) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.noise_hw:
            raise ValueError(
                f"noise map is {self.noise_hw} but features are {tuple(x.shape[-2:])}: the "
                "generator was built for another resolution"
            )
        if noise_mode == "random":
            return torch.randn(x.shape[0], 1, *self.noise_hw, device=x.device, dtype=x.dtype)
        if noise_mode == "const":
            return self.noise_const.to(x.dtype)
        raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")

    def extra_repr(self) -> str:
        k = self.weight.shape[-1]
        parts = [f"{self.in_channels} -> {self.out_channels}, k={k}"]
        parts += ["norm"] * self.norm + ["modulated"] * (self.style_gamma is not None)
        parts += [f"act={self.activation}", f"gain={self.gain:.4g}"]
        if self.noise_hw is not None:
            parts.append(f"noise={self.noise_hw}")
        return ", ".join(parts)


class ResidualBlock(nn.Module):
    """Residual block: two modulated 3x3 convs, a 1x1 skip, optional layer-scale (spec).

    ``out = skip(x) + layer_scale * conv1(conv0(x))``; skip and conv1 carry ``skip_gain``
    (sqrt(1/2), or sqrt(1/3) where a U-Net skip is also summed), as the reference, so the sum keeps
    unit variance. The layer-scale (init 1e-5) makes each new block start close to its skip path.
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        *,
        w_dim: int,
        layer_scale: bool,
        skip_gain: float = math.sqrt(0.5),
        noise_hw: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        conv = {"w_dim": w_dim, "norm": True, "noise_hw": noise_hw}
        self.conv0 = ModulatedConv2d(in_channels, mid_channels, 3, **conv)
        self.conv1 = ModulatedConv2d(mid_channels, out_channels, 3, gain=skip_gain, **conv)
        self.skip = ModulatedConv2d(
            in_channels, out_channels, 1, activation="linear", bias=False, gain=skip_gain
        )
        self.layer_scale = nn.Parameter(torch.full((out_channels,), 1e-5)) if layer_scale else None

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        y = self.skip(x)
        x = self.conv0(x, w, noise_mode)
        x = self.conv1(x, w, noise_mode)
        if self.layer_scale is not None:
            x = x * self.layer_scale.to(x.dtype)[None, :, None, None]
        return y + x
