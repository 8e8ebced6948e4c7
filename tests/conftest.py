"""Shared fixtures: a small synthetic FDH set (made once per session) and its part table."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_collection_modifyitems(config, items):
    """GPU tests skip themselves where there is no CUDA device."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """`fdhclean synth` output: 3 shards x 12 samples per split, plus its part table."""
    from fdhclean.cli import main

    root = tmp_path_factory.mktemp("synth")
    args = ["synth", "--out", str(root), "--shards", "3", "--samples-per-shard", "12"]
    assert main([*args, "--seed", "7"]) == 0
    parts = ["parts", "build", "--segmentation", str(root / "segmentation.json")]
    assert (
        main([*parts, "--cse-mesh", str(root / "mesh.pkl"), "--out", str(root / "parts.npz")]) == 0
    )
    return root


@pytest.fixture()
def synth_copy(synth_root, tmp_path) -> Path:
    """A private copy of the synthetic set that a test may doctor."""
    target = tmp_path / "data"
    shutil.copytree(synth_root, target)
    return target


@pytest.fixture(scope="session")
def tiny_vitpose(tmp_path_factory):
    """A small random-init transformers ViTPose (standard head) saved to a local directory."""
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    backbone = tf.VitPoseBackboneConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, out_indices=[2]
    )
    config = tf.VitPoseConfig(backbone_config=backbone, use_simple_decoder=False, num_labels=17)
    model = tf.VitPoseForPoseEstimation(config).eval()
    path = tmp_path_factory.mktemp("vitpose")
    model.save_pretrained(path)
    return path, model
