"""Projected discriminator: frozen feature networks, heads, registry (spec "Discriminator")."""

from __future__ import annotations

import warnings

import pytest
import torch

from triagan_model.configs import DiscriminatorConfig, get_config
from triagan_model.networks.discriminator import ProjectedDiscriminator
from triagan_model.networks.feature_networks import REGISTRY, get_spec, resolve_weights


def tiny_d(**kw) -> ProjectedDiscriminator:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = get_config("E-tiny").discriminator
    return ProjectedDiscriminator(cfg, **kw)


def test_logit_shapes_and_no_gradient_into_feature_networks():
    d = tiny_d().train()
    img = torch.randn(2, 3, 72, 40, requires_grad=True)
    logits = d(img)  # grouped by feature network: tiny-vit's maps, then tiny-cnn's
    # tiny-vit (224x224 -> 56/28/14/7) then tiny-cnn (288x160 -> 72x40 ... 9x5)
    hw = [[(56, 56), (28, 28), (14, 14), (7, 7)], [(72, 40), (36, 20), (18, 10), (9, 5)]]
    assert [[tuple(t.shape) for t in maps] for maps in logits] == [
        [(2, 1, h, w) for h, w in group] for group in hw
    ]
    sum(t.mean() for maps in logits for t in maps).backward()
    assert img.grad is not None and img.grad.abs().sum() > 0  # flows through to G's images
    for fnet in d.feature_networks.values():
        assert not fnet.training  # pinned in eval mode although D.train() was called
        for p in fnet.parameters():
            assert not p.requires_grad and p.grad is None
    assert all(p.grad is not None for p in d.trainable_parameters())


def test_feature_networks_outside_optimiser_and_state_dict():
    d = tiny_d()
    frozen = {id(p) for f in d.feature_networks.values() for p in f.parameters()}
    assert frozen and not frozen & {id(p) for p in d.trainable_parameters()}
    assert not frozen & {id(p) for p in d.parameters()}
    keys = d.state_dict().keys()
    assert all(k.startswith("heads.") or k == "_extra_state" for k in keys)
    ident = d.state_dict()["_extra_state"]["feature_networks"]
    assert [i["name"] for i in ident] == ["tiny-vit", "tiny-cnn"] and all(
        i["sha256"] for i in ident
    )
    d.train()
    d.train(False)
    assert all(not f.training for f in d.feature_networks.values())


def test_frozen_parts_are_reproducible_and_checked_on_load():
    a, b = tiny_d(), tiny_d()
    assert a.state_dict()["_extra_state"] == b.state_dict()["_extra_state"]
    b.load_state_dict(a.state_dict())
    other = tiny_d(seed=1)  # other random projection
    with pytest.raises(ValueError, match="frozen weights"):
        other.load_state_dict(a.state_dict())


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_trainable_parameters_per_feature_network(name):
    """5.27M trainable per feature network (seed: 5.3M), built on the meta device."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            d = ProjectedDiscriminator(
                DiscriminatorConfig(feature_networks=(name,), pretrained=False)
            )
    assert sum(p.numel() for p in d.trainable_parameters()) == 5_271_556
    spec = get_spec(name)
    assert d.feature_networks[name].projection.ccm[0].in_channels == spec.channels[0]


def test_missing_weights_error_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TRIAGAN_WEIGHTS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="mae-vit-l16.safetensors") as e:
        ProjectedDiscriminator(DiscriminatorConfig(feature_networks=("mae-vit-l16",)))
    assert str(tmp_path) in str(e.value) and "huggingface.co" in str(e.value)


def test_weights_hash_is_checked(tmp_path, monkeypatch):
    import dataclasses

    spec = dataclasses.replace(get_spec("resnet50"), sha256="0" * 64)
    (tmp_path / spec.weights_file).write_bytes(b"not weights")
    with pytest.raises(ValueError, match="sha256"):
        resolve_weights(spec, tmp_path)


def test_random_init_of_a_real_network_warns_loudly():
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED"), torch.device("meta"):
        ProjectedDiscriminator(
            DiscriminatorConfig(feature_networks=("resnet50",), pretrained=False)
        )


def test_pretrained_weights_load_from_the_local_file(tmp_path, monkeypatch):
    """The timm path: a local file in $TRIAGAN_WEIGHTS is loaded (here a random stand-in)."""
    import timm
    from safetensors.torch import save_file

    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    save_file(ref.state_dict(), str(tmp_path / "efficientnet-lite0.safetensors"))
    monkeypatch.setenv("TRIAGAN_WEIGHTS", str(tmp_path))
    d = ProjectedDiscriminator(DiscriminatorConfig(feature_networks=("efficientnet-lite0",)))
    trunk = d.feature_networks["efficientnet-lite0"].trunk
    assert torch.equal(trunk.stages[0][0].weight, ref.conv_stem.weight)
    assert torch.equal(trunk.stages[3][-1][-1].conv_pwl.weight, ref.blocks[6][-1].conv_pwl.weight)
