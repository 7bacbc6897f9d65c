"""Bragg disks by centre of mass in windows at fixed spots: a classical low-dose baseline.

The disks are located once, in the mean pattern (or given as ``spots_px``). In every
pattern, each disk's position is the centre of mass of the background-subtracted intensity
(clipped at 0) inside a circular window of radius ``radius_px`` around the current estimate,
starting at the spot. The window has a soft edge: a pixel at distance ``r`` from the window
centre has weight ``clip(radius_px + 0.5 - r, 0, 1)`` (about the fraction of the pixel
inside the circle), so the estimate moves smoothly with the window. The background is the
median of the pattern in the annulus ``radius_px + 0.5 < r <= radius_px + 0.5 + 2``
(pixels). All positions are in detector pixels.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from .._validate import nonnegative_float, positive_float, positive_int
from ..datacube import DataCube
from ..errors import Distill4dError
from .peaks import BraggPeaks
from .probe import Probe, probe_template

__all__ = ["com_batch", "find_bragg_disks_com"]

#: Width of the background annulus outside the window, in pixels.
ANNULUS_PX = 2.0
#: Elements (patterns x spots x stencil pixels) gathered at once inside a batch.
_CHUNK_ELEMENTS = 1 << 21


def _median_where(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Median of ``values`` over the last axis where ``mask`` is True (0 where there is none)."""
    v = np.sort(np.where(mask, values, np.inf), axis=-1)
    m = mask.sum(axis=-1)
    lo = np.take_along_axis(v, np.maximum(m - 1, 0)[..., None] // 2, axis=-1)[..., 0]
    hi = np.take_along_axis(v, (m // 2)[..., None], axis=-1)[..., 0]
    return np.where(m > 0, 0.5 * (lo + hi), 0.0)


def _com_chunk(
    b: np.ndarray, spots: np.ndarray, radius: float, iterations: int, background: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Centres ``(m, k, 2)`` and totals ``(m, k)`` of the windows, for patterns ``b`` (m, Qx, Qy)."""
    m, nx, ny = b.shape
    k = spots.shape[0]
    h = math.ceil(radius + 1.0 + (ANNULUS_PX if background else 0.0))
    off = np.arange(-h, h + 1)
    ii = np.arange(m)[:, None, None, None]
    c = np.broadcast_to(spots, (m, k, 2)).copy()
    com = c.copy()
    total = np.zeros((m, k))
    for it in range(iterations + 1):
        if it:
            d = com - spots
            dist = np.hypot(d[..., 0], d[..., 1])
            scale = np.minimum(1.0, radius / np.maximum(dist, 1e-300))
            c = spots + d * scale[..., None]
        base = np.rint(c).astype(np.int64)
        px = base[..., 0, None] + off  # (m, k, S)
        py = base[..., 1, None] + off
        on = ((px >= 0) & (px < nx))[..., :, None] & ((py >= 0) & (py < ny))[..., None, :]
        vals = b[ii, np.clip(px, 0, nx - 1)[..., :, None], np.clip(py, 0, ny - 1)[..., None, :]]
        dx = (px - c[..., 0, None])[..., :, None]
        dy = (py - c[..., 1, None])[..., None, :]
        r = np.sqrt(dx**2 + dy**2)  # (m, k, S, S)
        if background:
            ring = on & (r > radius + 0.5) & (r <= radius + 0.5 + ANNULUS_PX)
            s = ring.shape
            bg = _median_where(vals.reshape(s[:2] + (-1,)), ring.reshape(s[:2] + (-1,)))
            vals = vals - bg[..., None, None]
        w = np.clip(radius + 0.5 - r, 0.0, 1.0) * on * np.clip(vals, 0.0, None)
        total = w.sum(axis=(2, 3))
        with np.errstate(divide="ignore", invalid="ignore"):
            shift = np.stack([(w * dx).sum(axis=(2, 3)), (w * dy).sum(axis=(2, 3))], axis=-1) / total[..., None]
        com = np.where(total[..., None] > 0, c + shift, c)  # an empty window stays where it is
    return com, total


def com_batch(
    batch: np.ndarray, spots: np.ndarray, radius_px: float, iterations: int = 2, background: bool = True
) -> dict[str, np.ndarray]:
    """Windowed centres of mass at ``spots`` (k, 2) in a batch ``(n, Qx, Qy)``.

    Returns padded arrays ``qx``, ``qy`` (pixels) and ``intensity`` (the window's clipped,
    background-subtracted total, pattern units) of shape ``(n, k)``, valid entries first and
    NaN after them, and ``count`` (n,). Empty windows and patterns with NaN/Inf give no peak.
    """
    b = np.asarray(batch, dtype=np.float64)
    n = b.shape[0]
    spots = np.asarray(spots, dtype=np.float64).reshape(-1, 2)
    k = spots.shape[0]
    bad = ~np.isfinite(b).all(axis=(1, 2))
    if bad.any():
        b = b.copy()
        b[bad] = 0.0
    h = math.ceil(radius_px + 1.0 + ANNULUS_PX)
    step = max(1, _CHUNK_ELEMENTS // max(1, k * (2 * h + 1) ** 2))
    com = np.empty((n, k, 2))
    total = np.empty((n, k))
    for s in range(0, n, step):
        sl = slice(s, s + step)
        com[sl], total[sl] = _com_chunk(b[sl], spots, radius_px, iterations, background)
    valid = (total > 0) & ~bad[:, None]
    order = np.argsort(~valid, axis=1, kind="stable")
    take = lambda a: np.take_along_axis(np.where(valid, a, np.nan), order, axis=1)
    return {
        "qx": take(com[..., 0]),
        "qy": take(com[..., 1]),
        "intensity": take(total),
        "count": valid.sum(axis=1).astype(np.int32),
    }


def _spots_array(spots_px: Any) -> np.ndarray:
    try:
        s = np.asarray(spots_px, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"spots_px must be a (k, 2) array of (qx, qy) pixel positions, got {spots_px!r}") from None
    if s.ndim != 2 or s.shape[1] != 2 or s.shape[0] == 0:
        raise Distill4dError(f"spots_px must be a (k, 2) array of (qx, qy) pixel positions, k >= 1; got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise Distill4dError("spots_px must be finite (qx, qy) pixel positions; it contains NaN or Inf")
    return s


def find_bragg_disks_com(
    datacube: DataCube,
    probe: Any = None,
    *,
    spots_px: Any = None,
    radius_px: float | None = None,
    iterations: int = 2,
    background: bool = True,
    min_spot_intensity: float = 0.02,
    memory_budget: int | None = None,
    scheduler: Any = "threads",
    n_workers: int | None = None,
    progress: bool | None = None,
) -> BraggPeaks:
    """Locate the Bragg disks of every pattern by centres of mass in windows at fixed spots.

    Parameters
    ----------
    datacube : the data.
    probe : vacuum probe (see :func:`probe_template`); None: the central disk of the mean
        pattern. Used for the default radius and to find the spots.
    spots_px : ``(k, 2)`` disk positions ``(qx, qy)`` in pixels, used as given; None: the
        disks that :func:`find_bragg_disks` finds in the mean pattern, refined by the same
        windowed centre of mass, keeping those whose window total is at least
        ``min_spot_intensity`` times the direct beam's (the spot nearest the calibration
        origin, else the brightest) and that are at least ``radius_px`` from a brighter one.
    radius_px : window radius in pixels (default: probe disk radius + 1, the disk radius
        taken from ``probe`` if given, else from the calibration (semiangle, q pixel size,
        energy), else from the mean pattern). Spots whose window does not fit on the
        detector (closer than ``radius_px`` to its edge) are left out.
    iterations : re-centrings of the window on the last centre of mass (never farther than
        ``radius_px`` from the spot); 0: one centre of mass at the spot.
    background : subtract the median of an annulus 2 px wide just outside the window.
    min_spot_intensity : threshold for the spots found in the mean pattern, relative to the
        direct beam (in [0, 1]).
    memory_budget, scheduler, n_workers, progress : engine options
        (see :func:`distill4d.engine.map_patterns`).

    Returns
    -------
    BraggPeaks (positions in pixels; intensity = the window's clipped, background-subtracted
    total in pattern units). Peaks whose window is empty are left out at that position;
    ``.params`` records the method (``"com"``) and its parameters.
    """
    from ..engine import map_patterns

    if not isinstance(datacube, DataCube):
        raise TypeError(f"datacube must be a distill4d.DataCube, got {type(datacube).__name__}")
    iterations = positive_int("iterations", iterations, minimum=0)
    if not isinstance(background, (bool, np.bool_)):
        raise TypeError(f"background must be True or False, got {background!r}")
    min_spot_intensity = nonnegative_float("min_spot_intensity", min_spot_intensity)
    if min_spot_intensity > 1:
        raise Distill4dError(f"min_spot_intensity must be in [0, 1] (of the direct beam), got {min_spot_intensity}")
    spots = None if spots_px is None else _spots_array(spots_px)
    engine = {"memory_budget": memory_budget, "scheduler": scheduler, "n_workers": n_workers}
    spots, radius, source = _spots_and_radius(datacube, probe, spots, radius_px, iterations, background,
                                              min_spot_intensity, engine)
    if spots.shape[0] == 0:
        what = "no spot of spots_px" if source == "given" else "no disk of the mean pattern (pass spots_px)"
        raise Distill4dError(f"{what} has its window (radius_px = {radius:g}) on the detector {datacube.pattern_shape}")
    fn = functools.partial(com_batch, spots=spots, radius_px=radius, iterations=iterations, background=bool(background))
    res = map_patterns(datacube, fn, progress=progress, desc="bragg disks (com)", **engine)
    params = {
        "method": "com",
        "radius_px": radius,
        "iterations": iterations,
        "background": bool(background),
        "annulus_px": ANNULUS_PX,
        "min_spot_intensity": min_spot_intensity,
        "spots_from": source,
        "n_spots": int(spots.shape[0]),
        "spots_px": spots.tolist(),
    }
    return BraggPeaks.from_padded(res["qx"], res["qy"], res["intensity"], res["count"], datacube.calibration, params)


def _spots_and_radius(
    datacube: DataCube, probe: Any, spots: np.ndarray | None, radius_px: float | None, iterations: int,
    background: bool, min_spot_intensity: float, engine: dict[str, Any],
) -> tuple[np.ndarray, float, str]:
    """The spots (given, or found in the mean pattern), the window radius and where the spots came from."""
    from .detect import find_bragg_disks
    from .mean import finite_mean_pattern

    nx, ny = datacube.pattern_shape
    mean = finite_mean_pattern(datacube, **engine) if spots is None else None
    template: Probe | None = None
    if probe is not None or spots is None or (radius_px is None and not _calibrated(datacube)):
        template = probe_template(mean if probe is None else probe, datacube=datacube)
    if radius_px is None:
        if probe is None and _calibrated(datacube):
            cal = datacube.calibration
            radius_px = cal.length_to_px(cal.semiangle_mrad, "mrad") + 1.0
        else:
            radius_px = template.radius_px + 1.0  # type: ignore[union-attr]
    radius = positive_float("radius_px", radius_px, maximum=0.5 * min(nx, ny))

    source = "given"
    if mean is not None:
        source = "mean pattern"
        mdc = DataCube(mean[None, None], datacube.calibration)
        mp = find_bragg_disks(mdc, template, scheduler="inline", progress=False)
        spots = np.stack([mp.qx, mp.qy], axis=1)
    inside = (spots[:, 0] >= radius) & (spots[:, 0] <= nx - 1 - radius)
    inside &= (spots[:, 1] >= radius) & (spots[:, 1] <= ny - 1 - radius)
    spots = spots[inside]
    if mean is not None and spots.size:
        res = com_batch(mean[None], spots, radius, iterations, background)
        c = int(res["count"][0])
        if c == 0:
            raise Distill4dError("no disk found in the mean pattern (its windows are empty); pass spots_px")
        spots = np.stack([res["qx"][0, :c], res["qy"][0, :c]], axis=1)
        it = res["intensity"][0, :c]
        origin = datacube.calibration.origin_px
        if origin is not None:
            d = np.hypot(spots[:, 0] - origin[0], spots[:, 1] - origin[1])
            direct = int(np.argmin(d)) if d.min() <= radius else int(np.argmax(it))
        else:
            direct = int(np.argmax(it))
        keep = (it >= min_spot_intensity * it[direct]) & _distinct(spots, it, radius)
        spots = spots[keep]
    return spots, radius, source


def mean_pattern_spots(
    datacube: DataCube,
    probe: Any = None,
    *,
    radius_px: float | None = None,
    min_spot_intensity: float = 0.02,
    **engine: Any,
) -> tuple[np.ndarray, float]:
    """The Bragg disks of the mean pattern as :func:`find_bragg_disks_com` finds them:
    ``(spots, radius_px)``, spots ``(k, 2)`` ``(qx, qy)`` in pixels (the direct beam included)
    and the window radius (disk radius + 1 px by default). ``engine``: memory_budget,
    scheduler, n_workers, progress (of reading the mean pattern)."""
    if not isinstance(datacube, DataCube):
        raise TypeError(f"datacube must be a distill4d.DataCube, got {type(datacube).__name__}")
    spots, radius, _ = _spots_and_radius(datacube, probe, None, radius_px, 2, True,
                                         nonnegative_float("min_spot_intensity", min_spot_intensity), engine)
    if spots.shape[0] == 0:
        raise Distill4dError("no disk of the mean pattern has its window on the detector")
    return spots, radius


def _distinct(spots: np.ndarray, intensity: np.ndarray, distance: float) -> np.ndarray:
    """False for spots closer than ``distance`` to a brighter kept spot (windows drawn onto one disk)."""
    order = np.argsort(-intensity, kind="stable")
    p = spots[order]
    close = np.hypot(p[:, None, 0] - p[None, :, 0], p[:, None, 1] - p[None, :, 1]) < distance
    keep = np.ones(len(p), dtype=bool)
    for j in range(1, len(p)):
        keep[j] = not np.any(keep[:j] & close[:j, j])
    out = np.empty_like(keep)
    out[order] = keep
    return out


def _calibrated(datacube: DataCube) -> bool:
    cal = datacube.calibration
    return None not in (cal.semiangle_mrad, cal.q_pixel_inv_A, cal.energy_eV)
