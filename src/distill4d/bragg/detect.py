"""Bragg disk detection by hybrid Fourier correlation with the probe template.

For every pattern ``I``: ``M = FFT(I) conj(FFT(kernel))``, the hybrid correlation
``c = IFFT(|M|^p exp(i arg M))`` (``p = 1``: cross correlation, ``p = 0``: phase
correlation), local maxima of ``c``, sub-pixel refinement (parabolic, or DFT upsampling
after Guizar-Sicairos et al., Opt. Lett. 33:156 (2008)), then filters: distance from the
detector edge, minimum intensity relative to the brightest peak, minimum spacing
(brighter peaks win) and a maximum count. Positions are in detector pixels, intensities
are correlation values (pattern units for ``p = 1`` with the plain disk kernel).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np
import scipy.fft as sfft

from .._validate import nonnegative_float, positive_float, positive_int
from ..datacube import DataCube
from ..errors import Distill4dError
from .mean import finite_mean_pattern
from .peaks import BraggPeaks
from .probe import Probe, probe_template, sobel_magnitude

__all__ = [
    "DetectionParameters",
    "auto_detection_parameters",
    "find_bragg_disks",
    "detect_batch",
    "detection_setup",
    "kernel_ft",
    "peaks_from_images",
    "as_datacube",
]

_SUBPIXEL = ("none", "parabolic", "dft")
_PREFILTERS = ("none", "sobel")


@dataclasses.dataclass(frozen=True)
class DetectionParameters:
    """Parameters of :func:`find_bragg_disks` (all lengths in detector pixels).

    Attributes
    ----------
    radius_px : disk radius (from the probe).
    edge_px : peaks closer than this to the detector edge are dropped.
    min_spacing_px : of two peaks closer than this, the weaker is dropped.
    min_relative_intensity : peaks weaker than this fraction of the brightest are dropped.
    min_absolute_intensity : peaks weaker than this (correlation units) are dropped.
    max_peaks : at most this many peaks (the brightest) per pattern.
    corr_power : 1 = cross correlation, 0 = phase correlation, between: hybrid.
    sigma_cc_px : Gaussian smoothing of the correlation (0: none).
    subpixel : ``"none"``, ``"parabolic"`` or ``"dft"`` (DFT upsampling).
    upsample_factor : DFT upsampling factor (precision 1/upsample_factor px before the final
        parabolic step).
    sites_px : expected disk positions ``((qx, qy), ...)`` (e.g. the mean pattern's disks);
        empty: none.
    site_tolerance_px : a maximum within this distance of a site is "on a site".
    min_relative_intensity_sites : threshold for maxima on a site (None: the same as
        ``min_relative_intensity``). Noise rarely makes a maximum exactly where a disk is
        expected, so on-site maxima can be accepted far below the noise threshold that
        off-site maxima need.
    prefilter : ``"none"`` or ``"sobel"``: each pattern is replaced by its Sobel gradient
        magnitude before the correlation (edge-filtered correlation; use the ``"sobel"`` probe).
    """

    radius_px: float
    edge_px: float
    min_spacing_px: float
    min_relative_intensity: float = 0.005
    min_absolute_intensity: float = 0.0
    max_peaks: int = 100
    corr_power: float = 1.0
    sigma_cc_px: float = 0.0
    subpixel: str = "dft"
    upsample_factor: int = 16
    sites_px: tuple[tuple[float, float], ...] = ()
    site_tolerance_px: float = 0.0
    min_relative_intensity_sites: float | None = None
    prefilter: str = "none"

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("radius_px", positive_float("radius_px", self.radius_px))
        for name in ("edge_px", "min_spacing_px", "min_absolute_intensity", "sigma_cc_px"):
            set_(name, nonnegative_float(name, getattr(self, name)))
        set_("min_relative_intensity", nonnegative_float("min_relative_intensity", self.min_relative_intensity))
        if self.min_relative_intensity > 1:
            raise Distill4dError(f"min_relative_intensity must be in [0, 1], got {self.min_relative_intensity}")
        set_("max_peaks", positive_int("max_peaks", self.max_peaks))
        p = nonnegative_float("corr_power", self.corr_power)
        if p > 1:
            raise Distill4dError(f"corr_power must be in [0, 1] (1: cross, 0: phase correlation), got {p}")
        set_("corr_power", p)
        if self.prefilter not in _PREFILTERS:
            raise Distill4dError(f"prefilter must be one of {_PREFILTERS}, got {self.prefilter!r}")
        if self.subpixel not in _SUBPIXEL:
            raise Distill4dError(f"subpixel must be one of {_SUBPIXEL}, got {self.subpixel!r}")
        set_("upsample_factor", positive_int("upsample_factor", self.upsample_factor, minimum=2))
        sites = np.asarray(self.sites_px, dtype=np.float64).reshape(-1, 2) if len(self.sites_px) else np.zeros((0, 2))
        if not np.all(np.isfinite(sites)):
            raise Distill4dError("sites_px must be finite (qx, qy) pixel positions")
        set_("sites_px", tuple((float(x), float(y)) for x, y in sites))
        set_("site_tolerance_px", nonnegative_float("site_tolerance_px", self.site_tolerance_px))
        if self.min_relative_intensity_sites is not None:
            v = nonnegative_float("min_relative_intensity_sites", self.min_relative_intensity_sites)
            if v > 1:
                raise Distill4dError(f"min_relative_intensity_sites must be in [0, 1], got {v}")
            set_("min_relative_intensity_sites", v)


@functools.lru_cache(maxsize=16)
def _site_mask(sites: tuple[tuple[float, float], ...], tolerance: float, shape: tuple[int, int]) -> np.ndarray:
    """Pixels within ``tolerance`` of any site (bool (Qx, Qy))."""
    mask = np.zeros(shape, dtype=bool)
    if not sites or tolerance <= 0:
        return mask
    x = np.arange(shape[0])[:, None]
    y = np.arange(shape[1])[None, :]
    for sx, sy in sites:
        mask |= (x - sx) ** 2 + (y - sy) ** 2 <= tolerance**2
    return mask


#: On-site threshold = this x the off-site (noise) threshold (see auto_detection_parameters).
_SITE_FACTOR = 0.05
#: On-site = within this fraction of the lattice spacing of a mean-pattern disk.
_SITE_TOLERANCE = 0.25


# ----------------------------------------------------------------------------- batch core
def detect_batch(batch: np.ndarray, kernel_ft: np.ndarray, params: DetectionParameters) -> dict[str, np.ndarray]:
    """Detect disks in a batch ``(n, Qx, Qy)``; ``kernel_ft = conj(rfft2(kernel))``.

    Returns padded arrays: ``qx``, ``qy`` (pixels), ``intensity`` of shape
    ``(n, max_peaks)`` (NaN padding, brightest first) and ``count`` (n,). Patterns with
    NaN or Inf, or without any positive correlation maximum, give no peaks.
    """
    b = np.asarray(batch, dtype=np.float64)
    n, nx, ny = b.shape
    bad = ~np.isfinite(b).all(axis=(1, 2))
    if bad.any():
        b = b.copy()
        b[bad] = 0.0
    if params.prefilter == "sobel":
        b = sobel_magnitude(b)
    M = sfft.rfft2(b) * kernel_ft
    if params.corr_power != 1.0:
        a = np.abs(M)
        with np.errstate(divide="ignore", invalid="ignore"):
            M = M * np.where(a > 0, a ** (params.corr_power - 1.0), 0.0)
    if params.sigma_cc_px > 0:
        kx = sfft.fftfreq(nx)[:, None]
        ky = sfft.rfftfreq(ny)[None, :]
        M = M * np.exp(-2 * (np.pi * params.sigma_cc_px) ** 2 * (kx**2 + ky**2))
    cc = sfft.irfft2(M, s=(nx, ny))
    return _peaks_from_maps(cc, M, bad, params)


def peaks_from_images(images: np.ndarray, params: DetectionParameters) -> dict[str, np.ndarray]:
    """Peaks of images that are already peak maps ``(n, Qx, Qy)`` (e.g. a predicted structure-factor image).

    The same local maxima, filters and sub-pixel refinement as :func:`detect_batch` applies
    to the correlation (the DFT refinement interpolates the image itself);
    ``params.corr_power`` and ``params.sigma_cc_px`` are not used. Same padded outputs.
    """
    b = np.asarray(images, dtype=np.float64)
    if b.ndim != 3:
        raise Distill4dError(f"images must be a stack (n, Qx, Qy), got shape {b.shape}")
    bad = ~np.isfinite(b).all(axis=(1, 2))
    if bad.any():
        b = b.copy()
        b[bad] = 0.0
    return _peaks_from_maps(b, sfft.rfft2(b), bad, params)


def _peaks_from_maps(cc: np.ndarray, M: np.ndarray, bad: np.ndarray, params: DetectionParameters) -> dict[str, np.ndarray]:
    """Local maxima of ``cc`` (n, Qx, Qy), filtered and refined; ``M = rfft2(cc)``."""
    n, nx, ny = cc.shape
    k = params.max_peaks
    out = {
        "qx": np.full((n, k), np.nan),
        "qy": np.full((n, k), np.nan),
        "intensity": np.full((n, k), np.nan),
        "count": np.zeros(n, dtype=np.int32),
    }
    # local maxima (>= all 8 neighbours, > 0), away from the edge
    pad = np.pad(cc, ((0, 0), (1, 1), (1, 1)), mode="wrap")
    peak = cc > 0
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            if dx or dy:
                peak &= cc >= pad[:, 1 + dx : 1 + dx + nx, 1 + dy : 1 + dy + ny]
    margin = max(0, int(math.floor(params.edge_px)) - 1)
    if margin:
        peak[:, :margin] = peak[:, nx - margin :] = False
        peak[:, :, :margin] = peak[:, :, ny - margin :] = False
    ii, xx, yy = np.nonzero(peak)
    vv = cc[ii, xx, yy]
    if ii.size == 0:
        return out
    vmax = np.zeros(n)
    np.maximum.at(vmax, ii, vv)
    rel = np.full(vv.shape, params.min_relative_intensity)
    if params.min_relative_intensity_sites is not None and params.sites_px:
        on_site = _site_mask(params.sites_px, params.site_tolerance_px, (nx, ny))[xx, yy]
        rel[on_site] = params.min_relative_intensity_sites
    keep = (vv >= rel * vmax[ii]) & (vv >= params.min_absolute_intensity) & ~bad[ii]
    ii, xx, yy, vv = ii[keep], xx[keep], yy[keep], vv[keep]
    order = np.lexsort((-vv, ii))  # by pattern, brightest first
    ii, xx, yy, vv = ii[order], xx[order], yy[order], vv[order]
    starts = np.searchsorted(ii, np.arange(n))
    rank = np.arange(ii.size) - starts[ii]
    cap = 4 * k + 16
    sel = rank < cap
    ii, xx, yy, vv, rank = ii[sel], xx[sel], yy[sel], vv[sel], rank[sel]
    K = int(rank.max()) + 1
    px = np.full((n, K), np.nan)
    py = np.full((n, K), np.nan)
    px[ii, rank], py[ii, rank] = xx, yy
    keepk = _suppress_close(px, py, params.min_spacing_px)
    # take the k brightest survivors
    krank = np.cumsum(keepk, axis=1) - 1
    sel = keepk[ii, rank] & (krank[ii, rank] < k)
    ii, xx, yy, vv, slot = ii[sel], xx[sel], yy[sel], vv[sel], krank[ii, rank][sel]

    if params.subpixel == "none":
        fx, fy, fv = xx.astype(np.float64), yy.astype(np.float64), vv
    else:
        fx, fy, fv = _parabolic(cc, ii, xx, yy)
        if params.subpixel == "dft":
            fx, fy, fv = _dft_refine(M, ii, fx, fy, (nx, ny), params.upsample_factor)
    e = params.edge_px
    inside = (fx >= e) & (fx <= nx - 1 - e) & (fy >= e) & (fy <= ny - 1 - e)
    ii, fx, fy, fv, slot = ii[inside], fx[inside], fy[inside], fv[inside], slot[inside]
    # re-pack brightest first
    order = np.lexsort((-fv, ii))
    ii, fx, fy, fv = ii[order], fx[order], fy[order], fv[order]
    slot = np.arange(ii.size) - np.searchsorted(ii, np.arange(n))[ii]
    out["qx"][ii, slot] = fx
    out["qy"][ii, slot] = fy
    out["intensity"][ii, slot] = fv
    out["count"] = np.bincount(ii, minlength=n).astype(np.int32)
    return out


def _suppress_close(px: np.ndarray, py: np.ndarray, spacing: float) -> np.ndarray:
    """Greedy non-maximum suppression on padded, brightest-first candidates (n, K)."""
    valid = np.isfinite(px)
    if spacing <= 0:
        return valid
    d2 = (px[:, :, None] - px[:, None, :]) ** 2 + (py[:, :, None] - py[:, None, :]) ** 2
    close = d2 < spacing**2  # NaN compares False
    keep = valid.copy()
    earlier = np.triu(np.ones(close.shape[1:], bool), 1)  # [i, j]: i brighter than j
    for j in np.nonzero((close & earlier).any(axis=(0, 1)))[0]:  # only those with a brighter close one
        keep[:, j] &= ~np.any(keep[:, :j] & close[:, :j, j], axis=1)
    return keep


def _parabolic(cc: np.ndarray, ii: np.ndarray, xx: np.ndarray, yy: np.ndarray):
    """Three-point parabolic vertex along x and y (shifts clipped to +-0.5 px)."""
    nx, ny = cc.shape[1:]
    c0 = cc[ii, xx, yy]
    xm, xp = cc[ii, (xx - 1) % nx, yy], cc[ii, (xx + 1) % nx, yy]
    ym, yp = cc[ii, xx, (yy - 1) % ny], cc[ii, xx, (yy + 1) % ny]

    def vertex(m, p):
        den = m - 2 * c0 + p
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.where(den < 0, 0.5 * (m - p) / den, 0.0)
        s = np.clip(s, -0.5, 0.5)
        return s, c0 - 0.25 * (m - p) * s

    sx, vx = vertex(xm, xp)
    sy, vy = vertex(ym, yp)
    return xx + sx, yy + sy, np.maximum(vx, vy)


def _phases(r: np.ndarray, k: np.ndarray, n: int) -> np.ndarray:
    """``exp(2 pi i r k / n)`` for positions ``r`` (P,) and integer frequencies ``k`` (K,): (P, K) complex64.

    The integer part of ``r`` indexes the n-th roots of unity (exact); the phase of the
    fractional part lies within +-pi for ``|k| <= n / 2`` and is taken in float32.
    """
    r0 = np.floor(r)
    t = ((2 * np.pi / n) * (r - r0)[:, None] * k).astype(np.float32)
    frac = np.empty(t.shape, np.complex64)
    frac.real, frac.imag = np.cos(t), np.sin(t)
    return _roots(n)[(r0.astype(np.int64)[:, None] * k) % n] * frac


@functools.lru_cache(maxsize=8)
def _roots(n: int) -> np.ndarray:
    """The n-th roots of unity ``exp(2 pi i j / n)``, j = 0 .. n - 1, complex64 (read-only)."""
    roots = np.exp((2j * np.pi / n) * np.arange(n)).astype(np.complex64)
    roots.setflags(write=False)
    return roots


def _dft_refine(M: np.ndarray, ii: np.ndarray, fx: np.ndarray, fy: np.ndarray, shape, up: int):
    """Refine maxima by matrix DFT (Guizar-Sicairos) on 3 x 3 grids, then a parabola.

    The grids have steps of 1/4 px, then 1/up px; a grid whose maximum is not its centre is
    moved onto that maximum and evaluated again (three grids per step at most). The final
    parabolas run through the centre row and column of the last 1/up px grid.
    """
    nx, ny = shape
    kx = np.rint(np.fft.fftfreq(nx) * nx).astype(np.int64)
    ky = np.arange(M.shape[2], dtype=np.int64)
    wy = np.full(ky.size, 2.0, np.float32)
    wy[0] = 1.0
    if ny % 2 == 0:
        wy[-1] = 1.0
    M64 = M.astype(np.complex64)
    rx, ry, rv = fx.copy(), fy.copy(), np.zeros_like(fx)
    fine = 1.0 / up
    for h in ([0.25] if fine < 0.25 else []) + [fine]:
        off = np.array([-h, 0.0, h])
        ox = _phases(off, kx, nx)  # (3, nx)
        oy = _phases(off, ky, ny) * wy  # (3, nyh)
        todo = np.ones(fx.size, bool)
        for last in (False, False, True):
            for i in np.unique(ii[todo]):
                sel = np.nonzero((ii == i) & todo)[0]
                P = sel.size
                Ey = (_phases(ry[sel], ky, ny)[:, None, :] * oy).reshape(-1, ky.size)  # (3P, nyh)
                T = (M64[i] @ Ey.T).reshape(nx, P, 3) * _phases(rx[sel], kx, nx).T[:, :, None]  # (nx, P, 3)
                C = np.real(ox @ T.reshape(nx, -1)).reshape(3, P, 3).transpose(1, 0, 2).astype(np.float64) / (nx * ny)
                a = C.reshape(P, 9).argmax(axis=1)
                ax, ay = a // 3, a % 3
                centre = np.ones(P, bool) if last else (ax == 1) & (ay == 1)
                c0 = C[:, 1, 1]

                def vertex(m, p):
                    den = m - 2 * c0 + p
                    with np.errstate(divide="ignore", invalid="ignore"):
                        return np.clip(np.where(den < 0, 0.5 * (m - p) / den, 0.0), -0.5, 0.5)

                rx[sel] += h * np.where(centre, vertex(C[:, 0, 1], C[:, 2, 1]), ax - 1)
                ry[sel] += h * np.where(centre, vertex(C[:, 1, 0], C[:, 1, 2]), ay - 1)
                rv[sel] = C.reshape(P, 9).max(axis=1)
                todo[sel[centre]] = False
            if not todo.any():
                break
    return rx, ry, rv


# ----------------------------------------------------------------------------- data-level helpers
def _kernel_ft(probe: Probe) -> np.ndarray:
    return np.conj(sfft.rfft2(probe.kernel))


def as_datacube(data: Any) -> DataCube:
    """``data`` as a DataCube: a DataCube as it is, an array of 2, 3 or 4 dimensions as a
    DataCube of 1 x 1, 1 x n or its own scan (Distill4dError for other shapes)."""
    if isinstance(data, DataCube):
        return data
    arr = np.asarray(data)
    if arr.ndim == 2:
        arr = arr[None, None]
    elif arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise Distill4dError(f"data must be a DataCube or an array of 2, 3 or 4 dimensions, got shape {arr.shape}")
    return DataCube(arr)


def _sample_patterns(datacube: DataCube, n: int) -> np.ndarray:
    idx = np.unique(np.linspace(0, datacube.n_patterns - 1, min(n, datacube.n_patterns)).round().astype(int))
    rx, ry = np.unravel_index(idx, datacube.scan_shape)
    return np.stack([datacube.pattern(int(a), int(b)) for a, b in zip(rx, ry)]).astype(np.float64)


def auto_detection_parameters(
    datacube: Any,
    probe: Any = None,
    *,
    n_sample: int = 32,
    kind: str = "disk",
    corr_power: float = 1.0,
    sigma_cc_px: float = 0.0,
    min_relative_intensity: float | None = None,
) -> DetectionParameters:
    """Choose detection parameters from the data (each can be overridden in :func:`find_bragg_disks`).

    - ``radius_px``: radius of the probe disk; ``edge_px`` = half of it: disks whose centre
      is at least half a radius inside the detector are kept (closer ones are cut so much
      that their correlation peaks move; benchmarks/RESULTS.md).
    - ``min_spacing_px``: half the median nearest-neighbour distance of the disks found in
      the mean pattern (the lattice spacing; ``2 * radius_px`` if fewer than 4 disks).
    - ``min_relative_intensity``: on ``n_sample`` patterns spread over the scan, correlation
      maxima are split into those on a disk of the mean pattern (within a quarter of the
      lattice spacing) and those off it; the threshold is 1.2x the 99th percentile of the
      off-lattice maxima (noise), clipped to [0.001, 0.2] (0.001 when there is no noise).
      Maxima within two disk radii of the detector edge do not count as noise: there, disks
      cut by the edge give maxima that the mean pattern's detection does not list.
      A given ``min_relative_intensity`` is used as it is, everywhere.
    - ``sites_px``, ``site_tolerance_px``, ``min_relative_intensity_sites``: maxima within a
      quarter of the lattice spacing of a mean-pattern disk need only 5 % of that
      threshold (at least 0.001): at low dose the noise threshold would drop real, weaker
      disks, and noise seldom peaks exactly on a lattice site.
    - ``max_peaks``: twice the number of disks of the mean pattern above the threshold, plus
      10, and at most the number of disks that fit at the minimum spacing.

    ``corr_power`` and ``sigma_cc_px`` are those the detection will use (they change the
    relative heights of the correlation peaks); ``kind`` is the probe kernel when ``probe``
    is not already a :class:`Probe`; a ``"sobel"`` probe sets ``prefilter="sobel"``.
    """
    dc = as_datacube(datacube)
    if not isinstance(probe, Probe):
        probe = probe_template(probe, datacube=dc, kind=kind)
    prefilter = "sobel" if probe.kind == "sobel" else "none"
    radius = probe.radius_px
    nx, ny = dc.pattern_shape
    kft = _kernel_ft(probe)
    mean = finite_mean_pattern(dc)
    loose = DetectionParameters(
        radius_px=radius, edge_px=radius, min_spacing_px=radius, min_relative_intensity=0.001,
        max_peaks=max(16, int(nx * ny / (radius**2 * 2))), subpixel="parabolic",
        corr_power=corr_power, sigma_cc_px=sigma_cc_px, prefilter=prefilter,
    )
    mp = detect_batch(mean[None], kft, loose)
    c = int(mp["count"][0])
    mx, my, mi = mp["qx"][0, :c], mp["qy"][0, :c], mp["intensity"][0, :c]
    if c >= 4:
        d = np.hypot(mx[:, None] - mx[None, :], my[:, None] - my[None, :])
        np.fill_diagonal(d, np.inf)
        spacing = float(np.median(d.min(axis=1)))
        min_spacing = max(1.0, 0.5 * spacing)
    else:
        spacing = 4.0 * radius
        min_spacing = 2.0 * radius
    sample = _sample_patterns(dc, n_sample)
    sp = detect_batch(
        sample, kft, dataclasses.replace(loose, min_spacing_px=min_spacing, min_relative_intensity=0.0,
                                         max_peaks=4 * max(c, 8))
    )
    off_rel = []
    for j in range(sample.shape[0]):
        cj = int(sp["count"][j])
        if cj == 0:
            continue
        x, y, v = sp["qx"][j, :cj], sp["qy"][j, :cj], sp["intensity"][j, :cj]
        rel = v / v.max()
        inner = (x >= 2 * radius) & (x <= nx - 1 - 2 * radius) & (y >= 2 * radius) & (y <= ny - 1 - 2 * radius)
        if c:
            dist = np.hypot(x[:, None] - mx[None, :], y[:, None] - my[None, :]).min(axis=1)
            off_rel.append(rel[(dist > 0.25 * spacing) & inner])
        else:
            off_rel.append(rel[1:][inner[1:]])
    off = np.concatenate(off_rel) if off_rel else np.zeros(0)
    if min_relative_intensity is not None:
        threshold = float(min_relative_intensity)
    else:
        threshold = 0.001 if off.size == 0 else float(np.clip(1.2 * np.quantile(off, 0.99), 0.001, 0.2))
    # on the mean pattern's disks, accept maxima far below the off-site noise level
    sites: tuple = ()
    site_threshold = None
    if c >= 2 and min_relative_intensity is None:
        sites = tuple(zip(mx.tolist(), my.tolist()))
        site_threshold = float(max(0.001, min(threshold, _SITE_FACTOR * threshold)))
    n_mean = int(np.sum(mi >= (site_threshold or threshold) * (mi.max() if c else 1.0)))
    packing = int(nx * ny / (0.866 * max(min_spacing, 1.0) ** 2)) + 1
    return DetectionParameters(
        radius_px=radius,
        edge_px=0.5 * radius,
        min_spacing_px=min_spacing,
        min_relative_intensity=threshold,
        max_peaks=max(1, min(packing, 2 * n_mean + 10)),
        corr_power=corr_power,
        sigma_cc_px=sigma_cc_px,
        sites_px=sites,
        site_tolerance_px=max(1.0, _SITE_TOLERANCE * spacing) if sites else 0.0,
        min_relative_intensity_sites=site_threshold,
        prefilter=prefilter,
    )


def find_bragg_disks(
    datacube: Any,
    probe: Any = None,
    *,
    kind: str = "disk",
    memory_budget: int | None = None,
    scheduler: Any = "threads",
    n_workers: int | None = None,
    progress: bool | None = None,
    checkpoint: Any = None,
    **overrides: Any,
) -> BraggPeaks:
    """Find the Bragg disks in every pattern by correlation with the probe.

    Parameters
    ----------
    datacube : a DataCube (or an array ``(Qx, Qy)``, ``(n, Qx, Qy)``, ``(Rx, Ry, Qx, Qy)``).
    probe : vacuum probe (2D pattern, 3D stack, DataCube or :class:`Probe`); None: the
        central disk of the mean pattern.
    kind : probe kernel, ``"disk"``, ``"edge"`` or ``"sobel"`` (see :func:`probe_template`;
        ``"sobel"`` also filters the patterns: edge-filtered correlation).
    memory_budget, scheduler, n_workers, progress, checkpoint : engine options
        (see :func:`distill4d.engine.map_patterns`).
    **overrides : any field of :class:`DetectionParameters` (``radius_px``, ``edge_px``,
        ``min_spacing_px``, ``min_relative_intensity``, ``min_absolute_intensity``,
        ``max_peaks``, ``corr_power``, ``sigma_cc_px``, ``subpixel``, ``upsample_factor``);
        the others are chosen by :func:`auto_detection_parameters`.

    Returns
    -------
    BraggPeaks with positions in detector pixels; the chosen parameters are in ``.params``
    (``method`` is ``"sobel"`` for edge-filtered correlation, else ``"correlation"``).
    """
    from ..engine import map_patterns

    dc = as_datacube(datacube)
    probe, params = detection_setup(dc, probe, kind=kind, **overrides)
    fn = functools.partial(detect_batch, kernel_ft=_kernel_ft(probe), params=params)
    res = map_patterns(
        dc, fn, memory_budget=memory_budget, scheduler=scheduler, n_workers=n_workers, progress=progress,
        checkpoint=checkpoint, job_key=f"bragg:{params}:{probe.kind}:{probe.radius_px}", desc="bragg disks",
    )
    return BraggPeaks.from_padded(
        res["qx"], res["qy"], res["intensity"], res["count"], dc.calibration,
        params={"method": "sobel" if params.prefilter == "sobel" else "correlation", **dataclasses.asdict(params),
                "probe_kind": probe.kind, "probe_radius_px": probe.radius_px},
    )


def detection_setup(datacube: Any, probe: Any = None, *, kind: str = "disk",
                    **overrides: Any) -> tuple[Probe, DetectionParameters]:
    """The probe template and the detection parameters :func:`find_bragg_disks` uses on ``datacube``.

    ``overrides`` are fields of :class:`DetectionParameters`; the others are chosen by
    :func:`auto_detection_parameters`. :func:`detect_batch` with ``kernel_ft(probe)`` and these
    parameters gives :func:`find_bragg_disks`' peaks on any batch of the data's patterns.
    """
    dc = as_datacube(datacube)
    fields = {f.name for f in dataclasses.fields(DetectionParameters)}
    unknown = set(overrides) - fields
    if unknown:
        raise TypeError(f"unknown detection parameter(s) {sorted(unknown)}; known: {sorted(fields)}")
    probe = probe_template(probe, datacube=dc, kind=kind)
    needed = {"min_spacing_px", "min_relative_intensity", "max_peaks"} - set(overrides)
    if needed:
        base = auto_detection_parameters(
            dc, probe, corr_power=overrides.get("corr_power", 1.0), sigma_cc_px=overrides.get("sigma_cc_px", 0.0),
            min_relative_intensity=overrides.get("min_relative_intensity"),
        )
    else:
        r = overrides.get("radius_px", probe.radius_px)
        base = DetectionParameters(radius_px=r, edge_px=0.5 * r, min_spacing_px=0.0,
                                   prefilter="sobel" if probe.kind == "sobel" else "none")
    if "radius_px" in overrides and "edge_px" not in overrides:
        overrides["edge_px"] = 0.5 * overrides["radius_px"]
    return probe, dataclasses.replace(base, **overrides)


def kernel_ft(probe: Probe) -> np.ndarray:
    """``conj(rfft2(probe.kernel))``: the ``kernel_ft`` argument of :func:`detect_batch`."""
    return _kernel_ft(probe)
