"""Convert the authors' released DeepPrivacy2 TriA-GAN generator state dict to this project's.

The reference names were read from the public DeepPrivacy2 code (``dp2/generator/triagan.py``,
``dp2/generator/base.py``, ``configs/generators/triagan.py``); the mapping is data
(``RENAMES``, ``LEAF_RENAMES``, ``DROPPED``), applied in order, first match wins:

=====================================================  =========================================
reference (DeepPrivacy2)                               this project
=====================================================  =========================================
style_net.fc{i}.{weight,bias}                          mapping.layers.{i}.{weight,bias}
style_net.w_avg                                        mapping.w_avg
style_net.w_centers (if present)                       w_centers.safetensors (multi-modal trunc.)
from_rgb.{weight,bias}                                 from_rgb.{weight,bias}
encoder.layers.{l}.{b}.*                               encoder.levels.{l}.{b}.*
decoder.layers.{l}.{b}.*                               decoder.levels.{l}.{b}.*
decoder.middle_blocks.{i}.*                            decoder.middle.{i}.*
decoder.unet_layers.{l}.0.weight                       decoder.unet_skips.{l}.weight
decoder.to_rgb[.{i}].{weight,bias} (older ckpts: .i)   to_rgb.{weight,bias}
*.affine.{weight,bias}      (gamma(w), bias init 1)    *.style_gamma.{weight,bias}
*.affine_beta.{weight,bias} (beta(w), bias init 0)     *.style_beta.{weight,bias}
*.layer_scale  shape (1, C, 1, 1)                      *.layer_scale  shape (C,)
conv0/conv1/skip weight, bias, noise_strength,         same names
noise_const
encoder.downsample.resample_filter,                    dropped after checking they are the
decoder.upsample.resample_filter                       [1,3,3,1] filter this code hard-wires
=====================================================  =========================================

Both index levels from the lowest resolution up, so no level reordering is needed. The
equalised-lr gains are the same (from_rgb included, see ``generator.FROM_RGB_INPUT_GROUPS``), so
weights are copied unscaled. The released checkpoints store the EMA generator under
``EMA_generator`` (older: ``running_average_generator``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from triagan_model.networks.layers import fir_filter_2d

CHECKPOINT_KEYS = ("EMA_generator", "running_average_generator", "generator")
RENAMES: tuple[tuple[str, str], ...] = (
    (r"^style_net\.fc(\d+)\.(weight|bias)$", r"mapping.layers.\1.\2"),
    (r"^style_net\.w_avg$", "mapping.w_avg"),
    (r"^from_rgb\.(weight|bias)$", r"from_rgb.\1"),
    (r"^encoder\.layers\.(\d+)\.(\d+)\.(.+)$", r"encoder.levels.\1.\2.\3"),
    (r"^decoder\.layers\.(\d+)\.(\d+)\.(.+)$", r"decoder.levels.\1.\2.\3"),
    (r"^decoder\.middle_blocks\.(\d+)\.(.+)$", r"decoder.middle.\1.\2"),
    (r"^decoder\.unet_layers\.(\d+)\.0\.weight$", r"decoder.unet_skips.\1.weight"),
    (r"^decoder\.to_rgb(?:\.\d+)?\.(weight|bias)$", r"to_rgb.\1"),
)
LEAF_RENAMES: tuple[tuple[str, str], ...] = (
    (r"\.affine_beta\.", ".style_beta."),
    (r"\.affine\.", ".style_gamma."),
)
DROPPED = ("encoder.downsample.resample_filter", "decoder.upsample.resample_filter")
W_CENTERS = "style_net.w_centers"


@dataclass
class Converted:
    state: dict[str, torch.Tensor]
    w_centers: torch.Tensor | None
    n_levels: int
    unmapped: list[str]


def extract_generator_state(ckpt: dict) -> dict[str, torch.Tensor]:
    """The generator state dict inside a DeepPrivacy2 checkpoint (or the dict itself)."""
    for key in CHECKPOINT_KEYS:
        if key in ckpt and isinstance(ckpt[key], dict):
            return ckpt[key]
    if "from_rgb.weight" in ckpt:
        return ckpt
    raise KeyError(
        f"no generator state in the checkpoint: none of {CHECKPOINT_KEYS} and no 'from_rgb.weight'"
        f" (top-level keys: {sorted(ckpt)[:10]})"
    )


def rename(key: str) -> str | None:
    for pattern, repl in RENAMES:
        if re.match(pattern, key):
            new = re.sub(pattern, repl, key)
            for leaf, leaf_repl in LEAF_RENAMES:
                new = re.sub(leaf, leaf_repl, new)
            return new
    return None


def convert_state_dict(state: dict[str, torch.Tensor]) -> Converted:
    """Map reference names and shapes to this project's; unknown keys are returned, not lost."""
    out: dict[str, torch.Tensor] = {}
    unmapped, w_centers = [], None
    for key, t in state.items():
        if key in DROPPED:
            if t.shape != (4, 4) or not torch.allclose(t.float().cpu(), fir_filter_2d()):
                raise ValueError(f"{key} is not the [1,3,3,1] FIR filter this code assumes")
            continue
        if key == W_CENTERS:
            w_centers = t
            continue
        new = rename(key)
        if new is None:
            unmapped.append(key)
            continue
        if new.endswith(".layer_scale"):
            t = t.reshape(-1)
        out[new] = t
    levels = {int(k.split(".")[2]) for k in out if k.startswith("decoder.levels.")}
    return Converted(out, w_centers, len(levels), unmapped)
