"""Finding the diffraction origin: the centre of the bright-field (BF) disk, in pixels."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np

from .._validate import pattern_array
from ..errors import Distill4dError

if TYPE_CHECKING:  # pragma: no cover
    from ..datacube import DataCube

__all__ = ["find_bf_disk", "find_origins", "fit_origin_plane"]


def _soft_weights(img: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """Weights 0 below 10 % and 1 above 90 % of ``peak`` (per pattern), linear between.

    The linear ramp across the disk edge makes the centroid move continuously with the
    disk, which gives sub-pixel precision (a narrower ramp samples the edge too coarsely:
    0.05 px bias for a 7 px disk with a 1 px edge at 25-75 %, 0.02 px at 10-90 %).
    """
    lo, hi = 0.1 * peak, 0.9 * peak
    return np.clip((img - lo) / np.maximum(hi - lo, np.finfo(float).tiny), 0.0, 1.0)


#: Hint of every "no disk found" error: the flags (and keywords) that make the search unnecessary.
NO_DISK_HINT = (
    "give the origin yourself with --origin-px QX QY, and for virtual images the radii with --bf R and "
    "--adf INNER [OUTER] (origin=(qx, qy) and radii= in Python)"
)


def find_bf_disk(pattern: Any) -> tuple[float, float, float]:
    """Centre ``(qx, qy)`` and radius of the bright-field disk of one pattern, in pixels.

    The pattern is median-filtered (3x3: hot pixels do not count) and smoothed (Gaussian,
    sigma 1 px), the
    region above half the maximum that holds the maximum is taken as the disk, and its
    centre and radius (from its area) are measured with soft edge weights.

    Sparse patterns (counting data whose mean is mostly zeros: the median filter keeps fewer
    than half as many nonzero pixels) are searched again with outliers
    clipped (at the median of the nonzero pixels, so a hot pixel cannot win) and a wider
    smoothing (sigma 3 px); the disk is the region above half its plateau (the median of the
    smoothed region above half the maximum). It counts as a disk only when at least 9 and a
    tenth of its pixels received counts, at least 5 times as densely as outside it.

    Raises :class:`~distill4d.Distill4dError` (a ValueError) for an all-zero or non-finite
    pattern, or when no disk can be found: the message says what the pattern holds and which
    options give the origin and radii instead.
    """
    from scipy import ndimage

    p = pattern_array("pattern", pattern).astype(np.float64)
    filtered = ndimage.median_filter(p, size=3)
    smooth = ndimage.gaussian_filter(filtered, 1.0)
    peak = smooth.max()
    # sparse (the filter keeps under half as many nonzero pixels) or empty: search it as counts
    if not peak > 0 or np.count_nonzero(filtered > 0) < 0.5 * np.count_nonzero(p > 0):
        smooth, peak = _sparse_disk_image(p)
    else:
        smooth = smooth - np.median(smooth) if np.median(smooth) < 0.5 * peak else smooth
        peak = smooth.max()
    region = ndimage.binary_dilation(_peak_region(smooth, 0.5 * peak), iterations=3)
    w = _soft_weights(smooth, peak) * region
    total = w.sum()
    qx, qy = np.indices(p.shape, dtype=np.float64)
    cx, cy = (w * qx).sum() / total, (w * qy).sum() / total
    radius = float(np.sqrt(total / np.pi))
    return float(cx), float(cy), radius


def _peak_region(img: np.ndarray, level: float) -> np.ndarray:
    """The connected region of ``img > level`` that holds the maximum of ``img``."""
    from scipy import ndimage

    labels, _ = ndimage.label(img > level)
    return labels == labels[np.unravel_index(np.argmax(img), img.shape)]


def _sparse_disk_image(p: np.ndarray) -> tuple[np.ndarray, float]:
    """The smoothed image of a sparse pattern to search for the disk in, and the disk's level.

    Raises Distill4dError saying what the pattern holds when it shows no disk.
    """
    from scipy import ndimage

    positive = p > 0
    n_pos = int(positive.sum())
    if n_pos == 0:
        raise Distill4dError(
            f"pattern has no positive intensity (all {p.size} pixels are zero or less): cannot find the "
            f"bright-field disk; {NO_DISK_HINT}"
        )
    smooth = ndimage.gaussian_filter(np.clip(p, 0.0, np.median(p[positive])), 3.0)
    plateau = float(np.median(smooth[_peak_region(smooth, 0.5 * smooth.max())]))
    region = _peak_region(smooth, 0.5 * plateau)
    lit, area = int((positive & region).sum()), int(region.sum())
    outside = (n_pos - lit) / max(p.size - area, 1)
    if lit >= 9 and lit >= 0.1 * area and lit / area >= 5 * outside:
        return smooth, plateau
    brightest = np.unravel_index(np.argmax(p), p.shape)
    raise Distill4dError(
        f"no bright-field disk found: the pattern is sparse, only {n_pos} of its {p.size} pixels have "
        f"intensity (total {p.sum():.4g}, brightest {p.max():.4g} at qx, qy = {brightest[0]}, {brightest[1]}), "
        f"scattered rather than in a disk; {NO_DISK_HINT}"
    )


def _origin_batch(batch: np.ndarray, grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Soft-threshold centroid of the brightest region of every pattern -> (n, 2); NaN if empty."""
    b = batch.astype(np.float64)
    peak = b.max(axis=(1, 2), keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = _soft_weights(b, peak)
        total = w.sum(axis=(1, 2))
        cx = np.einsum("nij,ij->n", w, grid[0]) / total
        cy = np.einsum("nij,ij->n", w, grid[1]) / total
    bad = ~(peak[:, 0, 0] > 0) | ~np.isfinite(cx) | ~np.isfinite(cy)
    out = np.stack([cx, cy], axis=1)
    out[bad] = np.nan
    return out


def find_origins(datacube: "DataCube", **engine_options: Any) -> np.ndarray:
    """The BF-disk centre of every pattern, shape ``(Rx, Ry, 2)`` as ``(qx, qy)`` in pixels.

    Use it to measure descan (the origin moving with the probe); fit a plane through it with
    :func:`fit_origin_plane`. Patterns without positive intensity give NaN. This per-pattern
    estimate assumes the BF disk is the brightest feature of each pattern.
    """
    from ..engine import map_patterns

    qx, qy = np.indices(datacube.pattern_shape, dtype=np.float64)
    fn = functools.partial(_origin_batch, grid=(qx, qy))
    engine_options.setdefault("desc", "origins")
    return map_patterns(datacube, fn, **engine_options)


def fit_origin_plane(origins: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Least-squares plane through an origin map ``(Rx, Ry, 2)``; returns the fitted map.

    ``mask`` (Rx, Ry) selects the positions to fit (e.g. vacuum); NaN positions are skipped.
    """
    origins = np.asarray(origins, dtype=np.float64)
    if origins.ndim != 3 or origins.shape[2] != 2:
        raise Distill4dError(f"origins must have shape (Rx, Ry, 2), got {origins.shape}")
    rx, ry = np.indices(origins.shape[:2], dtype=np.float64)
    ok = np.all(np.isfinite(origins), axis=2)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != origins.shape[:2]:
            raise Distill4dError(f"mask has shape {mask.shape}, expected {origins.shape[:2]}")
        ok &= mask
    if ok.sum() < 3:
        raise Distill4dError(f"fitting a plane needs at least 3 finite origins, got {int(ok.sum())}")
    design = np.stack([np.ones(ok.sum()), rx[ok], ry[ok]], axis=1)
    coef, *_ = np.linalg.lstsq(design, origins[ok], rcond=None)
    full = np.stack([np.ones(rx.size), rx.ravel(), ry.ravel()], axis=1)
    return (full @ coef).reshape(origins.shape)
