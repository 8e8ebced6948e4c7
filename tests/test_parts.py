"""Vertex -> body part table (refine-spec section 1): building, checks, file format, CLI."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fdhclean.cli import main
from fdhclean.fdh import CSE_NUM_VERTICES, PART_NAMES, SMPL_NUM_VERTICES
from fdhclean.parts import (
    PartTable,
    build_part_table,
    load_cse_mesh,
    load_segmentation,
    midpoint_parents,
    part_bits,
)
from fdhclean.safe_pickle import UnsafePickleError

# The open SMPL segmentation lies in shared/ beside the checkout (never copied into the repo).
REAL_SEGMENTATION = Path(__file__).resolve().parents[2] / "shared/data/smpl_vert_segmentation.json"
trimesh = pytest.importorskip("trimesh")

OCTAHEDRON_VERTICES = np.array(
    [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float64
)
OCTAHEDRON_FACES = np.array(
    [[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]]
)
# Vertex 2 and 4 lie on part borders (two parts each).
OCTA_SEGMENTATION = {
    "head": np.array([0, 2, 4]),
    "neck": np.array([2, 3]),
    "hips": np.array([1, 4, 5]),
}


def _bit(name: str) -> int:
    return 1 << PART_NAMES.index(name)


def _subdivided_octahedron() -> tuple[np.ndarray, np.ndarray]:
    vertices, faces = trimesh.remesh.subdivide(OCTAHEDRON_VERTICES, OCTAHEDRON_FACES)
    return np.asarray(vertices), np.asarray(faces)


def _parents_from_geometry(vertices: np.ndarray, n_orig: int) -> np.ndarray:
    """Each midpoint's original endpoints, found from coordinates alone (independent check)."""
    originals = vertices[:n_orig]
    pair_means = (originals[:, None, :] + originals[None, :, :]) / 2
    out = []
    for point in vertices[n_orig:]:
        a, b = np.argwhere(np.all(np.isclose(pair_means, point), axis=-1))[0]
        out.append(sorted((int(a), int(b))))
    return np.array(out)


def test_octahedron_midpoints_take_unions():
    vertices, faces = _subdivided_octahedron()
    assert vertices.shape == (6 + 12, 3)
    # trimesh appends midpoints after the originals: the ordering the table relies on.
    np.testing.assert_array_equal(vertices[:6], OCTAHEDRON_VERTICES)
    parents = _parents_from_geometry(vertices, 6)
    np.testing.assert_array_equal(midpoint_parents(faces, 6), parents)

    table = build_part_table(OCTA_SEGMENTATION, faces)
    assert table.vertex_parts.dtype == np.uint32 and table.part_names == PART_NAMES
    head, neck, hips = _bit("head"), _bit("neck"), _bit("hips")
    own = [head, hips, head | neck, neck, head | hips, hips]
    np.testing.assert_array_equal(table.vertex_parts[:6], own)
    expected_mid = [own[a] | own[b] for a, b in parents]
    np.testing.assert_array_equal(table.vertex_parts[6:], expected_mid)
    # A concrete one: the midpoint of 2 (head, neck) and 4 (head, hips) has three parts.
    mid_24 = 6 + int(np.flatnonzero((parents == [2, 4]).all(axis=1))[0])
    assert table.vertex_parts[mid_24] == head | neck | hips
    np.testing.assert_array_equal(
        table.lookup(np.array([[2, mid_24]])), [[head | neck, head | neck | hips]]
    )


def test_num_vertices_matches():
    _, faces = _subdivided_octahedron()
    assert build_part_table(OCTA_SEGMENTATION, faces, num_vertices=18).num_vertices == 18


@pytest.mark.parametrize(
    ("segmentation", "faces", "num_vertices", "message"),
    [
        # the base mesh itself: no midpoints at all
        (OCTA_SEGMENTATION, OCTAHEDRON_FACES, None, "vertex count mismatch.*6 vertices"),
        # segmentation covers only 0..2: vertices 0 and 2 are "originals" sharing an edge
        ({"head": np.array([0, 1, 2])}, OCTAHEDRON_FACES, None, "original vertices 0 and 2"),
        # one vertex more than the faces use: it touches no original
        (OCTA_SEGMENTATION, None, 19, "vertex 18 touches 0"),
        # fewer vertices than the faces use
        (OCTA_SEGMENTATION, None, 17, "vertex count mismatch: faces use vertex 17"),
        # a midpoint counted as an original
        ({**OCTA_SEGMENTATION, "neck": np.array([2, 3, 6])}, None, None, "share an edge"),
        # an original without a part
        ({"head": np.array([0, 1, 2, 3, 5])}, None, None, "needs a part.*vertex 4"),
    ],
)
def test_structure_violations_are_named(segmentation, faces, num_vertices, message):
    if faces is None:
        faces = _subdivided_octahedron()[1]
    with pytest.raises(ValueError, match=message):
        build_part_table(segmentation, faces, num_vertices)


