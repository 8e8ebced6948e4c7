"""ViTPose .pth -> transformers conversion on random state dicts with the real key layouts.

The converted model's heatmaps are compared with an independent functional re-implementation
of the source architecture (original ViTPose: class-token position added to every patch;
mmpose 1.x / mmpretrain: no class-token position), so a mis-mapped tensor cannot pass.
"""

from __future__ import annotations

import os
import pickle
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
F = torch.nn.functional

C, LAYERS, HEADS, MLP = 32, 2, 4, 4


def _norm(sd, name):
    sd[name + ".weight"] = 1 + 0.1 * torch.randn(C)
    sd[name + ".bias"] = 0.1 * torch.randn(C)


def _head(sd, prefix):
    sd[prefix + "deconv_layers.0.weight"] = 0.05 * torch.randn(C, 256, 4, 4)
    sd[prefix + "deconv_layers.3.weight"] = 0.02 * torch.randn(256, 256, 4, 4)
    for i in (1, 4):
        p = f"{prefix}deconv_layers.{i}."
        sd[p + "weight"] = 1 + 0.1 * torch.randn(256)
        sd[p + "bias"] = 0.1 * torch.randn(256)
        sd[p + "running_mean"] = 0.1 * torch.randn(256)
        sd[p + "running_var"] = 0.5 + torch.rand(256)
        sd[p + "num_batches_tracked"] = torch.tensor(7)
    sd[prefix + "final_layer.weight"] = 0.05 * torch.randn(17, 256, 1, 1)
    sd[prefix + "final_layer.bias"] = 0.1 * torch.randn(17)


def random_state_dict(layout: str, seed: int = 0) -> dict:
    """Tiny widths, the real key names and shape relations of each layout."""
    torch.manual_seed(seed)
    sd = {}
    vit = layout == "vitpose"
    sd["backbone.pos_embed"] = 0.1 * torch.randn(1, 193 if vit else 192, C)
    proj = "backbone.patch_embed.proj." if vit else "backbone.patch_embed.projection."
    sd[proj + "weight"] = 0.05 * torch.randn(C, 3, 16, 16)
    sd[proj + "bias"] = 0.1 * torch.randn(C)
    for i in range(LAYERS):
        b = f"backbone.blocks.{i}." if vit else f"backbone.layers.{i}."
        _norm(sd, b + ("norm1" if vit else "ln1"))
        sd[b + "attn.qkv.weight"] = 0.2 * torch.randn(3 * C, C)
        sd[b + "attn.qkv.bias"] = 0.1 * torch.randn(3 * C)
        sd[b + "attn.proj.weight"] = 0.2 * torch.randn(C, C)
        sd[b + "attn.proj.bias"] = 0.1 * torch.randn(C)
        _norm(sd, b + ("norm2" if vit else "ln2"))
        fc1, fc2 = ("mlp.fc1", "mlp.fc2") if vit else ("ffn.layers.0.0", "ffn.layers.1")
        sd[b + fc1 + ".weight"] = 0.2 * torch.randn(MLP * C, C)
        sd[b + fc1 + ".bias"] = 0.1 * torch.randn(MLP * C)
        sd[b + fc2 + ".weight"] = 0.1 * torch.randn(C, MLP * C)
        sd[b + fc2 + ".bias"] = 0.1 * torch.randn(C)
    _norm(sd, "backbone.last_norm" if vit else "backbone.ln1")
    _head(sd, "keypoint_head." if vit else "head.")
    if vit:  # ViTPose-H* style: extra dataset heads and an unused class token
        _head(sd, "associate_keypoint_heads.0.")
        sd["backbone.cls_token"] = torch.zeros(1, 1, C)
    return sd


