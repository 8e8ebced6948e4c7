"""Projected discriminator (triagan-spec "Discriminator (projected GAN)").

Per feature network: frozen trunk (pretrained backbone; for ViTs plus a random reassembly to a
4-level pyramid) -> frozen random projection -> one trainable head per map.

Frozen by construction (style.md 10): the frozen parts live in a NON-registered holder, so they
are not in ``parameters()`` (the optimiser gets ``trainable_parameters()``, i.e. the heads), not in
``state_dict()`` and not switched by ``train()``; their parameters have ``requires_grad=False``
and ``FrozenFeatureNetwork.train`` pins them in eval mode. ``.to()``/``.cuda()``/``.half()`` still
reach them (``_apply`` is forwarded). Gradients flow THROUGH them to the generator's images, but
never into them. Their random parts (projection, ViT reassembly, tiny trunks) are built under a
fixed seed, so a rebuilt discriminator has the same frozen weights; a checkpoint keeps only each
network's name and weights hash (``get_extra_state``), and loading one built with other frozen
weights is an error.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from triagan_model.networks.feature_networks import FeatureNetSpec, build_trunk, get_spec
from triagan_model.networks.projection import RandomProjection

if TYPE_CHECKING:
    from triagan_model.configs import DiscriminatorConfig


class FrozenFeatureNetwork(nn.Module):
    """Normalise -> (augment) -> resize -> trunk -> random projection; always in eval mode."""

    def __init__(self, spec: FeatureNetSpec, trunk: nn.Module, cout: int) -> None:
        super().__init__()
        self.spec = spec
        self.trunk = trunk
        self.projection = RandomProjection(spec.channels, cout)
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1))
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenFeatureNetwork:
        return super().train(False)  # BatchNorm statistics and dropout stay frozen

    def forward(
        self, img01: torch.Tensor, augment: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> list[torch.Tensor]:
        x = (img01 - self.mean.to(img01.dtype)) / self.std.to(img01.dtype)
        if augment is not None:
            x = augment(x)
        if tuple(x.shape[-2:]) != self.spec.input_size:
            x = F.interpolate(x, self.spec.input_size, mode="bilinear", align_corners=True)
        return self.projection(self.trunk(x))

    def weights_sha256(self) -> str | None:
        """sha256 over every tensor (name-sorted, float32 bytes); None on the meta device."""
        state = self.state_dict()
        if any(t.is_meta for t in state.values()):
            return None
        h = hashlib.sha256()
        for k in sorted(state):
            h.update(k.encode())
            h.update(state[k].detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()


class Head(nn.Module):
    """Trainable head on one projected map (the seed's D_l; Projected GAN's ``SingleDisc``).

    The seed: "three convolutions with 512 channels, spectral normalisation on each, each followed
    by BatchNorm2d and LeakyReLU except the last; output at half the input's resolution". Layers:
    ``main.0`` SN conv 4x4 stride 2 (C -> 512, bias) [halves the resolution], ``main.1`` BN,
    ``main.2`` LReLU(0.2), ``main.3`` SN conv 1x1 (512 -> 512, no bias), ``main.4`` BN, ``main.5``
    LReLU(0.2), ``main.6`` SN conv 3x3 (512 -> 1, bias) = one logit per position. Trainable
    parameters for C = 64/64/128/256: 793,601 + 793,601 + 1,317,889 + 2,366,465 = 5,271,556
    per feature network (the seed's 5.3M).
    """

    def __init__(self, c_in: int, ch: int = 512) -> None:
        super().__init__()
        self.main = nn.Sequential(
            spectral_norm(nn.Conv2d(c_in, ch, 4, 2, 1)),
            nn.BatchNorm2d(ch),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(ch, ch, 1, bias=False)),
            nn.BatchNorm2d(ch),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(ch, 1, 3, 1, 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def _stable_seed(seed: int, name: str) -> int:
    return (seed + int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")) % 2**31


class ProjectedDiscriminator(nn.Module):
    """``forward(img)`` with ``img`` in [-1, 1] -> logit maps (B, 1, h, w) grouped by network.

    One list per feature network (config order), its 4 maps finest first: the reference's
    ``dict(logits=...)`` grouping, which the losses pool over (``training/losses.py``), so no
    caller rebuilds the groups. ``augment`` (e.g. DiffAugment colour + cutout) is applied per
    feature network to the normalised image, before resizing, as the reference.
    """

    def __init__(
        self, cfg: DiscriminatorConfig, *, weights_dir: Path | None = None, seed: int = 0
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.heads = nn.ModuleDict()
        frozen: dict[str, FrozenFeatureNetwork] = {}
        for name in cfg.feature_networks:
            spec = get_spec(name)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_stable_seed(seed, name))
                trunk = build_trunk(spec, cfg.pretrained, weights_dir)
                frozen[name] = FrozenFeatureNetwork(spec, trunk, cfg.projection_channels)
            self.heads[name] = nn.ModuleList(
                Head(c, cfg.head_channels) for c in frozen[name].projection.out_channels
            )
        # A plain dict attribute: not a registered submodule (see the module docstring).
        self._frozen = frozen
        self._identity = [
            {"name": n, "sha256": f.weights_sha256(), "pretrained": cfg.pretrained}
            for n, f in frozen.items()
        ]

    @property
    def feature_networks(self) -> dict[str, FrozenFeatureNetwork]:
        return dict(self._frozen)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters to optimise: the heads only."""
        return self.heads.parameters()

    def train(self, mode: bool = True) -> ProjectedDiscriminator:
        super().train(mode)
        for f in self._frozen.values():
            f.train(False)
        return self

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        super()._apply(fn, recurse)
        for f in self._frozen.values():
            f._apply(fn, recurse)
        return self

    def get_extra_state(self) -> dict[str, Any]:
        return {"feature_networks": self._identity}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        theirs = state.get("feature_networks", [])
        if [t["name"] for t in theirs] != [m["name"] for m in self._identity]:
            raise ValueError(
                f"checkpoint's discriminator uses feature networks {[t['name'] for t in theirs]}, "
                f"this one {[m['name'] for m in self._identity]}"
            )
        for t, m in zip(theirs, self._identity, strict=True):
            if t.get("sha256") and m["sha256"] and t["sha256"] != m["sha256"]:
                raise ValueError(
                    f"feature network {m['name']!r}: checkpoint was trained with frozen weights "
                    f"sha256 {t['sha256'][:12]}..., this discriminator has {m['sha256'][:12]}..."
                )

    def forward(
        self, img: torch.Tensor, augment: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> list[list[torch.Tensor]]:
        img01 = (img + 1) / 2
        logits = []
        for name, fnet in self._frozen.items():
            feats = fnet(img01, augment)
            logits.append([head(f) for head, f in zip(self.heads[name], feats, strict=True)])
        return logits
