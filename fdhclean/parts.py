"""CSE vertex -> SMPL body part table (refine-spec section 1).

Every CSE vertex of DensePose's `smpl_27554` mesh gets a uint32 bitmask: bit p is set when the
vertex belongs to part `part_names[p]`. The 27554-vertex mesh is a midpoint subdivision of SMPL
(6890 originals first, then one vertex per edge), so an original vertex takes its own parts from
the Meshcapade segmentation and a midpoint the union of its two original neighbours' parts.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fdhclean.atomic import atomic_open
from fdhclean.fdh import PART_NAMES
from fdhclean.safe_pickle import load_pickle_restricted

MAX_PARTS = 32  # bits of a uint32 mask
# Bounds for untrusted inputs (DensePose's mesh has 27554 vertices): a part table array or a
# mesh larger than this is refused before it is allocated.
MAX_VERTICES = 1 << 24
MAX_NPY_BYTES = 1 << 27


@dataclass(frozen=True)
class PartTable:
    """One bitmask per CSE vertex; bit p = `part_names[p]`."""

    vertex_parts: np.ndarray
    part_names: tuple[str, ...]

    def __post_init__(self) -> None:
        parts = np.asarray(self.vertex_parts)
        if parts.ndim != 1 or parts.dtype != np.uint32:
            raise ValueError(
                f"vertex_parts must be a 1-D uint32 array, got {parts.dtype} {parts.shape}"
            )
        names = tuple(str(n) for n in self.part_names)
        if not names or len(names) > MAX_PARTS or len(set(names)) != len(names):
            raise ValueError(f"part_names must be 1..{MAX_PARTS} distinct names, got {names}")
        unknown_bits = parts >> np.uint32(len(names)) if len(names) < MAX_PARTS else None
        if unknown_bits is not None and unknown_bits.any():
            bad = int(np.flatnonzero(unknown_bits)[0])
            raise ValueError(
                f"vertex {bad} has mask {int(parts[bad]):#x}, with bits beyond the "
                f"{len(names)} part names"
            )
        object.__setattr__(self, "part_names", names)

    @property
    def num_vertices(self) -> int:
        return int(self.vertex_parts.shape[0])

    @property
    def sha256(self) -> str:
        """sha256 of the masks' little-endian uint32 bytes, then the names joined by newlines."""
        digest = hashlib.sha256(np.ascontiguousarray(self.vertex_parts, dtype="<u4").tobytes())
        digest.update("\n".join(self.part_names).encode("utf-8"))
        return digest.hexdigest()

    def lookup(self, vertex_ids: np.ndarray) -> np.ndarray:
        """Masks of `vertex_ids` (any shape); ids outside [0, num_vertices) raise ValueError."""
        ids = np.asarray(vertex_ids)
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"vertex ids must be integers, got dtype {ids.dtype}")
        bad = (ids < 0) | (ids >= self.num_vertices)
        if bad.any():
            raise ValueError(
                f"vertex id {int(ids[bad].flat[0])} is outside the part table's "
                f"0..{self.num_vertices - 1} ({int(bad.sum())} ids out of range)"
            )
        return self.vertex_parts[ids]

    def count_per_part(self) -> np.ndarray:
        """How many vertices carry each part (int64, one entry per name)."""
        bits = np.uint32(1) << np.arange(len(self.part_names), dtype=np.uint32)
        return ((self.vertex_parts[:, None] & bits[None, :]) != 0).sum(axis=0).astype(np.int64)

    def parts_per_vertex(self) -> np.ndarray:
        """Number of parts of each vertex (popcount of its mask)."""
        return np.bitwise_count(self.vertex_parts).astype(np.int64)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write `.npz` (`vertex_parts`, `part_names`) atomically: temp file, then rename."""
        path = Path(path)
        with atomic_open(path, "wb") as stream:
            np.savez(
                stream,
                vertex_parts=np.ascontiguousarray(self.vertex_parts, dtype="<u4"),
                part_names=np.array(self.part_names, dtype=str),
            )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PartTable:
        """Read a table written by `save` (no pickles); errors name the file and the problem."""
        try:
            with zipfile.ZipFile(path) as archive:
                missing = {"vertex_parts.npy", "part_names.npy"} - set(archive.namelist())
                if missing:
                    raise ValueError(f"missing array(s) {sorted(missing)}")
                parts = _read_npy(archive, "vertex_parts.npy")
                names = _read_npy(archive, "part_names.npy")
        except FileNotFoundError:
            raise FileNotFoundError(f"part table {path} does not exist") from None
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise ValueError(
                f"part table {path}: not a valid part table npz ({type(exc).__name__}: {exc}); "
                "rebuild it with `fdhclean parts build`"
            ) from None
        if parts.dtype != np.uint32 or parts.ndim != 1:
            raise ValueError(
                f"part table {path}: vertex_parts must be 1-D uint32, got {parts.dtype} "
                f"{parts.shape}"
            )
        if names.dtype.kind != "U" or names.ndim != 1:
            raise ValueError(f"part table {path}: part_names must be a 1-D str array")
        try:
            return cls(parts.astype(np.uint32), tuple(names.tolist()))
        except ValueError as exc:
            raise ValueError(f"part table {path}: {exc}") from None


def _read_npy(archive: zipfile.ZipFile, name: str) -> np.ndarray:
    """One `.npy` member, its size bounded before anything is allocated (a truncated or
    forged table is an error, not a MemoryError: numpy allocates what the header claims)."""
    with archive.open(name) as member:
        raw = member.read(MAX_NPY_BYTES + 1)  # decompresses no more than this
    if len(raw) > MAX_NPY_BYTES:
        raise ValueError(f"{name} is larger than {MAX_NPY_BYTES} bytes")
    stream = io.BytesIO(raw)
    version = np.lib.format.read_magic(stream)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"{name}: unsupported .npy version {version}")
    read_header = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    shape, _, dtype = read_header(stream)
    if dtype.hasobject:
        raise ValueError(f"{name} holds Python objects")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if expected != len(raw) - stream.tell():
        raise ValueError(
            f"{name}: its header claims {shape} {dtype} ({expected} bytes) but it holds "
            f"{len(raw) - stream.tell()} (truncated or forged)"
        )
    stream.seek(0)
    return np.lib.format.read_array(stream, allow_pickle=False)


def part_bits(names: Iterable[str], part_names: Iterable[str] = PART_NAMES) -> int:
    """Bitmask of `names` in the order of `part_names`; unknown names raise ValueError."""
    order = {name: i for i, name in enumerate(part_names)}
    mask = 0
    for name in names:
        if name not in order:
            raise ValueError(f"unknown body part {name!r}; known parts: {', '.join(order)}")
        mask |= 1 << order[name]
    return mask


def load_segmentation(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read Meshcapade's `smpl_vert_segmentation.json`: part name -> vertex ids (int64).

    The file must name exactly the 24 canonical parts (fdh.PART_NAMES), each with a list of
    non-negative integer ids.
    """
    try:
        with open(path, encoding="utf-8") as stream:
            raw = json.load(stream)
    except json.JSONDecodeError as exc:
        raise ValueError(f"segmentation {path}: invalid JSON ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"segmentation {path}: not UTF-8 text ({exc})") from None
    except RecursionError:
        raise ValueError(f"segmentation {path}: JSON nested too deeply") from None
    if not isinstance(raw, dict):
        raise ValueError(f"segmentation {path}: expected an object of part name -> vertex ids")
    missing = [n for n in PART_NAMES if n not in raw]
    unknown = sorted(set(raw) - set(PART_NAMES))
    if missing or unknown:
        raise ValueError(
            f"segmentation {path}: must name exactly the {len(PART_NAMES)} SMPL parts; "
            f"missing: {missing or 'none'}; unknown: {unknown or 'none'}"
        )
    out: dict[str, np.ndarray] = {}
    for name in PART_NAMES:
        ids = raw[name]
        if not isinstance(ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < MAX_VERTICES for i in ids
        ):
            raise ValueError(
                f"segmentation {path}: part {name!r} must be a list of non-negative integers "
                f"(vertex ids below {MAX_VERTICES})"
            )
        out[name] = np.asarray(ids, dtype=np.int64)
    return out


def load_cse_mesh(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (N,3) float64, faces (M,3) int64) from DensePose's mesh pickle, loaded safely."""
    data = load_pickle_restricted(path)
    if not isinstance(data, Mapping) or "vertices" not in data or "faces" not in data:
        keys = sorted(map(str, data)) if isinstance(data, Mapping) else type(data).__name__
        raise ValueError(
            f"CSE mesh {path}: expected a dict with 'vertices' and 'faces', got {keys}"
        )
    vertices = _mesh_array(data["vertices"], "vertices", path)
    faces = _mesh_array(data["faces"], "faces", path)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"CSE mesh {path}: vertices must have shape (N, 3), got {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
        raise ValueError(
            f"CSE mesh {path}: faces must be integers of shape (M, 3), got {faces.dtype} "
            f"{faces.shape}"
        )
    return vertices.astype(np.float64), faces.astype(np.int64)


def _mesh_array(value: object, name: str, path: str | os.PathLike[str]) -> np.ndarray:
    """A numeric (N, 3) array from the mesh pickle, its size checked before `np.asarray`
    (a list of a million references to one array is small on disk and huge once copied)."""
    if isinstance(value, (list, tuple)):
        ok = len(value) <= MAX_VERTICES * 2 and all(
            isinstance(row, (list, tuple))
            and len(row) == 3
            and all(isinstance(v, (int, float, np.number)) for v in row)
            for row in value
        )
        if not ok:
            raise ValueError(f"CSE mesh {path}: {name} must be rows of 3 numbers")
        value = np.asarray(value)
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
        raise ValueError(f"CSE mesh {path}: {name} must be a numeric array, got {type(value)}")
    if value.size > 3 * MAX_VERTICES * 2:
        raise ValueError(f"CSE mesh {path}: {name} has {value.size} values, too many for a mesh")
    return value


def _segmentation_masks(
    segmentation: Mapping[str, np.ndarray], num_vertices: int | None = None
) -> np.ndarray:
    """uint32 masks of the original vertices 0..max id; every id must have a part, and the
    ids must be vertices of the mesh (checked before the masks are allocated)."""
    unknown = sorted(set(segmentation) - set(PART_NAMES))
    if unknown:
        raise ValueError(f"segmentation names unknown part(s) {unknown}")
    ids_per_part = {n: np.asarray(v, dtype=np.int64).ravel() for n, v in segmentation.items()}
    all_ids = [ids for ids in ids_per_part.values() if ids.size]
    if not all_ids:
        raise ValueError("segmentation is empty")
    if min(int(ids.min()) for ids in all_ids) < 0:
        raise ValueError("segmentation has a negative vertex id")
    n_orig = max(int(ids.max()) for ids in all_ids) + 1
    limit = MAX_VERTICES if num_vertices is None else min(int(num_vertices), MAX_VERTICES)
    if n_orig > limit:
        raise ValueError(
            f"segmentation names vertex id {n_orig - 1}, but the mesh has only {limit} vertices "
            "(ids 0.."
            f"{limit - 1}); is it the segmentation of this mesh?"
        )
    masks = np.zeros(n_orig, dtype=np.uint32)
    for name, ids in ids_per_part.items():
        np.bitwise_or.at(masks, ids, np.uint32(1 << PART_NAMES.index(name)))
    no_part = np.flatnonzero(masks == 0)
    if no_part.size:
        raise ValueError(
            f"every original vertex 0..{n_orig - 1} needs a part; {no_part.size} have none "
            f"(e.g. vertex {int(no_part[0])})"
        )
    return masks


def _unique_edges(faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """Unique undirected edges (E,2), sorted per row, via trimesh (no geometry needed)."""
    import trimesh

    mesh = trimesh.Trimesh(
        vertices=np.zeros((num_vertices, 3)), faces=faces, process=False, validate=False
    )
    return np.sort(np.asarray(mesh.edges_unique, dtype=np.int64), axis=1)


def midpoint_parents(faces: np.ndarray, n_orig: int, num_vertices: int | None = None) -> np.ndarray:
    """The two original neighbours (E,2) of each midpoint id n_orig..num_vertices-1.

    Verifies the structure of a midpoint subdivision whose original vertices come first: no
    edge joins two originals, each midpoint touches exactly two originals, and no two midpoints
    share the same pair. Raises ValueError naming the violated property and an example vertex.
    """
    faces = np.asarray(faces)
    if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
        raise ValueError(f"faces must be integers of shape (M, 3), got {faces.dtype} {faces.shape}")
    if faces.size == 0 or int(faces.min()) < 0:
        raise ValueError("faces must be non-empty with non-negative vertex ids")
    max_id = int(faces.max())
    n_total = max_id + 1 if num_vertices is None else int(num_vertices)
    if max_id >= n_total:
        raise ValueError(
            f"vertex count mismatch: faces use vertex {max_id} but the mesh has {n_total} vertices"
        )
    if n_total <= n_orig:
        raise ValueError(
            f"vertex count mismatch: the mesh has {n_total} vertices, but a midpoint subdivision "
            f"of the segmentation's {n_orig} original vertices must have more"
        )
    edges = _unique_edges(faces.astype(np.int64), n_total)
    lo, hi = edges[:, 0], edges[:, 1]  # lo < hi
    orig_orig = np.flatnonzero(hi < n_orig)
    if orig_orig.size:
        a, b = (int(v) for v in edges[orig_orig[0]])
        raise ValueError(
            "not a midpoint subdivision: an original vertex must touch only midpoints, but "
            f"original vertices {a} and {b} share an edge ({orig_orig.size} such edges)"
        )
    spokes = edges[lo < n_orig]  # (original, midpoint) pairs
    n_mid = n_total - n_orig
    counts = np.bincount(spokes[:, 1] - n_orig, minlength=n_mid)
    wrong = np.flatnonzero(counts != 2)
    if wrong.size:
        vertex = int(wrong[0]) + n_orig
        raise ValueError(
            "not a midpoint subdivision: every midpoint must touch exactly two original vertices, "
            f"but vertex {vertex} touches {int(counts[wrong[0]])} ({wrong.size} such vertices; "
            f"original ids are 0..{n_orig - 1})"
        )
    order = np.argsort(spokes[:, 1], kind="stable")
    parents = spokes[order, 0].reshape(n_mid, 2)
    parents.sort(axis=1)
    _, first, counts = np.unique(parents, axis=0, return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = parents[first[np.flatnonzero(counts > 1)[0]]]
        same = np.flatnonzero((parents == dup).all(axis=1)) + n_orig
        raise ValueError(
            f"not a midpoint subdivision: vertices {same.tolist()} are all midpoints of the "
            f"edge ({int(dup[0])}, {int(dup[1])})"
        )
    return parents


def build_part_table(
    segmentation: Mapping[str, np.ndarray], faces: np.ndarray, num_vertices: int | None = None
) -> PartTable:
    """Part table of a midpoint-subdivided mesh from a segmentation of its original vertices.

    The number of originals is the segmentation's largest id + 1 (spec section 1); originals
    keep their parts, each midpoint takes the union of its two original neighbours' parts.
    """
    limit = num_vertices
    if limit is None and np.asarray(faces).size:
        limit = int(np.asarray(faces).max()) + 1
    masks = _segmentation_masks(segmentation, limit)
    parents = midpoint_parents(faces, masks.shape[0], num_vertices)
    midpoint_masks = masks[parents[:, 0]] | masks[parents[:, 1]]
    return PartTable(np.concatenate([masks, midpoint_masks]).astype(np.uint32), PART_NAMES)
