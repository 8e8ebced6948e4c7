"""Write a complete synthetic FDH dataset: shards, mesh, segmentation, predictions, truth.

Determinism: every random stream is seeded from (seed, purpose tag, split, shard, index) and
every writer is byte-stable (fixed tar headers, zlib PNGs, sorted JSON where order is free,
pyarrow parquet without timestamps), so the same arguments give identical files.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fdhclean import __version__
from fdhclean.fdh import COCO_KEYPOINTS
from fdhclean.shards import SHARD_NAME_RE, SHARD_PATTERN, ShardWriter, atomic_write_bytes
from fdhclean.synth import annotations as ann
from fdhclean.synth.fabricate import SynthContext, accepted_bits, make_sample, shard_variant
from fdhclean.synth.mesh import build_mesh, part_pools, segment, vertex_part_bits
from fdhclean.synth.paint import VertexPools

SPLITS = ("train", "val")
KEY_LOW, KEY_HIGH = 10_000_000, 1_000_000_000  # 8-9 digit keys, like YFCC100M ids
EXTRA_PREDICTIONS = 3  # entries per split for keys that are not in the split
# Tags keep the seed streams of different purposes apart (numpy's SeedSequence pads short
# entropy with zeros, so [seed] and [seed, 0] would collide without one).
TAG_KEYS, TAG_PLAN, TAG_SAMPLE, TAG_EXTRA = 1, 2, 3, 4


@dataclass(frozen=True)
class SynthConfig:
    out: Path
    shards: int = 2
    val_shards: int | None = None  # None: same as `shards`
    samples_per_shard: int = 16
    seed: int = 0
    real_mesh_size: bool = False
    overwrite: bool = False

    def shard_count(self, split: str) -> int:
        if split == "val" and self.val_shards is not None:
            return self.val_shards
        return self.shards

    def validate(self) -> None:
        if self.shards < 1 or (self.val_shards is not None and self.val_shards < 1):
            raise ValueError("--shards and --val-shards must be >= 1")
        if self.samples_per_shard < 1:
            raise ValueError("--samples-per-shard must be >= 1")
        if self.seed < 0:
            raise ValueError("--seed must be >= 0")


def _rng(seed: int, tag: int, *more: int) -> np.random.Generator:
    return np.random.default_rng([seed, tag, *more])


def _keys(config: SynthConfig) -> dict[str, list[str]]:
    """Unique keys for every sample of both splits plus the extra (unknown) prediction keys."""
    counts = {s: config.shard_count(s) * config.samples_per_shard for s in SPLITS}
    total = sum(counts.values()) + EXTRA_PREDICTIONS * len(SPLITS)
    drawn = _rng(config.seed, TAG_KEYS).choice(KEY_HIGH - KEY_LOW, size=total, replace=False)
    keys = [str(KEY_LOW + int(k)) for k in drawn]
    out, start = {}, 0
    for split in SPLITS:
        out[split] = keys[start : start + counts[split]]
        extra = start + counts[split]
        out[f"{split}-extra"] = keys[extra : extra + EXTRA_PREDICTIONS]
        start += counts[split] + EXTRA_PREDICTIONS
    return out


def _prepare_dirs(config: SynthConfig) -> None:
    """Create OUT/{train,val}; refuse (or with overwrite, remove) shards of an earlier run."""
    for split in SPLITS:
        directory = config.out / split
        directory.mkdir(parents=True, exist_ok=True)
        old = sorted(p for p in directory.iterdir() if SHARD_NAME_RE.match(p.name))
        if old and not config.overwrite:
            raise FileExistsError(
                f"{directory} already holds {len(old)} shard(s) (e.g. {old[0].name}); "
                "choose an empty --out or pass --overwrite"
            )
        for path in old:
            path.unlink()


def _write_mesh(config: SynthConfig):
    mesh = build_mesh(config.real_mesh_size)
    seg = segment(mesh)
    # DensePose's mesh pickle layout: plain dict of numpy arrays (refine-spec section 1).
    blob = pickle.dumps({"vertices": mesh.vertices, "faces": mesh.faces}, protocol=4)
    atomic_write_bytes(config.out / "mesh.pkl", blob)
    atomic_write_bytes(config.out / "segmentation.json", json.dumps(seg).encode())
    bits = vertex_part_bits(mesh, seg)
    ctx = SynthContext(VertexPools.build(part_pools(mesh, seg), mesh.num_vertices), bits,
                       accepted_bits())  # fmt: skip
    return mesh, ctx


def _extra_entries(keys: list[str], rng: np.random.Generator) -> list[dict]:
    """Predictions for keys absent from the split (must be counted, not fail)."""
    entries = []
    for key in keys:
        kp = np.column_stack(
            [
                rng.uniform(0, ann.W, len(COCO_KEYPOINTS)),
                rng.uniform(0, ann.H, len(COCO_KEYPOINTS)),
                rng.uniform(0.1, 0.9, len(COCO_KEYPOINTS)),
            ]
        )
        entries.append(ann.coco_entry(key, kp, rng.uniform(0.3, 0.9)))
    return entries


def _write_split(config: SynthConfig, split: str, keys, ctx) -> dict:
    split_id = SPLITS.index(split)
    n_shards, per_shard = config.shard_count(split), config.samples_per_shard
    plans = ann.plan_split(n_shards * per_shard, _rng(config.seed, TAG_PLAN, split_id))
    rows, entries, shards = [], [], []
    for shard in range(n_shards):
        name, variant = SHARD_PATTERN % shard, shard_variant(split, shard)
        with ShardWriter(config.out / split / name) as writer:
            for index in range(per_shard):
                i = shard * per_shard + index
                rng = _rng(config.seed, TAG_SAMPLE, split_id, shard, index)
                sample = make_sample(keys[split][i], name, index, plans[i], variant, ctx, rng)
                writer.write(keys[split][i], sample.members)
                rows.append(sample.truth)
                entries.extend(sample.entries)
        shards.append({"shard": name, "samples": per_shard, **asdict(variant)})
    rng = _rng(config.seed, TAG_EXTRA, split_id)
    for entry in _extra_entries(keys[f"{split}-extra"], rng):
        entries.insert(int(rng.integers(len(entries) + 1)), entry)
    payload = json.dumps(entries, separators=(",", ":")).encode()
    atomic_write_bytes(config.out / f"predictions_{split}.json", payload)
    _write_truth(config.out / f"truth_{split}.parquet", rows)
    counts = {b: sum(r["better"] == b for r in rows) for b in ("original", "estimate", "unclear")}
    return {"shards": shards, "samples": len(rows), "better": counts}


def _write_truth(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {name: [r[name] for r in rows] for name in rows[0]}
    columns["true_keypoints"] = pa.array(
        [r["true_keypoints"].tolist() for r in rows], type=pa.list_(pa.float32())
    )
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), buffer)
    atomic_write_bytes(path, buffer.getvalue().to_pybytes())


def generate(config: SynthConfig) -> dict:
    """Write the dataset under `config.out`; returns the summary also saved as synth.json."""
    config.validate()
    config.out.mkdir(parents=True, exist_ok=True)
    _prepare_dirs(config)
    mesh, ctx = _write_mesh(config)
    keys = _keys(config)
    summary = {
        "generator": "fdhclean synth",
        "version": __version__,
        "seed": config.seed,
        "samples_per_shard": config.samples_per_shard,
        "real_mesh_size": config.real_mesh_size,
        "mesh": {
            "base_vertices": mesh.num_base,
            "vertices": mesh.num_vertices,
            "faces": int(mesh.faces.shape[0]),
        },  # fmt: skip
        "splits": {split: _write_split(config, split, keys, ctx) for split in SPLITS},
    }
    text = json.dumps(summary, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(config.out / "synth.json", text.encode())
    return summary
