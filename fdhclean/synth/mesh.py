"""A stand-in for DensePose's `smpl_27554` mesh and Meshcapade's SMPL part segmentation.

refine-spec section 1 builds the vertex -> part table from two files: a midpoint subdivision of
SMPL (original ids first, then one midpoint per original edge) and a segmentation of the
original vertices. The synthetic dataset needs both with the same structure, not SMPL itself:
the base is a genus-0 triangulated sphere, so E = 3V - 6 and the subdivided mesh has
V + 3V - 6 vertices (6890 -> 27554 with `real_size`, as in DensePose).

Parts are laid out so that no vertex or midpoint ever carries both a left and a right part:
central parts live in a band around x = 0, left parts in the cap x > X_BAND, right parts in the
mirror cap. A left/right swap in an annotation is then always detectable by the vote.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fdhclean.fdh import PART_NAMES, SMPL_NUM_VERTICES

SMALL_ICOSPHERE_SUBDIVISIONS = 3  # 642 base vertices: fast, ~25 vertices per part
X_BAND = 0.25  # |x| < X_BAND: central parts (equal-area band, see module docstring)
CENTRAL_PARTS = ("head", "neck", "spine2", "spine1", "spine", "hips")
SIDE_PARTS = (
    "Shoulder", "Arm", "ForeArm", "Hand", "HandIndex1", "UpLeg", "Leg", "Foot", "ToeBase",
)  # fmt: skip
# One border vertex in BORDER_EVERY also takes its neighbour's part (the real file has 496 of
# 6890 vertices in two or three parts).
BORDER_EVERY = 3


@dataclass(frozen=True)
class SynthMesh:
    """Base triangulation, its midpoint subdivision and the base edges the midpoints sit on."""

    base_vertices: np.ndarray  # float64 (V, 3), on the unit sphere
    base_faces: np.ndarray  # int64 (F, 3)
    edges: np.ndarray  # int64 (3V - 6, 2), sorted pairs; midpoint id = V + row
    vertices: np.ndarray  # float32 (V + E, 3)
    faces: np.ndarray  # int64 (4F, 3)

    @property
    def num_base(self) -> int:
        return int(self.base_vertices.shape[0])

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])


def fibonacci_sphere(n: int) -> np.ndarray:
    """n nearly uniform points on the unit sphere (deterministic, all extreme points)."""
    i = np.arange(n, dtype=np.float64) + 0.5
    z = 1.0 - 2.0 * i / n
    r = np.sqrt(1.0 - z * z)
    phi = np.pi * (1.0 + 5.0**0.5) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def _outward(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Orient every triangle of a convex surface around the origin counter-clockwise."""
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    flip = np.einsum("ij,ij->i", np.cross(b - a, c - a), a + b + c) < 0
    faces = faces.copy()
    faces[flip] = faces[flip][:, [0, 2, 1]]
    return faces


