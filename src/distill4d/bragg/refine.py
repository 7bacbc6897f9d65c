"""Disk positions that ignore the disk interior: rim (disk-edge) circle fits.

Thick or tilted crystals fill the CBED disks with uneven contrast (dynamical scattering; the
intensity moves towards the Bragg condition), so the intensity-weighted centre of a disk and
its correlation peak with the vacuum probe move although the disk does not: the disk's rim is
fixed by the condenser aperture and the reciprocal lattice. :func:`rim_refine` starts at each
detected position, finds sub-pixel edge points on the rim along ``n_angles`` rays (the maximum
of the inward intensity step, ``-dI/dr``, within ``+-search_px`` of the disk radius) and fits a
circle of that radius to them by least squares, with edge points that disagree with the fit by
more than ``1 px`` dropped. Positions are in detector pixels.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np
from scipy import fft as sfft

from .._validate import positive_float, positive_int
from ..errors import Distill4dError
from .detect import DetectionParameters, _kernel_ft, as_datacube, detect_batch
from .peaks import BraggPeaks
from .probe import Probe, probe_template, sobel_magnitude

__all__ = ["RimParameters", "rim_radius_px", "rim_refine", "rim_batch", "find_bragg_disks_rim", "interior_asymmetry",
           "rim_tilt_bias_px", "TiltBiasFit", "learn_tilt_bias_px", "reference_tilt_bias", "plausible_tilt_bias", "TemplateParameters", "reflection_templates", "template_setup", "template_refine", "template_batch",
           "find_bragg_disks_template"]

#: Edge points weaker than this fraction of the disk's strongest are not fitted.
MIN_EDGE_FRACTION = 0.2
#: Peaks (x rays x samples) handled at once inside a batch.
_CHUNK_ELEMENTS = 1 << 18


@dataclasses.dataclass(frozen=True)
class RimParameters:
    """Parameters of :func:`rim_refine` (lengths in detector pixels).

    Attributes
    ----------
    radius_px : radius of the disk rim (where the probe's intensity falls fastest).
    search_px : edge points are looked for within ``radius_px +- search_px`` of the centre.
    n_angles : rays from the centre (edge points per disk).
    step_px : sampling step along a ray (1/3 px: 0.25 px gave the same strain errors and took longer).
    iterations : fits, each with rays from the last fitted centre (1: the correlation peak is
        close enough for the first-order model; 2 gave the same strain errors and took 1.3x as long).
    smooth_px : Gaussian smoothing of each ray profile before the derivative (0: none).
    max_shift_px : a fit that moves a peak farther than this is rejected (the peak keeps its
        detected position).
    bias_px : the tilt-bias model: the fitted centre moves by ``-bias_px`` times the disk's
        interior asymmetry (:func:`interior_asymmetry`, :func:`rim_tilt_bias_px`); 0: off.
    """

    radius_px: float
    search_px: float = 2.0
    n_angles: int = 32
    step_px: float = 1 / 3
    iterations: int = 1
    smooth_px: float = 0.5
    max_shift_px: float = 1.5
    bias_px: float = 0.0

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        if not (isinstance(self.bias_px, (int, float)) and math.isfinite(self.bias_px)):
            raise Distill4dError(f"bias_px must be a finite number (px), got {self.bias_px!r}")
        set_("radius_px", positive_float("radius_px", self.radius_px))
        set_("search_px", positive_float("search_px", self.search_px, maximum=self.radius_px))
        set_("n_angles", positive_int("n_angles", self.n_angles, minimum=8))
        set_("step_px", positive_float("step_px", self.step_px, maximum=1.0))
        set_("iterations", positive_int("iterations", self.iterations))
        if not (isinstance(self.smooth_px, (int, float)) and math.isfinite(self.smooth_px) and self.smooth_px >= 0):
            raise Distill4dError(f"smooth_px must be a finite number >= 0, got {self.smooth_px!r}")
        set_("max_shift_px", positive_float("max_shift_px", self.max_shift_px))


def rim_radius_px(probe: Probe | np.ndarray) -> float:
    """Radius (px) of the probe disk's rim: the mean distance, from the disk centre, of the
    steepest intensity fall along 64 rays (sub-pixel, parabolic)."""
    if isinstance(probe, Probe):
        kernel, r0 = probe.kernel, probe.radius_px
        if probe.kind != "disk":
            raise Distill4dError(f"rim_radius_px needs a 'disk' probe, got kind {probe.kind!r}")
        img = np.fft.fftshift(kernel)
        c = (img.shape[0] // 2, img.shape[1] // 2)
    else:
        from .probe import measure_disk

        img = np.asarray(probe, dtype=np.float64)
        c, r0, _ = measure_disk(img)
    p = RimParameters(radius_px=r0, search_px=min(0.75 * r0, 3.0), n_angles=64, smooth_px=0.5)
    _, r, _ = _edge_points(img[None], np.zeros(1, np.int64), np.array([float(c[0])]), np.array([float(c[1])]), p)
    r = r[np.isfinite(r)]
    if r.size < 8:
        raise Distill4dError("no disk rim found in the probe (is it a disk?)")
    return float(np.median(r))


def _bilinear(b: np.ndarray, ii: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``b[ii, x, y]`` bilinearly interpolated (clamped at the detector edge); ``b`` C-contiguous."""
    nx, ny = b.shape[1:]
    x = np.clip(x, 0, nx - 1.000001)
    y = np.clip(y, 0, ny - 1.000001)
    x0 = x.astype(np.int64)  # floor: x >= 0
    y0 = y.astype(np.int64)
    fx, fy = x - x0, y - y0
    flat = b.reshape(-1)
    k = (ii * nx + x0) * ny + y0
    v00, v01 = flat[k], flat[k + 1]
    v10, v11 = flat[k + ny], flat[k + ny + 1]
    return (1 - fx) * (v00 + fy * (v01 - v00)) + fx * (v10 + fy * (v11 - v10))


def _edge_points(b: np.ndarray, ii: np.ndarray, cx: np.ndarray, cy: np.ndarray, p: RimParameters):
    """Edge radius along each ray ``(P, n_angles)`` (NaN: no inward step there) and its strength."""
    phi = 2 * np.pi * np.arange(p.n_angles) / p.n_angles
    r = np.arange(p.radius_px - p.search_px, p.radius_px + p.search_px + 1e-9, p.step_px)
    ux, uy = np.cos(phi), np.sin(phi)
    X = cx[:, None, None] + ux[None, :, None] * r[None, None, :]
    Y = cy[:, None, None] + uy[None, :, None] * r[None, None, :]
    prof = _bilinear(np.ascontiguousarray(b), ii[:, None, None], X, Y)  # (P, A, R)
    inner = prof[..., r <= p.radius_px - 1.0].mean(axis=-1) if np.any(r <= p.radius_px - 1.0) else prof[..., 0]
    if p.smooth_px > 0:
        from scipy.ndimage import gaussian_filter1d

        prof = gaussian_filter1d(prof, p.smooth_px / p.step_px, axis=-1, mode="nearest")
    d = -(prof[..., 2:] - prof[..., :-2]) / (2 * p.step_px)  # -dI/dr at r[1:-1]
    j = np.argmax(d, axis=-1)
    m = d.shape[-1]
    jc = np.clip(j, 1, m - 2)
    d0 = np.take_along_axis(d, jc[..., None], -1)[..., 0]
    dm = np.take_along_axis(d, (jc - 1)[..., None], -1)[..., 0]
    dp = np.take_along_axis(d, (jc + 1)[..., None], -1)[..., 0]
    den = dm - 2 * d0 + dp
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.clip(np.where(den < 0, 0.5 * (dm - dp) / den, 0.0), -0.5, 0.5)
    radius = r[1:-1][jc] + s * p.step_px
    strength = np.take_along_axis(d, j[..., None], -1)[..., 0]
    ok = (j > 0) & (j < m - 1) & (strength > 0)
    return strength, np.where(ok, radius, np.nan), inner


def _fit_centres(strength: np.ndarray, radius: np.ndarray, p: RimParameters) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least-squares shift ``(P, 2)`` of the circle centre from the rays' edge radii,
    and the RMS misfit (px) of the edge points kept.

    For a circle of the known rim radius R centred at ``d`` from the ray origin, the edge along
    the unit vector u is at ``r(u) = R + d . u`` (to first order in |d|/R). R is fixed: dynamical
    contrast often leaves part of a rim without an edge (a dark half disk), and an arc alone
    cannot tell a shift from a change of radius. Edge points weaker than ``MIN_EDGE_FRACTION``
    of the disk's strongest are not used; points more than 0.75 px off a fit are dropped and
    the fit repeated (twice); weights are the edge strengths.
    """
    phi = 2 * np.pi * np.arange(p.n_angles) / p.n_angles
    U = np.stack([np.cos(phi), np.sin(phi)], axis=1)  # (A, 2)
    ok = np.isfinite(radius)
    s = np.where(ok, strength, 0.0)
    smax = s.max(axis=1, keepdims=True)
    w = np.where(ok & (s >= MIN_EDGE_FRACTION * smax), s, 0.0)
    rr = np.where(ok, radius - p.radius_px, 0.0)
    sol = np.zeros((radius.shape[0], 2))
    for _ in range(3):
        N = np.einsum("pa,ai,aj->pij", w, U, U)
        rhs = np.einsum("pa,ai,pa->pi", w, U, rr)
        tr = np.trace(N, axis1=1, axis2=2)
        good = np.linalg.det(N) > 0.02 * tr**2  # edge points spread over enough of the rim
        sol = np.full((len(w), 2), np.nan)
        if good.any():
            sol[good] = np.linalg.solve(N[good], rhs[good][..., None])[..., 0]
        resid = rr - np.nan_to_num(sol) @ U.T
        w = np.where(np.abs(resid) <= 0.75, w, 0.0)
    enough = ((w > 0).sum(axis=1) >= max(6, p.n_angles // 4)) & np.isfinite(sol).all(axis=1)
    with np.errstate(invalid="ignore"):
        rms = np.sqrt(np.sum(w * resid**2, axis=1) / np.sum(w, axis=1))
    shift = np.where(enough[:, None], sol, np.nan)
    return shift, rms


def interior_asymmetry(inner: np.ndarray) -> np.ndarray:
    """First angular harmonic ``(P, 2)`` of the disk interior's intensity ``inner`` (P, n_angles)
    (rays at angles ``2 pi j / n_angles``), relative to its mean: ``2 <m cos phi> / <m>``, the same
    with sin; 0 for an even disk, ~``t r / R`` for an interior ramp ``1 + t x / R`` sampled at radius r."""
    n = inner.shape[-1]
    phi = 2 * np.pi * np.arange(n) / n
    mean = inner.mean(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 2 * np.stack([(inner * np.cos(phi)).mean(axis=-1), (inner * np.sin(phi)).mean(axis=-1)], -1) / mean[:, None]
    return np.where(mean[:, None] > 0, out, 0.0)


def rim_tilt_bias_px(probe: Probe | np.ndarray, params: RimParameters, ramp: float = 0.3) -> float:
    """The tilt-bias model of the rim fit: the shift (px) of the fitted rim centre per unit interior
    asymmetry (:func:`interior_asymmetry`), measured on the probe disk itself given an interior
    ramp ``1 + ramp x / R`` (a tilt moves intensity towards the Bragg condition; the rim's own
    intensity then varies around it and pulls the steepest fall outward on the bright side)."""
    if isinstance(probe, Probe):
        img = np.fft.fftshift(probe.kernel)
        c = (img.shape[0] // 2, img.shape[1] // 2)
    else:
        from .probe import measure_disk

        img = np.asarray(probe, dtype=np.float64)
        c, _, _ = measure_disk(img)
    x = np.arange(img.shape[0])[:, None] - c[0]
    tilted = img * np.clip(1 + ramp * x / params.radius_px, 0, None)
    p0 = dataclasses.replace(params, bias_px=0.0)
    qx, _ = rim_refine(tilted[None], np.array([[float(c[0])]]), np.array([[float(c[1])]]), p0)
    _, _, inner = _edge_points(tilted[None], np.zeros(1, np.int64), qx[0], np.array([float(c[1])]), p0)
    a = interior_asymmetry(inner)[0, 0]
    if not abs(a) > 1e-6:
        raise Distill4dError("the probe disk shows no interior asymmetry under a ramp (is it a disk?)")
    return float((qx[0, 0] - c[0]) / a)


def _rim_fit(b: np.ndarray, qx: np.ndarray, qy: np.ndarray, params: RimParameters):
    """Rim circle fits of the finite entries of padded ``qx``, ``qy`` (n, k) in ``b`` (n, Qx, Qy),
    without the tilt-bias model: ``(cx, cy, asym, weight)``, each for the flat entries
    ``np.nonzero(finite)`` (cx, cy the fitted centres, NaN where the fit failed or moved farther
    than ``params.max_shift_px``; asym ``(m, 2)`` the interior asymmetry at the fitted centre;
    weight the interior's mean intensity)."""
    ii, kk = np.nonzero(np.isfinite(qx) & np.isfinite(qy))
    cx_all = np.full(ii.size, np.nan)
    cy_all = np.full(ii.size, np.nan)
    asym_all = np.zeros((ii.size, 2))
    weight = np.zeros(ii.size)
    step = max(1, _CHUNK_ELEMENTS // (params.n_angles * int(2 * params.search_px / params.step_px + 2)))
    for s in range(0, ii.size, step):
        i, k = ii[s:s + step], kk[s:s + step]
        x0, y0 = qx[i, k], qy[i, k]
        cx, cy = x0.copy(), y0.copy()
        ok = np.zeros(i.size, bool)
        for _ in range(params.iterations):
            strength, radius, inner = _edge_points(b, i, cx, cy, params)
            shift, _ = _fit_centres(strength, radius, params)
            ok = np.isfinite(shift).all(axis=1)
            cx = np.where(ok, cx + np.nan_to_num(shift[:, 0]), cx)
            cy = np.where(ok, cy + np.nan_to_num(shift[:, 1]), cy)
        ok &= np.hypot(cx - x0, cy - y0) <= params.max_shift_px
        cx_all[s:s + step] = np.where(ok, cx, np.nan)
        cy_all[s:s + step] = np.where(ok, cy, np.nan)
        asym_all[s:s + step] = interior_asymmetry(inner)
        weight[s:s + step] = np.where(ok, np.clip(inner.mean(axis=-1), 0.0, None), 0.0)
    return ii, kk, cx_all, cy_all, asym_all, weight


def rim_refine(batch: np.ndarray, qx: np.ndarray, qy: np.ndarray, params: RimParameters) -> tuple[np.ndarray, np.ndarray]:
    """Refine padded positions ``qx``, ``qy`` (n, k) (pixels, NaN padding) of a batch
    ``(n, Qx, Qy)`` to the centres of circles fitted to the disks' rims, less the tilt-bias
    model's shift ``params.bias_px x`` :func:`interior_asymmetry`.

    Returns ``(qx, qy)`` of the same shape; a peak whose rim fit fails (too few edge points,
    or a shift above ``params.max_shift_px``) keeps its position.
    """
    b = np.asarray(batch, dtype=np.float64)
    qx = np.array(qx, dtype=np.float64)
    qy = np.array(qy, dtype=np.float64)
    ii, kk, cx, cy, asym, _ = _rim_fit(b, qx, qy, params)
    if ii.size == 0:
        return qx, qy
    if params.bias_px:
        cx = cx - params.bias_px * asym[:, 0]
        cy = cy - params.bias_px * asym[:, 1]
    ok = np.isfinite(cx) & np.isfinite(cy) & (np.hypot(cx - qx[ii, kk], cy - qy[ii, kk]) <= params.max_shift_px)
    qx[ii, kk] = np.where(ok, cx, qx[ii, kk])
    qy[ii, kk] = np.where(ok, cy, qy[ii, kk])
    return qx, qy


@dataclasses.dataclass(frozen=True)
class TiltBiasFit:
    """The tilt-bias coefficient learned from a region of uniform strain (:func:`learn_tilt_bias_px`).

    Attributes
    ----------
    bias_px : shift (px) of the rim-fitted centre per unit interior asymmetry.
    stderr_px : its standard error (px).
    spread : RMS of the asymmetry left after removing each reflection's and each pattern's mean
        (what the regression learns from; 0 where the tilt is the same everywhere).
    n_disks : disk fits used.
    """

    bias_px: float
    stderr_px: float
    spread: float
    n_disks: int

    @property
    def determined(self) -> bool:
        """True when the coefficient is known to within a third of itself and the asymmetry varies by
        at least ``MIN_ASYMMETRY_SPREAD``."""
        return (self.n_disks >= 20 and self.spread >= MIN_ASYMMETRY_SPREAD
                and math.isfinite(self.stderr_px) and self.stderr_px <= abs(self.bias_px) / 3)


#: Below this RMS variation of the disks' interior asymmetry a region cannot teach the tilt bias.
MIN_ASYMMETRY_SPREAD = 0.02


def _two_way_residual(X: np.ndarray, W: np.ndarray, sweeps: int = 20) -> np.ndarray:
    """``X`` (m, s) less the weighted least-squares fit of a row effect plus a column effect
    (alternating sweeps; entries with ``W == 0`` do not count and come back 0)."""
    R = np.where(W > 0, X, 0.0)
    for _ in range(sweeps):
        with np.errstate(invalid="ignore", divide="ignore"):
            col = np.nan_to_num((W * R).sum(axis=0) / W.sum(axis=0))
            R = np.where(W > 0, R - col[None, :], 0.0)
            row = np.nan_to_num((W * R).sum(axis=1) / W.sum(axis=1))
            R = np.where(W > 0, R - row[:, None], 0.0)
    return R


def _neighbour_mean(A: np.ndarray, W: np.ndarray, scan_shape: tuple[int, int]) -> np.ndarray:
    """Mean of ``A`` (m, s, 2) over each pattern's 8 scan neighbours (``m = prod(scan_shape)``),
    itself left out, entries with ``W == 0`` not counted (0 where no neighbour has one)."""
    rx, ry = scan_shape
    Ag = (A * (W > 0)[..., None]).reshape(rx, ry, *A.shape[1:])
    Wg = (W > 0).astype(np.float64).reshape(rx, ry, -1)
    num = np.zeros_like(Ag)
    den = np.zeros_like(Wg)
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            if dx == dy == 0:
                continue
            xs, xd = (slice(max(dx, 0), rx + min(dx, 0)), slice(max(-dx, 0), rx + min(-dx, 0)))
            ys, yd = (slice(max(dy, 0), ry + min(dy, 0)), slice(max(-dy, 0), ry + min(-dy, 0)))
            num[xd, yd] += Ag[xs, ys]
            den[xd, yd] += Wg[xs, ys]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den[..., None] > 0, num / den[..., None], 0.0)
    return out.reshape(A.shape)


def learn_tilt_bias_px(reference_patterns: np.ndarray, qx: np.ndarray, qy: np.ndarray, spots_px: np.ndarray,
                       params: RimParameters, *, scan_shape: tuple[int, int] | None = None,
                       match_px: float = 1.5) -> TiltBiasFit:
    """Learn the tilt-bias coefficient from patterns of one uniform strain (the strain reference region).

    There each reflection's true position is the same in every pattern (up to a shift of the
    whole pattern), so whatever its rim-fitted centre does with the disk's interior asymmetry
    (:func:`interior_asymmetry`) is the bias. The model ``centre = t_reflection + o_pattern +
    bias_px x asymmetry`` is fitted by weighted least squares (weights: the disks' interior
    intensity), both components together. Shot noise moves a disk's rim fit and its asymmetry
    together (the same pixels count in both); with ``scan_shape`` the regressor is therefore
    instrumented by the mean asymmetry of the same reflection in the 8 neighbouring patterns,
    whose noise is independent (the tilt varies slowly across a scan), which also keeps the
    noise in the asymmetry from shrinking the coefficient.

    Parameters
    ----------
    reference_patterns : (m, Qx, Qy) patterns.
    qx, qy : (m, k) padded detected positions (pixels, NaN padding) in them.
    spots_px : (s, 2) the reflections (pixels); a peak farther than ``match_px`` from all is not used.
    params : the rim fit (its ``bias_px`` is ignored).
    scan_shape : the scan grid ``(rx, ry)`` of the patterns (``rx ry = m``, row-major), or None
        (plain least squares, biased by shot noise).

    Returns
    -------
    TiltBiasFit (``determined`` says whether the region taught anything: with one tilt throughout
    it cannot).
    """
    b = np.asarray(reference_patterns, dtype=np.float64)
    if b.ndim != 3:
        raise Distill4dError(f"reference_patterns must be a stack (m, Qx, Qy), got shape {b.shape}")
    if scan_shape is not None and (len(scan_shape) != 2 or int(scan_shape[0]) * int(scan_shape[1]) != b.shape[0]):
        raise Distill4dError(f"scan_shape must be (rx, ry) with rx * ry = {b.shape[0]} patterns, got {scan_shape!r}")
    b = np.where(np.isfinite(b), b, 0.0)
    qx = np.asarray(qx, dtype=np.float64).reshape(b.shape[0], -1)
    qy = np.asarray(qy, dtype=np.float64).reshape(b.shape[0], -1)
    spots = np.asarray(spots_px, dtype=np.float64).reshape(-1, 2)
    ii, _, cx, cy, asym, w = _rim_fit(b, qx, qy, dataclasses.replace(params, bias_px=0.0))
    m, s = b.shape[0], spots.shape[0]
    if ii.size == 0 or s == 0:
        return TiltBiasFit(0.0, math.inf, 0.0, 0)
    d = np.hypot(cx[:, None] - spots[None, :, 0], cy[:, None] - spots[None, :, 1])
    j = np.argmin(np.where(np.isfinite(d), d, np.inf), axis=1)
    use = np.isfinite(cx) & (np.take_along_axis(d, j[:, None], 1)[:, 0] <= match_px) & (w > 0)
    W = np.zeros((m, s))
    P = np.zeros((m, s, 2))
    A = np.zeros((m, s, 2))
    # one peak per (pattern, reflection): the brightest (written last)
    order = np.argsort(w[use])
    iu, ju = ii[use][order], j[use][order]
    W[iu, ju] = w[use][order]
    P[iu, ju] = np.stack([cx, cy], 1)[use][order]
    A[iu, ju] = asym[use][order]
    W = W / W.max() if W.max() > 0 else W
    Z = A if scan_shape is None else _neighbour_mean(A, W, (int(scan_shape[0]), int(scan_shape[1])))
    if scan_shape is not None:
        W = np.where(_neighbour_mean(np.ones((m, s, 1)), W, (int(scan_shape[0]), int(scan_shape[1])))[..., 0] > 0, W, 0.0)
    RP = np.stack([_two_way_residual(P[..., c], W) for c in range(2)], -1)
    RA = np.stack([_two_way_residual(A[..., c], W) for c in range(2)], -1)
    RZ = np.stack([_two_way_residual(Z[..., c], W) for c in range(2)], -1)
    sza = float(np.sum(W[..., None] * RZ * RA))
    n = int((W > 0).sum())
    wsum = float(2 * W.sum())
    if not abs(sza) > 0 or n < 3:
        return TiltBiasFit(0.0, math.inf, 0.0, n)
    bias = float(np.sum(W[..., None] * RZ * RP) / sza)
    e = RP - bias * RA
    sigma2 = float(np.sum(W[..., None] * e**2)) / max(wsum, 1e-300) * n / max(n - s - m, 1)
    stderr = math.sqrt(sigma2 * float(np.sum(W[..., None] ** 2 * RZ**2))) / abs(sza)
    spread = math.sqrt(float(np.sum(W[..., None] * RZ**2)) / max(wsum, 1e-300))
    return TiltBiasFit(bias, stderr, spread, n)


def rim_batch(batch: np.ndarray, kernel_ft: np.ndarray, params: DetectionParameters,
              rim: RimParameters) -> dict[str, np.ndarray]:
    """:func:`detect_batch` (which disks exist, where roughly) then :func:`rim_refine` (where exactly).

    Same padded outputs as :func:`detect_batch` (``qx``, ``qy`` in pixels, ``intensity``, ``count``).
    """
    out = detect_batch(batch, kernel_ft, params)
    b = np.asarray(batch, dtype=np.float64)
    bad = ~np.isfinite(b).all(axis=(1, 2))
    if bad.any():
        b = np.where(np.isfinite(b), b, 0.0)
    out["qx"], out["qy"] = rim_refine(b, out["qx"], out["qy"], rim)
    return out


def find_bragg_disks_rim(
    datacube: Any,
    probe: Any = None,
    *,
    rim_radius: float | None = None,
    search_px: float | None = None,
    n_angles: int = 32,
    tilt_correction: bool = True,
    reference: Any = None,
    tilt_bias_px: float | None = None,
    memory_budget: int | None = None,
    scheduler: Any = "threads",
    n_workers: int | None = None,
    progress: bool | None = None,
    checkpoint: Any = None,
    **overrides: Any,
) -> BraggPeaks:
    """Find the Bragg disks by correlation with the probe, then place each on its rim (circle fit).

    Parameters
    ----------
    datacube : a DataCube (or an array of 2, 3 or 4 dimensions).
    probe : vacuum probe (see :func:`probe_template`); None: the central disk of the mean pattern.
    rim_radius : rim radius in pixels (default: :func:`rim_radius_px` of the probe).
    search_px : edge points within ``rim_radius +- search_px`` (default: ``min(2, rim_radius / 2)`` px).
    n_angles : edge points (rays) per disk.
    tilt_correction : remove the tilt-bias model's shift from every disk according to its interior
        asymmetry (default True). The coefficient is ``tilt_bias_px`` when given, else learned from
        the ``reference`` region (:func:`learn_tilt_bias_px`) when the tilt varies enough there to
        teach it and agrees with the probe's calibration in sign and within 4x
        (:func:`plausible_tilt_bias`), else calibrated on the probe (:func:`rim_tilt_bias_px`).
    reference : the strain reference region ``(slice, slice)`` (uniform strain), or None.
    tilt_bias_px : the coefficient (px per unit asymmetry), known beforehand.
    memory_budget, scheduler, n_workers, progress, checkpoint : engine options
        (see :func:`distill4d.engine.map_patterns`).
    **overrides : fields of :class:`DetectionParameters` for the detection step.

    Returns
    -------
    BraggPeaks (pixels); ``.params`` has ``method="rim"``, the detection and rim parameters, and
    ``tilt_bias`` (the coefficient's source: ``"given"``, ``"reference"``, ``"probe"`` or ``"off"``,
    with the reference fit's numbers when one was tried).
    """
    from ..engine import map_patterns

    dc = as_datacube(datacube)
    template = probe_template(probe, datacube=dc, kind="disk")
    params = _detection_params(dc, template, overrides)
    r = rim_radius_px(template) if rim_radius is None else positive_float("rim_radius", rim_radius)
    rim = RimParameters(radius_px=r, search_px=min(2.0, 0.5 * r) if search_px is None else search_px,
                        n_angles=n_angles)
    kernel_ft = _kernel_ft(template)
    source: dict[str, Any] = {"source": "off"}
    if tilt_correction and tilt_bias_px is not None:
        if not (isinstance(tilt_bias_px, (int, float)) and math.isfinite(tilt_bias_px)):
            raise Distill4dError(f"tilt_bias_px must be a finite number (px) or None, got {tilt_bias_px!r}")
        rim = dataclasses.replace(rim, bias_px=float(tilt_bias_px))
        source = {"source": "given"}
    elif tilt_correction:
        source = {"source": "probe"}
        probe_bias = rim_tilt_bias_px(template, rim)
        rim = dataclasses.replace(rim, bias_px=probe_bias)
        if reference is not None:
            fit = reference_tilt_bias(dc, template, reference, params, rim, kernel_ft)
            source["reference_fit"] = dataclasses.asdict(fit)
            source["probe_bias_px"] = probe_bias
            if plausible_tilt_bias(fit, probe_bias):
                rim = dataclasses.replace(rim, bias_px=fit.bias_px)
                source["source"] = "reference"
    fn = functools.partial(rim_batch, kernel_ft=kernel_ft, params=params, rim=rim)
    res = map_patterns(dc, fn, memory_budget=memory_budget, scheduler=scheduler, n_workers=n_workers,
                       progress=progress, checkpoint=checkpoint, job_key=f"rim:{params}:{rim}", desc="bragg disks (rim)")
    return BraggPeaks.from_padded(
        res["qx"], res["qy"], res["intensity"], res["count"], dc.calibration,
        params={"method": "rim", **dataclasses.asdict(params), "probe_kind": "disk",
                "probe_radius_px": template.radius_px, "rim": dataclasses.asdict(rim), "tilt_bias": source},
    )


#: At most this many reference patterns teach the tilt bias (evenly spread over the region).
MAX_REFERENCE_PATTERNS = 128


def reference_tilt_bias(dc: Any, template: Probe, reference: Any, params: DetectionParameters, rim: RimParameters,
                        kernel_ft: np.ndarray | None = None, detected: tuple[np.ndarray, np.ndarray] | None = None
                        ) -> TiltBiasFit:
    """:func:`learn_tilt_bias_px` on the region ``reference`` ``(slice, slice)`` of ``dc`` (every
    ``stride``-th position along each scan axis, at most about ``MAX_REFERENCE_PATTERNS``):
    reflections from the region's mean pattern; disks detected by correlation, or ``detected``
    (padded ``qx``, ``qy`` (rx, ry, k) of the whole region, pixels) when already known."""
    from ..lattice.strain import reference_region

    region = reference_region(reference, dc.scan_shape)
    sub = dc[region[0], region[1]]
    nx, ny = sub.scan_shape
    stride = max(1, int(math.ceil(math.sqrt(nx * ny / MAX_REFERENCE_PATTERNS))))
    xs, ys = np.arange(0, nx, stride), np.arange(0, ny, stride)
    stack = np.stack([np.asarray(sub.pattern(int(a), int(c)), dtype=np.float64) for a in xs for c in ys])
    stack = np.where(np.isfinite(stack), stack, 0.0)
    kft = _kernel_ft(template) if kernel_ft is None else kernel_ft
    if detected is None:
        det = detect_batch(stack, kft, params)
        qx, qy = det["qx"], det["qy"]
    else:
        qx = np.asarray(detected[0])[np.ix_(xs, ys)].reshape(stack.shape[0], -1)
        qy = np.asarray(detected[1])[np.ix_(xs, ys)].reshape(stack.shape[0], -1)
    mp = detect_batch(stack.mean(axis=0)[None], kft, params)
    spots = np.stack([mp["qx"][0, : mp["count"][0]], mp["qy"][0, : mp["count"][0]]], 1)
    return learn_tilt_bias_px(stack, qx, qy, spots, rim, scan_shape=(xs.size, ys.size))


def plausible_tilt_bias(fit: TiltBiasFit, probe_bias_px: float) -> bool:
    """Whether a learned coefficient is used: ``fit.determined``, of the probe calibration's sign
    and within 4x of it either way (a rim fit's response to interior asymmetry is set by the disk
    edge's profile, which the probe shows up to the detector's blur)."""
    if not fit.determined or probe_bias_px == 0:
        return False
    ratio = fit.bias_px / probe_bias_px
    return 0.25 <= ratio <= 4.0


def _detection_params(dc, template: Probe, overrides: dict[str, Any]) -> DetectionParameters:
    """Detection parameters as :func:`~distill4d.bragg.detect.detection_setup` chooses them (the
    automatic ones unless ``overrides`` fix the thresholds; TypeError for unknown names)."""
    from .detect import detection_setup

    return detection_setup(dc, template, **dict(overrides))[1]


# ----------------------------------------------------------------------------- per-reflection templates
@dataclasses.dataclass(frozen=True)
class TemplateParameters:
    """Parameters of :func:`template_refine` (lengths in detector pixels).

    Attributes
    ----------
    half_px : the window of a reflection is ``2 half_px + 1`` pixels wide, centred on its spot;
        the template is tapered to 0 between ``mask_radius_px + 1`` and ``half_px``.
    mask_radius_px : pixels farther than this from the spot do not count (a soft circular
        mask, 1 px wide), so that neighbouring disks stay out.
    iterations : Gauss-Newton steps of the registration.
    edges : register the gradient magnitudes (Sobel) of template and pattern instead of the
        intensities: the rims count, the disk interior's contrast much less.
    max_shift_px : a registration that moves farther than this from the spot is rejected (no peak).
    weight_floor : after the first (least-squares) step each pixel is weighted by ``1 / max(lam,
        weight_floor x the largest lam over the pixels the masks reach)``, ``lam`` the fitted model: Poisson maximum
        likelihood (Fisher scoring) where the model is bright, capped in the dark pixels around
        the rim, whose model is least certain. 1: least squares throughout; ignored with ``edges``.
        0.05 was chosen on the development strain sets (docs/experiments.md).
    """

    half_px: int
    mask_radius_px: float
    iterations: int = 4
    edges: bool = False
    max_shift_px: float = 2.0
    weight_floor: float = 0.05

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("half_px", positive_int("half_px", self.half_px, minimum=2))
        set_("mask_radius_px", positive_float("mask_radius_px", self.mask_radius_px, maximum=self.half_px))
        set_("iterations", positive_int("iterations", self.iterations))
        if not isinstance(self.edges, (bool, np.bool_)):
            raise TypeError(f"edges must be True or False, got {self.edges!r}")
        set_("edges", bool(self.edges))
        set_("max_shift_px", positive_float("max_shift_px", self.max_shift_px))
        set_("weight_floor", positive_float("weight_floor", self.weight_floor, maximum=1.0))


def _windows(b: np.ndarray, base: np.ndarray, half: int) -> np.ndarray:
    """Windows ``(n, k, W, W)`` of ``b`` (n, Qx, Qy) at integer corners ``base - half`` (k, 2), clamped."""
    nx, ny = b.shape[1:]
    off = np.arange(-half, half + 1)
    px = np.clip(base[:, 0, None] + off, 0, nx - 1)  # (k, W)
    py = np.clip(base[:, 1, None] + off, 0, ny - 1)
    return b[:, px[:, :, None], py[:, None, :]]


def reflection_templates(reference_patterns: np.ndarray, spots_px: np.ndarray, half_px: int) -> np.ndarray:
    """Each reflection's disk averaged over ``reference_patterns`` (m, Qx, Qy): windows
    ``(k, 2 half_px + 1, 2 half_px + 1)`` centred on ``rint(spots_px)`` (k, 2) (pixels)."""
    ref = np.asarray(reference_patterns, dtype=np.float64)
    if ref.ndim != 3:
        raise Distill4dError(f"reference_patterns must be a stack (m, Qx, Qy), got shape {ref.shape}")
    ref = ref[np.isfinite(ref).all(axis=(1, 2))]
    if ref.shape[0] == 0:
        raise Distill4dError("every reference pattern contains NaN or Inf; no template can be learned")
    base = np.rint(np.asarray(spots_px, dtype=np.float64)).astype(np.int64).reshape(-1, 2)
    return _windows(ref.mean(axis=0)[None], base, positive_int("half_px", half_px, minimum=2))[0]


def template_refine(batch: np.ndarray, spots_px: np.ndarray, templates: np.ndarray,
                    params: TemplateParameters) -> dict[str, np.ndarray]:
    """Register each reflection's template in every pattern of a batch ``(n, Qx, Qy)``.

    The window of reflection j at ``rint(spots_px[j])`` is fitted by ``a T_j(x - d) + b``
    (Gauss-Newton on ``d``, linear in ``a`` and ``b``, weighted by the circular mask and, after
    the first step, by the Poisson weights of ``params.weight_floor``; the template shifted in
    Fourier space), so its position is ``spots_px[j] + d``: at the
    patterns the templates were averaged over, ``d`` is 0 up to noise, whatever the contrast
    inside the disks. Returns padded ``qx``, ``qy`` (pixels), ``intensity`` (``a`` times the
    template's masked total, pattern units) of shape ``(n, k)``, valid entries first, and
    ``count``; a fit with ``a <= 0``, a failed solve or a shift above ``params.max_shift_px``
    gives no peak.
    """
    b = np.asarray(batch, dtype=np.float64)
    n = b.shape[0]
    spots = np.asarray(spots_px, dtype=np.float64).reshape(-1, 2)
    k = spots.shape[0]
    h = params.half_px
    W = 2 * h + 1
    bad = ~np.isfinite(b).all(axis=(1, 2))
    if bad.any():
        b = np.where(np.isfinite(b), b, 0.0)
    base = np.rint(spots).astype(np.int64)
    T = np.asarray(templates, dtype=np.float64)
    if T.shape != (k, W, W):
        raise Distill4dError(f"templates must have shape {(k, W, W)} for {k} spots and half_px {h}, got {T.shape}")
    P = _windows(b, base, h)  # (n, k, W, W)
    if params.edges:
        T = sobel_magnitude(T)
        P = sobel_magnitude(P)
    off = np.arange(-h, h + 1, dtype=np.float64)
    frac = spots - base  # the spot within its window
    r = np.hypot(off[None, :, None] - frac[:, 0, None, None], off[None, None, :] - frac[:, 1, None, None])
    w = np.clip(params.mask_radius_px + 0.5 - r, 0.0, 1.0)  # (k, W, W)
    kx = np.fft.fftfreq(W)[:, None]
    ky = np.fft.fftfreq(W)[None, :]
    # taper the template to 0 at the window's border (1 up to 1 px beyond the mask), so that its
    # Fourier shift does not ring from the periodic wrap
    edge = params.mask_radius_px + 1.0
    taper = np.where(r <= edge, 1.0, np.cos(0.5 * np.pi * np.clip((r - edge) / max(h - edge, 1.0), 0, 1)) ** 2)
    # single precision transforms (the shifts need ~1e-3 px); the normal equations in double, over the
    # pixels any reflection's mask reaches
    Tf = np.fft.fft2(T * taper).astype(np.complex64)  # (k, W, W)
    sel = np.flatnonzero((w > 0).any(axis=0).ravel())
    S = sel.size
    wk = w.reshape(k, W * W)[:, sel]  # (k, S)
    Ps = P.reshape(n, k, W * W)[..., sel]  # (n, k, S)
    fx = (1.0 - 2.0 * np.pi * kx).astype(np.float32)
    fy = (2j * np.pi * ky).astype(np.complex64)
    d = np.zeros((n, k, 2))
    a = np.zeros((n, k))
    ok = np.ones((n, k), bool)
    lam = None  # the model fitted by the last step, (n, k, S)
    poisson = params.weight_floor < 1.0 and not params.edges
    basis = np.empty((n, k, S, 4))
    basis[..., 1] = 1.0
    for _ in range(params.iterations):
        # the Fourier shift, separable: (n, k, W, 1) x (n, k, 1, W)
        ph = (np.exp(-2j * np.pi * kx[:, 0] * d[..., 0, None])[..., :, None] * np.exp(
            -2j * np.pi * ky[0] * d[..., 1, None])[..., None, :]).astype(np.complex64)
        F = Tf[None] * ph
        # the shifted template and its x gradient, both real, in one transform (Td + i Gx)
        TG = sfft.ifft2(F * fx).reshape(n, k, W * W)[..., sel]
        basis[..., 0] = TG.real
        basis[..., 2] = TG.imag
        basis[..., 3] = sfft.ifft2(F * fy).real.reshape(n, k, W * W)[..., sel]
        ww = np.broadcast_to(wk[None], (n, k, S))
        if lam is not None:
            top = lam.max(axis=-1, keepdims=True)
            ww = ww / np.maximum(lam, np.where(top > 0, params.weight_floor * top, 1.0))
        bw = np.swapaxes(basis * ww[..., None], -1, -2)  # (n, k, 4, S)
        N = bw @ basis
        rhs = (bw @ Ps[..., None])[..., 0]
        solvable = np.abs(np.linalg.det(N)) > 1e-300
        sol = np.zeros((n, k, 4))
        if solvable.any():
            sol[solvable] = np.linalg.solve(N[solvable], rhs[solvable][..., None])[..., 0]
        a = sol[..., 0]
        ok = solvable & (a > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = np.where(ok[..., None], -sol[..., 2:] / a[..., None], 0.0)
        d = d + np.clip(step, -1.0, 1.0)
        if poisson:
            lam = np.clip(a[..., None] * basis[..., 0] + sol[..., 1, None], 0.0, None)
    ok &= (np.hypot(d[..., 0], d[..., 1]) <= params.max_shift_px) & ~bad[:, None]
    total = a * (T * w).sum(axis=(1, 2))[None] if not params.edges else a * (np.asarray(templates) * w).sum(axis=(1, 2))[None]
    valid = ok & np.isfinite(d).all(axis=-1)
    order = np.argsort(~valid, axis=1, kind="stable")
    take = lambda v: np.take_along_axis(np.where(valid, v, np.nan), order, axis=1)  # noqa: E731
    return {
        "qx": take(spots[None, :, 0] + d[..., 0]),
        "qy": take(spots[None, :, 1] + d[..., 1]),
        "intensity": take(total),
        "count": valid.sum(axis=1).astype(np.int32),
    }


def template_batch(batch: np.ndarray, spots_px: np.ndarray, templates: np.ndarray,
                   params: TemplateParameters) -> dict[str, np.ndarray]:
    """:func:`template_refine` in chunks that bound the memory (a batch function for the engine)."""
    b = np.asarray(batch)
    k = np.asarray(spots_px).reshape(-1, 2).shape[0]
    W = 2 * params.half_px + 1
    step = max(1, (1 << 22) // max(1, 12 * k * W * W))
    parts = [template_refine(b[s:s + step], spots_px, templates, params) for s in range(0, b.shape[0], step)]
    if len(parts) == 1:
        return parts[0]
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def find_bragg_disks_template(
    datacube: Any,
    probe: Any = None,
    *,
    reference: Any = None,
    edges: bool = False,
    weight_floor: float = 0.05,
    min_spot_intensity: float = 0.0,
    memory_budget: int | None = None,
    scheduler: Any = "threads",
    n_workers: int | None = None,
    progress: bool | None = None,
    checkpoint: Any = None,
) -> BraggPeaks:
    """Bragg disks registered against per-reflection templates learned from the scan itself.

    The disks of the reference region's mean pattern are found by correlation with the probe;
    each one's window, averaged over the reference region's patterns, is its template; every
    pattern's window is registered against it (:func:`template_refine`). Where dynamical
    contrast fills the disks the same way across the scan (a thick crystal of even thickness),
    the template carries that contrast and the registration is not biased by it.

    Parameters
    ----------
    datacube : the data.
    probe : vacuum probe (see :func:`probe_template`); None: the central disk of the mean pattern.
    reference : the region ``(slice, slice)`` of the scan whose patterns make the templates
        (the strain reference region); None: the whole scan.
    edges : register gradient magnitudes (Sobel), not intensities (see :class:`TemplateParameters`).
    weight_floor : Poisson weights capped at this fraction of a window's brightest model pixel
        (1: least squares; see :class:`TemplateParameters`).
    min_spot_intensity : spots weaker than this fraction of the brightest (correlation) are left out.
    memory_budget, scheduler, n_workers, progress, checkpoint : engine options
        (see :func:`distill4d.engine.map_patterns`).

    Returns
    -------
    BraggPeaks (pixels); ``.params`` has ``method="template"`` and the spots.
    """
    from ..engine import map_patterns

    dc = as_datacube(datacube)
    region = (slice(None), slice(None)) if reference is None else reference
    if not (isinstance(region, tuple) and len(region) == 2 and all(isinstance(s, slice) for s in region)):
        raise Distill4dError(f"reference must be a region (slice, slice) of the scan or None, got {reference!r}")
    try:
        ref_dc = dc[region[0], region[1]]
    except IndexError as err:
        raise Distill4dError(f"reference {reference!r}: {err}") from None
    template = probe_template(probe, datacube=dc, kind="disk")
    spots, templates, tp = template_setup(_finite_mean(ref_dc), template, dc.calibration, edges=edges,
                                          weight_floor=weight_floor, min_spot_intensity=min_spot_intensity)
    r = template.radius_px
    fn = functools.partial(template_batch, spots_px=spots, templates=templates, params=tp)
    res = map_patterns(dc, fn, memory_budget=memory_budget, scheduler=scheduler, n_workers=n_workers,
                       progress=progress, checkpoint=checkpoint,
                       job_key=f"template:{tp}:{spots.round(4).tolist()}", desc="bragg disks (template)")
    region_text = [[s.start, s.stop] for s in region]
    return BraggPeaks.from_padded(
        res["qx"], res["qy"], res["intensity"], res["count"], dc.calibration,
        params={"method": "template", **dataclasses.asdict(tp), "reference": region_text,
                "probe_radius_px": r, "n_spots": int(spots.shape[0]), "spots_px": spots.tolist()},
    )


def template_setup(ref_mean: np.ndarray, probe: Probe | np.ndarray, calibration: Any = None, *, edges: bool = False,
                   weight_floor: float = 0.05, min_spot_intensity: float = 0.0
                   ) -> tuple[np.ndarray, np.ndarray, TemplateParameters]:
    """The spots ``(k, 2)`` (pixels), templates and parameters of :func:`template_batch` from the mean
    pattern ``ref_mean`` ``(Qx, Qy)`` of a reference region: its disks found by correlation with
    ``probe`` (a disk :class:`Probe` or a vacuum-probe image), those at least ``half_px`` from the
    detector edge (at least 3, else a one-line error); ``calibration`` is carried to that detection."""
    from ..datacube import DataCube
    from .detect import find_bragg_disks

    ref_mean = np.asarray(ref_mean, dtype=np.float64)
    if ref_mean.ndim != 2:
        raise Distill4dError(f"ref_mean must be one pattern (Qx, Qy), got shape {ref_mean.shape}")
    probe = probe_template(probe, kind="disk")
    mp = find_bragg_disks(DataCube(ref_mean[None, None], calibration), probe,
                          scheduler="inline", progress=False)
    spots = np.stack([mp.qx, mp.qy], axis=1)
    if min_spot_intensity > 0 and spots.size:
        spots = spots[mp.intensity >= min_spot_intensity * mp.intensity.max()]
    r = probe.radius_px
    half = int(math.ceil(r + 5.0))
    nx, ny = ref_mean.shape
    inside = (spots[:, 0] >= half) & (spots[:, 0] <= nx - 1 - half) & (spots[:, 1] >= half) & (spots[:, 1] <= ny - 1 - half)
    spots = spots[inside]
    if spots.shape[0] < 3:
        raise Distill4dError(f"the reference region's mean pattern has {spots.shape[0]} disks inside the detector; "
                             "templates need at least 3")
    tp = TemplateParameters(half_px=half, mask_radius_px=min(float(half), r + 2.0), edges=edges,
                            weight_floor=weight_floor)
    templates = _windows(ref_mean[None], np.rint(spots).astype(np.int64), half)[0]
    return spots, templates, tp


def _finite_mean(dc) -> np.ndarray:
    from .mean import finite_mean_pattern

    return finite_mean_pattern(dc, scheduler="inline", progress=False)