def reference_heatmaps(sd: dict, layout: str, x: torch.Tensor) -> torch.Tensor:
    """The source architecture written out with torch.nn.functional."""
    vit = layout == "vitpose"
    g = (lambda k: sd[k]) if vit else (lambda k: sd[_mm(k)])
    t = F.conv2d(x, g("backbone.patch_embed.proj.weight"), g("backbone.patch_embed.proj.bias"),
                 stride=16, padding=2)  # fmt: skip
    t = t.flatten(2).transpose(1, 2)
    pos = sd["backbone.pos_embed"]
    t = t + (pos[:, 1:] + pos[:, :1] if vit else pos)
    d = C // HEADS
    for i in range(LAYERS):
        b = f"backbone.blocks.{i}."
        h = F.layer_norm(t, (C,), g(b + "norm1.weight"), g(b + "norm1.bias"), eps=1e-6)
        qkv = F.linear(h, g(b + "attn.qkv.weight"), g(b + "attn.qkv.bias"))
        q, k, v = qkv.reshape(len(t), -1, 3, HEADS, d).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) * d**-0.5, -1) @ v
        a = a.transpose(1, 2).reshape(len(t), -1, C)
        t = t + F.linear(a, g(b + "attn.proj.weight"), g(b + "attn.proj.bias"))
        h = F.layer_norm(t, (C,), g(b + "norm2.weight"), g(b + "norm2.bias"), eps=1e-6)
        h = F.gelu(F.linear(h, g(b + "mlp.fc1.weight"), g(b + "mlp.fc1.bias")))
        t = t + F.linear(h, g(b + "mlp.fc2.weight"), g(b + "mlp.fc2.bias"))
    t = F.layer_norm(t, (C,), g("backbone.last_norm.weight"), g("backbone.last_norm.bias"), 1e-6)
    y = t.transpose(1, 2).reshape(len(t), C, 16, 12)
    hp = "keypoint_head.deconv_layers."
    for conv, bn in ((0, 1), (3, 4)):
        y = F.conv_transpose2d(y, g(f"{hp}{conv}.weight"), stride=2, padding=1)
        y = F.batch_norm(y, g(f"{hp}{bn}.running_mean"), g(f"{hp}{bn}.running_var"),
                         g(f"{hp}{bn}.weight"), g(f"{hp}{bn}.bias"), training=False)  # fmt: skip
        y = F.relu(y)
    return F.conv2d(y, g("keypoint_head.final_layer.weight"), g("keypoint_head.final_layer.bias"))


def _mm(key: str) -> str:
    """Original-layout name -> mmpose 1.x name (for the reference forward)."""
    return (
        key.replace("keypoint_head.", "head.")
        .replace("patch_embed.proj.", "patch_embed.projection.")
        .replace("backbone.blocks.", "backbone.layers.")
        .replace("backbone.last_norm.", "backbone.ln1.")
        .replace(".norm1.", ".ln1.")
        .replace(".norm2.", ".ln2.")
        .replace(".mlp.fc1.", ".ffn.layers.0.0.")
        .replace(".mlp.fc2.", ".ffn.layers.1.")
    )


def _load(out):
    from transformers import VitPoseForPoseEstimation

    model, info = VitPoseForPoseEstimation.from_pretrained(
        out, local_files_only=True, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.eval()


@pytest.mark.parametrize("layout", ["vitpose", "mmpose"])
def test_converted_forward_matches_reference(tmp_path, layout):
    from fdhclean.estimators.convert import convert_vitpose

    sd = random_state_dict(layout)
    pth = tmp_path / "ckpt.pth"
    torch.save({"state_dict": sd, "meta": {"epoch": 210}}, pth)
    out = tmp_path / "hf"
    conv = convert_vitpose(pth, out, num_attention_heads=HEADS)
    assert conv.layout == layout and (conv.hidden_size, conv.num_hidden_layers) == (C, LAYERS)
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors",
                                               "preprocessor_config.json"}  # fmt: skip
    if layout == "vitpose":
        assert "associate_keypoint_heads.0.final_layer.weight" in conv.dropped
    model = _load(out)
    head = "keypoint_head." if layout == "vitpose" else "head."
    torch.testing.assert_close(model.head.conv.weight, sd[head + "final_layer.weight"])
    torch.testing.assert_close(model.head.deconv2.weight, sd[head + "deconv_layers.3.weight"])
    torch.testing.assert_close(
        model.head.batchnorm1.running_var, sd[head + "deconv_layers.1.running_var"]
    )
    proj = model.backbone.embeddings.patch_embeddings.projection
    assert proj.padding == (2, 2)
    x = torch.randn(2, 3, 256, 192)
    with torch.no_grad():
        ours = model(pixel_values=x).heatmaps
        ref = reference_heatmaps(sd, layout, x)
    assert ours.shape == (2, 17, 64, 48)
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-3)


