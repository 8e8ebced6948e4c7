"""Convert an official ViTPose / mmpose ViTPose `.pth` into transformers' VitPose format.

So the paper's ViTPose-H* runs through `vitpose-hf` without mmpose (refine-spec section 7).
Two source layouts are recognised by their key names:
- original ViTPose repository (mmpose 0.x): `backbone.patch_embed.proj`, `backbone.blocks.N.
  {norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `backbone.last_norm`,
  `keypoint_head.deconv_layers.{0,1,3,4}`, `keypoint_head.final_layer`; `pos_embed` has a
  leading class-token position that the backbone adds to every patch position. Multi-dataset
  checkpoints (ViTPose-H*) also hold `associate_keypoint_heads.*` (AIC, MPII, CrowdPose heads):
  dropped, the COCO head is `keypoint_head`. ViTPose++ mixture-of-experts checkpoints hold
  `mlp.experts.E`: expert E (0 = COCO) is appended to `mlp.fc2`, as ViTPose's
  `tools/model_split.py` does. That script's own `coco.pth` has fc2 already concatenated and
  keeps the experts: recognised by fc2's row count (= the width), the experts then dropped.
- mmpose 1.x (mmpretrain VisionTransformer + HeatmapHead): `backbone.patch_embed.projection`,
  `backbone.layers.N.{ln1,attn.qkv,attn.proj,ln2,ffn.layers.0.0,ffn.layers.1}`, `backbone.ln1`,
  `head.deconv_layers.*`, `head.final_layer`; `pos_embed` has no class-token position (a
  leading one is dropped on load, as mmpretrain does).
transformers adds `position_embeddings[:, :1]` to every patch, so a layout without that
position gets a zero row there. The fused `qkv` splits into query/key/value in that order.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

VARIANTS: dict[str, dict[str, int]] = {
    "small": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 12},
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12},
    "large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16},
    "huge": {"hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 16},
}
_HEAD = {"0.weight": "deconv1.weight", "3.weight": "deconv2.weight"}
_BN = {"1": "batchnorm1", "4": "batchnorm2"}
_ORIGINAL_BLOCK = {
    "norm1": "layernorm_before",
    "attn.proj": "attention.output.dense",
    "norm2": "layernorm_after",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_MMPOSE_BLOCK = {
    "ln1": "layernorm_before",
    "attn.proj": "attention.output.dense",
    "ln2": "layernorm_after",
    "ffn.layers.0.0": "mlp.fc1",
    "ffn.layers.1": "mlp.fc2",
}
_DROPPED = re.compile(r"^(associate_keypoint_heads\.|backbone\.cls_token$|data_preprocessor\.)")


@dataclass(frozen=True)
class Conversion:
    layout: str  # "vitpose" (original repository) or "mmpose"
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    dropped: tuple[str, ...]  # source keys deliberately not converted
    out_dir: Path


def numpy_safe_globals() -> list[tuple[object, str]]:
    """The numpy globals mmcv's checkpoint hooks leave in `meta` (numpy scalars, dtypes, small
    arrays), allowed BY NAME under both numpy 1.x (`numpy.core`) and 2.x (`numpy._core`) module
    paths. None of them runs code: a scalar is rebuilt from a dtype and raw bytes, an array from
    a dtype and bytes (object arrays unpickle their items through the same restricted loader)."""
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    allowed: list[tuple[object, str]] = [(np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype")]
    for core in ("numpy.core", "numpy._core"):
        allowed.append((multiarray.scalar, f"{core}.multiarray.scalar"))
        allowed.append((multiarray._reconstruct, f"{core}.multiarray._reconstruct"))
    for name in dir(np.dtypes):  # numpy >= 1.25 may pickle a dtype by its class
        if name.endswith("DType"):
            allowed.append((getattr(np.dtypes, name), f"numpy.dtypes.{name}"))
    return allowed


def _load_error(pth: Path, e: BaseException) -> ValueError:
    """A one-line cause and fix for a checkpoint torch cannot load under weights_only."""
    text = str(e)
    if m := re.search(r"GLOBAL ([\w.]+)", text):
        return ValueError(
            f"{pth}: refused to unpickle {m[1]} (only tensors, plain containers and numpy "
            "scalars/arrays load; nothing runs code). Re-save just the weights where the file "
            "loads: torch.save(torch.load(f, weights_only=False)['state_dict'], 'clean.pth')"
        )
    # torch prefixes a generic paragraph; the cause is the last line before its doc pointer
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("Check the documentation")]
    first = lines[-1] if lines else type(e).__name__
    return ValueError(
        f"{pth}: not a readable torch checkpoint ({first[:200]}); the file is truncated, "
        "corrupt or of another format: download it again"
    )


def load_state_dict(pth: str | Path) -> dict:
    """torch.load(weights_only=True) of a checkpoint, numpy `meta` allowed (see
    `numpy_safe_globals`); unwraps `state_dict` and `module.`. ValueError naming the file when
    it cannot be loaded."""
    import torch

    pth = Path(pth)
    try:
        with torch.serialization.safe_globals(numpy_safe_globals()):
            obj = torch.load(pth, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile,
            AttributeError, ImportError, TypeError, ValueError) as e:  # fmt: skip
        raise _load_error(pth, e) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{pth}: no state dict found (expected a dict of tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _layout(sd: dict, pth) -> str:
    if any(k.startswith("backbone.blocks.") for k in sd):
        return "vitpose"
    if any(k.startswith("backbone.layers.") for k in sd):
        return "mmpose"
    raise ValueError(f"{pth}: neither a ViTPose (backbone.blocks.*) nor an mmpose 1.x ViTPose "
                     "(backbone.layers.*) checkpoint")  # fmt: skip


def _block_key(rest: str, table: dict[str, str]) -> str | None:
    for src, dst in table.items():
        if rest.startswith(src + "."):
            return dst + rest[len(src) :]
    return None


def _head_key(rest: str) -> str | None:
    """`deconv_layers.N.x` / `final_layer.x` -> transformers' VitPoseClassicDecoder names."""
    if rest.startswith("final_layer."):
        return "conv." + rest[len("final_layer.") :]
    m = re.fullmatch(r"deconv_layers\.(\d+)\.(.+)", rest)
    if not m:
        return None
    if f"{m[1]}.{m[2]}" in _HEAD:
        return _HEAD[f"{m[1]}.{m[2]}"]
    return f"{_BN[m[1]]}.{m[2]}" if m[1] in _BN else None


