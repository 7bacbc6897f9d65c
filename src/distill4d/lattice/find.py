"""Finding the reciprocal lattice (origin and two basis vectors) seen in a whole scan."""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from ..bragg.peaks import BraggPeaks
from ..errors import Distill4dError

__all__ = ["Basis", "find_lattice", "reduce_basis"]


@dataclasses.dataclass(frozen=True)
class Basis:
    """A reciprocal lattice in detector pixels: ``q(h, k) = origin + h u + k v``.

    ``origin``, ``u``, ``v`` are ``(qx, qy)`` arrays in pixels; ``matrix`` is ``[u v]``
    (2x2, columns u and v). ``n_spots`` is the number of lattice spots it was fitted to.
    """

    origin: np.ndarray
    u: np.ndarray
    v: np.ndarray
    n_spots: int = 0

    @property
    def matrix(self) -> np.ndarray:
        return np.column_stack([self.u, self.v])

    def index(self, qx: np.ndarray, qy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Nearest integer indices ``(h, k)`` of peaks and their distance (pixels) from the lattice point."""
        d = np.stack([np.asarray(qx) - self.origin[0], np.asarray(qy) - self.origin[1]], axis=-1)
        hk = np.rint(d @ np.linalg.inv(self.matrix).T)
        r = d - hk @ self.matrix.T
        return hk[..., 0], hk[..., 1], np.hypot(r[..., 0], r[..., 1])


def reduce_basis(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lagrange-Gauss reduction: the shortest basis of the same 2D lattice, right-handed, |u| <= |v|."""
    u, v = np.asarray(u, float), np.asarray(v, float)
    for _ in range(100):
        if u @ u > v @ v:
            u, v = v, u
        mu = np.rint((u @ v) / (u @ u))
        if mu == 0:
            break
        v = v - mu * u
    if u[0] * v[1] - u[1] * v[0] < 0:
        v = -v
    return u, v


def _spots(qx: np.ndarray, qy: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clusters of peaks over the scan: positions (weighted means), counts, total intensity."""
    x0, y0 = np.floor(qx.min()) - 2, np.floor(qy.min()) - 2
    nx, ny = int(np.ceil(qx.max() - x0)) + 3, int(np.ceil(qy.max() - y0)) + 3
    h = np.zeros((nx, ny))
    np.add.at(h, (np.rint(qx - x0).astype(int), np.rint(qy - y0).astype(int)), 1.0)
    hs = ndimage.gaussian_filter(h, 1.0)
    peak = (hs == ndimage.maximum_filter(hs, size=5)) & (hs > 0.05 * hs.max())
    px, py = np.nonzero(peak)
    c = np.stack([px + x0, py + y0], axis=1).astype(float)
    # assign every peak to its nearest cluster (within 3 px) and take weighted means
    from scipy.spatial import cKDTree

    d, j = cKDTree(c).query(np.stack([qx, qy], axis=1), distance_upper_bound=3.0)
    ok = np.isfinite(d)
    n = np.bincount(j[ok], minlength=len(c)).astype(float)
    wsum = np.bincount(j[ok], weights=w[ok], minlength=len(c))
    mx = np.bincount(j[ok], weights=qx[ok], minlength=len(c))
    my = np.bincount(j[ok], weights=qy[ok], minlength=len(c))
    keep = n > 0
    pos = np.stack([mx[keep] / n[keep], my[keep] / n[keep]], axis=1)
    return pos, n[keep], wsum[keep]


def find_lattice(
    peaks: BraggPeaks,
    *,
    origin_px: tuple[float, float] | None = None,
    min_support: float = 0.5,
) -> Basis:
    """Find the reciprocal lattice common to a scan from all its peaks.

    The peaks of all positions are clustered on a 2D histogram (the Bragg vector map).
    The origin is the brightest cluster (or the one nearest ``origin_px``). Each vector from
    the origin to a cluster is a candidate lattice vector; its support is the number of
    clusters that have a neighbour at that offset. ``u`` is the shortest candidate with at
    least ``min_support`` times the best support, ``v`` the shortest non-collinear one; the
    pair is reduced (shortest, right-handed) and refined by least squares on all indexed
    clusters (weights: how often each was detected).

    Raises ValueError when fewer than 3 clusters or no two non-collinear vectors are found.
    """
    if not isinstance(peaks, BraggPeaks):
        raise TypeError(f"peaks must be BraggPeaks, got {type(peaks).__name__}")
    ok = np.isfinite(peaks.qx) & np.isfinite(peaks.qy)
    if ok.sum() < 3:
        raise Distill4dError(f"need at least 3 peaks to find a lattice, got {int(ok.sum())}")
    pos, count, inten = _spots(peaks.qx[ok], peaks.qy[ok], np.nan_to_num(peaks.intensity[ok]))
    strong = count >= 0.1 * count.max()
    pos, count, inten = pos[strong], count[strong], inten[strong]
    if len(pos) < 3:
        raise Distill4dError(f"found only {len(pos)} recurring Bragg spots; need at least 3 to find a lattice")
    if origin_px is None:
        io = int(np.argmax(inten))
    else:
        io = int(np.argmin(np.hypot(*(pos - np.asarray(origin_px, float)).T)))
    origin = pos[io]
    cand = np.delete(pos, io, axis=0) - origin
    lengths = np.hypot(cand[:, 0], cand[:, 1])
    # spacing of the spots (ignoring split spots < 3 px apart, e.g. two strain states)
    dist = np.hypot(*(pos[:, None] - pos[None]).transpose(2, 0, 1))
    nn = np.where(dist < 3.0, np.inf, dist).min(axis=1)
    tol = max(1.5, 0.2 * float(np.median(nn[np.isfinite(nn)]))) if np.isfinite(nn).any() else 1.5
    far = lengths >= 3.0
    lengths = np.where(far, lengths, np.inf)
    diff = pos[None, :, :] - pos[:, None, :]  # (a, b): vector from a to b
    support = np.array([np.sum(np.any(np.hypot(*(diff - g).transpose(2, 0, 1)) < tol, axis=1)) for g in cand])
    good = (support >= min_support * support.max()) & far
    order = np.argsort(np.where(good, lengths, np.inf))
    u = cand[order[0]]
    v = None
    for j in order[1:]:
        if not good[j]:
            break
        g = cand[j]
        if abs(u[0] * g[1] - u[1] * g[0]) > 0.2 * lengths[order[0]] * lengths[j]:
            v = g
            break
    if v is None:
        raise Distill4dError("could not find two non-collinear lattice vectors among the Bragg spots")
    u, v = reduce_basis(u, v)
    basis = Basis(origin, u, v)
    # least-squares refinement on all clusters that index well
    for _ in range(2):
        h, k, r = basis.index(pos[:, 0], pos[:, 1])
        use = r < 0.2 * min(np.hypot(*basis.u), np.hypot(*basis.v))
        D = np.stack([np.ones(use.sum()), h[use], k[use]], axis=1) * np.sqrt(count[use])[:, None]
        beta, *_ = np.linalg.lstsq(D, pos[use] * np.sqrt(count[use])[:, None], rcond=None)
        basis = Basis(beta[0], beta[1], beta[2], int(use.sum()))
    return basis