def test_moe_expert_is_appended_to_fc2(tmp_path):
    from fdhclean.estimators.convert import convert_vitpose

    sd = random_state_dict("vitpose")
    part = 8
    for i in range(LAYERS):
        b = f"backbone.blocks.{i}.mlp."
        sd[b + "fc2.weight"] = sd[b + "fc2.weight"][: C - part].clone()
        sd[b + "fc2.bias"] = sd[b + "fc2.bias"][: C - part].clone()
        for e in range(2):
            sd[b + f"experts.{e}.weight"] = torch.randn(part, MLP * C)
            sd[b + f"experts.{e}.bias"] = torch.randn(part)
    torch.save(sd, tmp_path / "plus.pth")
    convert_vitpose(tmp_path / "plus.pth", tmp_path / "hf", num_attention_heads=HEADS, expert=1)
    fc2 = _load(tmp_path / "hf").backbone.encoder.layer[1].mlp.fc2
    b = "backbone.blocks.1.mlp."
    torch.testing.assert_close(fc2.weight[C - part :], sd[b + "experts.1.weight"])
    torch.testing.assert_close(fc2.bias[: C - part], sd[b + "fc2.bias"])
    with pytest.raises(ValueError, match="has no backbone.blocks.0.mlp.experts.5"):
        convert_vitpose(tmp_path / "plus.pth", tmp_path / "hf5", num_attention_heads=HEADS,
                        expert=5)  # fmt: skip


def test_conversion_errors(tmp_path):
    from fdhclean.estimators.convert import convert_vitpose

    sd = random_state_dict("vitpose")
    torch.save(sd, tmp_path / "a.pth")
    with pytest.raises(ValueError, match="not ViTPose-huge"):
        convert_vitpose(tmp_path / "a.pth", tmp_path / "x", variant="huge")
    with pytest.raises(ValueError, match="no standard variant"):
        convert_vitpose(tmp_path / "a.pth", tmp_path / "x")
    sd["backbone.mystery.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "b.pth")
    with pytest.raises(ValueError, match="backbone.mystery.weight"):
        convert_vitpose(tmp_path / "b.pth", tmp_path / "y", num_attention_heads=HEADS)
    torch.save({"x": torch.zeros(1)}, tmp_path / "c.pth")
    with pytest.raises(ValueError, match="neither a ViTPose"):
        convert_vitpose(tmp_path / "c.pth", tmp_path / "z", num_attention_heads=HEADS)
    assert not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


def test_cli_convert(tmp_path):
    from fdhclean.cli import main

    torch.save({"state_dict": random_state_dict("mmpose")}, tmp_path / "m.pth")
    out = tmp_path / "hf"
    assert main(["convert-vitpose", str(tmp_path / "m.pth"), "--out", str(out),
                 "--num-heads", str(HEADS)]) == 0  # fmt: skip
    assert (out / "model.safetensors").is_file()
    assert (
        main(
            [
                "convert-vitpose",
                str(tmp_path / "m.pth"),
                "--out",
                str(out),
                "--num-heads",
                str(HEADS),
            ]
        )
        == 2
    )  # fmt: skip  (non-empty --out: user error)


class _NumpyOnePickler(pickle._Pickler):
    """Pickles numpy globals under numpy 1.x's module path (`numpy.core.multiarray.scalar`),
    as every mmcv checkpoint written before numpy 2 has them."""

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", "") or ""
        if module.startswith("numpy._core"):
            module = module.replace("numpy._core", "numpy.core")  # torch.save: protocol 2
            self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)


_NUMPY1 = types.SimpleNamespace(Pickler=_NumpyOnePickler, __name__="numpy1_pickle")


def _mmcv_meta() -> dict:
    """What mmcv's CheckpointHook / EvalHook leave in `meta`: numpy scalars, a dtype, arrays."""
    return {"epoch": 210, "iter": 123456, "mmcv_version": "1.3.9", "seed": np.int64(0),
            "hook_msgs": {"best_score": np.float64(0.7718), "best_ckpt": "best_AP_epoch_210.pth",
                          "last_ckpt": "epoch_210.pth"},
            "dtype": np.dtype("float32"), "history": np.array([0.5, 0.7])}  # fmt: skip


@pytest.mark.parametrize("numpy_names", ["numpy1", "numpy2"])
def test_meta_with_numpy_scalars_loads_under_weights_only(tmp_path, numpy_names):
    from fdhclean.estimators.convert import convert_vitpose, load_state_dict

    sd = random_state_dict("vitpose")
    pth = tmp_path / "mmcv.pth"
    kwargs = {"pickle_module": _NUMPY1} if numpy_names == "numpy1" else {}
    torch.save({"state_dict": sd, "meta": _mmcv_meta(), "optimizer": {"state": {}}}, pth, **kwargs)
    raw = pth.read_bytes()
    assert (b"numpy.core.multiarray" in raw) == (numpy_names == "numpy1")
    with pytest.raises(pickle.UnpicklingError):  # plain weights_only refuses this very file
        torch.load(pth, weights_only=True)
    assert set(load_state_dict(pth)) == set(sd)
    conv = convert_vitpose(pth, tmp_path / "hf", num_attention_heads=HEADS)
    assert conv.layout == "vitpose" and _load(tmp_path / "hf") is not None


