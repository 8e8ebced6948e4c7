"""ViTPose .pth -> transformers conversion on random state dicts with the real key layouts.

The converted model's heatmaps are compared with an independent functional re-implementation
of the source architecture (original ViTPose: class-token position added to every patch;
mmpose 1.x / mmpretrain: no class-token position), so a mis-mapped tensor cannot pass.
"""

from __future__ import annotations

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
    assert main(["convert-vitpose", str(tmp_path / "m.pth"), "--out", str(out),
                 "--num-heads", str(HEADS)]) == 1  # fmt: skip
