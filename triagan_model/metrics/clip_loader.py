"""A CLIP ViT image tower from a local file: OpenAI's TorchScript ``ViT-B-32.pt`` or a state dict.

OpenAI's released ``ViT-B-32.pt`` is a TorchScript archive (``torch.jit.save`` of the whole CLIP
model), which ``torch.load(weights_only=True)`` refuses and ``open_clip.create_model(pretrained=)``
cannot open. DeepPrivacy2's FID_CLIP loads it with OpenAI's ``clip.load("ViT-B/32")``
(``jit=False``: the archive's state dict rebuilt into the eager model, float32 on CPU) and keeps
``.visual``. Here:

- a TorchScript archive is NOT opened with ``torch.jit.load`` (that compiles the archive's code
  and runs its ``__setstate__``): ``ts_archive.read_torchscript_tensors`` unpickles only its
  ``data.pkl`` with an allow-list that imports and runs nothing and names the tensors as
  ``state_dict()`` would; a ``.safetensors`` file or a plain ``torch.save`` state dict
  (``weights_only=True``) is read as it is;
- the image tower's tensors are those under ``visual.`` (a whole CLIP model) or the top-level
  ones (a tower saved alone); the architecture is read from their shapes, as OpenAI's
  ``build_model`` does (width from ``conv1``, patch size from its kernel, image size from the
  positional embedding, layers from the residual blocks, heads = width / 64, output dimension
  from ``proj``), and built as open_clip's ``VisionTransformer`` with QuickGELU (OpenAI's
  activation), whose tensor names are OpenAI's; weights are cast to float32 (OpenAI stores fp16).

Every failure is a ``ClipWeightsError`` naming the file and what is wrong with it.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import torch
from torch import nn

_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.attn\.in_proj_weight$")
_REQUIRED = ("conv1.weight", "class_embedding", "positional_embedding", "proj", "ln_post.weight")
_HEAD_WIDTH = 64  # OpenAI's CLIP ViTs: heads = width // 64


class ClipWeightsError(ValueError):
    """A CLIP weights file that cannot be read as a ViT image tower (the message says why)."""


def is_torchscript_archive(path: str | Path) -> bool:
    """True for a ``torch.jit.save`` zip (it holds TorchScript code and ``constants.pkl``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.split("/", 1)[-1] == "constants.pkl" for n in names) or any(
        "/code/" in f"/{n}" for n in names
    )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a TorchScript archive, a safetensors file or a ``torch.save`` state dict."""
    p = Path(path)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(p))
        if is_torchscript_archive(p):
            from triagan_model.metrics.ts_archive import ArchiveError, read_torchscript_tensors

            try:
                return read_torchscript_tensors(p)
            except ArchiveError as exn:
                raise ClipWeightsError(f"{p}: cannot read CLIP weights from this TorchScript "
                                       f"archive: {exn}") from None  # fmt: skip
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ClipWeightsError(
            f"{p}: cannot read CLIP weights: the file pickles objects other than tensors and plain "
            "containers, which are not unpickled (that could run code); save the CLIP model's "
            "state_dict(), or use OpenAI's TorchScript ViT-B-32.pt"
        ) from None
    except (RuntimeError, OSError, ValueError, zipfile.BadZipFile, EOFError) as exn:
        raise ClipWeightsError(
            f"{p}: cannot read CLIP weights ({type(exn).__name__}: {str(exn).splitlines()[0]}); "
            "expected OpenAI's TorchScript ViT-B-32.pt, a .safetensors file or a torch.save "
            "state dict of a CLIP ViT"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # open_clip training checkpoints
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ClipWeightsError(f"{p}: holds a {type(obj).__name__}, not a state dict of tensors")
    return obj


def visual_state(state: dict[str, torch.Tensor], path: str | Path) -> dict[str, torch.Tensor]:
    """The image tower's tensors (``visual.`` prefix removed, ``module.`` from DDP too)."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("visual.") for k in state):
        state = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        kind = "a ResNet CLIP" if "attnpool.c_proj.weight" in state else "not a CLIP ViT"
        raise ClipWeightsError(f"{path}: {kind} image tower (missing {missing}); FID_CLIP uses "
                               "OpenAI's ViT-B/32 (ViT-B-32.pt)")  # fmt: skip
    return state


def build_visual(state: dict[str, torch.Tensor], path: str | Path) -> nn.Module:
    """open_clip's ``VisionTransformer`` with the architecture the tensors describe, loaded."""
    from open_clip.transformer import QuickGELU, VisionTransformer

    width, _, patch, _ = state["conv1.weight"].shape
    layers = len([k for k in state if _BLOCK.match(k)])
    positions = state["positional_embedding"].shape[0]
    grid = round((positions - 1) ** 0.5)
    if layers == 0 or width % _HEAD_WIDTH or grid * grid + 1 != positions:
        raise ClipWeightsError(f"{path}: tensor shapes do not describe a CLIP ViT (width {width}, "
                               f"{layers} blocks, {positions} positions)")  # fmt: skip
    mlp = state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width
    net = VisionTransformer(image_size=patch * grid, patch_size=patch, width=width, layers=layers,
                            heads=width // _HEAD_WIDTH, mlp_ratio=mlp,
                            output_dim=state["proj"].shape[1], act_layer=QuickGELU)  # fmt: skip
    try:
        net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as exn:
        raise ClipWeightsError(f"{path}: not an OpenAI-layout CLIP ViT image tower: "
                               f"{str(exn).splitlines()[-1].strip()}") from None  # fmt: skip
    return net.float().eval()


def load_clip_visual(path: str | Path) -> nn.Module:
    """The CLIP ViT image tower in ``path`` (float32, eval mode): images -> projected embedding."""
    return build_visual(visual_state(read_state_dict(path), path), path)
