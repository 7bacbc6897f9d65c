"""Small synthetic patterns with exactly known geometry, shared by the tests."""

from __future__ import annotations

import numpy as np


def soft_disk(shape: tuple[int, int], center: tuple[float, float], radius: float, edge: float = 1.0) -> np.ndarray:
    """A uniform disk with a linear edge ``edge`` px wide: its centroid is exactly ``center``
    (up to the pixel grid's symmetric sampling) as long as it stays inside the pattern."""
    qx, qy = np.indices(shape, dtype=np.float64)
    r = np.hypot(qx - center[0], qy - center[1])
    return np.clip((radius - r) / edge + 0.5, 0.0, 1.0)


def shifted_disk_cube(scan: tuple[int, int], n: int, shifts: np.ndarray, radius: float = 8.0, scale: float = 1000.0) -> np.ndarray:
    """(Rx, Ry, n, n) float64 patterns: a disk at the pattern centre + shifts[rx, ry] (px)."""
    out = np.empty(scan + (n, n))
    c = (n - 1) / 2
    for i in range(scan[0]):
        for j in range(scan[1]):
            out[i, j] = scale * soft_disk((n, n), (c + shifts[i, j, 0], c + shifts[i, j, 1]), radius)
    return out
