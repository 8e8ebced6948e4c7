"""Arrow arrays to and from numpy through their buffers, for refine's per-process hot paths.

pyarrow's own conversions (`pa.array`, `Array.to_numpy`, `to_pylist`, `pq.read_table`) import
pandas the first time one runs in a process (pyarrow asks whether the object is a pandas one):
0.32-0.36 CPU-s per process, as much as 400 samples' cleaning. Refine's report writer, the
prediction store's reads and finalize go through these instead, so a refine process (main,
worker or rank) never imports pandas (tests/test_arrow.py checks it). The arrays built here
are the ones `pa.array` builds from the same values (same values, validity and types), so the
parquet files written from them are byte-identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

_NUMPY = {
    pa.int32(): np.int32,
    pa.int64(): np.int64,
    pa.float32(): np.float32,
    pa.float64(): np.float64,
}


def column(values: Sequence[Any], type_: pa.DataType) -> pa.Array:
    """`pa.array(values, type=type_)` (None = null) for strings, booleans, the numeric types
    above and lists of those."""
    if pa.types.is_list(type_):
        return _lists(values, type_)
    valid = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
    if pa.types.is_string(type_):
        return _strings(values, valid)
    if pa.types.is_boolean(type_):
        bits = np.fromiter((bool(v) for v in values), dtype=bool, count=len(values))
        data = np.packbits(bits, bitorder="little")
        return pa.Array.from_buffers(type_, len(values), [_validity(valid), pa.py_buffer(data)])
    dtype = _NUMPY[type_]
    data = np.fromiter((0 if v is None else v for v in values), dtype=dtype, count=len(values))
    return numeric(data, type_, valid)


def numeric(data: np.ndarray, type_: pa.DataType, valid: np.ndarray | None = None) -> pa.Array:
    """An arrow array over a 1-D numpy array of `type_`'s dtype (copied to contiguous)."""
    data = np.ascontiguousarray(data, dtype=_NUMPY[type_])
    bitmap = None if valid is None else _validity(valid)
    return pa.Array.from_buffers(type_, len(data), [bitmap, pa.py_buffer(data)])


def _strings(values: Sequence[str | None], valid: np.ndarray) -> pa.Array:
    encoded = [b"" if v is None else v.encode() for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    buffers = [_validity(valid), pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]
    return pa.Array.from_buffers(pa.string(), len(encoded), buffers)


def _lists(values: Sequence[Sequence[float] | None], type_: pa.ListType) -> pa.Array:
    """A list column from per-row sequences (or None) via one flat buffer: ~20x faster than
    letting pyarrow convert nested Python lists row by row."""
    valid = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum([0 if v is None else len(v) for v in values], out=offsets[1:])
    dtype = _NUMPY[type_.value_type]
    present = [np.asarray(v) for v in values if v is not None]
    flat = np.concatenate(present).astype(dtype) if present else np.zeros(0, dtype)
    child = numeric(flat, type_.value_type)
    buffers = [_validity(valid), pa.py_buffer(offsets)]
    return pa.Array.from_buffers(type_, len(values), buffers, children=[child])


def _validity(valid: np.ndarray) -> pa.Buffer | None:
    """Arrow's validity bitmap (LSB first); None when nothing is null (as pyarrow does)."""
    if valid.all():
        return None
    return pa.py_buffer(np.packbits(valid, bitorder="little"))


def to_numpy(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The values of a numeric (or fixed-size list of numeric) column without nulls, as a
    read-only numpy array (as pyarrow's `to_numpy` gives): a view of a single chunk, else one
    concatenated copy. (N, size) for lists."""
    chunks = array.chunks if isinstance(array, pa.ChunkedArray) else [array]
    parts = [_chunk_numpy(chunk) for chunk in chunks] or [_empty(array.type)]
    out = parts[0] if len(parts) == 1 else np.concatenate(parts)
    out.flags.writeable = False  # a view may share the table's memory (a cached row group)
    return out


def _empty(type_: pa.DataType) -> np.ndarray:
    if pa.types.is_fixed_size_list(type_):
        return np.zeros((0, type_.list_size), _NUMPY[type_.value_type])
    return np.zeros(0, _NUMPY[type_])


def _chunk_numpy(chunk: pa.Array) -> np.ndarray:
    if chunk.null_count:
        raise ValueError(f"a {chunk.type} column holds {chunk.null_count} nulls")
    if pa.types.is_fixed_size_list(chunk.type):
        size = chunk.type.list_size
        return _chunk_numpy(chunk.flatten()).reshape(len(chunk), size)
    dtype = np.dtype(_NUMPY[chunk.type])
    data = chunk.buffers()[1]
    if data is None or len(chunk) == 0:
        return np.zeros(0, dtype)
    return np.frombuffer(data, dtype, count=len(chunk), offset=chunk.offset * dtype.itemsize)


def to_strings(array: pa.Array | pa.ChunkedArray) -> list[str | None]:
    """The values of a string column (None = null)."""
    chunks = array.chunks if isinstance(array, pa.ChunkedArray) else [array]
    out: list[str | None] = []
    for chunk in chunks:
        n = len(chunk)
        if n == 0:
            continue
        validity, offsets_buf, data_buf = chunk.buffers()
        offsets = np.frombuffer(offsets_buf, np.int32, count=n + 1, offset=chunk.offset * 4)
        data = b"" if data_buf is None else data_buf.to_pybytes()
        bounds = offsets.tolist()
        texts = [data[a:b].decode() for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        if chunk.null_count:
            bits = np.unpackbits(np.frombuffer(validity, np.uint8), bitorder="little")
            present = bits[chunk.offset : chunk.offset + n].astype(bool).tolist()
            texts = [t if ok else None for t, ok in zip(texts, present, strict=True)]
        out += texts
    return out
