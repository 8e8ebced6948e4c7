"""Shared pieces of the anonymiser tests: a tiny random generator saved as a weights directory,
w centres for it, fake generators with exactly known outputs, and the scene builder."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread while an anonymiser test module runs, restored after: on the shared
    2-core CI box a tiny generator's forward was ~25x slower with 2 intra-op threads than with
    1 (0.77 s vs 0.029 s at 18x10 under load). Import it into a test module to use it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def scenes_module():
    """pipelines/anon_scenes.py (glue that imports both packages)."""
    if "anon_scenes" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "anon_scenes", ROOT / "pipelines" / "anon_scenes.py"
        )
        mod = importlib.util.module_from_spec(spec)
        sys.modules["anon_scenes"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["anon_scenes"]


def save_tiny_generator(
    out: Path, stage: str = "72x40", centres: int | None = 4, mode: str | None = None
) -> Path:
    """E-tiny at `stage` with random weights and a non-zero w_avg; optional w centres beside;
    `mode` overrides the conditioning mode recorded in the weights."""
    import dataclasses

    from triagan_model.configs import get_config
    from triagan_model.networks.generator import TriaGANGenerator
    from triagan_model.sampling.truncation import save_centres
    from triagan_model.weights import save_generator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = get_config("E-tiny").generator_config(stage)
    if mode is not None:
        cfg = dataclasses.replace(cfg, conditioning_mode=mode)
    torch.manual_seed(0)
    g = TriaGANGenerator(cfg)
    with torch.no_grad():
        g.mapping(torch.randn(64, cfg.z_dim), update_w_avg=True)
    save_generator(g, out, config_name="E-tiny", stage=stage)
    if centres:
        with torch.no_grad():
            c = g.mapping(
                torch.randn(centres, cfg.z_dim, generator=torch.Generator().manual_seed(1))
            )
        save_centres(out / "w_centers.safetensors", c, source="test")
    return out


class ConstantG:
    """Fake generator: a constant grey level per identity (c + index of the key in `keys`)."""

    def __init__(self, value: float = 0.0) -> None:
        self.value, self.calls = value, []

    def __call__(self, batch: dict) -> torch.Tensor:
        self.calls.append(list(batch["keys"]))
        return torch.full_like(batch["img"], self.value)


def pattern_g(pattern: np.ndarray):
    """DP2's vector fake: out = mask * img + (1 - mask) * pattern."""
    pat = torch.from_numpy(pattern).float()

    def synth(batch: dict) -> torch.Tensor:
        return batch["mask"] * batch["img"] + (1 - batch["mask"]) * pat[None]

    return synth
