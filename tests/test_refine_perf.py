"""Issue 11 item 3 (decode only what the rule needs): the cheaper decodes give the same values,
bytes and status codes as the full ones they replace."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from fdhclean.decode import decode_mask, decode_npy, decode_vertices, encode_npy, vertex_map
from fdhclean.mask_png import grey_values
from fdhclean.parts import PartTable
from fdhclean.refine.sample import STATUS_BAD_MEMBER, STATUS_OK, decode_sample
from fdhclean.shards import RawSample, read_shard


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _grey_png(values: np.ndarray, filters: list[int], depth: int = 8) -> bytes:
    """A PNG written by hand with the given filter type per row (0 None, 1 Sub, 2 Up, 4 Paeth
    is written as None-filtered bytes labelled 0: only 0-2 are computed here)."""
    h, w = values.shape
    rows = np.packbits(values.astype(bool), axis=1) if depth == 1 else values.astype(np.uint8)
    out, above = [], np.zeros(rows.shape[1], np.int64)
    for r in range(h):
        row = rows[r].astype(np.int64)
        kind = filters[r % len(filters)]
        if kind == 1:
            body = (row - np.concatenate([[0], row[:-1]])) % 256
        elif kind == 2:
            body = (row - above) % 256
        else:
            body = row
        out.append(bytes([kind]) + body.astype(np.uint8).tobytes())
        above = row
    ihdr = struct.pack(">IIBBBBB", w, h, depth, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"".join(out)))
        + _chunk(b"IEND", b"")
    )


def _pil_mask(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    image.load()
    return np.asarray(image.convert("L") if image.mode == "P" else image) > 0


@pytest.mark.parametrize("depth", [8, 1])
@pytest.mark.parametrize("filters", [[0], [1], [2], [0, 2, 2, 1, 2], [2, 2, 1], [1, 0, 2]])
def test_fast_mask_decode_equals_pil(depth, filters):
    rng = np.random.default_rng(len(filters) * 10 + depth)
    values = rng.integers(0, 256, (288, 160)).astype(np.uint8)
    values[rng.random((288, 160)) < 0.5] = 0
    if depth == 1:
        values = (values > 0).astype(np.uint8)
    data = _grey_png(values, filters, depth)
    fast = grey_values(data, (288, 160))
    assert fast is not None  # the fast path took it
    assert np.array_equal(fast, values)
    assert np.array_equal(decode_mask(data), _pil_mask(data))


def test_fast_mask_decode_leaves_the_rest_to_pil():
    values = (np.arange(288 * 160).reshape(288, 160) % 7 == 0).astype(np.uint8) * 255
    good = _grey_png(values, [1])
    buf = io.BytesIO()
    Image.fromarray(values).convert("P").save(buf, format="PNG")
    palette = buf.getvalue()
    body_at = good.index(b"IDAT") + 4
    bad_crc = good[: body_at + 5] + bytes([good[body_at + 5] ^ 1]) + good[body_at + 6 :]
    paeth = bytearray(zlib.decompress(good[body_at : good.index(b"IEND") - 8]))
    paeth[0] = 4  # Paeth: not computed here
    ihdr = good[8:33]
    cases = {
        "palette": palette,
        "IDAT CRC": bad_crc,
        "data after IEND": good + b"x",
        "Paeth filter": good[:8] + ihdr + _chunk(b"IDAT", zlib.compress(bytes(paeth)))
        + _chunk(b"IEND", b""),
        "short zlib stream": good[:8] + ihdr + _chunk(b"IDAT", zlib.compress(bytes(paeth[:-1])))
        + _chunk(b"IEND", b""),
        "other size": _grey_png(values[:100], [0]),
    }  # fmt: skip
    for name, data in cases.items():
        assert grey_values(data, (288, 160)) is None, name
    assert np.array_equal(decode_mask(palette), values > 0)
    with pytest.raises(ValueError, match="shape"):
        decode_mask(cases["other size"])


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((17, 3), np.float32),
        np.arange(51, dtype=np.float64).reshape(17, 3),
        np.arange(51, dtype=np.int16).reshape(17, 3),
        np.asfortranarray(np.arange(51, dtype=np.float32).reshape(17, 3)),
        np.arange(102, dtype=np.uint16).reshape(17, 6)[:, ::2],  # not contiguous
        np.zeros((1, 288, 160), np.uint16),
        np.zeros((0, 3), np.float32),
        np.float32(3.5),
    ],
)
def test_encode_npy_writes_np_save_bytes(array):
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    assert encode_npy(array) == buf.getvalue()
    assert encode_npy(array) == buf.getvalue()  # the cached header too


def _old_decode_vertices(data: bytes) -> np.ndarray:
    """`decode_vertices` as it was: a copy, int32 range checked over the whole map."""
    array = decode_npy(data)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"vertices have shape {array.shape}, expected (H, W) or (1, H, W)")
    if array.shape != (288, 160):
        raise ValueError(f"vertices has shape {array.shape}, expected (288, 160)")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"vertices have dtype {array.dtype}, expected an integer dtype")
    info = np.iinfo(np.int32)
    if int(array.min()) < info.min or int(array.max()) > info.max:
        raise ValueError(f"vertex ids outside the int32 range (dtype {array.dtype})")
    return array.astype(np.int32)


def _reference_status(raw: RawSample, num_vertices: int) -> tuple[str, str | None]:
    """The rule before issue 11: the whole map converted to int32 (range-checked over every
    pixel) and every id under the whole E_mask checked; the rest as `decode_sample`."""
    sample = decode_sample(raw, num_vertices)
    if sample.status != STATUS_OK and "vertices" not in (sample.error or ""):
        return sample.status, sample.error
    try:
        vertices = _old_decode_vertices(raw.get("vertices.npy"))
    except ValueError as exc:
        return STATUS_BAD_MEMBER, f"ValueError: vertices.npy: {exc}"
    ids = vertices[decode_mask(raw.get("E_mask.png"))]
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= num_vertices):
        return STATUS_BAD_MEMBER, (
            f"ValueError: vertices.npy holds ids {int(ids.min())}..{int(ids.max())} under "
            f"E_mask, outside the part table's 0..{num_vertices - 1}"
        )
    return STATUS_OK, None


def _vertex_corruptions(vertices: np.ndarray, emask: np.ndarray, n: int) -> dict[str, np.ndarray]:
    inside = np.argwhere(emask)[len(np.argwhere(emask)) // 2]
    outside = np.argwhere(~emask)[0]
    v32 = vertices.astype(np.int32)

    def at(array, where, value):
        array = array.copy()
        array[tuple(where)] = value
        return array

    on = np.argwhere(emask)
    edges = {  # the E_mask pixels on its bounding box's four sides
        "top": on[0],
        "bottom": on[-1],
        "left": on[on[:, 1].argmin()],
        "right": on[on[:, 1].argmax()],
    }
    return {
        "as stored": vertices,
        "id = table size under E_mask": at(v32, inside, n),
        **{f"bad id at E_mask's {side} edge": at(v32, p, n + 7) for side, p in edges.items()},
        "huge id outside E_mask": at(v32, outside, 10**6),
        "negative id under E_mask": at(v32.astype(np.int16), inside, -1),
        "negative id outside E_mask": at(v32.astype(np.int16), outside, -5),
        "int64 beyond int32 outside E_mask": at(v32.astype(np.int64), outside, 2**40),
        "uint32 beyond int32 outside E_mask": at(v32.astype(np.uint32), outside, 2**32 - 1),
        "uint64 in range": v32.astype(np.uint64),
        "uint8 ids": (v32 % 256).astype(np.uint8),
        "(1, H, W)": v32[None],
        "float ids": v32.astype(np.float32),
        "wrong shape": v32[:100],
        "(2, H, W)": np.stack([v32, v32]),
    }


def test_vertex_checks_keep_every_status(synth_root):
    """Every corruption of vertices.npy (and an emptied E_mask) on the synthetic set's samples
    ends with the status and error the whole-map rule gives."""
    n = PartTable.load(synth_root / "parts.npz").vertex_parts.shape[0]
    seen = set()
    for raw in read_shard(sorted((synth_root / "train").glob("*.tar"))[0])[:4]:
        vertices = decode_vertices(raw.get("vertices.npy"))
        emask = decode_mask(raw.get("E_mask.png"))
        empty = io.BytesIO()
        Image.fromarray(np.zeros_like(emask, np.uint8)).save(empty, format="PNG")
        for emask_bytes in (raw.get("E_mask.png"), empty.getvalue()):
            for name, bad in _vertex_corruptions(vertices, emask, n).items():
                members = dict(raw.members)
                members[raw.find("vertices.npy")] = encode_npy(bad)
                members[raw.find("E_mask.png")] = emask_bytes
                doctored = RawSample(raw.key, raw.shard, raw.index, members)
                got = decode_sample(doctored, n)
                assert (got.status, got.error) == _reference_status(doctored, n), name
                seen.add(got.status)
    assert seen == {STATUS_OK, STATUS_BAD_MEMBER}


def test_vertex_map_is_a_view_with_the_same_values(synth_root):
    raw = read_shard(sorted((synth_root / "train").glob("*.tar"))[0])[0]
    data = raw.get("vertices.npy")
    assert np.array_equal(vertex_map(data), decode_vertices(data))
    assert not vertex_map(data).flags.writeable  # never written to: no copy needed