def _convert_keys(sd: dict, layout: str, hidden: int, expert: int) -> tuple[dict, list[str]]:
    block_re = r"backbone\.(blocks|layers)\.(\d+)\.(.+)"
    table = _ORIGINAL_BLOCK if layout == "vitpose" else _MMPOSE_BLOCK
    prefix = "keypoint_head." if layout == "vitpose" else "head."
    out, dropped, unknown = {}, [], []
    for key, value in sd.items():
        new = None
        if _DROPPED.match(key) or (".mlp.experts." in key):
            dropped.append(key)
            continue
        if m := re.fullmatch(block_re, key):
            i, rest = m[2], m[3]
            base = f"backbone.encoder.layer.{i}."
            if rest.startswith("attn.qkv."):
                kind = rest.rsplit(".", 1)[1]
                if value.shape[0] != 3 * hidden:
                    shape = tuple(value.shape)
                    raise ValueError(f"{key} has shape {shape}, expected {3 * hidden} rows")
                q, k, v = value.split(hidden, dim=0)
                for name, t in (("query", q), ("key", k), ("value", v)):
                    out[f"{base}attention.attention.{name}.{kind}"] = t.clone()
                continue
            new = (base + b) if (b := _block_key(rest, table)) else None
            if rest.startswith("mlp.fc2."):
                value = _moe_fc2(sd, key, value, hidden, expert)
        elif key.startswith(prefix):
            new = "head." + h if (h := _head_key(key[len(prefix) :])) else None
        elif key.startswith(("backbone.patch_embed.proj.", "backbone.patch_embed.projection.")):
            new = "backbone.embeddings.patch_embeddings.projection." + key.rsplit(".", 1)[1]
        elif key.startswith(("backbone.last_norm.", "backbone.ln1.")):
            new = "backbone.layernorm." + key.rsplit(".", 1)[1]
        elif key == "backbone.pos_embed":
            new = "backbone.embeddings.position_embeddings"
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise ValueError(f"unrecognised checkpoint keys (not converted): {unknown[:8]}"
                         f"{' ...' if len(unknown) > 8 else ''}")  # fmt: skip
    return out, dropped


def _moe_fc2(sd: dict, key: str, value, hidden: int, expert: int):
    """ViTPose++: fc2's rows + the chosen expert's rows = the width. A file whose fc2 already
    has `hidden` rows (tools/model_split.py's coco.pth) is used as it is."""
    import torch

    if value.shape[0] == hidden:
        return value
    ex = key.replace(".mlp.fc2.", f".mlp.experts.{expert}.")
    if ex not in sd:
        if key.replace(".mlp.fc2.", ".mlp.experts.0.") in sd:
            raise ValueError(f"--expert {expert}: the checkpoint has no {ex}")
        raise ValueError(f"{key} has {value.shape[0]} output rows, expected the width {hidden}")
    value = torch.cat([value, sd[ex]], dim=0)
    if value.shape[0] != hidden:
        raise ValueError(f"{key} + {ex} give {value.shape[0]} rows, expected the width {hidden}")
    return value


