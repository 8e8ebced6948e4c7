"""Reruns of `triagan anonymize` into the same --out: a smaller world size leaves no stale rank
reports, changed settings are refused unless --overwrite, an edited input is redone, the rates
count only this run's work; bf16 on a CPU is refused."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from anonymize_helpers import (
    one_thread,  # noqa: F401  (autouse: one torch thread)
    save_tiny_generator,
)
from PIL import Image

from triagan_model.cli import main


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_tiny_generator(tmp_path_factory.mktemp("g") / "w", stage="18x10", centres=4)


@pytest.fixture()
def folder(tmp_path):
    import pycocotools.mask as mu

    inp = tmp_path / "in"
    inp.mkdir()
    m = np.zeros((120, 80), np.uint8, order="F")
    m[20:100, 25:55] = 1
    rle = mu.encode(m)
    seg = {"size": rle["size"], "counts": rle["counts"].decode()}
    dets = []
    for k, n in enumerate(("a.png", "b.png", "c.png")):
        img = np.random.RandomState(k).randint(0, 255, (120, 80, 3), np.uint8)
        Image.fromarray(img).save(inp / n)
        dets.append({"file_name": n, "score": 0.9, "segmentation": seg})
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    return tmp_path


def _args(folder, weights, *extra):
    return ["anonymize", str(folder / "in"), "--out", str(folder / "out"), "--weights",
            str(weights), "--detections", str(folder / "dets.json"), *map(str, extra)]  # fmt: skip


def test_smaller_world_size_leaves_no_stale_reports(folder, weights):
    out = folder / "out"
    for r in range(3):
        assert main(_args(folder, weights, "--rank", r, "--world-size", 3)) == 0
    assert (out / "report" / "persons" / "persons-2.parquet").is_file()
    assert (out / "summary-2.json").is_file()
    assert main(_args(folder, weights)) == 0
    assert sorted(p.name for p in (out / "report" / "files").iterdir()) == ["files-0.parquet"]
    assert sorted(p.name for p in (out / "report" / "persons").iterdir()) == ["persons-0.parquet"]
    assert sorted(p.name for p in out.glob("summary*.json")) == ["summary.json"]
    files = pd.read_parquet(out / "report" / "files")
    assert sorted(files.input) == ["a.png", "b.png", "c.png"]  # each once


def test_changed_settings_refused_unless_overwrite(folder, weights, capsys):
    out = folder / "out"
    assert main(_args(folder, weights)) == 0
    before = (out / "a.png").read_bytes()
    capsys.readouterr()
    assert main(_args(folder, weights, "--truncation", 1)) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "truncation" in err and "--overwrite" in err
    assert (out / "a.png").read_bytes() == before
    assert main(_args(folder, weights, "--truncation", 1, "--overwrite")) == 0
    assert "anonymised 3 file(s), 0 already done" in capsys.readouterr().out
    assert (out / "a.png").read_bytes() != before
    assert json.loads((out / "run.json").read_text())["settings"]["truncation"] == 1


def test_edited_input_is_redone_and_rates_count_this_run(folder, weights, capsys):
    out = folder / "out"
    assert main(_args(folder, weights)) == 0
    first = json.loads((out / "summary.json").read_text())
    assert first["processed_files"] == 3 and first["persons_per_s"] > 0
    capsys.readouterr()
    assert main(_args(folder, weights)) == 0
    again = json.loads((out / "summary.json").read_text())
    assert "0 file(s), 3 already done" in capsys.readouterr().out
    assert again["processed_files"] == 0 and again["persons_per_s"] == 0
    assert again["files"] == first["files"]  # the report still covers every file
    # an edited input (same name, new content) is redone, the others skipped
    before = (out / "b.png").read_bytes()
    img = np.random.RandomState(9).randint(0, 255, (120, 80, 3), np.uint8)
    Image.fromarray(img).save(folder / "in" / "b.png")
    st = (folder / "in" / "b.png").stat()
    os.utime(folder / "in" / "b.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert main(_args(folder, weights)) == 0
    assert "1 file(s), 2 already done" in capsys.readouterr().out
    assert (out / "b.png").read_bytes() != before


def test_bf16_on_cpu_refused(folder, weights, capsys):
    assert main(_args(folder, weights, "--precision", "bf16", "--device", "cpu")) == 2
    err = capsys.readouterr().err
    assert "bf16" in err and "CUDA" in err and not (folder / "out").exists()
