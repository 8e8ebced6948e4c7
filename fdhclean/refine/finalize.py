"""Write the split's manifest, summary and dataset card once every shard is complete.

Called by the run that completes the last shard, or by `fdhclean finalize OUT --split S` after
an array job (refine-spec section 6). Everything comes from the per-shard completion markers and
the run record (`run.json`), so finalising needs no access to the estimator.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from fdhclean.manifest import (
    Manifest,
    ShardEntry,
    base_provenance,
    build_manifest,
    listing_hash,
    sha256_file,
)
from fdhclean.refine.sample import ERROR_STATUSES
from fdhclean.refine.shard_task import ShardResult, output_paths
from fdhclean.shards import atomic_write_bytes, list_shards

RUN_RECORD = "run.json"
SUMMARY_FILE = "refine_summary.json"
CARD_FILE = "DATASET_CARD.md"


class PredictionsChangedError(ValueError):
    """The predictions a run used are gone or changed when its manifest is written."""


class IncompleteSplitError(RuntimeError):
    """Some shards of the split have no completion marker yet."""


def read_run_record(split_out: Path) -> dict[str, Any]:
    path = split_out / RUN_RECORD
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: was `fdhclean refine` run into {split_out}?")
    try:
        record = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a refine run record (JSON): {exc}") from None
    missing = [k for k in ("fingerprint", "data_root", "split", "provenance") if k not in record]
    if missing:
        raise ValueError(f"{path} is not a refine run record: no {', '.join(missing)}")
    return record


def completed_results(
    split_out: Path,
    shard_names: list[str],
    fingerprint: str,
    input_dir: Path,
    verify_inputs: bool = False,
) -> dict[str, ShardResult]:
    """Shards whose completion marker was written under the same settings and whose files
    still match it: the cleaned shard and report exist, the cleaned shard and the input shard
    have the sizes the marker recorded (a changed input or a lost output is redone).

    `verify_inputs`: the input's sha256 must also be the one the marker recorded (an input
    changed in place with the same size is redone). A rank's resume does this for its own
    shards (one read of each completed input); `finalize` checks sizes only, so that the last
    rank does not re-read the whole split.
    """
    results = {}
    for name in shard_names:
        tar_path, report_path, marker = output_paths(split_out, name)
        if not marker.is_file():
            continue
        try:
            result = ShardResult.from_json(json.loads(marker.read_text()))
        except (ValueError, TypeError):  # a damaged marker: the shard is simply redone
            continue
        if (
            result.fingerprint == fingerprint
            and report_path.is_file()
            and _size(tar_path) == result.output_bytes
            and _size(input_dir / name) == result.input_bytes
            and (not verify_inputs or _sha256(input_dir / name) == result.input_sha256)
        ):
            results[name] = result
    return results


def _sha256(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def sum_totals(results: list[ShardResult]) -> dict[str, Any]:
    errors: Counter[str] = Counter({code: 0 for code in ERROR_STATUSES})
    boxes: Counter[str] = Counter()
    units: Counter[str] = Counter()
    for r in results:
        errors.update(r.errors)
        boxes.update(r.box_sources)
        units[r.keypoint_units] += 1
    return {
        "samples": sum(r.samples for r in results),
        "updated": sum(r.updated for r in results),
        "ties": sum(r.ties for r in results),
        "errors": dict(sorted(errors.items())),
        "box_sources": dict(sorted(boxes.items())),
        "shard_keypoint_units": dict(sorted(units.items())),
        # shards whose samples disagreed on the units (see each shard's `units_ambiguous`)
        "units_ambiguous_shards": [r.shard for r in results if r.units_ambiguous],
        # shard -> {key: status} of the samples training must skip (status is an error)
        "error_samples": {r.shard: r.error_samples for r in results if r.error_samples},
    }


def finalize_split(split_out: Path) -> Manifest:
    """Write `manifest.json`, the merged summary and the dataset card; return the manifest."""
    record = read_run_record(split_out)
    data_root, split = Path(record["data_root"]), record["split"]
    names = [p.name for p in list_shards(data_root, split)]
    results = completed_results(split_out, names, record["fingerprint"], data_root / split)
    missing = [n for n in names if n not in results]
    if missing:
        raise IncompleteSplitError(
            f"{len(missing)} of {len(names)} shards of {split_out} are not complete yet "
            f"(first: {missing[0]}); run the remaining ranks, then `fdhclean finalize`"
        )
    ordered = [results[n] for n in names]
    totals = sum_totals(ordered)
    totals["foreign_predictions"] = _foreign_predictions(record, split_out)
    entries = [
        ShardEntry(r.shard, r.samples, r.output_bytes, r.output_sha256, r.keypoint_units)
        for r in ordered
    ]
    inputs = [
        ShardEntry(r.shard, r.samples, r.input_bytes, r.input_sha256, r.keypoint_units)
        for r in ordered
    ]
    provenance = base_provenance("fdhclean refine", record.get("parent_manifest"))
    provenance.update(record["provenance"])
    provenance["input_listing_sha256"] = listing_hash(inputs)
    licenses = license_counts(data_root, _split_keys(split_out))
    if licenses is not None:
        provenance["licenses"] = licenses
    manifest = build_manifest(
        entries, split=split, base_dir=split_out, provenance=provenance, totals=totals
    )
    manifest.write(split_out / "manifest.json")
    summary = {"split": split, "totals": totals, "shards": [r.__dict__ for r in ordered]}
    atomic_write_bytes(split_out / SUMMARY_FILE, (json.dumps(summary, indent=1) + "\n").encode())
    if licenses is not None:
        write_dataset_card(split_out / CARD_FILE, split, totals, licenses, provenance)
    return manifest


def _split_keys(split_out: Path) -> list[str]:
    """Every key of the split's report (file by file: `pq.read_table` would import pandas)."""
    import pyarrow.parquet as pq

    from fdhclean.arrow import to_strings

    keys: list[str] = []
    for path in sorted((split_out / "report").glob("*.parquet")):
        if path.name.startswith((".", "_")):  # what a parquet dataset read skips too
            continue
        keys += to_strings(pq.ParquetFile(path).read(columns=["key"]).column("key"))
    return keys