def _fix_pos_embed(sd: dict, layout: str, num_patches: int) -> None:
    import torch

    name = "backbone.embeddings.position_embeddings"
    pos = sd[name]
    if pos.shape[1] == num_patches + 1 and layout == "mmpose":
        pos = pos[:, 1:]  # mmpretrain drops an unused class-token position on load
    if pos.shape[1] == num_patches:
        pos = torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)
    if pos.shape[1] != num_patches + 1:
        raise ValueError(f"pos_embed has {sd[name].shape[1]} positions, expected {num_patches} "
                         f"or {num_patches + 1} (16x12 patches of a 256x192 input)")  # fmt: skip
    sd[name] = pos


def build_config(hidden: int, layers: int, heads: int, mlp_ratio: int):
    """transformers VitPoseConfig of a single-head ViTPose with the classic decoder (COCO-17)."""
    from transformers import VitPoseBackboneConfig, VitPoseConfig

    from fdhclean import fdh

    backbone = VitPoseBackboneConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        mlp_ratio=mlp_ratio, layer_norm_eps=1e-6, out_indices=[layers],
    )  # fmt: skip
    return VitPoseConfig(
        backbone_config=backbone,
        use_simple_decoder=False,
        num_labels=fdh.NUM_KEYPOINTS,
        id2label=dict(enumerate(fdh.COCO_KEYPOINTS)),
        label2id={n: i for i, n in enumerate(fdh.COCO_KEYPOINTS)},
    )


def _write_atomic(model, out_dir: Path, overwrite: bool) -> None:
    from transformers import VitPoseImageProcessor

    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty (use --overwrite)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        VitPoseImageProcessor().save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def convert_vitpose(
    pth: str | Path,
    out_dir: str | Path,
    *,
    variant: str | None = None,
    num_attention_heads: int | None = None,
    expert: int = 0,
    overwrite: bool = False,
) -> Conversion:
    """Convert `pth` and write config.json + model.safetensors + preprocessor_config.json.

    Width and depth come from the tensors; the head count from `variant` (checked against the
    width) or `num_attention_heads`, else from the width of the standard variants.
    """
    from transformers import VitPoseForPoseEstimation

    sd = load_state_dict(pth)
    layout = _layout(sd, pth)
    patch = next((v for k, v in sd.items() if k.startswith("backbone.patch_embed.proj")), None)
    if patch is None or patch.ndim != 4:
        raise ValueError(f"{pth}: no 4-d backbone.patch_embed projection weight")
    hidden = int(patch.shape[0])
    layers = 1 + max(
        int(m[2]) for k in sd if (m := re.match(r"backbone\.(blocks|layers)\.(\d+)\.", k))
    )
    if variant is not None:
        spec = VARIANTS[variant]
        if (spec["hidden_size"], spec["num_hidden_layers"]) != (hidden, layers):
            raise ValueError(f"{pth}: width {hidden} / depth {layers} is not ViTPose-{variant} "
                             f"({spec['hidden_size']} / {spec['num_hidden_layers']})")  # fmt: skip
        heads = spec["num_attention_heads"]
    elif num_attention_heads is not None:
        heads = num_attention_heads
    else:
        by_width = {s["hidden_size"]: s["num_attention_heads"] for s in VARIANTS.values()}
        if hidden not in by_width:
            raise ValueError(f"{pth}: width {hidden} is no standard variant; give the head count")
        heads = by_width[hidden]
    try:
        converted, dropped = _convert_keys(sd, layout, hidden, expert)
        fc1 = converted["backbone.encoder.layer.0.mlp.fc1.weight"]
        config = build_config(hidden, layers, heads, int(fc1.shape[0]) // hidden)
        _fix_pos_embed(converted, layout, num_patches=(256 // 16) * (192 // 16))
    except (ValueError, KeyError) as e:  # every message names the file
        raise ValueError(f"{pth}: {e}") from None
    model = VitPoseForPoseEstimation(config).eval()
    try:
        missing, unexpected = model.load_state_dict(converted, strict=False)
    except RuntimeError as e:  # size mismatches: name the file and the first tensor
        cause = str(e).strip()[:300]
        raise ValueError(f"{pth}: tensor shapes do not fit ViTPose: {cause}") from None
    if missing or unexpected:
        raise ValueError(f"{pth}: conversion incomplete: missing {missing[:8]}, "
                         f"unexpected {unexpected[:8]}")  # fmt: skip
    _write_atomic(model, Path(out_dir), overwrite)
    return Conversion(layout, hidden, layers, heads, tuple(dropped), Path(out_dir))
