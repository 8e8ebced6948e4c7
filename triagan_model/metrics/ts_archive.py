"""The tensors of a TorchScript archive (``torch.jit.save``) read without running any of its code.

``torch.jit.load`` compiles the archive's ``code/`` and runs the modules' ``__setstate__``, so a
crafted ``ViT-B-32.pt`` executes whatever it stores. Here only ``<root>/data.pkl`` (the module
tree) is unpickled, by an unpickler whose ``find_class`` imports nothing:

- every ``__torch__.*`` class (the archive's scripted modules) becomes an inert container that
  keeps the state pickle hands to ``BUILD`` (a dict of attributes for ordinary modules);
- ``torch._utils._rebuild_tensor_v2`` is replaced by a local function that views a storage;
- the storage classes (``torch.FloatStorage``, ...) only name a dtype;
- ``collections.OrderedDict`` (the empty backward-hooks dict) and ``torch.jit._pickle``'s
  identity helpers (``restore_type_tag``, ``build_*list``) are the only other callables;
  any other global is refused with ``ArchiveError``.

A persistent id ``('storage', <StorageClass>, key, location, numel)`` names ``<root>/data/<key>``,
whose raw little-endian bytes are the storage; tensors are built on the CPU whatever ``location``
says. The module tree is then walked: attribute dicts give dotted names (``visual.conv1.weight``)
to the tensors, as ``state_dict()`` would. A module whose custom ``__getstate__`` pickles a tuple
instead of a dict has no attribute names, so its tensors are not collected.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path

import torch

_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}  # fmt: skip


class ArchiveError(ValueError):
    """The archive cannot be read as tensors without running code (the message says why)."""


class _Inert:
    """Stands for any ``__torch__.*`` class: holds the pickled state, runs nothing."""

    def __init__(self, *args: object) -> None:
        self.state: object = None

    def __setstate__(self, state: object) -> None:  # pickle's BUILD: keep, never interpret
        self.state = state


class _StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _identity(value: object, *_tags: object) -> object:
    return value


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, *_meta):
    """``_rebuild_tensor_v2``'s arithmetic on a flat CPU tensor (the storage)."""
    if not isinstance(storage, torch.Tensor):
        raise ArchiveError("a tensor record without a storage")
    return storage.as_strided(tuple(size), tuple(stride), int(offset))


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch.jit._pickle", "restore_type_tag"): _identity,
    ("torch.jit._pickle", "build_intlist"): _identity,
    ("torch.jit._pickle", "build_doublelist"): _identity,
    ("torch.jit._pickle", "build_boollist"): _identity,
    ("torch.jit._pickle", "build_tensorlist"): _identity,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str) -> None:
        super().__init__(io.BytesIO(data))
        self._zip, self._root = archive, root
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's protocol
        if module == "__torch__" or module.startswith("__torch__."):
            return _Inert
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise ArchiveError(f"it pickles {module}.{name}, which is not read (it could run code)")

    def persistent_load(self, pid: object) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ArchiveError(f"unknown persistent record {str(pid)[:80]}")
        _, kind, key, _location, numel = pid
        if not isinstance(kind, _StorageType):
            raise ArchiveError(f"storage {key!r} of an unknown type")
        if key not in self._storages:
            try:
                raw = self._zip.read(f"{self._root}/data/{key}")
            except KeyError:
                raise ArchiveError(f"storage {key!r} is missing from the archive") from None
            flat = torch.frombuffer(bytearray(raw), dtype=kind.dtype) if raw else torch.empty(
                0, dtype=kind.dtype)  # fmt: skip
            if flat.numel() != numel:
                raise ArchiveError(f"storage {key!r} holds {flat.numel()} values, not {numel}")
            self._storages[key] = flat
        return self._storages[key]


def _collect(obj: object, prefix: str, out: dict[str, torch.Tensor], seen: set[int]) -> None:
    """Named tensors of the module tree, depth first (``seen`` guards against shared objects)."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, _Inert):
        _collect(obj.state, prefix, out, seen)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                continue
            if isinstance(value, torch.Tensor):
                out.setdefault(prefix + key, value)
            elif isinstance(value, (_Inert, dict)):
                _collect(value, f"{prefix}{key}.", out, seen)


def _root_of(archive: zipfile.ZipFile) -> str:
    roots = [n[: -len("/data.pkl")] for n in archive.namelist() if n.endswith("/data.pkl")]
    roots = [r for r in roots if "/" not in r]
    if len(roots) != 1:
        raise ArchiveError("no single <root>/data.pkl (not a torch.jit.save archive)")
    if roots[0] + "/byteorder" in archive.namelist():
        order = archive.read(roots[0] + "/byteorder").decode(errors="replace").strip()
        if order != "little":
            raise ArchiveError(f"byte order {order!r} (only little-endian archives are read)")
    return roots[0]


def read_torchscript_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """``{dotted name: tensor}`` of the archive's module tree (CPU, stored dtype), no code run."""
    with zipfile.ZipFile(path) as archive:
        root = _root_of(archive)
        try:
            tree = _Unpickler(archive.read(f"{root}/data.pkl"), archive, root).load()
        except (pickle.UnpicklingError, EOFError, TypeError, AttributeError, IndexError) as exn:
            raise ArchiveError(f"data.pkl is corrupt ({type(exn).__name__}: {exn})") from None
    out: dict[str, torch.Tensor] = {}
    _collect(tree, "", out, set())
    return out
