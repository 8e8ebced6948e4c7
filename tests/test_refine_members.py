"""Issue 12 classes 2 and 11 (refine's half): a PNG bomb or a junk member is a per-sample
`bad-member`, never a shard failure; the manifest lists the samples training must skip."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fdhclean.cli import main
from fdhclean.decode import check_png, decode_image, decode_mask, png_header
from fdhclean.shards import ShardWriter, read_shard


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(width: int = 40000, height: int = 40000) -> bytes:
    """A tiny file whose header claims a huge 1-bit image (PIL refuses it at open)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (1 + width // 8) * 64)  # a few rows; the rest is never read
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def _png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_png_header_checks():
    good = _png(np.zeros((288, 160, 3), np.uint8))
    assert png_header(good) == (160, 288, 8, 2)
    check_png(good, (288, 160), (2,))
    for bad in (b"", b"not a png at all, certainly not" * 2, good[:20], good[:30] + b"xyz"):
        with pytest.raises(ValueError):
            png_header(bad)
    with pytest.raises(ValueError, match="288x160"):
        check_png(_png(np.zeros((100, 100), np.uint8)), (288, 160), (0,))
    with pytest.raises(ValueError, match="colour type"):
        check_png(_png(np.zeros((288, 160, 4), np.uint8)), (288, 160), (0, 2, 3))
    # a bomb is refused from its header (no decompression), and by PIL's limit without a shape
    with pytest.raises(ValueError, match="PNG has shape"):
        decode_mask(png_bomb())
    with pytest.raises(ValueError, match="decompression bomb"):
        decode_image(png_bomb(), shape=None)


def _doctor(path, edits):
    samples = read_shard(path)
    with ShardWriter(path) as writer:
        for s in samples:
            members = dict(s.members)
            for name, data in edits.get(s.index, {}).items():
                stored = next(k for k in members if k.lower() == name.lower())
                members[stored] = data
            writer.write(s.key, members)
    return [s.key for s in samples]


def test_bomb_and_junk_members_are_per_sample_codes(synth_copy, tmp_path):
    shard = sorted((synth_copy / "val").glob("out-*.tar"))[0]
    keys = _doctor(
        shard,
        {
            0: {"E_mask.png": png_bomb()},
            1: {"image.png": b"\x89PNG junk that is no image"},
            2: {"maskrcnn_mask.png": _png(np.zeros((100, 100), np.uint8))},
            3: {"mask.png": b"GIF89a"},
        },
    )
    out = tmp_path / "out"
    code = main(
        ["refine", "--split", "val", "--data-root", str(synth_copy), "--out", str(out),
         "--part-table", str(synth_copy / "parts.npz"),
         "--predictions", str(synth_copy / "predictions_val.json")]
    )  # fmt: skip
    assert code == 0, "bad members are sample problems, not shard failures"
    report = pd.read_parquet(out / "val" / "report").set_index("key")
    assert len(report.loc[report.shard == shard.name]) == len(keys)
    bad = report.loc[keys[:4]]
    assert list(bad.status) == ["bad-member"] * 4
    members = ("e_mask.png", "image.png", "maskrcnn_mask.png", "mask.png")
    for key, member in zip(keys[:4], members, strict=True):
        assert member in report.loc[key, "error"].lower()
    assert (report.loc[keys[4:], "status"] != "bad-member").all()
    manifest = json.loads((out / "val" / "manifest.json").read_text())
    listed = manifest["totals"]["error_samples"]
    errors = report[report.status != "ok"]
    assert sum(len(v) for v in listed.values()) == len(errors)
    for key, row in errors.iterrows():
        assert listed[row.shard][key] == row.status


def test_reader_problems_are_bad_member_rows(synth_copy, tmp_path):
    """A sample of links only, and a non-UTF-8 member name: report rows, not shard failures."""
    import tarfile

    shard = sorted((synth_copy / "val").glob("out-*.tar"))[2]
    samples = read_shard(shard)
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT, errors="surrogateescape") as tar:
        for s in samples:
            key = f"{s.key}\udcff" if s.index == 1 else s.key
            for suffix, data in s.members.items():
                info = tarfile.TarInfo(f"{key}.{suffix}")
                if s.index == 0:
                    info.type, info.linkname = tarfile.SYMTYPE, "elsewhere.png"
                    tar.addfile(info)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "out"
    code = main(
        ["refine", "--split", "val", "--data-root", str(synth_copy), "--out", str(out),
         "--part-table", str(synth_copy / "parts.npz"),
         "--predictions", str(synth_copy / "predictions_val.json")]
    )  # fmt: skip
    assert code == 0
    report = pd.read_parquet(out / "val" / "report" / f"{shard.stem}.parquet")
    assert len(report) == len(samples)
    assert list(report.status[:2]) == ["bad-member", "bad-member"]
    assert "symbolic link" in report.error[0] and "only a placeholder" in report.error[0]
    assert "not valid UTF-8" in report.error[1]
    assert (report.status[2:] != "bad-member").all()
    cleaned = read_shard(out / "val" / shard.name)
    assert [s.key for s in cleaned] == list(report.key)  # the links-only sample is kept
    provenance = {"keypoints_original.npy", "keypoints_estimated.npy"}
    assert set(cleaned[0].members) == provenance
    # the non-UTF-8 sample is a placeholder too: no member is written under an escaped name
    assert "only a placeholder" in report.error[1]
    assert set(cleaned[1].members) == provenance
    # marker, manifest and shard agree: verify passes on the fresh output, revote succeeds
    assert main(["verify", str(out / "val" / "manifest.json"), "--samples"]) == 0
    assert main(["revote", str(out), "--split", "val", "--out", str(tmp_path / "rv")]) == 0
