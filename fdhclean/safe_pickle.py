"""Load pickles that may only hold plain containers and numpy arrays (refine-spec section 1).

DensePose ships its `smpl_27554` mesh as a pickle. Unpickling calls whatever global the file
names, so a tampered file could run code. `load_pickle_restricted` resolves only a fixed list of
globals (numpy array/dtype/scalar reconstruction and builtin containers) and refuses everything
else *before* calling it, so a payload never runs.

A pickle can also be built to exhaust memory without running code: a counted opcode declaring
2**60 bytes (the C unpickler allocates before reading), a memo index of 2**32 (the memo list is
resized to it), `bytearray(10**12)`, an array whose header claims 10**12 elements. The file is
read whole (bounded by `max_bytes`), its opcodes are checked against what the file holds before
anything is unpickled, and the allowed constructors refuse sizes the file cannot back.
"""

from __future__ import annotations

import codecs
import io
import math
import os
import pickle
import pickletools
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

MAX_PICKLE_BYTES = 1 << 28  # DensePose's smpl_27554.pkl is a few MB


class UnsafePickleError(Exception):
    """A pickle names a global outside the allowed list (it could run code) or is built to
    allocate more memory than its own size can back."""


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


_LIMIT = [MAX_PICKLE_BYTES]  # the bytes a constructor may allocate: the file's size


def _check_array_size(shape: Any, dtype: Any) -> None:
    try:
        dims = [int(d) for d in (shape if isinstance(shape, (tuple, list)) else (shape,))]
        nbytes = math.prod(dims) * np.dtype(dtype).itemsize
    except (TypeError, ValueError) as exc:
        raise UnsafePickleError(f"pickle builds an array with shape {shape!r}: {exc}") from None
    if min(dims, default=0) < 0 or nbytes > _LIMIT[0]:
        raise UnsafePickleError(
            f"pickle builds an array of shape {tuple(dims)} ({nbytes} bytes), more than the "
            f"file's {_LIMIT[0]} bytes can hold"
        )


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
    subtype = np.ndarray if subtype is _ndarray else subtype  # `numpy.ndarray` resolves to it
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"pickle reconstructs {subtype!r}; only numpy.ndarray is allowed")
    _check_array_size(shape, dtype)
    return _numpy_internal("multiarray", "_reconstruct")(subtype, shape, dtype)


def _ndarray(shape: Any, dtype: Any = float, *args: Any, **kwargs: Any) -> np.ndarray:
    _check_array_size(shape, dtype)
    return np.ndarray(shape, dtype, *args, **kwargs)


def _sized(kind: type) -> Callable[..., Any]:
    """`bytes`/`bytearray`/containers from data the file holds, never from a count
    (`bytearray(10**12)`) or a lazily expanded iterable."""

    def build(*args: Any) -> Any:
        if args and not isinstance(args[0], (str, bytes, bytearray, list, tuple, dict)):
            raise UnsafePickleError(
                f"pickle calls {kind.__name__}() on a {type(args[0]).__name__}; only "
                "materialised data is allowed"
            )
        if args and kind not in (bytes, bytearray) and isinstance(args[0], (str, bytes)):
            raise UnsafePickleError(f"pickle expands a string into a {kind.__name__}")
        return kind(*args)

    return build


def _allowed_globals() -> dict[tuple[str, str], Callable[[], Any]]:
    """(module, name) -> a resolver; resolved lazily so only what a file names is touched."""
    allowed: dict[tuple[str, str], Callable[[], Any]] = {}
    for prefix in ("numpy.core", "numpy._core"):
        allowed[(f"{prefix}.multiarray", "_reconstruct")] = lambda: _reconstruct
        allowed[(f"{prefix}.multiarray", "scalar")] = lambda: _numpy_internal(
            "multiarray", "scalar"
        )
        # Protocol 5 pickles rebuild contiguous arrays with numeric._frombuffer.
        allowed[(f"{prefix}.numeric", "_frombuffer")] = lambda: _numpy_internal(
            "numeric", "_frombuffer"
        )
    allowed[("numpy", "ndarray")] = lambda: _ndarray
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
            builder = obj if obj is complex else _sized(obj)
            allowed[(module, name)] = lambda b=builder: b
    allowed[("collections", "OrderedDict")] = lambda: _sized(OrderedDict)
    allowed[("_codecs", "encode")] = lambda: _latin1_encode
    return allowed


