"""Resumable training state: one safetensors file per checkpoint, no pickled code (style.md 9).

A state is a nested structure of dicts/lists/tuples/scalars/tensors/numpy arrays (module and
optimiser state dicts, RNG states, progress counters). ``encode`` moves every tensor into a flat
name -> tensor table and keeps a JSON skeleton of the rest; the skeleton goes into the
safetensors header metadata. Files are ``DIR/state-<nimg, 12 digits>.safetensors`` written under
a temporary name and renamed, so a file that exists is complete; ``load_latest`` takes the one
with the most images that reads back. Inference weights are separate (``triagan_model.weights``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from triagan_model.atomic import atomic_path

FORMAT = "triagan-training-state"
VERSION = 1
_NAME = re.compile(r"^state-(\d{12})\.safetensors$")


def encode(obj: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """JSON skeleton of ``obj``; tensors (and numpy arrays) are added to ``tensors``."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous().clone()
        return {"__t__": path}
    if isinstance(obj, np.ndarray):
        tensors[path] = torch.from_numpy(np.ascontiguousarray(obj).copy())
        return {"__np__": path}
    if isinstance(obj, dict):
        return {"__d__": [[k, encode(v, tensors, f"{path}/{k}")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {path!r} in a training state")


def decode(skel: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skel, dict):
        if "__t__" in skel:
            return tensors[skel["__t__"]]
        if "__np__" in skel:
            return tensors[skel["__np__"]].numpy()
        if "__tuple__" in skel:
            return tuple(decode(v, tensors) for v in skel["__tuple__"])
        return {k: decode(v, tensors) for k, v in skel["__d__"]}
    if isinstance(skel, list):
        return [decode(v, tensors) for v in skel]
    return skel


def state_path(directory: str | os.PathLike, nimg: int) -> Path:
    return Path(directory) / f"state-{nimg:012d}.safetensors"


def save(directory: str | os.PathLike, nimg: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` atomically as the checkpoint at ``nimg``; keep the newest ``keep`` files."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    skeleton = encode(state, tensors)
    meta = {"format": FORMAT, "version": str(VERSION), "skeleton": json.dumps(skeleton)}
    out = state_path(directory, nimg)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        save_file(tensors, tmp, metadata=meta)
    for old in list_states(directory)[keep:]:
        old.unlink(missing_ok=True)
    return out


def load(path: str | os.PathLike) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT or meta.get("version") != str(VERSION):
            raise ValueError(f"{path}: not a {FORMAT} v{VERSION} file (metadata {meta})")
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open API)
    return decode(json.loads(meta["skeleton"]), tensors)


def list_states(directory: str | os.PathLike) -> list[Path]:
    """Checkpoint files, newest (most images) first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


class UnreadableCheckpointsError(RuntimeError):
    """Checkpoints exist but none reads back: restarting from zero would lose the stage."""


def load_latest(directory: str | os.PathLike) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that reads back, or None when there is none at all.

    A damaged newest file (e.g. a torn write on another filesystem) is moved aside to
    `*.unreadable` and the next older one is used; if every checkpoint is damaged this raises
    instead of silently restarting the stage from image 0.
    """
    from safetensors import SafetensorError

    states = list_states(directory)
    for p in states:
        try:
            return p, load(p)
        except (OSError, ValueError, KeyError, SafetensorError) as exn:  # damaged: use the older
            print(f"warning: unreadable checkpoint {p} moved aside: {exn}")
            p.rename(p.with_name(p.name + ".unreadable"))
    if states:
        raise UnreadableCheckpointsError(
            f"none of the {len(states)} checkpoints in {directory} reads back (moved aside as "
            "*.unreadable); delete the stage directory to restart it from zero"
        )
    return None
