"""Lighter visual meshes for the SO-101 arm (vertex-clustering decimation of the shipped STLs).

The shipped meshes total ~320k triangles; drawn by a software rasteriser they, not the pixel
count, bound the frame time. Visual geoms use a clustered copy (one vertex per ``cell``-sized
voxel); collision geoms keep the original meshes, so the physics is unchanged.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

#: Voxel edge (m) of the clustering: ~1/100 of a link, below a pixel at the front camera.
VISUAL_CELL = 0.0025


def read_binary_stl(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (N x 3, float) and faces (M x 3, int) of a binary STL file."""
    raw = path.read_bytes()
    n = int(np.frombuffer(raw, dtype="<u4", count=1, offset=80)[0])
    if len(raw) != 84 + 50 * n:
        raise ValueError(f"{path} is not a binary STL ({len(raw)} bytes for {n} triangles)")
    rec = np.dtype([("normal", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")])
    verts = np.frombuffer(raw, dtype=rec, count=n, offset=84)["v"].reshape(-1, 3).astype(float)
    return verts, np.arange(len(verts)).reshape(-1, 3)  # unshared corners; clustering merges them


def cluster_decimate(verts: np.ndarray, faces: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray]:
    """Merge vertices within each ``cell`` voxel (to their mean) and drop collapsed faces."""
    cells = np.floor(verts / cell).astype(np.int64)
    cells -= cells.min(axis=0)
    span = cells.max(axis=0) + 1
    keys = (cells[:, 0] * span[1] + cells[:, 1]) * span[2] + cells[:, 2]  # one int per voxel
    _, cluster, counts = np.unique(keys, return_inverse=True, return_counts=True)
    cluster = cluster.ravel()
    new_verts = np.zeros((len(counts), 3))
    np.add.at(new_verts, cluster, verts)
    new_verts /= counts[:, None]
    f = cluster[faces]
    keep = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    f = f[keep]
    f = f[np.unique(np.sort(f, axis=1) @ np.array([1, len(counts), len(counts) ** 2]), return_index=True)[1]]
    return new_verts, f


@lru_cache(maxsize=64)
def decimated_mesh(path: str, cell: float = VISUAL_CELL) -> tuple[np.ndarray, np.ndarray]:
    """Cached clustered copy of an STL file: (vertices, faces)."""
    verts, faces = read_binary_stl(Path(path))
    return cluster_decimate(verts, faces, cell)
