"""Load pickles that may only hold plain containers and numpy arrays (refine-spec section 1).

DensePose ships its `smpl_27554` mesh as a pickle. Unpickling calls whatever global the file
names, so a tampered file could run code. `load_pickle_restricted` resolves only a fixed list of
globals (numpy array/dtype/scalar reconstruction and builtin containers) and refuses everything
else *before* calling it, so a payload never runs.
"""

from __future__ import annotations

import codecs
import os
import pickle
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np


class UnsafePickleError(Exception):
    """A pickle names a global outside the allowed list (it could run code)."""


def _numpy_internal(name: str, attr: str) -> Any:
    """numpy >= 2 moved `numpy.core` to `numpy._core`; resolve without the deprecated shim."""
    import importlib

    try:
        module = importlib.import_module(f"numpy._core.{name}")
    except ImportError:  # numpy 1.x
        module = importlib.import_module(f"numpy.core.{name}")
    return getattr(module, attr)


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """`_codecs.encode` as Python 3 writes bytes into protocol-2 pickles: latin1 only."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise UnsafePickleError(f"pickle calls _codecs.encode with encoding {encoding!r}")
    if not isinstance(obj, str):
        raise UnsafePickleError("pickle calls _codecs.encode on a non-string")
    return obj.encode("latin1", errors)


def _allowed_globals() -> dict[tuple[str, str], Callable[[], Any]]:
    """(module, name) -> a resolver; resolved lazily so only what a file names is touched."""
    allowed: dict[tuple[str, str], Callable[[], Any]] = {}
    for prefix in ("numpy.core", "numpy._core"):
        for attr in ("_reconstruct", "scalar"):
            allowed[(f"{prefix}.multiarray", attr)] = lambda a=attr: _numpy_internal(
                "multiarray", a
            )
        # Protocol 5 pickles rebuild contiguous arrays with numeric._frombuffer.
        allowed[(f"{prefix}.numeric", "_frombuffer")] = lambda: _numpy_internal(
            "numeric", "_frombuffer"
        )
    allowed[("numpy", "ndarray")] = lambda: np.ndarray
    allowed[("numpy", "dtype")] = lambda: np.dtype
    containers = {
        "dict": dict,
        "list": list,
        "tuple": tuple,
        "set": set,
        "frozenset": frozenset,
        "bytearray": bytearray,
        "bytes": bytes,
        "complex": complex,
    }
    for module in ("builtins", "__builtin__"):  # __builtin__: Python-2 files
        for name, obj in containers.items():
            allowed[(module, name)] = lambda o=obj: o
    allowed[("collections", "OrderedDict")] = lambda: OrderedDict
    allowed[("_codecs", "encode")] = lambda: _latin1_encode
    return allowed


_ALLOWED = _allowed_globals()


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose `find_class` knows only `_ALLOWED`."""

    def find_class(self, module: str, name: str) -> Any:
        resolver = _ALLOWED.get((module, name))
        if resolver is None:
            raise UnsafePickleError(
                f"pickle refers to the global {module}.{name}, which is not allowed "
                "(only numpy arrays and plain containers may be loaded)"
            )
        return resolver()

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"pickle uses a persistent id {pid!r}, which is not allowed")


def loads_restricted(stream: BinaryIO) -> object:
    """Unpickle from an open binary stream with the restricted unpickler.

    encoding="latin1" reads Python-2 `str` objects (DensePose's files are Python-2 era) as
    latin1, which is what numpy needs to rebuild array data from them.
    """
    return RestrictedUnpickler(stream, encoding="latin1").load()


def load_pickle_restricted(path: str | os.PathLike[str]) -> object:
    """Load a pickle file holding only containers and numpy arrays; else UnsafePickleError."""
    try:
        with open(path, "rb") as stream:
            return loads_restricted(stream)
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from exc
