"""Convert the authors' released DeepPrivacy2 TriA-GAN generator state dict to this project's.

The reference names were read from the public DeepPrivacy2 code (``dp2/generator/triagan.py``,
``dp2/generator/base.py``, ``configs/generators/triagan.py``); the mapping is data
(``RENAMES``, ``LEAF_RENAMES``, ``DROPPED``), applied in order, first match wins:

=====================================================  =========================================
reference (DeepPrivacy2)                               this project
=====================================================  =========================================
style_net.fc{i}.{weight,bias}                          mapping.layers.{i}.{weight,bias}
style_net.w_avg                                        mapping.w_avg
style_net.w_centers (if present)                       w_centers.safetensors (multi-modal trunc.)
from_rgb.{weight,bias}                                 from_rgb.{weight,bias}
encoder.layers.{l}.{b}.*                               encoder.levels.{l}.{b}.*
decoder.layers.{l}.{b}.*                               decoder.levels.{l}.{b}.*
decoder.middle_blocks.{i}.*                            decoder.middle.{i}.*
decoder.unet_layers.{l}.0.weight                       decoder.unet_skips.{l}.weight
decoder.to_rgb[.{i}].{weight,bias} (older ckpts: .i)   to_rgb.{weight,bias}
*.affine.{weight,bias}      (gamma(w), bias init 1)    *.style_gamma.{weight,bias}
*.affine_beta.{weight,bias} (beta(w), bias init 0)     *.style_beta.{weight,bias}
*.layer_scale  shape (1, C, 1, 1)                      *.layer_scale  shape (C,)
conv0/conv1/skip weight, bias, noise_strength,         same names
noise_const
encoder.downsample.resample_filter,                    dropped after checking they are the
decoder.upsample.resample_filter                       [1,3,3,1] filter this code hard-wires
=====================================================  =========================================

Both index levels from the lowest resolution up, so no level reordering is needed. The
equalised-lr gains are the same (from_rgb included, see ``generator.FROM_RGB_INPUT_GROUPS``), so
weights are copied unscaled. The released checkpoints store the EMA generator under
``EMA_generator`` (older: ``running_average_generator``).

Files DP2 writes, all read by ``load_dp2_checkpoint`` without running pickled code:

- the released EMA-only dict ``{"EMA_generator": state, ...}`` (``torch.load(weights_only=True)``);
- a full training checkpoint (``tops.checkpointer`` via ``dp2/gan_trainer.py``): ``generator``,
  ``discriminator``, ``EMA_generator``, both optimisers, both AMP grad scalers and
  ``train_state``, an ``easydict.EasyDict``. torch's weights-only unpickler cannot rebuild a dict
  subclass (it sets items on plain dicts only), so such files go through ``_SafeUnpickler``:
  tensors, plain containers and ``easydict.EasyDict`` (read as a plain dict) by name, nothing
  else, whether easydict is installed or not;
- the truncation centres at the top level (``ckpt["w_centers"]``, what ``dp2/infer.py`` reads)
  or inside the generator state (``style_net.w_centers``, which wins, as in ``dp2/infer.py``).
"""

from __future__ import annotations

import codecs
import importlib.util
import pickle
import re
import types
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from triagan_model.networks.layers import fir_filter_2d

CHECKPOINT_KEYS = ("EMA_generator", "running_average_generator", "generator")
RENAMES: tuple[tuple[str, str], ...] = (
    (r"^style_net\.fc(\d+)\.(weight|bias)$", r"mapping.layers.\1.\2"),
    (r"^style_net\.w_avg$", "mapping.w_avg"),
    (r"^from_rgb\.(weight|bias)$", r"from_rgb.\1"),
    (r"^encoder\.layers\.(\d+)\.(\d+)\.(.+)$", r"encoder.levels.\1.\2.\3"),
    (r"^decoder\.layers\.(\d+)\.(\d+)\.(.+)$", r"decoder.levels.\1.\2.\3"),
    (r"^decoder\.middle_blocks\.(\d+)\.(.+)$", r"decoder.middle.\1.\2"),
    (r"^decoder\.unet_layers\.(\d+)\.0\.weight$", r"decoder.unet_skips.\1.weight"),
    (r"^decoder\.to_rgb(?:\.\d+)?\.(weight|bias)$", r"to_rgb.\1"),
)
LEAF_RENAMES: tuple[tuple[str, str], ...] = (
    (r"\.affine_beta\.", ".style_beta."),
    (r"\.affine\.", ".style_gamma."),
)
DROPPED = ("encoder.downsample.resample_filter", "decoder.upsample.resample_filter")
W_CENTERS = "style_net.w_centers"
TOP_W_CENTERS = "w_centers"


class CheckpointError(Exception):
    """A checkpoint that cannot be read or converted; the message names the file and the cause."""