_ALLOWED = _allowed_globals()


def _check_dtype(dtype: np.dtype) -> None:
    """A dtype rebuilt from a pickle's state must be one numpy itself would make: its flags
    come from the file, and flags that claim object references on plain numbers would make
    numpy treat array bytes as pointers."""
    try:
        fresh = np.dtype(dtype.str)
    except TypeError as exc:
        raise UnsafePickleError(f"pickle builds an invalid dtype ({exc})") from None
    plain = dtype.names is None and dtype.subdtype is None and dtype.kind in "biufcSUO"
    if not plain or dtype.flags != fresh.flags or dtype.itemsize != fresh.itemsize:
        raise UnsafePickleError(
            f"pickle builds dtype {dtype.str} with state numpy would not make (flags "
            f"{dtype.flags}, itemsize {dtype.itemsize}); only plain dtypes are allowed"
        )


class RestrictedUnpickler(pickle._Unpickler):  # noqa: SLF001
    """An Unpickler whose `find_class` knows only `_ALLOWED`.

    The pure-Python unpickler (CPython's own, the C one's reference) so that BUILD can be
    checked: a dtype's `__setstate__` takes its flags from the file and is validated before the
    dtype is used; `ndarray.__setstate__` may not exceed the file's size.
    """

    dispatch = dict(pickle._Unpickler.dispatch)  # noqa: SLF001

    def load_build(self) -> None:
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, np.ndarray) and isinstance(state, tuple) and len(state) >= 4:
            _check_array_size(state[1], state[2] if isinstance(state[2], np.dtype) else "u1")
        super().load_build()
        if isinstance(inst, np.dtype):
            _check_dtype(inst)

    dispatch[pickle.BUILD[0]] = load_build

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


def check_opcodes(data: bytes) -> None:
    """Refuse a pickle whose opcodes ask for more than the file holds, before unpickling.

    `pickletools.genops` reads every argument (a counted string longer than what remains is
    an error there, not an allocation); frames must fit in the file and memo indices must be
    dense (a real pickler numbers them 0, 1, 2, ...), so the C unpickler never sizes a buffer
    or its memo from a number in the file.
    """
    count = 0
    try:
        for op, arg, pos in pickletools.genops(io.BytesIO(data)):
            count += 1
            if op.name == "FRAME" and arg > len(data) - pos:
                raise UnsafePickleError(f"pickle frame at byte {pos} claims {arg} bytes")
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and not 0 <= arg <= count:
                raise UnsafePickleError(f"pickle memo index {arg} at byte {pos} is not dense")
    except ValueError as exc:  # truncated arguments, unknown opcodes
        raise ValueError(f"not a readable pickle ({exc})") from None


def loads_restricted(stream: BinaryIO, max_bytes: int = MAX_PICKLE_BYTES) -> object:
    """Unpickle from an open binary stream with the restricted unpickler.

    At most `max_bytes` are read; encoding="latin1" reads Python-2 `str` objects (DensePose's
    files are Python-2 era) as latin1, which is what numpy needs to rebuild array data.
    """
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UnsafePickleError(f"pickle is larger than {max_bytes} bytes")
    check_opcodes(data)
    _LIMIT[0] = len(data)
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    finally:
        _LIMIT[0] = MAX_PICKLE_BYTES


def load_pickle_restricted(
    path: str | os.PathLike[str], max_bytes: int = MAX_PICKLE_BYTES
) -> object:
    """Load a pickle file holding only containers and numpy arrays; else UnsafePickleError
    (code or memory it could claim) or ValueError (not a pickle), each naming the file."""
    try:
        with open(path, "rb") as stream:
            return loads_restricted(stream, max_bytes)
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}") from None
    except MemoryError:  # a last resort: every known way to ask for memory is refused above
        raise UnsafePickleError(f"{path}: unpickling it ran out of memory") from None
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001  (a malformed pickle fails in many ways: AttributeError,
        # SystemError, LookupError ... from whatever opcode is malformed; no code of its own ran)
        raise ValueError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from None