def test_two_midpoints_on_one_edge_rejected():
    # originals 0, 1, 2; midpoints 3 (0-1), 4 (1-2), 5 (0-2) and a second 0-1 midpoint 6
    faces = np.array([[0, 3, 5], [3, 1, 4], [5, 4, 2], [3, 4, 5], [0, 6, 5], [6, 1, 4]])
    seg = {"head": np.array([0, 1, 2])}
    with pytest.raises(
        ValueError, match=r"vertices \[3, 6\] are all midpoints of the edge \(0, 1\)"
    ):
        build_part_table(seg, faces)


def test_midpoint_with_three_originals_rejected():
    # a fan around midpoint 3 (originals 0, 1, 2 alternate with midpoints 4, 5, 6)
    faces = np.array([[3, 0, 4], [3, 4, 1], [3, 1, 5], [3, 5, 2], [3, 2, 6], [3, 6, 0]])
    with pytest.raises(ValueError, match="vertex 3 touches 3"):
        midpoint_parents(faces, 3)


def test_unknown_part_name_rejected():
    with pytest.raises(ValueError, match="unknown part"):
        build_part_table({"torso": np.array([0])}, OCTAHEDRON_FACES)


def test_part_bits():
    assert part_bits(["head"]) == 1
    assert part_bits(["neck", "rightToeBase"]) == (1 << 1) | (1 << 23)
    assert part_bits(["b"], part_names=("a", "b")) == 2
    with pytest.raises(ValueError, match="unknown body part 'tail'"):
        part_bits(["tail"])


def test_lookup_out_of_range():
    table = PartTable(np.array([1, 2, 3], dtype=np.uint32), ("head", "neck"))
    np.testing.assert_array_equal(table.lookup(np.array([2, 0])), [3, 1])
    for bad in ([3], [-1]):
        with pytest.raises(ValueError, match="outside the part table's 0..2"):
            table.lookup(np.array(bad))
    with pytest.raises(ValueError, match="integers"):
        table.lookup(np.array([0.5]))


def test_table_validation():
    with pytest.raises(ValueError, match="uint32"):
        PartTable(np.array([1, 2], dtype=np.int64), ("head",))
    with pytest.raises(ValueError, match="distinct"):
        PartTable(np.array([1], dtype=np.uint32), ("head", "head"))
    with pytest.raises(ValueError, match="vertex 1 has mask 0x4"):
        PartTable(np.array([1, 4], dtype=np.uint32), ("head", "neck"))


def test_npz_round_trip_and_hash(tmp_path):
    _, faces = _subdivided_octahedron()
    table = build_part_table(OCTA_SEGMENTATION, faces)
    path = tmp_path / "parts.npz"
    table.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["parts.npz"]  # no temp file left
    loaded = PartTable.load(path)
    np.testing.assert_array_equal(loaded.vertex_parts, table.vertex_parts)
    assert loaded.part_names == PART_NAMES
    assert loaded.sha256 == table.sha256
    with np.load(path, allow_pickle=False) as data:  # plain arrays, readable without pickle
        assert data["vertex_parts"].dtype == np.uint32
        assert data["part_names"].tolist() == list(PART_NAMES)

    expected = hashlib.sha256(
        table.vertex_parts.astype("<u4").tobytes() + "\n".join(PART_NAMES).encode()
    ).hexdigest()
    assert table.sha256 == expected
    flipped = table.vertex_parts.copy()
    flipped[7] ^= np.uint32(1 << 5)
    assert PartTable(flipped, PART_NAMES).sha256 != table.sha256
    renamed = PART_NAMES[:-1] + ("rightToes",)
    assert PartTable(table.vertex_parts, renamed).sha256 != table.sha256


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        PartTable.load(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, vertex_parts=np.array([1], dtype=np.uint32))
    with pytest.raises(ValueError, match=r"bad.npz.*part_names"):
        PartTable.load(bad)
    np.savez(bad, vertex_parts=np.array([1.0]), part_names=np.array(["head"]))
    with pytest.raises(ValueError, match=r"bad.npz.*uint32"):
        PartTable.load(bad)
    np.savez(bad, vertex_parts=np.array([2], dtype=np.uint32), part_names=np.array(["head"]))
    with pytest.raises(ValueError, match=r"bad.npz.*bits beyond"):
        PartTable.load(bad)
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz"):
        PartTable.load(bad)