class UnsafeGlobalError(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list (calling it could run code)."""

    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.module, self.name = module, name


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles (torch.save's) rebuild bytes: latin1 only."""
    if not isinstance(obj, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError("pickle calls _codecs.encode other than for latin1 bytes")
    return obj.encode("latin1", errors)


class EasyDictState(dict):
    """What an ``easydict.EasyDict`` in a checkpoint is read as: a plain dict subclass (no
    attribute access), so the attribute copies its pickle also carries land in ``__dict__``."""


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch", "Size"): torch.Size,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("_codecs", "encode"): _latin1_encode,
    ("easydict", "EasyDict"): EasyDictState,
}


class _SafeUnpickler(pickle.Unpickler):
    """Resolves only ``_SAFE_GLOBALS`` (and torch dtypes) BEFORE anything is called; torch's
    loader supplies tensor storages itself (``persistent_load``)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UnsafeGlobalError(module, name)


def _safe_pickle_module() -> types.ModuleType:
    mod = types.ModuleType("triagan_safe_pickle")
    mod.Unpickler = _SafeUnpickler  # type: ignore[attr-defined]
    mod.load = lambda f, **kw: _SafeUnpickler(f, **kw).load()  # type: ignore[attr-defined]
    return mod


def _unsafe_global_message(path: Path, err: UnsafeGlobalError) -> str:
    what = f"{path}: the file pickles {err.module}.{err.name}, outside the safe loader's list"
    if importlib.util.find_spec(err.module.split(".")[0]) is None:
        return (f"{what}, and module {err.module!r} is not installed here, so --allow-pickle "
                f"cannot help: install it, or save the generator's state dict alone")  # fmt: skip
    return f"{what}; if you trust the file, rerun with --allow-pickle"


def load_dp2_checkpoint(path: str | Path, allow_pickle: bool = False) -> dict:
    """The dict of a checkpoint DP2 wrote (module docstring), or CheckpointError."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such file")
    try:
        if allow_pickle:
            ckpt = torch.load(p, map_location="cpu", weights_only=False)
        else:
            try:
                ckpt = torch.load(p, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError:  # e.g. easydict.EasyDict: the allow-listed reader
                ckpt = torch.load(p, map_location="cpu", weights_only=False,
                                  pickle_module=_safe_pickle_module())  # fmt: skip
    except UnsafeGlobalError as e:
        raise CheckpointError(_unsafe_global_message(p, e)) from None
    except ModuleNotFoundError as e:  # --allow-pickle and a class from a missing module
        raise CheckpointError(
            f"{p}: unpickling needs module {e.name!r}, which is not installed here; install it "
            "or read the file without --allow-pickle (easydict needs no module then)"
        ) from None
    except Exception as e:  # torch's errors for corrupt / foreign files vary by version
        raise CheckpointError(
            f"{p}: not a readable PyTorch checkpoint ({type(e).__name__}: {e}); "
            "--allow-pickle cannot help a file that is truncated or of another format"
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{p}: holds a {type(ckpt).__name__}, not a checkpoint dict")
    return ckpt


def top_level_centres(ckpt: dict) -> torch.Tensor | None:
    """``ckpt["w_centers"]`` (what dp2/infer.py registers), if present."""
    centres = ckpt.get(TOP_W_CENTERS)
    if centres is not None and not torch.is_tensor(centres):
        raise ValueError(f"'{TOP_W_CENTERS}' is a {type(centres).__name__}, not a tensor")
    return centres


@dataclass
class Converted:
    state: dict[str, torch.Tensor]
    w_centers: torch.Tensor | None
    n_levels: int
    unmapped: list[str]


def extract_generator_state(ckpt: dict) -> dict[str, torch.Tensor]:
    """The generator state dict inside a DeepPrivacy2 checkpoint (or the dict itself)."""
    for key in CHECKPOINT_KEYS:
        if key in ckpt and isinstance(ckpt[key], dict):
            return ckpt[key]
    if "from_rgb.weight" in ckpt:
        return ckpt
    raise KeyError(
        f"no generator state in the checkpoint: none of {CHECKPOINT_KEYS} and no 'from_rgb.weight'"
        f" (top-level keys: {sorted(ckpt)[:10]})"
    )


def rename(key: str) -> str | None:
    for pattern, repl in RENAMES:
        if re.match(pattern, key):
            new = re.sub(pattern, repl, key)
            for leaf, leaf_repl in LEAF_RENAMES:
                new = re.sub(leaf, leaf_repl, new)
            return new
    return None


def convert_state_dict(state: dict[str, torch.Tensor]) -> Converted:
    """Map reference names and shapes to this project's; unknown keys are returned, not lost."""
    out: dict[str, torch.Tensor] = {}
    unmapped, w_centers = [], None
    for key, t in state.items():
        if key in DROPPED:
            if t.shape != (4, 4) or not torch.allclose(t.float().cpu(), fir_filter_2d()):
                raise ValueError(f"{key} is not the [1,3,3,1] FIR filter this code assumes")
            continue
        if key == W_CENTERS:
            w_centers = t
            continue
        new = rename(key)
        if new is None:
            unmapped.append(key)
            continue
        if new.endswith(".layer_scale"):
            t = t.reshape(-1)
        out[new] = t
    levels = {int(k.split(".")[2]) for k in out if k.startswith("decoder.levels.")}
    return Converted(out, w_centers, len(levels), unmapped)
