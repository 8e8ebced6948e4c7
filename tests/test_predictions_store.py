"""The columnar predictions store: streaming import of COCO results, lookups, finalize's count,
and the predictions-file inputs that used to crash the readers (issue 12 class 9)."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from fdhclean import predictions_store as ps
from fdhclean.estimators.predictions import iter_coco_results, load_predictions


def _entries(n: int, seed: int = 0, keys: int = 300) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(rng.integers(0, keys))
        out.append(
            {
                "image_id": k if i % 3 else str(k).zfill(6),  # strings with leading zeros too
                "category_id": 1,
                "keypoints": (rng.random(51) * 100).round(3).tolist(),
                "score": float(rng.integers(0, 4)) / 4,  # many ties: the first must win
            }
        )
    return out


def test_import_matches_the_in_memory_reader_across_runs_and_files(tmp_path, monkeypatch):
    monkeypatch.setattr(ps.writer, "BLOCK_ROWS", 97)  # many sorted runs: the k-way merge decides
    monkeypatch.setattr(ps.writer, "ROW_GROUP_ROWS", 16)
    monkeypatch.setattr(ps.writer, "MIN_MERGE_BATCH", 5)  # runs are read in several batches
    entries = _entries(1200)
    a, b = tmp_path / "p_0.json", tmp_path / "p_1.json"
    a.write_text(json.dumps(entries[:700]))
    b.write_text(json.dumps(entries[700:]))
    store = ps.PredictionStore.open(tmp_path / "p_*.json", cache_dir=tmp_path / "cache")
    # the reference semantics: per file the highest score (first on a tie), then across files
    # the highest score (the earlier file on a tie)
    merged: dict[str, tuple[np.ndarray, float]] = {}
    for path in (a, b):
        p = load_predictions(path)
        for key, kps in p.keypoints.items():
            if key not in merged or p.scores[key] > merged[key][1]:
                merged[key] = (kps, p.scores[key])
    assert len(list(store.directory.parent.glob("*"))) == 1  # the runs are gone
    assert store._file.metadata.num_row_groups > 1200 // 97  # several runs were merged
    assert len(store) == len(merged) and store.record["entries"] == 1200
    assert store.record["duplicates"] == 1200 - len(merged)
    keys = sorted(merged, key=int)
    found, kps, scores = store.lookup([k.zfill(7) for k in keys] + ["100000", "abc"])
    assert found[:-2].all() and not found[-2:].any() and np.isnan(kps[-1]).all()
    np.testing.assert_array_equal(kps[:-2], np.stack([merged[k][0] for k in keys]))
    assert scores[:-2].tolist() == [merged[k][1] for k in keys]
    assert np.all(np.diff(store.keys()) > 0)  # sorted and unique
    assert store.keys_outside(keys[:10] + ["abc", "../x"]) == len(merged) - 10
    shas = [s["sha256"] for s in store.record["sources"]]
    assert store.directory.name == ps.sources_sha256(shas) and len(shas) == 2


def test_lookup_reads_only_the_row_groups_that_can_hold_the_keys(tmp_path, monkeypatch):
    monkeypatch.setattr(ps.writer, "ROW_GROUP_ROWS", 50)
    path = tmp_path / "p.json"
    path.write_text(json.dumps([e | {"image_id": i} for i, e in enumerate(_entries(500))]))
    store = ps.PredictionStore.open(path, cache_dir=tmp_path)
    assert store._file.metadata.num_row_groups == 10
    found, _, _ = store.lookup(["120", "130", "149"])
    assert found.all() and list(store._cache) == [2]


def test_store_is_imported_once_and_reused(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(_entries(50)))
    first = ps.PredictionStore.open(path, cache_dir=tmp_path / "cache")
    stamp = (first.directory / ps.DATA_FILE).stat().st_mtime_ns
    again = ps.PredictionStore.open(path, cache_dir=tmp_path / "cache", sha256=first.source_sha256)
    assert again.directory == first.directory
    assert (again.directory / ps.DATA_FILE).stat().st_mtime_ns == stamp
    assert ps.PredictionStore.open(first.directory).directory == first.directory
    # two importers of the same file at once: the second finds the first's store in place
    writer = ps.StoreWriter(first.directory, {"source_sha256": "x", "sources": []})
    writer.add(1, np.zeros((17, 3), np.float32), 0.5)
    assert writer.close().record["entries"] == 50
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.directory.name]
    # what a killed import left is removed by the next import of the same store
    stale = tmp_path / "cache" / f".{first.directory.name}.dead.tmp"
    stale.mkdir()
    os.utime(stale, (0, 0))
    fresh = tmp_path / "cache" / f".{first.directory.name}.live.tmp"
    fresh.mkdir()  # a concurrent import in progress: kept
    ps.StoreWriter(first.directory, {}).abort()
    assert not stale.exists() and fresh.exists()
    fresh.rmdir()
    # a recorded sha256 that no longer matches the file is refused, naming it
    path.write_text(json.dumps(_entries(51)))
    with pytest.raises(ValueError, match="changed since"):
        ps.PredictionStore.open(path, cache_dir=tmp_path / "other", sha256=first.source_sha256)


def test_non_integer_image_ids_are_counted_not_fatal(tmp_path):
    entries = _entries(5)
    for i, bad in enumerate(["abc", "../x", "/abs/path", 2**70]):
        entries.append(entries[0] | {"image_id": bad, "score": 0.1 * i})
    path = tmp_path / "p.json"
    path.write_text(json.dumps(entries))
    store = ps.PredictionStore.open(path, cache_dir=tmp_path / "c")
    invalid = store.record["invalid_image_ids"]
    assert invalid["count"] == 4 and "entry 5: image_id 'abc'" in invalid["examples"][0]
    assert store.record["entries"] == 5


@pytest.mark.parametrize(
    "content, message",
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('[{"image_id": 1, "x": ' + "[" * 100_000 + "]" * 100_000 + "}]", "nested too deeply"),
        (b'[{"image_id": "\xff\xfe"}]', "not UTF-8"),
        ('{"image_id": 1}', "expected a JSON list"),
        ("", "an empty file"),
        ('[{"image_id": 1}, {"image_id": 2', "not valid JSON at entry 1"),
        ('[{"image_id": 1} {"image_id": 2}]', "expected ',' or ']'"),
        ("[1] [2]", "data after the list"),
    ],
)
def test_unreadable_predictions_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=message) as err:
        list(iter_coco_results(path))
    assert str(path) in str(err.value)
    with pytest.raises(ValueError, match=re.escape(str(path))):  # entries are checked too
        ps.PredictionStore.open(path, cache_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_streaming_parse_across_chunk_boundaries(tmp_path, monkeypatch):
    import fdhclean.estimators.predictions as pred

    monkeypatch.setattr(pred, "_CHUNK", 7)  # every entry and number spans buffer ends
    entries = _entries(40) + [12345, 1.5e300, "text", None, [1, 2]]
    path = tmp_path / "p.json"
    path.write_text("\ufeff" + json.dumps(entries, indent=2))  # a BOM, and whitespace
    assert list(iter_coco_results(path)) == json.loads(json.dumps(entries))


def test_refine_and_finalize_refuse_bad_predictions_paths_cleanly(synth_root, tmp_path, capsys):
    from fdhclean.cli import main

    base = ["refine", "--split", "val", "--data-root", str(synth_root),
            "--part-table", str(synth_root / "parts.npz")]  # fmt: skip
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000)
    latin = tmp_path / "latin1.json"
    latin.write_bytes('[{"image_id": "café"}]'.encode("latin-1"))
    for i, (bad, message) in enumerate(
        [(tmp_path, "is a directory"), (deep, "nested too deeply"), (latin, "not UTF-8")]
    ):
        out = tmp_path / f"out{i}"
        assert main([*base, "--out", str(out), "--predictions", str(bad)]) == 2
        captured = capsys.readouterr()
        printed = " ".join((captured.out + captured.err).split())
        assert message in printed and str(bad) in printed and "Traceback" not in printed


def test_finalize_counts_foreign_keys_from_the_store_without_the_json(synth_root, tmp_path):
    import shutil

    from fdhclean.cli import main
    from fdhclean.manifest import Manifest

    preds = tmp_path / "preds.json"
    shutil.copy(synth_root / "predictions_val.json", preds)
    out = tmp_path / "out"
    args = ["refine", "--split", "val", "--data-root", str(synth_root), "--out", str(out),
            "--part-table", str(synth_root / "parts.npz"), "--predictions", str(preds)]  # fmt: skip
    assert main(args) == 0
    manifest = out / "val" / "manifest.json"
    foreign = Manifest.read(manifest).totals["foreign_predictions"]
    assert foreign > 0  # the synthetic set has predictions for keys outside the split
    os.unlink(manifest)
    preds.write_bytes(b"\xff not json any more")  # finalize must not parse it again
    assert main(["finalize", str(out), "--split", "val"]) == 0
    assert Manifest.read(manifest).totals["foreign_predictions"] == foreign


def test_writer_streams_and_refine_reads_a_store_directly(synth_root, tmp_path, monkeypatch):
    """`fdhclean estimate --out DIR` writes a store with `open_writer`; refine given that
    directory gives the same outputs as from the COCO file; a store exports back to COCO."""
    from test_refine import refine, tree_digest

    monkeypatch.setattr(ps.writer, "BLOCK_ROWS", 10)
    source = synth_root / "predictions_val.json"
    entries = list(iter_coco_results(source))
    store_dir = tmp_path / "preds_val"
    for attempt in range(2):  # a second write replaces the first
        writer = ps.open_writer(store_dir, {"estimator": "test"})
        for e in entries[1 - attempt :]:
            writer.add(str(e["image_id"]), np.reshape(e["keypoints"], (17, 3)), e["score"])
        with pytest.raises(ValueError, match="not an integer"):
            writer.add("abc", np.zeros((17, 3)), 1.0)
        store = writer.close()
    assert store.record["entries"] == len(entries) and store.record["estimator"] == "test"
    assert [p.name for p in tmp_path.iterdir()] == ["preds_val"]
    assert refine(synth_root, tmp_path / "a") == 0
    assert refine(synth_root, tmp_path / "b", "--predictions", str(store_dir)) == 0
    assert tree_digest(tmp_path / "a" / "val") == tree_digest(tmp_path / "b" / "val")
    back = tmp_path / "back.json"
    assert ps.export_coco(store, back) == len(store)
    again = load_predictions(back)
    original = load_predictions(source)
    assert sorted(again.keypoints) == sorted(original.keypoints)
    for key, kps in original.keypoints.items():
        np.testing.assert_array_equal(again.keypoints[key], kps)


def test_coco_writer_is_atomic_and_streams(tmp_path):
    from fdhclean.estimators.predictions import CocoResultsWriter

    path = tmp_path / "p.json"
    path.write_text("[]")
    with pytest.raises(RuntimeError), CocoResultsWriter(path) as writer:
        writer.add("7", np.ones((17, 3)), 0.5)
        raise RuntimeError("killed")
    assert path.read_text() == "[]" and [p.name for p in tmp_path.iterdir()] == ["p.json"]
    writer = ps.open_writer(path, {})
    writer.add("0007", np.ones((17, 3)), 0.5)
    writer.close()
    assert list(load_predictions(path).keypoints) == ["7"]


def test_estimate_command_writes_a_store_and_the_same_as_coco(tiny_vitpose, synth_root, tmp_path):
    from fdhclean.cli import main

    path, _ = tiny_vitpose
    base = ["estimate", "--split", "val", "--data-root", str(synth_root), "--estimator",
            "vitpose-hf", "--checkpoint", str(path), "--workers", "0", "--device", "cpu",
            "--no-progress", "--batch-size", "3", "--limit", "3"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "preds.json")]) == 0
    assert main([*base, "--out", str(tmp_path / "store")]) == 0
    store = ps.PredictionStore.open(tmp_path / "store")
    coco = load_predictions(tmp_path / "preds.json")
    assert len(store) == len(coco.keypoints) > 0 and store.record["estimator"] == "vitpose-hf"
    found, kps, _ = store.lookup(list(coco.keypoints))
    assert found.all()
    np.testing.assert_array_equal(kps, np.stack(list(coco.keypoints.values())))
    meta = json.loads((tmp_path / "store.meta.json").read_text())
    assert meta["estimated"] == len(store) and meta["errors"]["non-integer-key"] == 0


def test_provenance_names_this_runs_files_when_the_store_is_shared(tmp_path):
    from fdhclean.refine.estimates import PredictionsSource

    entries = _entries(60)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "p_0.json").write_text(json.dumps(entries[:30]))
        (tmp_path / folder / "p_1.json").write_text(json.dumps(entries[30:]))
    cache = tmp_path / "shared"
    first = PredictionsSource(tmp_path / "a" / "p_*.json", cache_dir=cache).provenance()
    second_source = PredictionsSource(tmp_path / "b" / "p_*.json", cache_dir=cache)
    second = second_source.provenance()
    assert len(list(cache.iterdir())) == 1  # imported once
    assert list(second["predictions_sha256"]) == [
        str(tmp_path / "b" / f"p_{i}.json") for i in (0, 1)
    ]
    assert list(first["predictions_sha256"].values()) == list(second["predictions_sha256"].values())
    worker = second_source.for_workers()
    assert worker.provenance() == second
    assert len(worker.for_shard(tmp_path).lookup) == len({int(e["image_id"]) for e in entries})


def test_estimate_into_a_directory_that_is_not_a_store_is_refused_first(
    tiny_vitpose, synth_root, tmp_path, capsys, monkeypatch
):
    import fdhclean.estimators as estimators
    from fdhclean.cli import main

    path, _ = tiny_vitpose
    user_dir = tmp_path / "mine"
    user_dir.mkdir()
    (user_dir / "notes.txt").write_text("keep me")
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    ran = []
    monkeypatch.setattr(estimators, "estimate_samples", lambda *a, **k: ran.append(1) or iter(()))
    base = ["estimate", "--split", "val", "--data-root", str(synth_root), "--estimator",
            "vitpose-hf", "--checkpoint", str(path), "--workers", "0", "--device", "cpu",
            "--no-progress", "--limit", "3"]  # fmt: skip
    assert main([*base, "--out", str(user_dir)]) == 2
    assert "is not a prediction store" in capsys.readouterr().out
    assert main([*base, "--out", str(blocker / "store")]) == 2
    assert "cannot write --out" in capsys.readouterr().out
    assert not ran  # refused before any estimation
    assert [p.name for p in user_dir.iterdir()] == ["notes.txt"]


def test_refine_reads_a_glob_of_per_rank_stores(synth_root, tmp_path):
    """`estimate --world-size 2 --out preds/val_{rank}` writes two stores; `refine
    --predictions 'preds/val_*'` merges them (highest score wins) as it merges JSON files."""
    from test_refine import refine, tree_digest

    entries = list(iter_coco_results(synth_root / "predictions_val.json"))
    half = len(entries) // 2
    worse = {**entries[0], "score": entries[0]["score"] - 0.5}  # rank 1 also has key 0, lower
    for rank, part in enumerate((entries[:half], [worse, *entries[half:]])):
        writer = ps.open_writer(tmp_path / "preds" / f"val_{rank}", {"estimator": "test"})
        for e in part:
            writer.add(str(e["image_id"]), np.reshape(e["keypoints"], (17, 3)), e["score"])
        writer.close()
    assert refine(synth_root, tmp_path / "a") == 0
    glob = str(tmp_path / "preds" / "val_*")
    assert refine(synth_root, tmp_path / "b", "--predictions", glob) == 0
    assert tree_digest(tmp_path / "a" / "val") == tree_digest(tmp_path / "b" / "val")
    assert refine(synth_root, tmp_path / "b", "--predictions", glob) == 0  # resume: same record
    (tmp_path / "preds" / "notes.json").write_text("[]")
    assert refine(synth_root, tmp_path / "c", "--predictions", str(tmp_path / "preds" / "*")) == 2


def test_predictions_deleted_before_the_manifest_are_named_not_free_space(
    synth_copy, tmp_path, capsys, monkeypatch
):
    """The predictions JSON and its imported store are removed while the last rank runs:
    the manifest cannot be finished, and the message says why (not "free space")."""
    import shutil

    from test_refine import refine

    import fdhclean.refine.runner as runner

    out = tmp_path / "out"
    assert refine(synth_copy, out, "--rank", "0", "--world-size", "2") == 0
    original = runner.process_shard

    def then_deleted(*args, **kwargs):  # a cleanup job removes the predictions meanwhile
        result = original(*args, **kwargs)
        (synth_copy / "predictions_val.json").unlink(missing_ok=True)
        shutil.rmtree(out / ".prediction-store", ignore_errors=True)
        return result

    monkeypatch.setattr(runner, "process_shard", then_deleted)
    capsys.readouterr()
    assert refine(synth_copy, out, "--rank", "1", "--world-size", "2") == 1
    err = capsys.readouterr().err
    assert "predictions this run used" in err and "free space" not in err
    assert not (out / "val" / "manifest.json").exists()
