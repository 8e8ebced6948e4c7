"""`triagan import-dp2` on a random state dict with the reference's key names and shapes, and
`triagan summary`."""

from __future__ import annotations

import os
import sys
import types
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
    assert rc == 2 and "shapes" in capsys.readouterr().err


def test_import_dp2_rejects_mismatch(tmp_path, capsys):
    ref = reference_state(32, [1, 1, 1], 2, (36, 20))
    ref["decoder.some_new_layer.weight"] = torch.zeros(1)
    torch.save(ref, tmp_path / "bad.ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["import-dp2", str(tmp_path / "bad.ckpt"), "--config", "E-tiny", "--out", "x"])
    assert rc == 2 and "no mapping" in capsys.readouterr().err
    ref = reference_state(32, [1, 1, 1], 1, (36, 20))  # 1 block per level: not Config E
    torch.save(ref, tmp_path / "a.ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["import-dp2", str(tmp_path / "a.ckpt"), "--config", "E-tiny", "--out", "x"])
    assert rc == 2 and "does not fit" in capsys.readouterr().err


def test_summary_prints_exact_counts(capsys):
    assert main(["summary", "--config", "E"]) == 0
    out = capsys.readouterr().out
    assert "generator 288x160: 124212639 parameters" in out
    assert "generator 72x40: 110429207 parameters" in out
    assert "discriminator 288x160: 10543112 trainable parameters" in out
    assert get_config("E").stages[-1].name == "288x160"


def _import(args: list[str]) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main(["import-dp2", *args])


def _easydict_module():
    """A module named ``easydict`` with an ``EasyDict`` like the real one (a dict whose items are
    also attributes), so the saved pickle names ``easydict.EasyDict`` as DP2's trainer writes it."""
    mod = types.ModuleType("easydict")

    class EasyDict(dict):
        def __init__(self, d=None, **kwargs):
            for k, v in {**(d or {}), **kwargs}.items():
                setattr(self, k, v)

        def __setattr__(self, name, value):
            super().__setattr__(name, value)
            super().__setitem__(name, value)

        __setitem__ = __setattr__

    EasyDict.__module__, EasyDict.__qualname__ = "easydict", "EasyDict"
    mod.EasyDict = EasyDict
    return mod


def _optim_state(seed: int) -> dict:
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=0.002, betas=(0.0, 0.99))
    net(torch.randn(4, 3, generator=torch.Generator().manual_seed(seed))).sum().backward()
    opt.step()
    return opt.state_dict()


@pytest.fixture
def trainer_checkpoint(tmp_path, monkeypatch):
    """A checkpoint as dp2/gan_trainer.py's tops.checkpointer saves it, written while an
    ``easydict`` module exists, then read where none is installed."""
    monkeypatch.setitem(sys.modules, "easydict", _easydict_module())
    ema = reference_state(32, [1, 1, 1], 2, (36, 20))
    live = {k: v + 1 for k, v in ema.items()}  # the trained (non-EMA) G differs
    scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
              "growth_interval": 2000, "_growth_tracker": 17}  # fmt: skip
    ckpt = {
        "generator": live,
        "discriminator": {"head.0.weight": torch.randn(8, 4)},
        "EMA_generator": ema,
        "D_optimizer": _optim_state(0),
        "G_optimizer": _optim_state(1),
        "train_state": sys.modules["easydict"].EasyDict(
            next_log_step=1000, next_val_step=2000, total_time=1.5
        ),
        "scaler_D": dict(scaler),
        "scaler_G": dict(scaler),
        "global_step": 12345,
        "w_centers": torch.randn(6, 512),
    }
    path = tmp_path / "4096.ckpt"
    torch.save(ckpt, path)
    monkeypatch.delitem(sys.modules, "easydict")
    import importlib.util

    assert importlib.util.find_spec("easydict") is None  # really read without the module
    return path, ckpt


def test_import_dp2_full_training_checkpoint(tmp_path, trainer_checkpoint, capsys):
    path, ckpt = trainer_checkpoint
    # torch's weights-only reader alone refuses it (the reason for the allow-listed one)
    with pytest.raises(Exception, match="easydict"):
        torch.load(path, weights_only=True)
    assert _import([str(path), "--config", "E-tiny", "--out", str(tmp_path / "o")]) == 0
    sd = load_generator(tmp_path / "o").state_dict()
    ema = ckpt["EMA_generator"]
    assert torch.equal(sd["mapping.layers.0.weight"], ema["style_net.fc0.weight"])  # EMA, not G
    from triagan_model.sampling.truncation import load_centres

    centres, _ = load_centres(tmp_path / "o" / "w_centers.safetensors")  # top-level w_centers
    assert torch.equal(centres, ckpt["w_centers"])
    from triagan_model.dp2_import import load_dp2_checkpoint

    back = load_dp2_checkpoint(path)
    assert back["train_state"] == {"next_log_step": 1000, "next_val_step": 2000, "total_time": 1.5}
    assert back["scaler_G"] == ckpt["scaler_G"] and back["global_step"] == 12345
    assert torch.equal(back["D_optimizer"]["state"][0]["exp_avg"],
                       ckpt["D_optimizer"]["state"][0]["exp_avg"])  # fmt: skip
    # --allow-pickle needs the real easydict: the message names it and does not suggest itself
    rc = _import([str(path), "--config", "E-tiny", "--out", str(tmp_path / "p"), "--allow-pickle"])
    err = capsys.readouterr().err
    assert rc == 2 and str(path) in err and "'easydict'" in err and "Traceback" not in err
    assert "rerun with --allow-pickle" not in err


