"""Configs A-E of the paper's ablation ladder as data (triagan-spec "Configs A-E", "Training").

One ``TrainConfig`` holds everything a run needs: the stage-independent generator architecture,
the progressive stages (resolution, generator widths, batch, images shown to D), the
discriminator's feature networks, loss, optimisers, EMA and augmentation. Progressive resolutions
are stages of ONE config, not a chain of files (style.md 11). ``get_config(name)`` returns a
registered config; ``load_config(path_or_name)`` also reads a TOML file (``pipelines/``) that
names a ``base`` config and overrides fields (``toml_io.py`` has the reader and writer).

Every config also exists at a tiny width (``A-tiny`` ... ``E-tiny``) with small random feature
networks for CPU tests, CI and the demo; those are NOT the paper's model and say so loudly.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field

TINY_WARNING = (
    "config {name!r} is a TINY TEST CONFIG with random feature networks: it is NOT the paper's "
    "model and its samples say nothing about TriA-GAN's quality"
)

# How keypoints become the generator's keypoint and limb maps (networks/conditioning.py):
# "reference" = DeepPrivacy2's arithmetic, "flip-exact" = the previous version's floor rule.
CONDITIONING_MODES: tuple[str, ...] = ("reference", "flip-exact")


@dataclass(frozen=True)
class GeneratorArch:
    """Stage-independent generator settings (triagan-spec "Generator")."""

    num_blocks: int = 1  # residual blocks per level, encoder and decoder (E: 2)
    n_middle_blocks: int = 2  # at the lowest resolution (9x5)
    layer_scale: bool = False  # learnable per-channel residual scale, init 1e-5 (D, E)
    noise: bool = False  # per-pixel noise in the decoder convs (E)
    z_dim: int = 64
    w_dim: int = 512
    mapping_layers: int = 2
    mapping_lr_multiplier: float = 0.01
    w_avg_beta: float = 0.998
    cond_channels: int = 30  # see networks/conditioning.py
    # DP2's maps by default, so weights trained here run in DP2's anonymiser and the other way
    # round; part of generator.json (weights.py reads a file without it as "flip-exact").
    conditioning_mode: str = "reference"

    def __post_init__(self) -> None:
        if self.conditioning_mode not in CONDITIONING_MODES:
            raise ValueError(
                f"unknown conditioning_mode {self.conditioning_mode!r}; one of {CONDITIONING_MODES}"
            )


@dataclass(frozen=True)
class GeneratorConfig(GeneratorArch):
    """One generator network: the architecture at one stage's resolution and widths."""

    resolution: tuple[int, int] = (72, 40)  # (H, W)
    dim: int = 512
    dim_mults: tuple[int, ...] = (1, 1, 1, 1)  # from the working resolution down to 9x5

    @classmethod
    def from_arch(cls, arch: GeneratorArch, stage: StageConfig) -> GeneratorConfig:
        return cls(
            **dataclasses.asdict(arch),
            resolution=stage.resolution,
            dim=stage.dim,
            dim_mults=stage.dim_mults,
        )


@dataclass(frozen=True)
class StageConfig:
    """One progressive stage: a resolution, its generator widths and its schedule."""

    resolution: tuple[int, int]  # (H, W)
    dim: int
    dim_mults: tuple[int, ...]
    batch: int  # global batch (all GPUs)
    kimg: float  # images shown to D in this stage, in thousands

    @property
    def name(self) -> str:
        return f"{self.resolution[0]}x{self.resolution[1]}"


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Projected discriminator (triagan-spec "Discriminator")."""

    feature_networks: tuple[str, ...] = ("efficientnet-lite0",)  # registry names
    pretrained: bool = True  # False = random feature networks (loud warning unless tiny)
    projection_channels: int = 64  # cout of the random projection: 64/128/256/512
    head_channels: int = 512


@dataclass(frozen=True)
class LossConfig:
    # "hinge" (Config A) or "masked-hinge" (B on: generated pixels in the known region count as
    # real for D). G loss: -mean(D logits). No R1, no path-length regulariser.
    kind: str = "masked-hinge"


@dataclass(frozen=True)
class OptimizerConfig:
    lr: float = 0.002
    beta1: float = 0.0
    # The seed table prints 0.099: a typo. The reference code and every StyleGAN-family recipe
    # use 0.99.
    beta2: float = 0.99
    eps: float = 1e-8


@dataclass(frozen=True)
class EMAConfig:
    """EMA of G's weights: beta per step (seed: 0.9976) with a StyleGAN2-style ramp-up."""

    beta: float = 0.9976
    rampup: float | None = 0.05  # half-life limited to rampup * images seen so far

    def beta_at(self, cur_nimg: int, batch: int) -> float:
        """EMA beta for a step of ``batch`` images after ``cur_nimg`` images in the stage.

        The steady-state half-life (in images) is that of ``beta`` per step at this batch; during
        ramp-up it is capped at ``rampup * cur_nimg`` (as StyleGAN2 and the reference).
        """
        half_life = batch * math.log(0.5) / math.log(self.beta)
        if self.rampup is not None:
            half_life = min(half_life, cur_nimg * self.rampup)
        return 0.5 ** (batch / max(half_life, 1e-8))


