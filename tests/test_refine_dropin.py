"""Issue 9 item 7: a cleaned FDH is a drop-in FDH. DP2's loader (`get_dataloader_fdh_wds`)
batches webdataset samples with a dict collate over the FIRST sample's keys; every sample of
a cleaned shard must therefore carry the same members, error samples included."""

from __future__ import annotations

import io

import numpy as np
import pytest

from fdhclean.cli import main
from fdhclean.shards import ShardWriter, read_shard

wds = pytest.importorskip("webdataset")
torch = pytest.importorskip("torch")


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def dict_collate(batch: list[dict]) -> dict:
    """DP2's `collate_fn`: one entry per key of the first sample, default-collated."""
    from torch.utils.data import default_collate

    return {key: default_collate([d[key] for d in batch]) for key in batch[0]}


def _kp(data: bytes):
    return torch.from_numpy(np.load(io.BytesIO(data))).float()


def _png(data: bytes):
    from PIL import Image

    return torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB")))


def test_cleaned_shards_read_with_a_dp2_contract_pipeline(synth_copy, tmp_path):
    shard = sorted((synth_copy / "val").glob("out-*.tar"))[0]
    samples = read_shard(shard)
    nan = np.full((17, 3), np.nan, np.float32)
    with ShardWriter(shard) as writer:
        for s in samples:
            members = dict(s.members)
            if s.index == 0:  # an error sample first in its batch: bad-keypoints
                members["keypoints.npy"] = _npy(nan)
            if s.index == 2:  # and one later on: vertex ids outside the part table
                members["vertices.npy"] = _npy(np.full((288, 160), 10**6, np.int32))
            writer.write(s.key, members)
    out = tmp_path / "out"
    assert (
        main(
            [
                "refine",
                "--split",
                "val",
                "--data-root",
                str(synth_copy),
                "--out",
                str(out),
                "--part-table",
                str(synth_copy / "parts.npz"),
                "--predictions",
                str(synth_copy / "predictions_val.json"),
            ]
        )  # fmt: skip
        == 0
    )
    urls = [str(p) for p in sorted((out / "val").glob("out-*.tar"))]
    decoders = [
        wds.handle_extension("image.png", _png),
        wds.handle_extension("mask.png", _png),
        wds.handle_extension("maskrcnn_mask.png", _png),
        wds.handle_extension("keypoints.npy", _kp),
        wds.handle_extension("vertices.npy", lambda d: _kp(d).squeeze()[None]),  # as DP2
        wds.handle_extension("E_mask.png", _png),
        wds.handle_extension("keypoints_original.npy", _kp),
        wds.handle_extension("keypoints_estimated.npy", _kp),
    ]
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.tarfile_to_samples(),
        wds.decode(*decoders),
        wds.batched(5, collation_fn=dict_collate, partial=True),
    )
    seen = 0
    for batch in pipeline:
        n = len(batch["__key__"])
        seen += n
        for key in ("keypoints_original.npy", "keypoints_estimated.npy", "keypoints.npy"):
            assert batch[key].shape == (n, 17, 3), key
            assert batch["image.png"].shape == (n, 288, 160, 3)
    assert seen == 36
    # the error samples carry what is known, never made-up keypoints
    cleaned = {s.key: s for s in read_shard(out / "val" / shard.name)}
    first = cleaned[samples[0].key]
    assert np.isnan(np.load(io.BytesIO(first.members["keypoints_original.npy"]))).all()
    assert not np.load(io.BytesIO(first.members["keypoints_estimated.npy"])).any()  # none: v=0