def _write_segmentation(path, data):
    path.write_text(json.dumps(data))
    return path


def test_load_segmentation_errors(tmp_path):
    full = {name: [i] for i, name in enumerate(PART_NAMES)}
    seg = load_segmentation(_write_segmentation(tmp_path / "s.json", full))
    assert list(seg) == list(PART_NAMES) and seg["neck"].tolist() == [1]
    missing = {k: v for k, v in full.items() if k != "neck"}
    with pytest.raises(ValueError, match=r"missing: \['neck'\]; unknown: none"):
        load_segmentation(_write_segmentation(tmp_path / "s.json", missing))
    with pytest.raises(ValueError, match=r"unknown: \['tail'\]"):
        load_segmentation(_write_segmentation(tmp_path / "s.json", {**full, "tail": [0]}))
    with pytest.raises(ValueError, match="'head' must be a list of non-negative"):
        load_segmentation(_write_segmentation(tmp_path / "s.json", {**full, "head": [-1]}))
    (tmp_path / "s.json").write_text("{")
    with pytest.raises(ValueError, match="invalid JSON"):
        load_segmentation(tmp_path / "s.json")


def test_load_cse_mesh(tmp_path):
    vertices, faces = _subdivided_octahedron()
    path = tmp_path / "mesh.pkl"
    path.write_bytes(pickle.dumps({"vertices": vertices, "faces": faces.astype(np.int32)}, 2))
    got_v, got_f = load_cse_mesh(path)
    np.testing.assert_array_equal(got_v, vertices)
    np.testing.assert_array_equal(got_f, faces)
    assert got_f.dtype == np.int64
    path.write_bytes(pickle.dumps({"faces": faces}))
    with pytest.raises(ValueError, match="mesh.pkl.*'vertices' and 'faces'"):
        load_cse_mesh(path)
    path.write_bytes(pickle.dumps({"vertices": vertices, "faces": faces[:, :2]}))
    with pytest.raises(ValueError, match=r"faces must be integers of shape \(M, 3\)"):
        load_cse_mesh(path)
    path.write_bytes(pickle.dumps({"vertices": vertices, "faces": [print]}))
    with pytest.raises(UnsafePickleError, match="print"):
        load_cse_mesh(path)


def _fibonacci_midpoint_mesh() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 27554-vertex midpoint subdivision of a 6890-vertex sphere (SMPL's counts)."""
    spatial = pytest.importorskip("scipy.spatial")  # scipy is an optional extra
    i = np.arange(SMPL_NUM_VERTICES) + 0.5
    phi = np.arccos(1 - 2 * i / SMPL_NUM_VERTICES)
    theta = np.pi * (1 + 5**0.5) * i
    points = np.c_[np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)]
    base_faces = spatial.ConvexHull(points).simplices  # indices into `points`: ids are kept
    vertices, faces = trimesh.remesh.subdivide(points, base_faces)
    return points, np.asarray(vertices), np.asarray(faces)


@pytest.mark.skipif(not REAL_SEGMENTATION.exists(), reason="shared segmentation not present")
def test_real_segmentation_on_synthetic_27554_mesh(tmp_path):
    seg = load_segmentation(REAL_SEGMENTATION)
    assert list(seg) == list(PART_NAMES)
    ids = np.concatenate(list(seg.values()))
    assert np.array_equal(np.unique(ids), np.arange(SMPL_NUM_VERTICES))
    per_vertex = np.bincount(ids, minlength=SMPL_NUM_VERTICES)
    assert int((per_vertex > 1).sum()) == 496

    points, vertices, faces = _fibonacci_midpoint_mesh()
    assert vertices.shape == (CSE_NUM_VERTICES, 3)
    table = build_part_table(seg, faces, num_vertices=CSE_NUM_VERTICES)
    assert table.num_vertices == CSE_NUM_VERTICES
    counts = table.parts_per_vertex()
    assert int((counts == 0).sum()) == 0
    assert int((counts[:SMPL_NUM_VERTICES] > 1).sum()) == 496
    own = np.zeros(SMPL_NUM_VERTICES, dtype=np.uint32)
    for name, vids in seg.items():
        own[vids] |= np.uint32(_bit(name))
    np.testing.assert_array_equal(table.vertex_parts[:SMPL_NUM_VERTICES], own)
    parents = midpoint_parents(faces, SMPL_NUM_VERTICES)
    # the parents found from the faces are the midpoints' geometric endpoints
    np.testing.assert_allclose(
        vertices[SMPL_NUM_VERTICES:], points[parents].mean(axis=1), atol=1e-12
    )
    np.testing.assert_array_equal(
        table.vertex_parts[SMPL_NUM_VERTICES:], own[parents[:, 0]] | own[parents[:, 1]]
    )


