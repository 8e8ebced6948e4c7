"""Registry of the projected discriminator's frozen feature networks (style.md 8, 10).

Each entry is data: builder, normalisation, input size, tapped layers, channels of the four
feature maps, and the local weights file. Weights come from LOCAL files only (there is no
download): ``$TRIAGAN_WEIGHTS/<weights_file>`` (default directory ``~/.cache/triagan/weights``),
checked against ``sha256`` when the entry has one. A missing file is an error that names the
expected path and where to get it. Random initialisation happens only when asked for
(``pretrained=False``), with a loud warning unless the entry is a tiny test network.

Input sizes (triagan-spec "Discriminator"): convolutional networks see the image resized to
288x160, ViTs 224x224 (aspect distorted, as the reference).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from triagan_model.atomic import sha256_file

WEIGHTS_ENV = "TRIAGAN_WEIGHTS"
DEFAULT_WEIGHTS_DIR = Path("~/.cache/triagan/weights")
IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
INCEPTION_NORM = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
CLIP_NORM = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
CNN_SIZE, VIT_SIZE = (288, 160), (224, 224)


@dataclass(frozen=True)
class FeatureNetSpec:
    name: str
    description: str
    builder: Callable[[Path | None], nn.Module]  # weights path or None (random) -> trunk
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: tuple[int, int]  # (H, W) the image is resized to
    layers: tuple[str, ...]  # tapped layers (documentation of what the trunk returns)
    channels: tuple[int, int, int, int]  # channels of the trunk's four maps, finest first
    weights_file: str | None = None  # expected file name under the weights directory
    weights_source: str = ""  # where to get the file
    sha256: str | None = None  # expected sha256 of the file, checked when set
    tiny: bool = False  # a small random test network (never pretrained)


class StagedTrunk(nn.Module):
    """Runs ``stages`` in sequence and returns every stage's output (four maps)."""

    def __init__(self, *stages: nn.Module) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


