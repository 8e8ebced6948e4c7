"""`triagan import-dp2` on a random state dict with the reference's key names and shapes, and
`triagan summary`."""

from __future__ import annotations

import warnings

import pytest
import torch

from triagan_model.cli import main
from triagan_model.configs import get_config
from triagan_model.weights import load_generator


def reference_state(dim: int, mults: list[int], blocks: int, hw: tuple[int, int], old=False):
    """Keys/shapes of DeepPrivacy2's TriaGAN (dp2/generator/triagan.py), derived independently
    of this project's modules: layer_scale=True, use_noise=True, maskrcnn mask, 17 keypoints,
    joint maps, w_dim 512, z 64, 2 middle blocks."""
    g = torch.Generator().manual_seed(0)
    s: dict[str, torch.Tensor] = {}

    def t(*shape):
        return torch.randn(*shape, generator=g)

    def conv(p, cin, cout, k, w_dim=True, bias=True, noise_hw=None):
        s[p + "weight"] = t(cout, cin, k, k)
        if bias:
            s[p + "bias"] = t(cout)
        if w_dim:
            for a in ("affine.", "affine_beta."):
                s[p + a + "weight"], s[p + a + "bias"] = t(cin, 512), t(cin)
        if noise_hw:
            s[p + "noise_const"], s[p + "noise_strength"] = t(*noise_hw), t(())

    def block(p, cin, cout, noise_hw=None):
        conv(p + "conv0.", cin, cin, 3, noise_hw=noise_hw)
        conv(p + "conv1.", cin, cout, 3, noise_hw=noise_hw)
        s[p + "skip.weight"] = t(cout, cin, 1, 1)
        s[p + "layer_scale"] = t(1, cout, 1, 1)

    dims, n = [dim * m for m in mults], len(mults)
    s["style_net.fc0.weight"], s["style_net.fc0.bias"] = t(512, 64), t(512)
    s["style_net.fc1.weight"], s["style_net.fc1.bias"] = t(512, 512), t(512)
    s["style_net.w_avg"] = t(512)
    conv("from_rgb.", 30, dim, 7, w_dim=False)
    enc = []
    for lidx in range(n):  # built from the top, then reversed: index 0 = lowest
        d_in, d_out = dims[lidx], dims[min(lidx + 1, n - 1)]
        enc.append([(d_in, d_out if i == blocks - 1 else d_in) for i in range(blocks)])
    for li, lvl in enumerate(reversed(enc)):
        for bi, (cin, cout) in enumerate(lvl):
            block(f"encoder.layers.{li}.{bi}.", cin, cout)
    f = torch.tensor([1.0, 3, 3, 1])
    s["encoder.downsample.resample_filter"] = torch.outer(f, f) / 64
    for lidx in range(n):
        d_in, d_out = dims[min(-lidx, -1)], dims[-1 - lidx]
        r = [x // 2 ** (n - 1 - lidx) for x in hw]
        for i in range(blocks):
            cur = d_in if i == 0 else d_out
            block(f"decoder.layers.{lidx}.{i}.", cur, d_out, noise_hw=r)
            if i == 0 and lidx != 0:
                s[f"decoder.unet_layers.{lidx}.0.weight"] = t(cur, cur, 1, 1)
    for i in range(2):
        block(f"decoder.middle_blocks.{i}.", dims[-1], dims[-1], [x // 2 ** (n - 1) for x in hw])
    s["decoder.upsample.resample_filter"] = torch.outer(f, f) / 64
    rgb = "decoder.to_rgb.0." if old else "decoder.to_rgb."
    s[rgb + "weight"], s[rgb + "bias"] = t(3, dim, 1, 1), t(3)
    return s


@pytest.mark.parametrize("old", [False, True])
def test_import_dp2_round_trip(tmp_path, old):
    ref = reference_state(32, [1, 1, 1], 2, (36, 20), old=old)
    ref["style_net.w_centers"] = torch.randn(8, 512)
    ckpt = tmp_path / "ref.ckpt"
    torch.save({"EMA_generator": ref, "step": 1}, ckpt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["import-dp2", str(ckpt), "--config", "E-tiny", "--out", str(tmp_path / "o")])
    assert rc == 0
    g = load_generator(tmp_path / "o")
    assert g.cfg.resolution == (36, 20)
    assert g.cfg.conditioning_mode == "reference"  # DP2's maps: the weights were trained so
    sd = g.state_dict()
    assert torch.equal(sd["mapping.layers.1.weight"], ref["style_net.fc1.weight"])
    assert torch.equal(
        sd["encoder.levels.2.1.conv0.style_gamma.weight"],
        ref["encoder.layers.2.1.conv0.affine.weight"],
    )
    assert torch.equal(
        sd["decoder.levels.1.0.conv1.style_beta.bias"],
        ref["decoder.layers.1.0.conv1.affine_beta.bias"],
    )
    assert torch.equal(sd["decoder.unet_skips.2.weight"], ref["decoder.unet_layers.2.0.weight"])
    assert torch.equal(
        sd["decoder.middle.1.layer_scale"], ref["decoder.middle_blocks.1.layer_scale"].flatten()
    )
    assert torch.equal(
        sd["decoder.levels.0.1.conv0.noise_const"], ref["decoder.layers.0.1.conv0.noise_const"]
    )
    from triagan_model.sampling.truncation import load_centres

    centres, _ = load_centres(tmp_path / "o" / "w_centers.safetensors")  # for --clusters
    assert torch.equal(centres, ref["style_net.w_centers"])


def test_import_dp2_shape_mismatch_is_a_message(tmp_path, capsys):
    ref = reference_state(16, [1, 1, 1], 2, (36, 20))  # right levels, other width
    torch.save(ref, tmp_path / "narrow.ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["import-dp2", str(tmp_path / "narrow.ckpt"), "--config", "E-tiny",
                   "--out", str(tmp_path / "o")])  # fmt: skip
    assert rc == 1 and "shapes" in capsys.readouterr().err


def test_import_dp2_rejects_mismatch(tmp_path, capsys):
    ref = reference_state(32, [1, 1, 1], 2, (36, 20))
    ref["decoder.some_new_layer.weight"] = torch.zeros(1)
    torch.save(ref, tmp_path / "bad.ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["import-dp2", str(tmp_path / "bad.ckpt"), "--config", "E-tiny", "--out", "x"])
    assert rc == 1 and "no mapping" in capsys.readouterr().err
    ref = reference_state(32, [1, 1, 1], 1, (36, 20))  # 1 block per level: not Config E
    torch.save(ref, tmp_path / "a.ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["import-dp2", str(tmp_path / "a.ckpt"), "--config", "E-tiny", "--out", "x"])
    assert rc == 1 and "does not fit" in capsys.readouterr().err


def test_summary_prints_exact_counts(capsys):
    assert main(["summary", "--config", "E"]) == 0
    out = capsys.readouterr().out
    assert "generator 288x160: 124212639 parameters" in out
    assert "generator 72x40: 110429207 parameters" in out
    assert "discriminator 288x160: 10543112 trainable parameters" in out
    assert get_config("E").stages[-1].name == "288x160"
