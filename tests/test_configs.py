"""Configs A-E as data, TOML mirror, and the seed's parameter counts (meta device)."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest
import torch

from triagan_model.configs import CONFIGS, get_config, load_config
from triagan_model.networks.generator import TriaGANGenerator
from triagan_model.toml_io import dumps_config

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


def n_params(cfg, stage) -> int:
    with torch.device("meta"):
        g = TriaGANGenerator(cfg.generator_config(stage))
    return sum(p.numel() for p in g.parameters())


# Counted from the spec's structure; the seed's Table 1 prints 62.2M / 110.4M / 124.2M.
@pytest.mark.parametrize(
    ("name", "stage", "expected", "seed"),
    [
        ("E", "18x10", 61_641_743, None),
        ("E", "36x20", 86_035_475, None),
        ("E", "72x40", 110_429_207, 110.4e6),
        ("E", "144x80", 121_005_339, None),
        ("E", "288x160", 124_212_639, 124.2e6),
        ("A", "72x40", 62_160_899, 62.2e6),
        ("B", "72x40", 62_160_899, 62.2e6),
        ("C", "72x40", 62_160_899, 62.2e6),
        ("D", "72x40", 62_166_019, 62.2e6),  # + layer-scale (5,120 parameters)
    ],
)
def test_generator_parameter_counts(name, stage, expected, seed):
    n = n_params(get_config(name), stage)
    assert n == expected
    if seed is not None:
        assert abs(n - seed) / seed < 0.01


def test_tiny_configs_warn_and_say_so():
    for name in "ABCDE":
        with pytest.warns(UserWarning, match="NOT the paper's model"):
            cfg = get_config(f"{name}-tiny")
        assert cfg.tiny and "NOT THE PAPER'S MODEL" in cfg.description
        assert not cfg.discriminator.pretrained
        assert all(s.dim <= 32 for s in cfg.stages)
        paper = get_config(name)
        assert [s.resolution for s in cfg.stages] == [s.resolution for s in paper.stages]


def test_ladder_fields():
    a, b, c, d, e = (get_config(n) for n in "ABCDE")
    assert a.loss.kind == "hinge" and b.loss.kind == "masked-hinge"
    assert a.discriminator.feature_networks == ("efficientnet-lite0",)
    assert c.discriminator.feature_networks == ("mae-vit-l16", "clip-rn50")
    assert not c.generator.layer_scale and d.generator.layer_scale
    assert [s.kimg for s in d.stages] == [76_000, 61_000, 50_000]
    assert all(s.batch == 512 for s in d.stages)
    assert e.generator.num_blocks == 2 and e.generator.noise
    assert [s.batch for s in e.stages] == [1024, 1024, 1024, 512, 128]
    assert [s.kimg for s in e.stages] == [300_000, 200_000, 160_000, 110_000, 110_000]
    assert e.g_optim.beta2 == 0.99 and e.ema.beta == 0.9976


def test_ema_rampup():
    ema = get_config("E").ema  # DeepPrivacy2's rule: a half-life of 312.5 steps
    assert ema.beta_at(10**9, 128) == pytest.approx(0.5 ** (1 / 312.5))
    assert ema.beta_at(128, 128) < 0.01  # early on the EMA follows the weights
    assert ema.beta_at(10_000, 128) < ema.beta_at(100_000, 128) < 0.5 ** (1 / 312.5) + 1e-12


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_pipeline_toml_mirrors_config(name):
    path = PIPELINES / f"triagan_{name.replace('-', '_')}.toml"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert load_config(str(path)) == CONFIGS[name]


def test_toml_overrides_and_errors(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text('base = "E"\nname = "E-lr"\n[g_optim]\nlr = 1\n')
    cfg = load_config(str(p))
    assert cfg.name == "E-lr" and cfg.g_optim.lr == 1.0 and isinstance(cfg.g_optim.lr, float)
    assert cfg.stages == CONFIGS["E"].stages
    p.write_text('base = "E"\n[g_optim]\nlearning_rate = 1\n')
    with pytest.raises(ValueError, match="learning_rate"):
        load_config(str(p))
    text = dumps_config(dataclasses.replace(CONFIGS["A"], stages=CONFIGS["E"].stages[:2]))
    p.write_text(text)
    assert load_config(str(p)).stages == CONFIGS["E"].stages[:2]
    with pytest.raises(FileNotFoundError, match="neither a registered name"):
        load_config(str(tmp_path / "missing.toml"))