def test_cli_build_and_show(tmp_path, capsys):
    vertices, faces = _subdivided_octahedron()
    mesh = tmp_path / "mesh.pkl"
    mesh.write_bytes(pickle.dumps({"vertices": np.zeros_like(vertices), "faces": faces}, 2))
    full = {name: [] for name in PART_NAMES}
    for name, vids in OCTA_SEGMENTATION.items():
        full[name] = vids.tolist()
    seg = _write_segmentation(tmp_path / "seg.json", full)
    out = tmp_path / "parts.npz"
    argv = ["parts", "build", "--segmentation", str(seg), "--cse-mesh", str(mesh)]
    assert main([*argv, "--out", str(out)]) == 0
    table = PartTable.load(out)
    printed = capsys.readouterr().out
    assert "original vertices: 6, midpoints: 12" in printed
    counts = np.bincount(table.parts_per_vertex(), minlength=4)
    assert f"0: 0, 1: {counts[1]}, 2: {counts[2]}, 3: {counts[3]}" in printed
    assert table.sha256 in printed

    assert main(["parts", "show", str(out)]) == 0
    printed = capsys.readouterr().out
    head_count = int((table.vertex_parts & 1 != 0).sum())
    assert " 0  head" in printed and f"  {head_count}\n" in printed
    assert table.sha256 in printed

    assert main(["parts", "show", str(tmp_path / "nope.npz")]) == 2
    assert "nope.npz" in capsys.readouterr().err


def _npy_bytes(array):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array)
    return buffer.getvalue()


def _hostile_inputs(tmp_path):
    """(argv of `parts build`/`show`, file the error must name) for each hostile input."""
    vertices, faces = _subdivided_octahedron()
    full = {name: [] for name in PART_NAMES}
    for name, vids in OCTA_SEGMENTATION.items():
        full[name] = vids.tolist()
    seg = _write_segmentation(tmp_path / "seg.json", full)
    mesh = tmp_path / "mesh.pkl"
    mesh.write_bytes(pickle.dumps({"vertices": vertices, "faces": faces}, 2))
    cases = []
    # 1. a mesh pickle built to exhaust memory once copied: 2e5 references to one 8 MB array
    big = np.zeros((1 << 20, 1))
    bomb = tmp_path / "bomb.pkl"
    bomb.write_bytes(pickle.dumps({"vertices": [big] * 200_000, "faces": faces}, 2))
    cases.append((["build", "--segmentation", str(seg), "--cse-mesh", str(bomb)], "bomb.pkl"))
    # 2. a segmentation naming vertex id 1e12 (np.zeros(1e12 + 1) before)
    far = _write_segmentation(tmp_path / "far.json", {**full, "head": [0, 10**12]})
    cases.append((["build", "--segmentation", str(far), "--cse-mesh", str(mesh)], "far.json"))
    near = _write_segmentation(tmp_path / "near.json", {**full, "head": [0, 10**6]})
    cases.append((["build", "--segmentation", str(near), "--cse-mesh", str(mesh)], "near"))
    # 3. a truncated part table (BadZipFile before), one whose header claims 1e12 vertices
    table = build_part_table(OCTA_SEGMENTATION, faces, num_vertices=18)
    good = tmp_path / "good.npz"
    table.save(good)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases.append((["show", str(cut)], "cut.npz"))
    forged = tmp_path / "forged.npz"  # a valid zip whose npy header claims 1e12 vertices
    npy = _npy_bytes(table.vertex_parts)
    claim = npy.replace(b"(18,), }" + b" " * 11, b"(1000000000000,), }")
    assert claim != npy
    with zipfile.ZipFile(forged, "w") as archive:
        archive.writestr("vertex_parts.npy", claim)
        archive.writestr("part_names.npy", _npy_bytes(np.array(table.part_names)))
    cases.append((["show", str(forged)], "forged.npz"))
    notzip = tmp_path / "plain.npz"
    np.save(notzip.with_suffix(".npy"), table.vertex_parts)
    notzip.with_suffix(".npy").rename(notzip)
    cases.append((["show", str(notzip)], "plain.npz"))
    return cases


def test_hostile_part_inputs_are_clear_errors_exit_2(tmp_path, capsys):
    for argv, name in _hostile_inputs(tmp_path):
        out = tmp_path / "out.npz"
        extra = ["--out", str(out)] if argv[0] == "build" else []
        assert main(["parts", *argv, *extra]) == 2, argv
        err = capsys.readouterr().err
        assert name in err and "Traceback" not in err, err
        assert not out.exists()