@dataclass(frozen=True)
class AugmentConfig:
    hflip: bool = True  # per sample, with the left/right keypoint swap
    diffaug: tuple[str, ...] = ("color", "cutout")  # differentiable augmentation of D inputs
    blur_init_sigma: float = 4.0  # Gaussian blur on D inputs, fading to 0 ...
    blur_fade_kimg: float = 4000.0  # ... over the first 4M images of each stage


@dataclass(frozen=True)
class TrainConfig:
    name: str
    description: str
    generator: GeneratorArch
    stages: tuple[StageConfig, ...]
    discriminator: DiscriminatorConfig
    loss: LossConfig = field(default_factory=LossConfig)
    g_optim: OptimizerConfig = field(default_factory=OptimizerConfig)
    d_optim: OptimizerConfig = field(default_factory=OptimizerConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    mixed_precision: bool = True  # bf16 autocast on GPU (the paper: mixed precision)
    tiny: bool = False  # a test-size config, not the paper's model

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError(f"config {self.name!r} has no stages")
        if self.loss.kind not in ("hinge", "masked-hinge"):
            raise ValueError(f"config {self.name!r}: unknown loss kind {self.loss.kind!r}")
        for s in self.stages:
            if len(s.resolution) != 2 or not s.dim_mults or s.dim_mults[0] != 1:
                raise ValueError(f"config {self.name!r}: bad stage {s}")

    def generator_config(self, stage: int | str | StageConfig = -1) -> GeneratorConfig:
        """The generator network of a stage (index, "HxW" name, or the stage itself)."""
        return GeneratorConfig.from_arch(self.generator, self.stage(stage))

    def stage(self, stage: int | str | StageConfig = -1) -> StageConfig:
        if isinstance(stage, StageConfig):
            return stage
        if isinstance(stage, str):
            for s in self.stages:
                if s.name == stage:
                    return s
            names = [s.name for s in self.stages]
            raise KeyError(f"config {self.name!r} has no stage {stage!r}; stages: {names}")
        return self.stages[stage]


# Widths per working resolution (spec: "Structure that reproduces the seed's parameter counts").
PAPER_WIDTHS: dict[int, tuple[int, tuple[int, ...]]] = {
    18: (512, (1, 1)),
    36: (512, (1, 1, 1)),
    72: (512, (1, 1, 1, 1)),
    144: (256, (1, 2, 2, 2, 2)),
    288: (128, (1, 2, 4, 4, 4, 4)),
}
# Tiny widths (<= 32 channels), same number of levels, so tiny runs exercise the same code paths.
TINY_WIDTHS: dict[int, tuple[int, tuple[int, ...]]] = {
    18: (32, (1, 1)),
    36: (32, (1, 1, 1)),
    72: (32, (1, 1, 1, 1)),
    144: (16, (1, 2, 2, 2, 2)),
    288: (8, (1, 2, 4, 4, 4, 4)),
}
RESOLUTIONS = {18: (18, 10), 36: (36, 20), 72: (72, 40), 144: (144, 80), 288: (288, 160)}


def _stages(spec: list[tuple[int, int, float]], tiny: bool) -> tuple[StageConfig, ...]:
    widths = TINY_WIDTHS if tiny else PAPER_WIDTHS
    out = []
    for h, batch, kimg in spec:
        dim, mults = widths[h]
        if tiny:  # a few steps per stage: enough for smoke tests, a demo and CI
            batch, kimg = 4, 0.016
        out.append(StageConfig(RESOLUTIONS[h], dim, mults, batch, float(kimg)))
    return tuple(out)


_MAE_CLIP = ("mae-vit-l16", "clip-rn50")  # the reference's final choice
_TINY_PAIR = ("tiny-vit", "tiny-cnn")  # a ViT and a CNN, like MAE + CLIP RN50
_LADDER = {
    # name: (what it adds, arch, stages, feature networks, loss)
    "A": (
        "72x40, 1 block/level, no layer-scale, no noise; EfficientNet-lite0 projected D; hinge "
        "loss; batch 512, 50M images",
        GeneratorArch(),
        [(72, 512, 50_000)],
        ("efficientnet-lite0",),
        "hinge",
    ),
    "B": (
        "A + masked hinge loss (generated pixels in the known region count as real for D)",
        GeneratorArch(),
        [(72, 512, 50_000)],
        ("efficientnet-lite0",),
        "masked-hinge",
    ),
    "C": (
        "B + feature networks MAE ViT-L/16 + CLIP RN50",
        GeneratorArch(),
        [(72, 512, 50_000)],
        _MAE_CLIP,
        "masked-hinge",
    ),
    "D": (
        "C + layer-scale + progressive training 18x10 -> 36x20 -> 72x40 (batch 512, 76M/61M/50M "
        "images)",
        GeneratorArch(layer_scale=True),
        [(18, 512, 76_000), (36, 512, 61_000), (72, 512, 50_000)],
        _MAE_CLIP,
        "masked-hinge",
    ),
    "E": (
        "D + 2 blocks/level + decoder noise, progressive up to 288x160 (batch 1024/1024/1024/512/"
        "128, 300M/200M/160M/110M/110M images): the paper's final TriA-GAN",
        GeneratorArch(num_blocks=2, layer_scale=True, noise=True),
        [(18, 1024, 300_000), (36, 1024, 200_000), (72, 1024, 160_000), (144, 512, 110_000)]
        + [(288, 128, 110_000)],
        _MAE_CLIP,
        "masked-hinge",
    ),
}


def _build(name: str, tiny: bool) -> TrainConfig:
    what, arch, stages, fnets, loss = _LADDER[name]
    if tiny:
        fnets = _TINY_PAIR if len(fnets) == 2 else ("tiny-cnn",)
        what = (
            "TINY TEST CONFIG, NOT THE PAPER'S MODEL (widths <= 32, random tiny feature networks, "
            f"4 images per step, 16 images per stage), shaped like Config {name}: {what}"
        )
    return TrainConfig(
        name=f"{name}-tiny" if tiny else name,
        description=what,
        generator=arch,
        stages=_stages(stages, tiny),
        discriminator=DiscriminatorConfig(
            feature_networks=fnets,
            pretrained=not tiny,
            # tiny: narrow projection and heads so a CPU step takes well under a second
            projection_channels=16 if tiny else 64,
            head_channels=32 if tiny else 512,
        ),
        loss=LossConfig(kind=loss),
        mixed_precision=not tiny,
        tiny=tiny,
    )


CONFIGS: dict[str, TrainConfig] = {
    f"{n}{suffix}": _build(n, suffix == "-tiny") for n in _LADDER for suffix in ("", "-tiny")
}


def get_config(name: str, *, warn_tiny: bool = True) -> TrainConfig:
    """A registered config by name (``A``-``E``, ``A-tiny``-``E-tiny``); warns for tiny ones."""
    try:
        cfg = CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown config {name!r}; known: {sorted(CONFIGS)}") from None
    if cfg.tiny and warn_tiny:
        warnings.warn(TINY_WARNING.format(name=name), UserWarning, stacklevel=2)
    return cfg


def load_config(name_or_path: str, *, warn_tiny: bool = True) -> TrainConfig:
    """A registered name, or a TOML file (``base = "E"`` plus overriding tables)."""
    if name_or_path in CONFIGS:
        return get_config(name_or_path, warn_tiny=warn_tiny)
    from triagan_model.toml_io import read_config_toml

    cfg = read_config_toml(name_or_path)
    if cfg.tiny and warn_tiny:
        warnings.warn(TINY_WARNING.format(name=cfg.name), UserWarning, stacklevel=2)
    return cfg