def _moe(part: int = 8) -> dict:
    """A ViTPose++ state dict: fc2 gives width - part rows, each expert `part` rows."""
    sd = random_state_dict("vitpose", seed=3)
    for i in range(LAYERS):
        b = f"backbone.blocks.{i}.mlp."
        sd[b + "fc2.weight"] = sd[b + "fc2.weight"][: C - part].clone()
        sd[b + "fc2.bias"] = sd[b + "fc2.bias"][: C - part].clone()
        for e in range(3):
            sd[b + f"experts.{e}.weight"] = torch.randn(part, MLP * C)
            sd[b + f"experts.{e}.bias"] = torch.randn(part)
    return sd


def test_model_split_coco_file_converts(tmp_path):
    """tools/model_split.py's coco.pth: fc2 already concatenated with expert 0, the experts and
    associate heads still in the file, mmcv meta beside it. Converts to the same weights as the
    original ViTPose++ file with --expert 0 (the experts are not appended a second time)."""
    from safetensors.torch import load_file

    from fdhclean.estimators.convert import convert_vitpose

    moe = _moe()
    torch.save({"state_dict": moe, "meta": _mmcv_meta()}, tmp_path / "plus.pth")
    split = dict(moe)  # the split script's coco step, as it writes it
    for key in list(split):
        if "mlp.fc2" in key:
            split[key] = torch.cat([split[key], moe[key.replace("fc2.", "experts.0.")]], dim=0)
    torch.save({"state_dict": split, "meta": _mmcv_meta()}, tmp_path / "coco.pth",
               pickle_module=_NUMPY1)  # fmt: skip
    convert_vitpose(tmp_path / "plus.pth", tmp_path / "a", num_attention_heads=HEADS, expert=0)
    conv = convert_vitpose(tmp_path / "coco.pth", tmp_path / "b", num_attention_heads=HEADS)
    assert any(".mlp.experts." in k for k in conv.dropped)
    a = load_file(tmp_path / "a" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    bad = dict(moe)  # fc2 neither split nor whole: a shape error naming the tensor
    bad["backbone.blocks.0.mlp.experts.0.weight"] = torch.randn(3, MLP * C)
    bad["backbone.blocks.0.mlp.experts.0.bias"] = torch.randn(3)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"bad.pth: .*mlp.fc2.* expected the width"):
        convert_vitpose(tmp_path / "bad.pth", tmp_path / "c", num_attention_heads=HEADS)


class _RunsCode:
    def __reduce__(self):
        return (os.getcwd, ())


def test_cli_unpickling_and_shape_errors_exit_2(tmp_path, capsys):
    from fdhclean.cli import main

    sd = random_state_dict("vitpose")
    cases = {}
    torch.save({"state_dict": sd, "meta": {"hook": _RunsCode()}}, tmp_path / "code.pth")
    cases["code.pth"] = "refused to unpickle"
    good = tmp_path / "good.pth"
    torch.save({"state_dict": sd}, good)
    (tmp_path / "cut.pth").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases["cut.pth"] = "not a readable torch checkpoint"
    (tmp_path / "text.pth").write_text("not a checkpoint")
    cases["text.pth"] = "not a readable torch checkpoint"
    wrong = dict(sd)
    wrong["backbone.blocks.1.attn.qkv.weight"] = torch.zeros(2 * C, C)
    torch.save(wrong, tmp_path / "qkv.pth")
    cases["qkv.pth"] = "attn.qkv.weight has shape"
    wrong = dict(sd)
    wrong["keypoint_head.deconv_layers.3.weight"] = torch.zeros(256, 128, 4, 4)
    torch.save(wrong, tmp_path / "head.pth")
    cases["head.pth"] = "tensor shapes do not fit"
    for name, message in cases.items():
        out = tmp_path / f"out-{name}"
        assert main(["convert-vitpose", str(tmp_path / name), "--out", str(out),
                     "--num-heads", str(HEADS)]) == 2, name  # fmt: skip
        err = capsys.readouterr().err
        assert name in err and message in err and "Traceback" not in err, (name, err)
        assert not out.exists()
