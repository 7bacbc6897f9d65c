"""Fitting the local reciprocal lattice at every scan position (weighted least squares)."""

from __future__ import annotations

import dataclasses
import numpy as np

from .._validate import nonnegative_float, positive_int
from ..bragg.peaks import BraggPeaks
from ..calibration import Calibration
from ..results import Provenance
from .find import Basis, find_lattice

__all__ = ["Lattice", "fit_lattice"]


@dataclasses.dataclass
class Lattice:
    """Local reciprocal lattices of a scan, in detector pixels.

    Attributes
    ----------
    origin, u, v : ``(Rx, Ry, 2)`` fitted origin and basis vectors ``(qx, qy)`` (NaN where
        the fit failed); ``q(h, k) = origin + h u + k v``.
    n_used : ``(Rx, Ry)`` number of peaks used in the final fit.
    rms_px : ``(Rx, Ry)`` intensity-weighted rms distance of the used peaks from the fit.
    basis : the scan-wide :class:`Basis` that defined the indexing.
    calibration : of the data.
    indexed_fraction : ``(Rx, Ry)`` fraction of the detected peaks within the residual tolerance of
        the lattice fitted there (also where the fit was refused; NaN without peaks).
    min_indexed_fraction : the fraction a position needed to count as having a lattice (0: no check).
    provenance : how the peaks were found (the peaks' own), carried on to the strain map.
    """

    origin: np.ndarray
    u: np.ndarray
    v: np.ndarray
    n_used: np.ndarray
    rms_px: np.ndarray
    basis: Basis
    calibration: Calibration
    indexed_fraction: np.ndarray | None = None
    min_indexed_fraction: float = 0.0
    provenance: Provenance | None = None

    @property
    def ok(self) -> np.ndarray:
        """``(Rx, Ry)`` True where the fit succeeded."""
        return np.isfinite(self.u).all(axis=-1) & np.isfinite(self.v).all(axis=-1)

    @property
    def matrix(self) -> np.ndarray:
        """``(Rx, Ry, 2, 2)`` with columns u and v."""
        return np.stack([self.u, self.v], axis=-1)

    @property
    def scan_shape(self) -> tuple[int, int]:
        return self.u.shape[:2]  # type: ignore[return-value]


def _solve(h, k, qx, qy, w):
    """Batched weighted least squares of q = o + h u + k v; returns (n, 3, 2) and a success flag."""
    D = np.stack([np.ones_like(h), h, k], axis=-1)  # (n, K, 3)
    Dw = D * w[..., None]
    N = np.einsum("nka,nkb->nab", Dw, D)
    rhs = np.einsum("nka,nkc->nac", Dw, np.stack([qx, qy], axis=-1))
    # well posed: at least 3 peaks with non-collinear (1, h, k)
    scale = np.einsum("naa->na", N).prod(axis=1)
    det = np.linalg.det(N)
    good = ((w > 0).sum(axis=1) >= 3) & (np.abs(det) > 1e-9 * np.abs(scale))
    N[~good] = np.eye(3)
    beta = np.linalg.solve(N, rhs)
    beta[~good] = np.nan
    return beta, good


