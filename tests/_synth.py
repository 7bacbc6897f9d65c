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


# ----- a lattice of disks with uneven interiors (tilted / thick crystals), exactly known centres
LATTICE_N = 96
LATTICE_R = 5.0
LATTICE_ORIGIN = np.array([47.3, 48.6])
LATTICE_U = np.array([14.0, 3.0])
LATTICE_V = np.array([-2.0, 15.0])


def lattice_points(scale=(1.0, 1.0)) -> np.ndarray:
    """Lattice points (px) at least 10 px inside the pattern, nearest the origin (the direct beam)
    first; ``scale`` stretches qx, qy about the origin."""
    hk = sorted(((h, k) for h in range(-4, 5) for k in range(-4, 5)), key=lambda t: (abs(t[0]) + abs(t[1]), t))
    pts = [LATTICE_ORIGIN + (h * LATTICE_U + k * LATTICE_V) * np.asarray(scale) for h, k in hk]
    return np.array([p for p in pts if 10 <= p[0] <= LATTICE_N - 11 and 10 <= p[1] <= LATTICE_N - 11])


def uneven_disks(pts: np.ndarray, interior: str = "flat", strength: float = 0.0, angle: float = 0.6) -> np.ndarray:
    """Disks of radius LATTICE_R at ``pts`` (the first, the direct beam, 3x brighter); ``interior``:
    ``"flat"``, ``"ramp"`` (1 + strength * s, s = distance along the direction ``angle`` / LATTICE_R:
    intensity moved towards one side, as a tilt does) or ``"half"`` (the far half dimmed by
    ``strength``: a dark Bragg band across the disk)."""
    qx, qy = np.indices((LATTICE_N, LATTICE_N), dtype=np.float64)
    u = np.array([np.cos(angle), np.sin(angle)])
    img = np.zeros((LATTICE_N, LATTICE_N))
    for i, p in enumerate(pts):
        s = ((qx - p[0]) * u[0] + (qy - p[1]) * u[1]) / LATTICE_R
        if interior == "ramp":
            w = np.clip(1 + strength * s, 0, None)
        elif interior == "half":
            w = np.where(s < 0, 1 - strength, 1.0)
        else:
            w = 1.0
        img += (3.0 if i == 0 else 1.0) * soft_disk((LATTICE_N, LATTICE_N), tuple(p), LATTICE_R) * w
    return 1000.0 * img


LATTICE_PROBE = 1000.0 * soft_disk((LATTICE_N, LATTICE_N), (LATTICE_N / 2, LATTICE_N / 2), LATTICE_R)


def tilt_series(tilts, pts=None) -> np.ndarray:
    """Patterns (len(tilts), LATTICE_N, LATTICE_N) of one lattice whose disks carry an interior ramp along qx
    ``1 + t g_x / (40 px) x / LATTICE_R``: in a tilted crystal the excitation error, so the intensity's
    move towards the Bragg condition, grows with g along the tilt."""
    pts = lattice_points() if pts is None else pts
    frames = []
    for t in tilts:
        qx, qy = np.indices((LATTICE_N, LATTICE_N), dtype=np.float64)
        img = np.zeros((LATTICE_N, LATTICE_N))
        for i, p in enumerate(pts):
            g = (p[0] - LATTICE_ORIGIN[0]) / 40.0  # ramp along qx, proportional to g_x
            s = (qx - p[0]) / LATTICE_R
            disk = soft_disk((LATTICE_N, LATTICE_N), tuple(p), LATTICE_R)
            img += (3.0 if i == 0 else 1.0) * disk * np.clip(1 + t * g * s, 0, None)
        frames.append(1000.0 * img)
    return np.stack(frames)


