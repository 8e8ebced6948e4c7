"""Shared fixtures: a small synthetic FDH set (made once per session) and its part table."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

# Facts computed by the reference implementations (DeepPrivacy2, official ViTPose) lie in
# shared/data beside the checkout (CI clones elsewhere and lays shared/ beside the clone);
# $TRIAGAN_SHARED_DATA overrides. They are never copied into the repository.
SHARED_DATA = Path(
    os.environ.get("TRIAGAN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


def shared_vectors(name: str):
    """Load `shared/data/<name>.npz` (no pickles); fail with the path when it is missing, since
    the reference-exactness tests must run wherever the suite runs (CI has shared/)."""
    import numpy as np

    path = SHARED_DATA / f"{name}.npz"
    if not path.exists():
        hint = "lay shared/ beside the checkout, or set $TRIAGAN_SHARED_DATA"
        pytest.fail(f"{path} is missing: {hint}")
    return np.load(path, allow_pickle=False)


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
        # The marker itself, not `"gpu" in item.keywords`: keywords also hold every parent
        # node's name, so a checkout directory named `gpu` skipped the whole suite.
        if item.get_closest_marker("gpu") is not None:
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