def test_import_dp2_ema_only_dict_with_top_level_centres(tmp_path):
    ref = reference_state(32, [1, 1, 1], 2, (36, 20))
    centres = torch.randn(4, 512)
    torch.save({"EMA_generator": ref, "w_centers": centres}, tmp_path / "ema.ckpt")
    assert (
        _import([str(tmp_path / "ema.ckpt"), "--config", "E-tiny", "--out", str(tmp_path / "o")])
        == 0
    )
    from triagan_model.sampling.truncation import load_centres

    assert torch.equal(load_centres(tmp_path / "o" / "w_centers.safetensors")[0], centres)
    torch.save({"EMA_generator": ref, "w_centers": torch.randn(4, 7)}, tmp_path / "bad.ckpt")
    assert (
        _import([str(tmp_path / "bad.ckpt"), "--config", "E-tiny", "--out", str(tmp_path / "b")])
        == 2
    )


def test_import_dp2_reimport_and_bad_centres_leave_no_stale_files(tmp_path, capsys):
    """A re-import of a checkpoint without centres into the same --out removes the centres the
    first import wrote (they belong to the other generator); centres of the wrong width are
    refused before anything is written."""
    ref = reference_state(32, [1, 1, 1], 2, (36, 20))
    torch.save({"EMA_generator": ref, "w_centers": torch.randn(4, 512)}, tmp_path / "a.ckpt")
    torch.save({"EMA_generator": reference_state(32, [1, 1, 1], 2, (36, 20))}, tmp_path / "b.ckpt")
    out = tmp_path / "o"
    assert _import([str(tmp_path / "a.ckpt"), "--config", "E-tiny", "--out", str(out)]) == 0
    assert (out / "w_centers.safetensors").is_file()
    assert _import([str(tmp_path / "b.ckpt"), "--config", "E-tiny", "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["generator.json", "generator.safetensors"]
    assert "removed" in capsys.readouterr().out
    torch.save({"EMA_generator": ref, "w_centers": torch.randn(4, 7)}, tmp_path / "c.ckpt")
    assert (
        _import([str(tmp_path / "c.ckpt"), "--config", "E-tiny", "--out", str(tmp_path / "c")]) == 2
    )
    assert "w_centers has shape (4, 7)" in capsys.readouterr().err
    assert not (tmp_path / "c").exists() or os.listdir(tmp_path / "c") == []


class _Payload:
    """Unpickling this runs ``touch MARKER``: what a tampered checkpoint could do."""

    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Opaque:
    pass


def test_import_dp2_failures_name_the_file_and_the_cause(tmp_path, capsys, monkeypatch):
    out = ["--config", "E-tiny", "--out", str(tmp_path / "o")]
    # code in the pickle: refused before anything runs
    _Payload.marker = str(tmp_path / "ran")
    torch.save({"EMA_generator": {}, "x": _Payload()}, tmp_path / "evil.ckpt")
    assert _import([str(tmp_path / "evil.ckpt"), *out]) == 2
    err = capsys.readouterr().err
    assert not (tmp_path / "ran").exists() and "evil.ckpt" in err and "system" in err
    # an importable class outside the list: --allow-pickle can help, so it is suggested
    torch.save({"EMA_generator": {}, "x": _Opaque()}, tmp_path / "opaque.ckpt")
    assert _import([str(tmp_path / "opaque.ckpt"), *out]) == 2
    assert "_Opaque" in (err := capsys.readouterr().err) and "rerun with --allow-pickle" in err
    # a class of a module that is not installed: it would not help, so it is not suggested
    fake = types.ModuleType("dp2_private_mod")
    _Opaque.__module__ = "dp2_private_mod"
    fake._Opaque = _Opaque
    monkeypatch.setitem(sys.modules, "dp2_private_mod", fake)
    torch.save({"EMA_generator": {}, "x": _Opaque()}, tmp_path / "gone.ckpt")
    _Opaque.__module__ = __name__
    monkeypatch.delitem(sys.modules, "dp2_private_mod")
    assert _import([str(tmp_path / "gone.ckpt"), *out]) == 2
    err = capsys.readouterr().err
    assert "dp2_private_mod" in err and "not installed" in err and "rerun with" not in err
    # truncated / foreign bytes, a missing file, a non-dict
    ref = reference_state(32, [1, 1, 1], 2, (36, 20))
    torch.save({"EMA_generator": ref}, tmp_path / "whole.ckpt")
    data = (tmp_path / "whole.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.ckpt").write_text("not a checkpoint\n")
    torch.save([1, 2], tmp_path / "list.ckpt")
    cases = {"cut.ckpt": "not a readable", "text.ckpt": "not a readable",
             "missing.ckpt": "no such file", "list.ckpt": "not a checkpoint dict"}  # fmt: skip
    for name, cause in cases.items():
        assert _import([str(tmp_path / name), *out]) == 2, name
        err = capsys.readouterr().err
        assert name in err and cause in err and "Traceback" not in err, err
        assert "rerun with --allow-pickle" not in err
    assert not (tmp_path / "o").exists()  # nothing written on failure
    (tmp_path / "file").write_text("")  # --out under a regular file: cannot be created
    rc = _import([str(tmp_path / "whole.ckpt"), "--config", "E-tiny", "--out",
                  str(tmp_path / "file" / "o")])  # fmt: skip
    assert rc == 1 and "cannot write" in capsys.readouterr().err
