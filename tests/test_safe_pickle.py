"""The restricted unpickler: numpy arrays and containers load, code-running pickles do not."""

from __future__ import annotations

import os
import pickle
import struct
from collections import OrderedDict

import numpy as np
import pytest

from fdhclean.safe_pickle import UnsafePickleError, load_pickle_restricted


class _RunsShell:
    """Unpickling this with plain pickle would run `touch <marker>`."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Evals:
    def __reduce__(self):
        return (eval, ("1 + 1",))


class _Plain:
    """An ordinary class instance (rebuilt through copyreg, i.e. importing arbitrary code)."""

    def __init__(self) -> None:
        self.x = 1


def _write(tmp_path, obj, protocol, name="data.pkl"):
    path = tmp_path / name
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_dict_of_arrays_loads(tmp_path, protocol):
    obj = {
        "vertices": np.zeros((5, 3), dtype=np.float32),
        "faces": np.arange(12, dtype=np.int64).reshape(4, 3),
        "ids": [np.int32(7), (1, 2.5), {"nested": np.array([True, False])}],
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "ordered": OrderedDict(a=1),
        "other": {frozenset({1}), b"raw"} if protocol > 2 else [b"raw"],
    }
    loaded = load_pickle_restricted(_write(tmp_path, obj, protocol))
    assert loaded.keys() == obj.keys()
    for key in ("vertices", "faces", "fortran"):
        assert loaded[key].dtype == obj[key].dtype
        np.testing.assert_array_equal(loaded[key], obj[key])
    assert loaded["ids"][0] == np.int32(7) and loaded["ids"][1] == (1, 2.5)
    np.testing.assert_array_equal(loaded["ids"][2]["nested"], [True, False])
    assert loaded["ordered"] == OrderedDict(a=1)
    assert loaded["other"] == obj["other"]


def _short_str(data: bytes) -> bytes:
    return b"U" + bytes([len(data)]) + data  # SHORT_BINSTRING: a Python-2 str


def _python2_array_pickle(values: np.ndarray) -> bytes:
    """Hand-assembled protocol-2 pickle of {'faces': values} as Python 2 + numpy 1 wrote it."""
    shape = b"".join(b"K" + bytes([d]) for d in values.shape) + b"\x86"  # BININT1 x2, TUPLE2
    dtype = (
        b"cnumpy\ndtype\n" + _short_str(values.dtype.str[1:].encode()) + b"K\x00K\x01\x87R"
        b"(K\x03" + _short_str(b"<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    )
    raw = values.astype(values.dtype.newbyteorder("<")).tobytes()
    data = b"T" + struct.pack("<I", len(raw)) + raw  # BINSTRING (a Python-2 str)
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nK\x00\x85"
        + _short_str(b"b")
        + b"\x87R(K\x01"
        + shape
        + dtype
        + b"\x89"
        + data
        + b"tb"
    )
    return b"\x80\x02}" + _short_str(b"faces") + array + b"s."


def test_python2_era_pickle_loads(tmp_path):
    faces = np.arange(6, dtype=np.int32).reshape(2, 3) * 1000 + 255
    blob = _python2_array_pickle(faces)
    # Plain pickle agrees on what this blob means (so the hand assembly is right).
    np.testing.assert_array_equal(pickle.loads(blob, encoding="latin1")["faces"], faces)
    path = tmp_path / "py2.pkl"
    path.write_bytes(blob)
    loaded = load_pickle_restricted(path)
    assert list(loaded) == ["faces"]
    assert loaded["faces"].dtype == np.int32
    np.testing.assert_array_equal(loaded["faces"], faces)


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_malicious_pickle_is_rejected_and_never_runs(tmp_path, protocol):
    marker = tmp_path / "pwned"
    payload = {"vertices": np.zeros(3), "faces": [_RunsShell(str(marker))]}
    path = _write(tmp_path, payload, protocol)
    with pytest.raises(UnsafePickleError, match=r"(posix|os|nt)\.system"):
        load_pickle_restricted(path)
    assert not marker.exists()
    # The same file would run the payload under plain pickle: the test guards something real.
    with open(path, "rb") as stream:
        pickle.load(stream)
    assert marker.exists()


@pytest.mark.parametrize(
    ("obj", "global_name"),
    [
        (_Evals(), r"(builtins|__builtin__)\.eval"),
        # protocol 0 rebuilds instances through copyreg, later ones name the class itself
        (_Plain(), r"(copy_?reg\._reconstructor|test_safe_pickle\._Plain)"),
    ],
)
@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_other_globals_are_rejected(tmp_path, obj, global_name, protocol):
    path = _write(tmp_path, [obj], protocol)
    with pytest.raises(UnsafePickleError, match=global_name) as info:
        load_pickle_restricted(path)
    assert str(path) in str(info.value)


def test_codecs_encode_only_latin1(tmp_path):
    # `_codecs.encode` is allowed for Python 3's protocol-2 bytes, but only with latin1.
    blob = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x06\x00\x00\x00base64\x86R."
    path = tmp_path / "codec.pkl"
    path.write_bytes(blob)
    with pytest.raises(UnsafePickleError, match="base64"):
        load_pickle_restricted(path)


def test_garbage_is_a_clear_error(tmp_path):
    path = tmp_path / "garbage.pkl"
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="garbage.pkl"):
        load_pickle_restricted(path)


class _Reduces:
    """Pickles as `func(*args)`: how a hostile file asks an allowed constructor for memory."""

    def __init__(self, func, args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _reconstruct_func():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


@pytest.mark.parametrize(
    "payload",
    [
        # counted opcode claiming 2**60 bytes: the C unpickler allocates them before reading
        b"\x80\x04\x8e" + struct.pack("<Q", 2**60) + b"tiny.",
        # memo index 2**32 - 1: the C unpickler resizes its memo list to it
        b"\x80\x02N" + b"r" + struct.pack("<I", 2**32 - 1) + b".",
        # a frame claiming more than the file
        b"\x80\x04\x95" + struct.pack("<Q", 2**50) + b"N.",
        pickle.dumps({"vertices": _Reduces(bytearray, (10**12,))}, protocol=2),
        pickle.dumps({"vertices": _Reduces(np.ndarray, ((10**6, 10**6),))}, protocol=2),
        pickle.dumps(_Reduces(_reconstruct_func(), (np.ndarray, (10**12,), b"b")), protocol=2),
        pickle.dumps(_Reduces(list, (b"x" * 1000,)), protocol=2),  # 1 byte -> one int object
    ],
)
def test_memory_exhausting_pickles_are_refused(tmp_path, payload) -> None:
    path = tmp_path / "mesh.pkl"
    path.write_bytes(payload)
    with pytest.raises((UnsafePickleError, ValueError), match=r"mesh\.pkl"):
        load_pickle_restricted(path)


def test_pickle_size_is_bounded(tmp_path) -> None:
    path = _write(tmp_path, {"vertices": np.zeros(5000)}, 4)
    with pytest.raises(UnsafePickleError, match=r"data\.pkl.*larger than 1000 bytes"):
        load_pickle_restricted(path, max_bytes=1000)
    assert load_pickle_restricted(path)["vertices"].shape == (5000,)


def test_dtype_with_forged_flags_is_refused(tmp_path) -> None:
    """dtype state comes from the file: flags claiming object references on float32 would make
    numpy read array bytes as pointers."""
    forged = _Reduces(np.dtype, ("f4", False, True))
    forged.__reduce__ = lambda: (
        np.dtype,
        ("f4", False, True),
        (3, "<", None, None, None, -1, -1, 63),
    )
    payload = pickle.dumps({"vertices": forged}, protocol=2)
    path = tmp_path / "mesh.pkl"
    path.write_bytes(payload)
    with pytest.raises(UnsafePickleError, match=r"mesh\.pkl.*dtype"):
        load_pickle_restricted(path)
    honest = {"f": np.dtype("f4"), "o": np.dtype("O"), "u": np.arange(3, dtype=">u2")}
    path.write_bytes(pickle.dumps(honest, protocol=2))
    ours, theirs = load_pickle_restricted(path), pickle.loads(path.read_bytes())
    assert ours["f"] == theirs["f"] and ours["o"] == theirs["o"]
    assert ours["u"].dtype == theirs["u"].dtype and ours["u"].tolist() == [0, 1, 2]