def base_mesh(num_vertices: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Genus-0 triangulated sphere: an icosphere (642 vertices) by default, else exactly n.

    An exact size is the convex hull of a Fibonacci sphere (scipy's qhull), checked to use
    every point and to have 2n - 4 faces (Euler: V - E + F = 2 with E = 3V - 6).
    """
    if num_vertices is None:
        import trimesh

        sphere = trimesh.creation.icosphere(subdivisions=SMALL_ICOSPHERE_SUBDIVISIONS)
        vertices = np.asarray(sphere.vertices, dtype=np.float64)
        faces = np.asarray(sphere.faces, dtype=np.int64)
    else:
        try:
            from scipy.spatial import ConvexHull
        except ImportError:
            raise RuntimeError(
                "an exact mesh size (--real-mesh-size) needs scipy: pip install scipy"
            ) from None

        vertices = fibonacci_sphere(num_vertices)
        faces = np.asarray(ConvexHull(vertices).simplices, dtype=np.int64)
    n = vertices.shape[0]
    if faces.shape != (2 * n - 4, 3) or np.unique(faces).size != n:
        raise RuntimeError(
            f"base triangulation of {n} points is not a closed genus-0 surface "
            f"({faces.shape[0]} faces, {np.unique(faces).size} vertices used)"
        )
    return vertices, _outward(vertices, faces)


def subdivide(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """4-way midpoint subdivision: (vertices, faces, edges) with midpoint id = V + edge row."""
    n = vertices.shape[0]
    pairs = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    edges, inverse = np.unique(pairs, axis=0, return_inverse=True)
    if edges.shape[0] != 3 * n - 6:
        raise RuntimeError(f"{edges.shape[0]} edges for {n} vertices; a sphere has {3 * n - 6}")
    mid = n + inverse.reshape(-1, 3)  # midpoints of edges (0,1), (1,2), (2,0) of each face
    a, b, c = faces[:, 0], faces[:, 1], faces[:, 2]
    ab, bc, ca = mid[:, 0], mid[:, 1], mid[:, 2]
    new_faces = np.concatenate(
        [
            np.stack([a, ab, ca], axis=1),
            np.stack([ab, b, bc], axis=1),
            np.stack([ca, bc, c], axis=1),
            np.stack([ab, bc, ca], axis=1),
        ]
    ).astype(np.int64)
    midpoints = 0.5 * (vertices[edges[:, 0]] + vertices[edges[:, 1]])
    all_vertices = np.concatenate([vertices, midpoints]).astype(np.float32)
    return all_vertices, new_faces, edges.astype(np.int64)


def build_mesh(real_size: bool = False) -> SynthMesh:
    """The synthetic CSE mesh; `real_size` gives SMPL's 6890 base vertices (27554 in all)."""
    base_v, base_f = base_mesh(SMPL_NUM_VERTICES if real_size else None)
    vertices, faces, edges = subdivide(base_v, base_f)
    return SynthMesh(base_v, base_f, edges, vertices, faces)


def side_part_names(side: str) -> tuple[str, ...]:
    """The nine part names of one side ("left" or "right"), from shoulder to toes."""
    return tuple(side + p for p in SIDE_PARTS)


def _primary_parts(directions: np.ndarray) -> np.ndarray:
    """Index into PART_NAMES of each base vertex: equal-area sectors of the band and caps."""
    x, y, z = directions[:, 0], directions[:, 1], directions[:, 2]
    angle = (np.arctan2(z, y) + np.pi) / (2 * np.pi)  # [0, 1]
    index = {name: i for i, name in enumerate(PART_NAMES)}
    central = np.array([index[p] for p in CENTRAL_PARTS])
    left = np.array([index[p] for p in side_part_names("left")])
    right = np.array([index[p] for p in side_part_names("right")])
    sector6 = np.minimum((angle * 6).astype(np.int64), 5)
    sector9 = np.minimum((angle * 9).astype(np.int64), 8)
    return np.where(
        x > X_BAND, left[sector9], np.where(x < -X_BAND, right[sector9], central[sector6])
    )


def segment(mesh: SynthMesh) -> dict[str, list[int]]:
    """Meshcapade-style segmentation of the base vertices: {part name: sorted vertex ids}.

    Every vertex has a primary part; along each border edge (a, b) with a < b, and for one edge
    in BORDER_EVERY, vertex a also joins b's part, so some vertices are in two or three parts.
    Keys come in alphabetical order, not PART_NAMES order (readers must use the canonical one).
    """
    directions = mesh.base_vertices / np.linalg.norm(mesh.base_vertices, axis=1, keepdims=True)
    primary = _primary_parts(directions)
    membership = np.zeros((mesh.num_base, len(PART_NAMES)), dtype=bool)
    membership[np.arange(mesh.num_base), primary] = True
    a, b = mesh.edges[:, 0], mesh.edges[:, 1]
    border = (primary[a] != primary[b]) & (np.arange(a.size) % BORDER_EVERY == 0)
    membership[a[border], primary[b[border]]] = True
    out = {}
    for name in sorted(PART_NAMES):
        ids = np.flatnonzero(membership[:, PART_NAMES.index(name)])
        if ids.size == 0:
            raise RuntimeError(f"synthetic segmentation left part {name!r} empty")
        out[name] = ids.tolist()
    return out


def vertex_part_bits(mesh: SynthMesh, segmentation: dict[str, list[int]]) -> np.ndarray:
    """uint32 bitmask per subdivided vertex (bit p = PART_NAMES[p]); midpoints: parents' union."""
    base = np.zeros(mesh.num_base, dtype=np.uint32)
    for name, ids in segmentation.items():
        base[np.asarray(ids, dtype=np.int64)] |= np.uint32(1 << PART_NAMES.index(name))
    mids = base[mesh.edges[:, 0]] | base[mesh.edges[:, 1]]
    return np.concatenate([base, mids])


def part_pools(mesh: SynthMesh, segmentation: dict[str, list[int]]) -> list[np.ndarray]:
    """Per part (PART_NAMES order): base ids in it and midpoints whose two parents are in it.

    Every id of a pool carries its part in the spec's table, so painting a pixel of part p with
    any of them makes that pixel's part lookup contain p.
    """
    pools = []
    for name in PART_NAMES:
        member = np.zeros(mesh.num_base, dtype=bool)
        member[np.asarray(segmentation[name], dtype=np.int64)] = True
        mids = np.flatnonzero(member[mesh.edges[:, 0]] & member[mesh.edges[:, 1]])
        pools.append(np.concatenate([np.flatnonzero(member), mesh.num_base + mids]))
    return pools
