"""Resumable training state: one safetensors file per checkpoint, no pickled code (style.md 9).

A state is a nested structure of dicts/lists/tuples/scalars/tensors/numpy arrays (module and
optimiser state dicts, RNG states, progress counters). ``encode`` moves every tensor into a flat
name -> tensor table and keeps a JSON skeleton of the rest; the skeleton goes into the
safetensors header metadata. Files are ``DIR/state-<nimg, 12 digits>.safetensors`` written under
a temporary name and renamed, so a file that exists is complete; then its size and sha256 go
into ``state-<nimg>.safetensors.sha256``. ``load_latest`` takes the one with the most images
that matches its record and reads back. Inference weights are separate (``triagan_model.weights``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from triagan_model.atomic import atomic_path, atomic_write_json, sha256_file

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
    # Written after the state: a state without its record was cut off before it (see load_latest)
    atomic_write_json(sidecar_path(out), {"file": out.name, "bytes": out.stat().st_size,
                                          "sha256": sha256_file(out)})  # fmt: skip
    for old in list_states(directory)[keep:]:
        old.unlink(missing_ok=True)
        sidecar_path(old).unlink(missing_ok=True)
    return out


def sidecar_path(state: str | os.PathLike) -> Path:
    """``state-<nimg>.safetensors.sha256``: the checkpoint's size and sha256 (JSON)."""
    return Path(f"{state}.sha256")


class CheckpointMismatchError(ValueError):
    """A checkpoint's bytes are not the ones recorded when it was written."""


def verify(path: Path, legacy: bool) -> None:
    """Check ``path`` against its sidecar; safetensors has no checksum, so a flipped byte in a
    tensor would otherwise resume silently. ``legacy``: no checkpoint of the directory has a
    sidecar (written before sidecars existed), so it is loaded unchecked, with a warning."""
    side = sidecar_path(path)
    if not side.is_file():
        if legacy:
            print(f"warning: {path} has no recorded sha256 (older run); resuming unchecked")
            return
        raise CheckpointMismatchError(f"no {side.name}: the run stopped before recording it")
    try:
        record = json.loads(side.read_text())
        expected = record["sha256"]
    except (ValueError, KeyError, TypeError) as exn:
        raise CheckpointMismatchError(f"{side} is unreadable ({exn!r})") from None
    actual = sha256_file(path)
    if actual != expected:
        raise CheckpointMismatchError(f"sha256 {actual[:16]}... is not the recorded "
                                      f"{str(expected)[:16]}... (corrupt file)")  # fmt: skip


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

    A damaged newest file (a torn write on another filesystem, bytes that differ from the
    sha256 recorded beside it, or no record because the run was killed between writing the
    two) is moved aside to `*.unreadable`, with a message, and the next older one is used; if
    every checkpoint is damaged this raises instead of silently restarting the stage from 0.
    """
    from safetensors import SafetensorError

    states = list_states(directory)
    legacy = not any(sidecar_path(p).is_file() for p in states)
    for p in states:
        try:
            verify(p, legacy)
            return p, load(p)
        except (OSError, ValueError, KeyError, SafetensorError) as exn:  # damaged: use the older
            print(f"warning: checkpoint {p} moved aside as {p.name}.unreadable: {exn}")
            p.rename(p.with_name(p.name + ".unreadable"))
            if sidecar_path(p).is_file():
                sidecar_path(p).rename(p.with_name(p.name + ".unreadable.sha256"))
    if states:
        raise UnreadableCheckpointsError(
            f"none of the {len(states)} checkpoints in {directory} reads back (moved aside as "
            "*.unreadable); delete the stage directory to restart it from zero"
        )
    return None