def _foreign_predictions(record: dict[str, Any], split_out: Path) -> int | None:
    """Prediction entries for keys that are not in the split (counted, not an error), from
    the prediction store refine used: the JSON is not parsed again."""
    estimator = record["provenance"].get("estimator", {})
    path = estimator.get("predictions")
    if not path:
        return None
    from fdhclean.predictions_store import PredictionStore, store_cache_dir

    sha256 = estimator.get("predictions_sha256")
    try:
        store = PredictionStore.open(Path(path), store_cache_dir(split_out), sha256)
    except (OSError, ValueError) as exc:  # deleted or changed since the run: not a disk fault
        raise PredictionsChangedError(
            f"the predictions this run used ({path}) cannot be read back to finish the "
            f"manifest: {exc}; restore them (or their store under {store_cache_dir(split_out)})"
            f", then run `fdhclean finalize {split_out.parent} --split {split_out.name}`"
        ) from None
    return store.keys_outside(_split_keys(split_out))


def license_counts(data_root: Path, keys: list[str]) -> dict[str, int] | None:
    """Licence counts of the split's keys from FDH's `metadata.json`, when the root has one."""
    path = data_root / "metadata.json"
    if not path.is_file():
        return None
    metadata = json.loads(path.read_text())
    counts = Counter(str(metadata.get(k, {}).get("license", "unknown")) for k in keys)
    return dict(sorted(counts.items()))


def write_dataset_card(path: Path, split: str, totals, licenses, provenance) -> None:
    lines = [
        f"# FDH {split}, keypoints cleaned by fdhclean {provenance.get('package_version')}",
        "",
        "Images: Flickr Diverse Humans (FDH), person crops of YFCC100M photos published on Flickr",
        "under Creative Commons licences; each sample's author, URL and licence are in the",
        "source `metadata.json`. Keypoints: the original FDH annotation or a ViTPose estimate,",
        "whichever lands more keypoints on the right SMPL body part (see the parquet report).",
        "",
        f"Samples: {totals['samples']}; updated: {totals['updated']}; ties: {totals['ties']}.",
        "",
        "| licence | samples |",
        "|---|---|",
        *[f"| {name} | {count} |" for name, count in licenses.items()],
        "",
        f"Part table sha256: {provenance.get('part_table_sha256')}",
        f"Rule table sha256: {provenance.get('rules_sha256')}",
        f"Input listing sha256: {provenance.get('input_listing_sha256')}",
        "",
    ]
    atomic_write_bytes(path, "\n".join(lines).encode())