class ViTPyramid(nn.Module):
    """Tokens after four blocks -> 14x14 maps -> 4x/2x/1x/0.5x (DPT-style reassembly).

    Each map goes through a 1x1 conv to ``proj[i]`` channels, then a 4x transposed conv, a 2x
    transposed conv, nothing, or a stride-2 3x3 conv (the reference's ``ProjectedViT``); these
    reassembly layers are random and frozen like the projection after them (triagan-spec "MAE
    ViT-L/16 feature network").
    """

    def __init__(self, vit: nn.Module, taps: tuple[int, ...], dim: int, proj: tuple[int, ...]):
        super().__init__()
        self.vit, self.taps = vit, list(taps)
        p0, p1, p2, p3 = proj
        self.layer1 = nn.Sequential(nn.Conv2d(dim, p0, 1), nn.ConvTranspose2d(p0, p0, 4, stride=4))
        self.layer2 = nn.Sequential(nn.Conv2d(dim, p1, 1), nn.ConvTranspose2d(p1, p1, 2, stride=2))
        self.layer3 = nn.Sequential(nn.Conv2d(dim, p2, 1))
        self.layer4 = nn.Sequential(nn.Conv2d(dim, p3, 1), nn.Conv2d(p3, p3, 3, 2, padding=1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.vit.forward_intermediates(x, indices=self.taps, intermediates_only=True)
        if isinstance(feats, dict):  # open_clip returns a dict
            feats = feats["image_intermediates"]
        layers = (self.layer1, self.layer2, self.layer3, self.layer4)
        return [layer(f) for layer, f in zip(layers, feats, strict=True)]


class _ClipResNetStem(nn.Module):
    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual.layer1(self.visual.stem(x))


def _timm(name: str, path: Path | None, **kwargs) -> nn.Module:
    import timm

    if path is None:
        return timm.create_model(name, pretrained=False, **kwargs)
    overlay = {"file": str(path)}
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)


def _open_clip_visual(name: str, path: Path | None) -> nn.Module:
    import open_clip
    from open_clip.factory import load_checkpoint

    # open_clip moves the model to `device` ("cpu" by default): keep the ambient default device
    # so that building under `with torch.device("meta")` (triagan summary) stays on meta.
    model = open_clip.create_model(name, pretrained=None, device=torch.get_default_device())
    if path is not None:
        load_checkpoint(model, str(path))
    return model.visual


def _build_mae_vit_l16(path: Path | None) -> nn.Module:
    vit = _timm("vit_large_patch16_224.mae", path, num_classes=0)
    taps = (5, 11, 17, 23)
    vit.prune_intermediate_layers(list(taps), prune_norm=True, prune_head=True)
    return ViTPyramid(vit, taps, 1024, (256, 512, 1024, 1024))


def _build_openclip_vit_b16(path: Path | None) -> nn.Module:
    visual = _open_clip_visual("ViT-B-16", path)
    taps = (2, 5, 8, 11)
    visual.prune_intermediate_layers(list(taps))
    return ViTPyramid(visual, taps, 768, (96, 192, 384, 768))


def _build_clip_rn50(path: Path | None) -> nn.Module:
    v = _open_clip_visual("RN50", path)
    v.attnpool = nn.Identity()  # the attention pool after layer4 is not tapped
    return StagedTrunk(_ClipResNetStem(v), v.layer2, v.layer3, v.layer4)


def _build_resnet50(path: Path | None) -> nn.Module:
    m = _timm("resnet50.tv_in1k", path)
    stem = nn.Sequential(m.conv1, m.bn1, m.act1, m.maxpool, m.layer1)
    return StagedTrunk(stem, m.layer2, m.layer3, m.layer4)


def _build_efficientnet_lite0(path: Path | None) -> nn.Module:
    m = _timm("tf_efficientnet_lite0", path)
    b = m.blocks  # grouping of the reference's _make_efficientnet
    return StagedTrunk(
        nn.Sequential(m.conv_stem, m.bn1, *b[0:2]), b[2], nn.Sequential(*b[3:5]), b[5:]
    )


def _build_tiny_cnn(path: Path | None) -> nn.Module:
    def block(c_in: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
        )

    return StagedTrunk(
        nn.Sequential(block(3, 8), block(8, 8)), block(8, 16), block(16, 32), block(32, 64)
    )


def _build_tiny_vit(path: Path | None) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(
        img_size=224, patch_size=16, embed_dim=32, depth=4, num_heads=2, num_classes=0
    )
    return ViTPyramid(vit, (0, 1, 2, 3), 32, (8, 16, 32, 32))


_HF = "https://huggingface.co/"
REGISTRY: dict[str, FeatureNetSpec] = {
    s.name: s
    for s in (
        FeatureNetSpec(
            "mae-vit-l16", "MAE ViT-L/16 (timm vit_large_patch16_224.mae), blocks 5/11/17/23",
            _build_mae_vit_l16, *IMAGENET_NORM, VIT_SIZE,
            ("blocks.5", "blocks.11", "blocks.17", "blocks.23"), (256, 512, 1024, 1024),
            "mae-vit-l16.safetensors",
            _HF + "timm/vit_large_patch16_224.mae (model.safetensors), renamed",
        ),
        FeatureNetSpec(
            "clip-rn50", "CLIP RN50 image tower (open_clip RN50, OpenAI weights), layers 1-4",
            _build_clip_rn50, *CLIP_NORM, CNN_SIZE,
            ("layer1", "layer2", "layer3", "layer4"), (256, 512, 1024, 2048),
            "clip-rn50.safetensors",
            _HF + "timm/resnet50_clip.openai (open_clip_model.safetensors), renamed",
        ),
        FeatureNetSpec(
            "efficientnet-lite0", "EfficientNet-lite0 (timm tf_efficientnet_lite0), 4 stages",
            _build_efficientnet_lite0, *INCEPTION_NORM, CNN_SIZE,
            ("blocks.1", "blocks.2", "blocks.4", "blocks.6"), (24, 40, 112, 320),
            "efficientnet-lite0.safetensors",
            _HF + "timm/tf_efficientnet_lite0.in1k (model.safetensors), renamed",
        ),
        FeatureNetSpec(
            "resnet50", "ResNet-50, torchvision ImageNet weights (timm resnet50.tv_in1k)",
            _build_resnet50, *IMAGENET_NORM, CNN_SIZE,
            ("layer1", "layer2", "layer3", "layer4"), (256, 512, 1024, 2048),
            "resnet50.safetensors", _HF + "timm/resnet50.tv_in1k (model.safetensors), renamed",
        ),
        FeatureNetSpec(
            "openclip-vit-b16", "OpenCLIP ViT-B/16 (OpenAI weights), blocks 2/5/8/11",
            _build_openclip_vit_b16, *CLIP_NORM, VIT_SIZE,
            ("resblocks.2", "resblocks.5", "resblocks.8", "resblocks.11"), (96, 192, 384, 768),
            "openclip-vit-b16.safetensors",
            _HF + "timm/vit_base_patch16_clip_224.openai (open_clip_model.safetensors), renamed",
        ),
        FeatureNetSpec(
            "tiny-cnn", "TINY random 4-stage CNN for tests (NOT a pretrained network)",
            _build_tiny_cnn, *INCEPTION_NORM, CNN_SIZE,
            ("stage1", "stage2", "stage3", "stage4"), (8, 16, 32, 64), tiny=True,
        ),
        FeatureNetSpec(
            "tiny-vit", "TINY random 4-block ViT (dim 32) for tests (NOT a pretrained network)",
            _build_tiny_vit, *IMAGENET_NORM, VIT_SIZE,
            ("blocks.0", "blocks.1", "blocks.2", "blocks.3"), (8, 16, 32, 32), tiny=True,
        ),
    )
}  # fmt: skip


def get_spec(name: str) -> FeatureNetSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown feature network {name!r}; known: {sorted(REGISTRY)}") from None


def weights_dir() -> Path:
    return Path(os.environ.get(WEIGHTS_ENV, str(DEFAULT_WEIGHTS_DIR))).expanduser()


def resolve_weights(spec: FeatureNetSpec, directory: Path | None = None) -> Path:
    """The local weights file of ``spec``; a clear error if it is missing or its hash differs."""
    if spec.weights_file is None:
        raise ValueError(f"feature network {spec.name!r} has no pretrained weights (tiny/random)")
    path = (directory or weights_dir()) / spec.weights_file
    if not path.is_file():
        raise FileNotFoundError(
            f"weights of feature network {spec.name!r} not found: expected {path}. Download "
            f"{spec.weights_source} and save it under that name (the directory is "
            f"${WEIGHTS_ENV}, default {DEFAULT_WEIGHTS_DIR}); or build the discriminator with "
            "pretrained=False for RANDOM weights (not the paper's discriminator)."
        )
    if spec.sha256:
        digest = sha256_file(path)
        if digest != spec.sha256:
            raise ValueError(f"{path}: sha256 {digest} is not the expected {spec.sha256}")
    return path


def build_trunk(spec: FeatureNetSpec, pretrained: bool, directory: Path | None = None) -> nn.Module:
    """The trunk (backbone + ViT reassembly) returning four maps; see the module docstring."""
    if pretrained and not spec.tiny:
        return spec.builder(resolve_weights(spec, directory))
    if not spec.tiny:
        warnings.warn(
            f"feature network {spec.name!r} is RANDOMLY INITIALISED (pretrained=False): this is "
            "not the paper's projected discriminator",
            UserWarning,
            stacklevel=3,
        )
    return spec.builder(None)