def fit_lattice(
    peaks: BraggPeaks,
    basis: Basis | None = None,
    *,
    max_residual_px: float | None = None,
    n_iter: int = 3,
    min_peaks: int = 3,
    fit_origin: bool = True,
    weighted: bool = True,
    min_indexed_fraction: float = 0.25,
) -> Lattice:
    """Fit ``q = origin + h u + k v`` to the peaks of every position.

    Parameters
    ----------
    peaks : the detected peaks (pixels).
    basis : the lattice that defines the indexing (default: :func:`find_lattice` on ``peaks``).
        Pass the same basis (or reference) to compare scans.
    max_residual_px : peaks farther than this (pixels) from their lattice point are outliers
        and left out (default: 0.15 times the shorter basis vector, at least 1 px). The first
        pass, with the scan-wide basis, accepts up to 0.3 times the shorter basis vector.
    n_iter : re-index / reject / refit passes after the first.
    min_peaks : positions with fewer accepted peaks are failures (NaN).
    fit_origin : fit the origin at each position (else it is fixed to ``basis.origin``).
    weighted : weight peaks by their intensity (else equally).
    min_indexed_fraction : a position has a lattice only when at least this fraction of its
        detected peaks lies within ``max_residual_px`` of the lattice fitted there, and at least
        twice the fraction expected by chance (``pi max_residual_px**2`` over the cell area: how
        often a peak of noise falls that close to some lattice point); elsewhere the fit is a
        failure (NaN). On Poisson noise ~0.1-0.2 of the peaks fit any lattice by chance; on a
        crystal at 1e3 e-/pattern 0.7-0.9; at 1e2 e-/pattern, where the automatic threshold
        also picks up noise, 0.15-0.5, no longer separable from noise. 0 turns the check off.

    Returns
    -------
    Lattice
    """
    if not isinstance(peaks, BraggPeaks):
        raise TypeError(f"peaks must be BraggPeaks, got {type(peaks).__name__}")
    n_iter = positive_int("n_iter", n_iter, minimum=0)
    min_indexed_fraction = nonnegative_float("min_indexed_fraction", min_indexed_fraction)
    min_peaks = positive_int("min_peaks", min_peaks, minimum=3)
    if basis is None:
        basis = find_lattice(peaks, origin_px=peaks.calibration.origin_px)
    elif not isinstance(basis, Basis):
        raise TypeError(f"basis must be a distill4d.lattice.Basis, got {type(basis).__name__}")
    short = min(np.hypot(*basis.u), np.hypot(*basis.v))
    tol = max(1.0, 0.15 * short) if max_residual_px is None else nonnegative_float("max_residual_px", max_residual_px)
    qx, qy, it, count = peaks.to_padded()
    shape = peaks.scan_shape
    n = shape[0] * shape[1]
    qx, qy, it = qx.reshape(n, -1), qy.reshape(n, -1), it.reshape(n, -1)
    valid = np.isfinite(qx) & np.isfinite(qy) & np.isfinite(it)
    w0 = np.where(valid, np.clip(it, 0, None) if weighted else 1.0, 0.0)
    qx0, qy0 = np.where(valid, qx, 0.0), np.where(valid, qy, 0.0)

    G = np.broadcast_to(basis.matrix, (n, 2, 2)).copy()
    o = np.broadcast_to(basis.origin, (n, 2)).copy()
    limit = 0.3 * short
    beta = np.full((n, 3, 2), np.nan)
    good = np.zeros(n, bool)
    for _ in range(n_iter + 1):
        d = np.stack([qx0 - o[:, None, 0], qy0 - o[:, None, 1]], axis=-1)  # (n, K, 2)
        hk = np.rint(np.einsum("nij,nkj->nki", np.linalg.inv(G), d))
        r = d - np.einsum("nij,nkj->nki", G, hk)
        res = np.hypot(r[..., 0], r[..., 1])
        use = valid & (res <= limit)
        w = np.where(use, w0, 0.0)
        h, k = hk[..., 0], hk[..., 1]
        beta, good = _solve(h, k, qx0, qy0, w)
        good &= use.sum(axis=1) >= min_peaks
        if not fit_origin:
            beta, good = _solve_fixed_origin(h, k, qx0, qy0, w, basis.origin, good)
        o = np.where(good[:, None], beta[:, 0], o)
        G = np.where(good[:, None, None], np.stack([beta[:, 1], beta[:, 2]], axis=-1), G)
        limit = tol
    n_peaks = valid.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        indexed = np.where(n_peaks > 0, use.sum(axis=1) / n_peaks, np.nan)
    need = 0.0
    if min_indexed_fraction > 0:
        chance = np.pi * tol**2 / abs(np.linalg.det(basis.matrix))
        need = max(min_indexed_fraction, min(2 * chance, 0.9))
        good &= indexed >= need
    fit = o[:, None, :] + np.einsum("nij,nkj->nki", G, np.stack([h, k], axis=-1))
    rr = np.hypot(qx0 - fit[..., 0], qy0 - fit[..., 1])
    wsum = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rms = np.sqrt((w * rr**2).sum(axis=1) / wsum)
    nan2 = lambda a: np.where(good[:, None], a, np.nan).reshape(shape + (2,))  # noqa: E731
    return Lattice(
        origin=nan2(beta[:, 0]),
        u=nan2(beta[:, 1]),
        v=nan2(beta[:, 2]),
        n_used=np.where(good, (w > 0).sum(axis=1), 0).reshape(shape),
        rms_px=np.where(good, rms, np.nan).reshape(shape),
        basis=basis,
        calibration=peaks.calibration,
        indexed_fraction=indexed.reshape(shape),
        min_indexed_fraction=float(need),
        provenance=peaks.provenance,
    )


def _solve_fixed_origin(h, k, qx, qy, w, origin, good_in):
    """Weighted least squares of q - origin = h u + k v (origin fixed)."""
    D = np.stack([h, k], axis=-1)
    Dw = D * w[..., None]
    N = np.einsum("nka,nkb->nab", Dw, D)
    rhs = np.einsum("nka,nkc->nac", Dw, np.stack([qx - origin[0], qy - origin[1]], axis=-1) * (w > 0)[..., None])
    det = np.linalg.det(N)
    scale = np.einsum("naa->na", N).prod(axis=1)
    good = good_in & (np.abs(det) > 1e-9 * np.abs(scale)) & ((w > 0).sum(axis=1) >= 2)
    N[~good] = np.eye(2)
    uv = np.linalg.solve(N, rhs)
    beta = np.concatenate([np.broadcast_to(np.asarray(origin, float), (len(h), 1, 2)), uv], axis=1)
    beta[~good] = np.nan
    return beta, good
