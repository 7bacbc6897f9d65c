"""Per-pattern strain by Poisson maximum likelihood against a noise-free template.

Every pattern ``k`` (counts) is modelled as ``lam(q) = s D(o + M (q - o) + t) + c B(q)``:
the template's disks ``D`` (the reference state's pattern at detector resolution less its
diffuse background ``B``) seen through the reciprocal-space map ``M = F^T`` of the
real-space deformation ``F`` (Bragg vectors go as ``g = F^-T g0``), a shift ``t`` (px) and
intensity scales ``s`` and ``c``. The background does not move with the lattice (a warped
halo would pull the strain towards zero).
The eight parameters are fitted per pattern by Fisher scoring with Levenberg-Marquardt
damping on the Poisson negative log-likelihood ``sum(lam - k log lam)``, with analytic
derivatives, all patterns of a batch at once (NumPy). Every detector pixel counts: no
spot-finding, no prepared grid, so the estimate approaches the Cramér–Rao bound of
:mod:`distill4d.lattice.precision`. The inverse Fisher information at the solution gives each
position's standard error.

The template is a cubic B-spline through the template's pixels, evaluated with its exact
derivatives: the likelihood is smooth, so the fit converges in a few steps to the optimum of
the likelihood itself.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any

import numpy as np

from .._validate import nonnegative_float, positive_float, positive_int
from ..errors import Distill4dError

__all__ = ["TemplateFitParameters", "Template", "TemplateStrain", "fit_template_batch", "make_template",
           "fit_outputs_to_strain", "strain_map_template", "build_template", "aligned_mean",
           "smooth_fits", "radial_background", "fit_shared_deformation"]

_PAD = 4  # px of edge padding around the spline coefficients
_CHUNK = 32  # patterns fitted together (memory: about 32 x 11 x P x 8 bytes for the Jacobian: 46 MB at 128 x 128)
# the displacement information (|grad|^2 of the 1 px-smoothed image) that noise fakes, per unit of
# the variance its 1 px high-pass sees, for noise as build_template leaves it (averaged over
# sub-pixel shifts by linear interpolation, then smoothed by 0.5 px; measured on white noise: 0.29)
_NOISE_INFO = 0.29
#: A pattern with fewer counts than this in total is not electron counts (a simulation in fractions of
#: the beam, a normalised file): its fit converges as if it held _NOMINAL_COUNTS (the decrement test
#: is in units of counts, and stopped such fits after one step); its standard errors are only relative.
_MIN_COUNTS = 20.0
_NOMINAL_COUNTS = 1e5
_N_PARAMS = 11  # M00, M01, M10, M11, t0, t1, s (disks), c (background), a_xx, a_yy, a_xy (disk envelope)


@dataclasses.dataclass(frozen=True)
class TemplateFitParameters:
    """Options of the fit.

    max_iter : Fisher-scoring iterations per pattern (at most).
    tol : stop when the step's Newton decrement ``step^T H step`` falls below this (1e-3: the
        last step moved the parameters by about 3 % of their standard errors).
    """

    max_iter: int = 30
    tol: float = 1e-2

    def __post_init__(self) -> None:
        positive_int("max_iter", self.max_iter)
        positive_float("tol", self.tol)


@dataclasses.dataclass(frozen=True)
class Template:
    """A noise-free template, ready to be sampled.

    image : ``(Qx, Qy)`` the template (any scale, >= 0).
    origin_px : ``(qx, qy)`` the point the deformation acts about (the direct beam), px.
    grid : cubic B-spline coefficients (padded by 4 px) of the template's disks (the template
        less its background): the part that moves with the lattice.
    background : ``(Qx, Qy)`` the diffuse background (a radial profile about the origin, the
        lower envelope of the template, plus 0.1 % of its mean): the part that does not.
    core : ``(Qx, Qy)`` bool, the template pixels holding 99.5 % of its Fisher information on a
        displacement (elsewhere a pattern tells little about the strain).
    reach_px : the fit uses the pattern pixels within this distance of the core, moved by each
        pattern's starting shift.
    """

    image: np.ndarray
    origin_px: tuple[float, float]
    grid: np.ndarray
    background: np.ndarray
    core: np.ndarray
    reach_px: float

    @property
    def pixels(self) -> np.ndarray:
        """Flat indices of the pixels the fit of an unshifted pattern uses."""
        return _pixels(self, np.zeros((1, 2)))

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape  # type: ignore[return-value]


def make_template(image: Any, origin_px: Any, *, reach_px: float = 3.0) -> Template:
    """Prepare ``image`` (a noise-free or averaged pattern, >= 0) as a :class:`Template` whose
    deformation acts about ``origin_px`` ``(qx, qy)`` in pixels; the fit uses the pixels within
    ``reach_px`` of those holding 99.5 % of the template's Fisher information on a displacement
    (computed on the template smoothed by 1 px, less the information its own noise fakes, so
    that the noise of a template averaged from the scan does not spread it over the detector)."""
    from scipy import ndimage

    t = np.asarray(image, dtype=np.float64)
    if t.ndim != 2 or min(t.shape) < 4:
        raise Distill4dError(f"the template must be a 2D pattern of at least 4x4 pixels, got shape {t.shape}")
    if not np.all(np.isfinite(t)):
        raise Distill4dError("the template has NaN or infinite values")
    if t.min() < 0 or t.max() <= 0:
        raise Distill4dError("the template must be >= 0 and not empty (all zero)")
    o = np.asarray(origin_px, dtype=np.float64).reshape(-1)
    if o.size != 2 or not np.all(np.isfinite(o)):
        raise Distill4dError(f"origin_px must be two finite numbers (qx, qy), got {origin_px!r}")
    bg = radial_background(t, o)
    coef = ndimage.spline_filter(np.pad(t - bg, _PAD, mode="edge"), order=3, mode="mirror")
    reach = positive_float("reach_px", reach_px)
    # Fisher information of a pixel on a displacement of the disks: |grad D|^2 / T, weighted by
    # the distance from the origin (strain moves far pixels more); keep the pixels holding 99.5 %
    gx, gy = np.gradient(ndimage.gaussian_filter(t - bg, 1.0))
    qx, qy = np.indices(t.shape, dtype=np.float64)
    r2 = (qx - o[0]) ** 2 + (qy - o[1]) ** 2
    w = 1.0 + r2 / max(r2.max(), 1.0)
    den = t + 1e-3 * t.max()
    info = (gx**2 + gy**2) * w / den
    # less five times the information the template's own noise fakes (_NOISE_INFO times its noise
    # variance per count: the median of its squared 1 px high-pass over the counts; 0 for a
    # noise-free template). Without it a 1e2 e- scan template counted 16k of 16k pixels as
    # informative; with three times, 8k; with five, 5.5k (a noise-free template: 5.3k either way).
    noise = float(np.median((t - ndimage.gaussian_filter(t, 1.0)) ** 2 / den))
    real = np.maximum(info - 5.0 * _NOISE_INFO * noise * w, 0.0)
    info = real if real.sum() > 0 else info
    order = np.argsort(info, axis=None)[::-1]
    cum = np.cumsum(info.reshape(-1)[order])
    core = np.zeros(t.size, dtype=bool)
    core[order[: int(np.searchsorted(cum, 0.995 * cum[-1])) + 1]] = True
    return Template(t, (float(o[0]), float(o[1])), coef, bg + 1e-3 * t.mean(), core.reshape(t.shape), reach)


def _pixels(template: Template, shift_px: np.ndarray) -> np.ndarray:
    """Flat indices of the pattern pixels within ``reach_px`` of the template's core moved by
    any of the shifts ``shift_px`` (n, 2) (a pattern pixel q sees the template at about q + t)."""
    from scipy import ndimage

    core = template.core
    nx, ny = core.shape
    mask = np.zeros_like(core)
    for tx, ty in {(int(a), int(b)) for a, b in np.round(shift_px).astype(int)}:
        tx, ty = int(np.clip(tx, -nx, nx)), int(np.clip(ty, -ny, ny))
        # mask[q] |= core[q + t]
        mask[max(0, -tx) : nx - max(0, tx), max(0, -ty) : ny - max(0, ty)] |= \
            core[max(0, tx) : nx + min(0, tx), max(0, ty) : ny + min(0, ty)]
    r = int(np.ceil(template.reach_px))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return np.flatnonzero(ndimage.binary_dilation(mask, structure=np.hypot(xx, yy) <= template.reach_px))


def radial_background(image: np.ndarray, origin_px: Any, percentile: float = 20.0) -> np.ndarray:
    """The diffuse background of a pattern: at each distance from ``origin_px`` (1 px rings),
    the ``percentile`` of the ring's values, smoothed along the radius and capped by the image."""
    from scipy import ndimage

    qx, qy = np.indices(image.shape, dtype=np.float64)
    r = np.hypot(qx - origin_px[0], qy - origin_px[1])
    ring = np.round(r).astype(np.intp)
    order = np.argsort(ring, axis=None)
    rings = ring.reshape(-1)[order]
    values = image.reshape(-1)[order]
    starts = np.searchsorted(rings, np.arange(rings[-1] + 2))
    profile = np.array([np.percentile(values[a:b], percentile) if b > a else 0.0
                        for a, b in zip(starts[:-1], starts[1:])])
    profile = ndimage.gaussian_filter1d(profile, 2.0, mode="nearest")
    return np.minimum(np.interp(r, np.arange(profile.size), profile), image)


def _bspline_weights(t: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Cubic B-spline weights of the taps at floor - 1 ... floor + 2 and their derivatives."""
    t2, t3, u = t * t, t * t * t, 1.0 - t
    w = [u * u * u / 6.0, (3 * t3 - 6 * t2 + 4) / 6.0, (-3 * t3 + 3 * t2 + 3 * t + 1) / 6.0, t3 / 6.0]
    dw = [-0.5 * u * u, 0.5 * (3 * t2 - 4 * t), 0.5 * (-3 * t2 + 2 * t + 1), 0.5 * t2]
    return w, dw


def _sample(coef: np.ndarray, ux: np.ndarray, uy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cubic B-spline ``coef`` (padded by ``_PAD`` px) at detector coordinates ``ux, uy``:
    ``(3, ...)`` its value and exact x and y derivatives (per px), and the mask of coordinates
    inside the detector. A twice-differentiable interpolant keeps the likelihood smooth, so
    Fisher scoring converges in a few steps and the optimum does not depend on the grid."""
    nx, ny = coef.shape[0] - 2 * _PAD, coef.shape[1] - 2 * _PAD
    inside = (ux >= 0) & (ux <= nx - 1) & (uy >= 0) & (uy <= ny - 1)
    fx = np.clip(ux, -1.0, nx) + _PAD
    fy = np.clip(uy, -1.0, ny) + _PAD
    x0 = np.floor(fx).astype(np.intp)
    y0 = np.floor(fy).astype(np.intp)
    wx, dwx = _bspline_weights(fx - x0)
    wy, dwy = _bspline_weights(fy - y0)
    flat = coef.reshape(-1)
    stride = coef.shape[1]
    base = (x0 - 1) * stride + (y0 - 1)
    value = np.zeros(ux.shape)
    gx = np.zeros(ux.shape)
    gy = np.zeros(ux.shape)
    for i in range(4):
        row_v = np.zeros(ux.shape)
        row_d = np.zeros(ux.shape)
        for j in range(4):
            c = flat[base + (i * stride + j)]
            row_v += wy[j] * c
            row_d += dwy[j] * c
        value += wx[i] * row_v
        gx += dwx[i] * row_v
        gy += wx[i] * row_d
    return np.stack([value, gx, gy]), inside


def _model(template: Template, p: np.ndarray, dx: np.ndarray, dy: np.ndarray, bg: np.ndarray):
    """lam (n, P), its Jacobian (n, 11, P) and the valid-pixel mask (n, P) for parameters p (n, 11);
    ``bg`` (1, P) is the template's background at the same pixels.

    The disks are scaled by ``s + a_xx rx^2 + a_yy ry^2 + a_xy rx ry`` (``r = (u - o) / R``,
    ``R`` half the detector): a strain changes the reflections' intensities with ``|g|`` (the
    envelope), and a template whose intensities could not follow would bias the strain.
    """
    o = template.origin_px
    M00, M01, M10, M11, t0, t1, s, c, axx, ayy, axy = (p[:, i : i + 1] for i in range(_N_PARAMS))
    ux = o[0] + M00 * dx + M01 * dy + t0
    uy = o[1] + M10 * dx + M11 * dy + t1
    (D, Dx, Dy), inside = _sample(template.grid, ux, uy)
    R = 0.5 * max(template.shape)
    rx, ry = (ux - o[0]) / R, (uy - o[1]) / R
    env = s + axx * rx * rx + ayy * ry * ry + axy * rx * ry
    lam = env * D + c * bg
    # d lam / d u: the envelope's gradient too
    gx = env * Dx + D * (2 * axx * rx + axy * ry) / R
    gy = env * Dy + D * (2 * ayy * ry + axy * rx) / R
    # the Jacobian in float32: it only sets the step (the likelihood and its acceptance stay float64)
    f32 = np.float32
    gx, gy, D32, rx, ry = gx.astype(f32), gy.astype(f32), D.astype(f32), rx.astype(f32), ry.astype(f32)
    dx, dy = dx.astype(f32), dy.astype(f32)
    J = np.empty((D.shape[0], _N_PARAMS, D.shape[1]), dtype=f32)
    for i, col in enumerate((gx * dx, gx * dy, gy * dx, gy * dy, gx, gy, D32, np.broadcast_to(bg, D.shape),
                             D32 * rx * rx, D32 * ry * ry, D32 * rx * ry)):
        J[:, i] = col
    return lam, J, inside


def _correlation_shift(k: np.ndarray, template: Template, max_px: float = 8.0) -> np.ndarray:
    """(n, 2) shift ``t`` (px) at which the template's disks best overlap each pattern: the
    peak of their cross-correlation within ``max_px``, refined by a parabola (robust at a few
    hundred electrons, where a centre of mass is off by pixels)."""
    from scipy import ndimage

    disks = np.clip(template.image - template.background, 0.0, None)
    kf = np.fft.rfft2(ndimage.gaussian_filter(k, (0, 1.0, 1.0)))
    cc = np.fft.irfft2(np.conj(kf) * np.fft.rfft2(disks)[None], s=k.shape[1:])  # sum_q k(q) D(q + tau)
    nx, ny = k.shape[1:]
    tx = np.fft.fftfreq(nx, 1.0 / nx)
    ty = np.fft.fftfreq(ny, 1.0 / ny)
    far = np.hypot(tx[:, None], ty[None, :]) > max_px
    cc[:, far] = -np.inf
    flat = cc.reshape(len(k), -1).argmax(axis=1)
    ix, iy = np.unravel_index(flat, (nx, ny))
    out = np.empty((len(k), 2))
    for j, (i0, j0) in enumerate(zip(ix, iy)):
        c = cc[j]
        cx = [c[(i0 - 1) % nx, j0], c[i0, j0], c[(i0 + 1) % nx, j0]]
        cy = [c[i0, (j0 - 1) % ny], c[i0, j0], c[i0, (j0 + 1) % ny]]
        out[j] = (tx[i0] + _vertex(*cx), ty[j0] + _vertex(*cy))
    return out


def _vertex(a: float, b: float, c: float) -> float:
    den = a - 2 * b + c
    return float(np.clip(0.5 * (a - c) / den, -0.5, 0.5)) if np.isfinite(den) and den < 0 else 0.0


def _nll(lam: np.ndarray, k: np.ndarray, w: np.ndarray) -> np.ndarray:
    return np.sum(w * (lam - k * np.log(lam)), axis=1)


def fit_template_batch(batch: np.ndarray, template: Template,
                       params: TemplateFitParameters = TemplateFitParameters()) -> dict[str, np.ndarray]:
    """Fit ``n`` patterns ``batch`` (n, Qx, Qy) of counts to ``template``: the engine's batch function.

    Returns ``M`` (n, 2, 2) = ``F^T``, ``shift_px`` (n, 2), ``scale`` (n,) of the disks and
    ``background`` (n,) of the diffuse background (both relative to the template), ``cov``
    (n, 11, 11) the inverse Fisher information of the parameters (M00, M01, M10, M11, t0, t1,
    scale, background, and the three envelope terms of :func:`_model`; for a pattern of fewer than
    20 counts in all, which is not counts and converges as if it held 1e5, only relative),
    ``iterations`` (n,) and ``ok`` (n,) (False where the pattern is empty or the fit did not converge).
    """
    shape = np.shape(batch)
    if len(shape) != 3 or tuple(shape[1:]) != template.shape:
        raise Distill4dError(f"patterns must be (n, {template.shape[0]}, {template.shape[1]}), got {shape}")
    if shape[0] > _CHUNK:  # the Jacobian is 11 x P floats per pattern: bounded memory, whatever the tile
        parts = [fit_template_batch(batch[i : i + _CHUNK], template, params) for i in range(0, shape[0], _CHUNK)]
        return {key: np.concatenate([q[key] for q in parts]) for key in parts[0]}
    k = np.asarray(batch, dtype=np.float64)
    n = k.shape[0]
    counts = np.nansum(np.clip(k, 0.0, None), axis=(1, 2))
    # the decrement of a pattern that is not counts, as if it held _NOMINAL_COUNTS (see _MIN_COUNTS)
    gain = np.where((counts > 0) & (counts < _MIN_COUNTS), _NOMINAL_COUNTS / np.maximum(counts, 1e-300), 1.0)
    start_shift = _correlation_shift(np.where(np.isfinite(k), k, 0.0), template)
    sel = _pixels(template, start_shift)
    k = k.reshape(n, -1)[:, sel]
    finite = np.isfinite(k)
    k = np.where(finite, np.clip(k, 0.0, None), 0.0)
    qx, qy = np.indices(template.shape, dtype=np.float64)
    dx = (qx.reshape(1, -1)[:, sel] - template.origin_px[0])
    dy = (qy.reshape(1, -1)[:, sel] - template.origin_px[1])
    T0 = template.image.reshape(1, -1)[:, sel]
    bg = template.background.reshape(1, -1)[:, sel]
    total = k.sum(axis=1)
    p = np.zeros((n, _N_PARAMS))
    p[:, 0] = p[:, 3] = 1.0
    # start: the shift of the cross-correlation peak, scales from the totals
    p[:, 4:6] = start_shift
    p[:, 6] = p[:, 7] = total / T0.sum()
    floor = 0.02 * max(float(total.mean()) / k.shape[1], 1e-12)  # counts/pixel: keeps lam > 0 off the disks

    # The pixels that count are fixed before the fit (a mask that moved with the parameters would
    # make the likelihood jump): those whose starting coordinates lie inside the template.
    _, _, keep = _model(template, p, dx, dy, bg)
    weight = (keep & finite).astype(np.float64)

    def evaluate(p, rows=slice(None)):
        lam, J, _ = _model(template, p, dx, dy, bg)
        return np.maximum(lam, floor), J, weight[rows]

    lam, J, w = evaluate(p)
    f = _nll(lam, k, w)
    alpha = np.ones(n)  # the fraction of the Fisher step taken (see below)
    active = total > 0
    iters = np.zeros(n, dtype=np.int64)
    converged = np.zeros(n, dtype=bool)
    eye = np.eye(_N_PARAMS)
    for _ in range(params.max_iter):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        Ji = J[idx] if idx.size < n else J
        H = Ji @ np.swapaxes(Ji * (w[idx] / lam[idx]).astype(np.float32)[:, None, :], 1, 2)
        H = H.astype(np.float64)
        g = (Ji @ (w[idx] * (1.0 - k[idx] / lam[idx])).astype(np.float32)[..., None])[..., 0].astype(np.float64)
        d = np.sqrt(np.maximum(np.einsum("nii->ni", H), 1e-300))
        A = H / (d[:, :, None] * d[:, None, :]) + 1e-6 * eye
        newton = -np.linalg.solve(A, (g / d)[..., None])[..., 0] / d
        # a trust region: at most 2 % strain and 1 px shift per step (the likelihood of a
        # pattern of a few hundred electrons is flat far from the optimum; long steps wander off)
        reach = np.maximum(np.abs(newton[:, :4]).max(axis=1) / 0.02, np.abs(newton[:, 4:6]).max(axis=1) / 1.0)
        newton = newton / np.maximum(reach, 1.0)[:, None]
        # The expected (Fisher) curvature underestimates the observed one of a low-count pattern
        # (measured: by 1.5-2x at 1e3 e-), so a full step overshoots. Each pattern keeps the step
        # fraction alpha that worked last; a step that fails is retried once at the minimum of the
        # parabola through f(0), f'(0) and f(alpha).
        slope = np.einsum("ni,ni->n", g, newton)
        a = alpha[idx]
        trial = p[idx] + a[:, None] * newton
        lam_t, J_t, w_t = evaluate(trial, idx)
        f_t = _nll(lam_t, k[idx], w_t)
        better = np.isfinite(f_t) & (f_t <= f[idx])
        retry = np.flatnonzero(~better)
        if retry.size:
            curv = f_t[retry] - f[idx[retry]] - a[retry] * slope[retry]
            a_new = np.where(np.isfinite(curv) & (curv > 0), -slope[retry] * a[retry] ** 2 / (2 * np.maximum(curv, 1e-300)),
                             0.25 * a[retry])
            a[retry] = np.clip(a_new, 0.1 * a[retry], 0.7 * a[retry])
            trial[retry] = p[idx[retry]] + a[retry, None] * newton[retry]
            lam_r, J_r, w_r = evaluate(trial[retry], idx[retry])
            f_r = _nll(lam_r, k[idx[retry]], w_r)
            lam_t[retry], J_t[retry], w_t[retry], f_t[retry] = lam_r, J_r, w_r, f_r
            better = np.isfinite(f_t) & (f_t <= f[idx])
        acc = idx[better]
        p[acc], lam[acc], J[acc], w[acc], f[acc] = trial[better], lam_t[better], J_t[better], w_t[better], f_t[better]
        # a step that worked at once may grow again; one that failed twice shrinks
        alpha[idx] = np.where(better, np.minimum(1.0, 1.5 * a), 0.25 * a)
        iters[idx] += 1
        # converged when the step is a small fraction of the standard errors (Newton decrement)
        step = a[:, None] * newton
        dec = np.einsum("ni,nij,nj->n", step, H, step) * gain[idx]
        done = (better & (dec < params.tol)) | (alpha[idx] < 1e-3)
        converged[idx[done]] = True
        active[idx[done]] = False
        # a pattern whose disks fit with a scale <= 0 after three steps holds none of the
        # template's disks (vacuum, a hole): a failed fit, not worth the remaining iterations
        # (measured at 1e2 e-: vacuum ran to the limit, 27 iterations, a quarter of the scan)
        active[idx[(iters[idx] >= 3) & (p[idx, 6] <= 0)]] = False
    H = J @ np.swapaxes(J * (w / lam)[:, None, :], 1, 2)
    cov = np.full((n, _N_PARAMS, _N_PARAMS), np.nan)
    good = total > 0
    for i in np.flatnonzero(good):
        try:
            cov[i] = np.linalg.inv(H[i])
        except np.linalg.LinAlgError:
            good[i] = False
    # a deformation of more than 20 % is not a strain the template can describe: a failed fit
    ok = good & converged & np.all(np.isfinite(p), axis=1) & (np.abs(p[:, :4] - [1, 0, 0, 1]).max(axis=1) < 0.2)
    return {
        "M": p[:, :4].reshape(n, 2, 2),
        "shift_px": p[:, 4:6],
        "scale": p[:, 6],
        "background": p[:, 7],
        "cov": cov,
        "iterations": iters,
        "ok": ok,
    }


#: parameters of :func:`fit_shared_deformation` shared by all patterns: M and the disk envelope (a
#: region of one lattice has one), not the shift or the scales (the beam and thickness drift)
SHARED = (0, 1, 2, 3, 8, 9, 10)


def fit_shared_deformation(batch: np.ndarray, template: Template, start: dict[str, np.ndarray],
                           params: TemplateFitParameters = TemplateFitParameters()) -> dict[str, np.ndarray]:
    """One deformation shared by ``m`` patterns ``batch`` (m, Qx, Qy) of counts of one lattice (a
    reference region), each with its own shift and scales: the joint Poisson maximum likelihood, by
    Fisher scoring on the shared parameters (``M`` and the disk envelope, :data:`SHARED`) with each
    pattern's own eliminated (Schur complement), from their fits ``start`` (``M``, ``shift_px``,
    ``scale``, ``background``, ``ok`` of :func:`fit_template_batch`). A fit further from the median
    in an entry of ``M`` than five robust standard deviations of the fits (1.4826 MAD) and five of
    its own standard errors is left out (a defect, another grain).

    Returns ``M`` (2, 2) (= ``F^T``), ``cov`` (4, 4) its inverse Fisher information (entries M00,
    M01, M10, M11), ``iterations`` and ``used`` (m,) bool. The median of per-pattern fits has about
    1.25 times the error of their mean (Gaussian scatter), and both carry any skew of the low-dose
    fits; the joint fit pools the counts first, so its error is that of one fit to all of them.
    """
    shape = np.shape(batch)
    if len(shape) != 3 or tuple(shape[1:]) != template.shape:
        raise Distill4dError(f"patterns must be (m, {template.shape[0]}, {template.shape[1]}), got {shape}")
    used = np.asarray(start["ok"], bool) & np.all(np.isfinite(np.asarray(start["M"]).reshape(shape[0], -1)), axis=1)
    if not used.any():
        raise Distill4dError("no pattern of the reference region was fitted: choose another --reference")
    M0 = np.asarray(start["M"], np.float64).reshape(-1, 4)
    med = np.median(M0[used], axis=0)
    mad = 1.4826 * np.median(np.abs(M0[used] - med), axis=0)
    idx = np.flatnonzero(used)
    k = np.asarray(batch, dtype=np.float64)[idx].reshape(idx.size, -1)
    m = idx.size
    p = np.zeros((m, _N_PARAMS))
    p[:, :4] = med
    p[:, 4:6] = np.asarray(start["shift_px"], np.float64)[idx]
    p[:, 6] = np.asarray(start["scale"], np.float64)[idx]
    p[:, 7] = np.asarray(start["background"], np.float64)[idx]
    sel = _pixels(template, p[:, 4:6])
    k = k[:, sel]
    finite = np.isfinite(k)
    k = np.where(finite, np.clip(k, 0.0, None), 0.0)
    qx, qy = np.indices(template.shape, dtype=np.float64)
    dx = qx.reshape(1, -1)[:, sel] - template.origin_px[0]
    dy = qy.reshape(1, -1)[:, sel] - template.origin_px[1]
    bg = template.background.reshape(1, -1)[:, sel]
    floor = 0.02 * max(float(k.sum(axis=1).mean()) / k.shape[1], 1e-12)
    counts = float(k.sum())
    gain = _NOMINAL_COUNTS * m / counts if 0 < counts < _MIN_COUNTS * m else 1.0
    weight = (_model(template, p, dx, dy, bg)[2] & finite).astype(np.float64)

    def evaluate(q: np.ndarray, curvature: bool):
        f = np.empty(m)
        H = np.empty((m, _N_PARAMS, _N_PARAMS)) if curvature else None
        g = np.empty((m, _N_PARAMS)) if curvature else None
        for a in range(0, m, _CHUNK):
            b = slice(a, min(a + _CHUNK, m))
            lam, J, _ = _model(template, q[b], dx, dy, bg)
            lam = np.maximum(lam, floor)
            f[b] = _nll(lam, k[b], weight[b])
            if curvature:
                H[b] = J @ np.swapaxes(J * (weight[b] / lam).astype(np.float32)[:, None, :], 1, 2)
                g[b] = (J @ (weight[b] * (1.0 - k[b] / lam)).astype(np.float32)[..., None])[..., 0]
        return f, H, g

    sh = np.array(SHARED)  # shared parameters; the rest are each pattern's own
    lo = np.setdiff1d(np.arange(_N_PARAMS), sh)

    def schur(H: np.ndarray, g: np.ndarray):
        Hbb = H[:, lo[:, None], lo]
        Hba = H[:, lo[:, None], sh]
        Hbb = Hbb + 1e-9 * np.eye(lo.size) * np.abs(np.einsum("nii->ni", Hbb)).max()
        X = np.linalg.solve(Hbb, np.concatenate([Hba, g[:, lo, None]], axis=2))
        Hab = np.swapaxes(Hba, 1, 2)
        S = np.sum(H[:, sh[:, None], sh] - Hab @ X[..., :-1], axis=0)
        r = np.sum(g[:, sh] - (Hab @ X[..., -1:])[..., 0], axis=0)
        return S, r, X

    f, H, g = evaluate(p, True)
    # a pattern far from the others (a defect, another grain) is not the reference lattice: left out
    # where its fit is more than 5 robust standard deviations of the region's fits (1.4826 MAD) and
    # 5 of its own standard errors (the MAD of a few patterns can be a third of their scatter)
    se = np.sqrt(np.abs(np.einsum("nii->ni", np.linalg.pinv(H.astype(np.float64)))[:, :4]) / gain)
    keep = np.all(np.abs(M0[idx] - med) <= 5.0 * np.maximum(mad, se), axis=1)
    used[idx[~keep]] = False
    k, weight, p, f, H, g = k[keep], weight[keep], p[keep], f[keep], H[keep], g[keep]
    m = int(keep.sum())
    it = 0
    for it in range(1, params.max_iter + 1):
        S, r, X = schur(H.astype(np.float64), g.astype(np.float64))
        da = -np.linalg.solve(S, r)
        db = -(X[..., -1] + X[..., :-1] @ da)
        step = np.zeros_like(p)
        step[:, sh] = da
        step[:, lo] = db
        # the trust region of fit_template_batch: 2 % strain, 1 px shift per step
        step /= max(1.0, np.abs(step[:, :4]).max() / 0.02, np.abs(step[:, 4:6]).max() / 1.0)
        a = 1.0
        for _ in range(8):
            f_t, H_t, g_t = evaluate(p + a * step, True)
            if np.isfinite(f_t.sum()) and f_t.sum() <= f.sum():
                break
            a *= 0.5
        else:
            break
        p, f, H, g = p + a * step, f_t, H_t, g_t
        dec = float(a * a * da @ S @ da) * gain
        if dec < 0.1 * params.tol:
            break
    S, _, _ = schur(H.astype(np.float64), g.astype(np.float64))
    return {"M": p[0, :4].reshape(2, 2).copy(), "cov": np.linalg.inv(S)[:4, :4], "iterations": np.int64(it), "used": used}


def fit_outputs_to_strain(out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Strain components of fitted ``M`` (``F = M^T``, see :func:`~distill4d.lattice.strain.strain_from_deformation`)
    and their standard errors ``se_eps_xx`` ... ``se_theta`` from the covariance (first order)."""
    from .strain import strain_from_deformation

    F = np.swapaxes(np.asarray(out["M"], dtype=np.float64), -1, -2)
    return {**strain_from_deformation(F), **_standard_errors(out["cov"])}


def _standard_errors(cov: np.ndarray) -> dict[str, np.ndarray]:
    """``se_eps_xx`` ... ``se_theta`` (fractions, radians) from the covariance of the parameters
    (first order: F00 = M00, F11 = M11, F01 = M10, F10 = M01, so eps_xy = (M01 + M10)/2 and
    theta ~ (M01 - M10)/2)."""
    C = np.asarray(cov, dtype=np.float64)
    return {"se_eps_xx": np.sqrt(C[..., 0, 0]), "se_eps_yy": np.sqrt(C[..., 3, 3]),
            "se_eps_xy": 0.5 * np.sqrt(np.maximum(C[..., 1, 1] + C[..., 2, 2] + 2 * C[..., 1, 2], 0.0)),
            "se_theta": 0.5 * np.sqrt(np.maximum(C[..., 1, 1] + C[..., 2, 2] - 2 * C[..., 1, 2], 0.0))}


def aligned_mean(patterns: np.ndarray, out: dict[str, np.ndarray], template: Template) -> np.ndarray:
    """The mean of ``patterns`` (m, Qx, Qy) mapped into ``template``'s frame by their fits ``out``
    (of :func:`fit_template_batch`), each divided by its fitted disk scale; pixels that no
    pattern reaches keep the template's value."""
    from scipy import ndimage

    o = template.origin_px
    qx, qy = np.indices(template.shape, dtype=np.float64)
    acc = np.zeros(template.shape)
    cnt = np.zeros(template.shape)
    for i in np.flatnonzero(out["ok"]):
        Minv = np.linalg.inv(out["M"][i])
        ux = qx - o[0] - out["shift_px"][i, 0]
        uy = qy - o[1] - out["shift_px"][i, 1]
        sx = o[0] + Minv[0, 0] * ux + Minv[0, 1] * uy
        sy = o[1] + Minv[1, 0] * ux + Minv[1, 1] * uy
        img = ndimage.map_coordinates(np.asarray(patterns[i], np.float64), [sx, sy], order=1, cval=np.nan)
        good = np.isfinite(img)
        acc[good] += img[good] / out["scale"][i]
        cnt[good] += 1
    scale = np.median(out["scale"][out["ok"]]) if out["ok"].any() else 1.0
    return np.where(cnt > 0, scale * acc / np.maximum(cnt, 1), template.image)


def smooth_fits(out: dict[str, np.ndarray], positions: np.ndarray, scan_shape: tuple[int, int],
                prior: Any = "gaussian 1") -> dict[str, np.ndarray]:
    """``out`` (of :func:`fit_template_batch`, for the patterns at scan ``positions`` (n, 2))
    with its ``M`` and ``shift_px`` replaced by their maps under a spatial ``prior`` over the
    fitted (``ok``) positions (:func:`~distill4d.lattice.priors.parse_prior`): ``gaussian SIGMA``
    a Gaussian average of the neighbours' fits (``SIGMA`` in scan positions; a position without
    fitted neighbours keeps its own fit), ``tv LAMBDA`` total-variation denoising weighted by
    the fits' standard errors (``LAMBDA`` in units of their median), ``none`` unchanged.
    Strain varies slowly compared with the noise of one low-dose fit, so the prior's map aligns
    each pattern better than its own fit."""
    from scipy import ndimage

    from .priors import parse_prior, tv_weighted

    name, value = parse_prior(prior)
    ok = np.asarray(out["ok"], bool)
    pos = np.asarray(positions, dtype=np.intp).reshape(-1, 2)
    if pos.shape[0] != ok.size:
        raise Distill4dError(f"positions must be ({ok.size}, 2), one per fit, got shape {np.shape(positions)}")
    if name == "none":
        return dict(out)
    vals = np.concatenate([np.asarray(out["M"], np.float64).reshape(-1, 4),
                           np.asarray(out["shift_px"], np.float64).reshape(-1, 2)], axis=1)
    good = ok & np.all(np.isfinite(vals), axis=1)
    if name == "gaussian":
        num = np.zeros((*scan_shape, 6))
        den = np.zeros(scan_shape)
        num[pos[good, 0], pos[good, 1]] = vals[good]
        den[pos[good, 0], pos[good, 1]] = 1.0
        num = ndimage.gaussian_filter(num, (value, value, 0), mode="nearest", truncate=3.0)
        den = ndimage.gaussian_filter(den, value, mode="nearest", truncate=3.0)
        d = den[pos[:, 0], pos[:, 1]]
        new = num[pos[:, 0], pos[:, 1]] / np.maximum(d, 1e-300)[:, None]
        good &= d > 1e-9
    else:
        cov = np.asarray(out["cov"], np.float64)
        se = np.sqrt(np.abs(np.einsum("nii->ni", cov)[:, :6]))
        new = vals.copy()
        for j in range(6):
            f = np.full(scan_shape, np.nan)
            e = np.full(scan_shape, np.nan)
            use = good & np.isfinite(se[:, j]) & (se[:, j] > 0)
            f[pos[use, 0], pos[use, 1]] = vals[use, j]
            e[pos[use, 0], pos[use, 1]] = se[use, j]
            x, _ = tv_weighted(f, e, value)
            if x is not None:
                new[:, j] = x[pos[:, 0], pos[:, 1]]
    vals = np.where(good[:, None], new, vals)
    return {**out, "M": vals[:, :4].reshape(-1, 2, 2), "shift_px": vals[:, 4:]}


def build_template(datacube: Any, region: tuple[slice, slice], origin_px: Any = None, *, sample: int = 1024,
                   passes: int = 2, smooth_px: float = 0.5, align_prior: Any = "tv 1",
                   params: TemplateFitParameters = TemplateFitParameters(),
                   **engine_options: Any) -> tuple[np.ndarray, tuple, dict]:
    """A low-noise template from the scan itself: the reference region's mean, then ``passes``
    times the mean of up to ``sample`` patterns (at most 256 MB of them; the region's and others
    spread over the scan)
    aligned to it by their fits; each smoothed by ``smooth_px`` (Gaussian sigma, px). The sample
    is read through the engine (``scheduler``, ``n_workers`` of ``engine_options``).
    ``align_prior`` (``none``, ``gaussian SIGMA`` or ``tv LAMBDA``, see :func:`smooth_fits`):
    each pattern is aligned by the map of the fits under this spatial prior, not by its own
    noisy fit, whose errors (about 0.2 px at the outer disks at 1e3 e-) blur the template.

    Returns the template, its origin ``(qx, qy)`` (px) and a description for the provenance.
    A mean of a few dozen low-dose patterns is too noisy to fit against (its pixel-to-pixel
    noise has steep gradients that a fit takes for structure); aligning many patterns lowers it.
    """
    from scipy import ndimage

    from ..bragg.mean import finite_mean_pattern
    from ..engine import read_patterns
    from ..imaging.origin import find_bf_disk

    rx, ry = datacube.scan_shape
    qx, qy = datacube.pattern_shape
    from .priors import parse_prior

    prior = parse_prior(align_prior)
    n_max = min(positive_int("sample", sample), max(16, (256 << 20) // (4 * qx * qy)))  # at most 256 MB in memory
    ref_idx = np.ravel_multi_index(np.indices((rx, ry))[:, region[0], region[1]].reshape(2, -1), (rx, ry))
    ref_idx = ref_idx[np.linspace(0, ref_idx.size - 1, min(ref_idx.size, n_max)).round().astype(int)]
    rest = np.setdiff1d(np.arange(rx * ry), ref_idx)
    k = min(rest.size, n_max - ref_idx.size)
    others = rest[np.linspace(0, rest.size - 1, k).round().astype(int)] if k > 0 else rest[:0]
    idx = np.concatenate([ref_idx, others])
    read = {k: engine_options[k] for k in ("scheduler", "n_workers") if k in engine_options}
    pats = read_patterns(datacube, np.stack(np.unravel_index(idx, (rx, ry)), axis=1), **read).astype(np.float32)
    finite = np.all(np.isfinite(pats), axis=(1, 2))
    if not finite[: ref_idx.size].any():
        raise Distill4dError("every pattern of the reference region holds NaN or Inf: choose another --reference")
    # inline: a sum in a fixed order, so that the template (its hash keys the checkpoint) is the same every run
    t = finite_mean_pattern(datacube[region], scheduler="inline", progress=False)
    t = ndimage.gaussian_filter(t, smooth_px) if smooth_px > 0 else t
    if origin_px is None:
        cx, cy, _ = find_bf_disk(t)
        origin_px = (cx, cy)
    # aligning needs a fraction of a pixel, not the final precision: at most 10 steps, stopping at
    # 0.3 standard errors (measured at 1e3 e-: the same strain errors, 0.6x the time)
    align = dataclasses.replace(params, max_iter=min(params.max_iter, 10), tol=max(params.tol, 0.1))
    n_ref = int(finite[: ref_idx.size].sum())
    pats = pats[finite]
    positions = np.stack(np.unravel_index(idx[finite], (rx, ry)), axis=1)
    used = n_ref
    for _ in range(passes):
        tmpl = make_template(np.clip(t, 0.0, None), origin_px)
        out = fit_template_batch(pats, tmpl, align)
        # only patterns like the reference's (vacuum or another phase would blur the template):
        # fitted, with a disk scale within a factor 2 of the reference region's median
        s_ref = np.median(out["scale"][:n_ref][out["ok"][:n_ref]]) if out["ok"][:n_ref].any() else np.nan
        like = out["ok"] & (out["scale"] > 0.5 * s_ref) & (out["scale"] < 2.0 * s_ref)
        used = int(like.sum())
        out = {**out, "ok": like}
        out = smooth_fits(out, positions, (rx, ry), prior)
        t = aligned_mean(pats, out, tmpl)
        t = ndimage.gaussian_filter(t, smooth_px) if smooth_px > 0 else t
    desc = {"template": f"mean of {used} patterns aligned to the reference region's ({n_ref} patterns), "
            f"{passes} passes" + (f", aligned by the fits under the prior '{prior[0]} {prior[1]:g}'"
                                    if prior[0] != "none" else "")}
    return np.clip(t, 0.0, None), (float(origin_px[0]), float(origin_px[1])), desc


def _fit_task(batch: np.ndarray, template: Template, params: TemplateFitParameters) -> dict[str, np.ndarray]:
    out = fit_template_batch(batch, template, params)
    return {**_standard_errors(out["cov"]), "M": out["M"], "shift_px": out["shift_px"],
            "scale": out["scale"], "background": out["background"], "ok": out["ok"].astype(np.uint8)}


_SE_KEYS = ("se_eps_xx", "se_eps_yy", "se_eps_xy", "se_theta")


@dataclasses.dataclass
class TemplateStrain:
    """What :func:`strain_map_template` gives: the :class:`~distill4d.lattice.strain.StrainMap`
    (relative to the template) and per position ``standard_error`` (component → (Rx, Ry), from
    the Fisher information; fractions, ``theta`` in radians), ``shift_px`` (Rx, Ry, 2),
    ``scale`` and ``background`` (counts per pixel)."""

    strain: Any
    standard_error: dict[str, np.ndarray]
    shift_px: np.ndarray
    scale: np.ndarray
    background: np.ndarray


def strain_map_template(
    datacube: Any,
    reference: Any,
    *,
    template: Any = None,
    origin_px: Any = None,
    smooth_px: float = 0.5,
    params: TemplateFitParameters = TemplateFitParameters(),
    **engine_options: Any,
) -> TemplateStrain:
    """Strain at every position by Poisson maximum likelihood against a template (see module doc).

    Parameters
    ----------
    datacube : a DataCube of counts (electrons per pixel; other units make the standard errors wrong).
    reference : region ``(slice, slice)`` of the scan whose mean pattern is the template; the
        strain is relative to one deformation fitted jointly to its patterns
        (:func:`fit_shared_deformation`). Checked before any pattern is read.
    template : a noise-free pattern (Qx, Qy) to use instead of the reference's mean.
    origin_px : the direct beam ``(qx, qy)`` in pixels (default: the bright-field disk of the template).
    smooth_px : Gaussian sigma (px) applied to the template built from the scan (see
        :func:`build_template`): its shot noise has steep pixel-to-pixel gradients that a fit
        would take for structure, while a wide blur changes the disk edges (read as strain).
    params : :class:`TemplateFitParameters`.
    **engine_options : ``scheduler``, ``n_workers``, ``memory_budget``, ``checkpoint``, ``progress``
        of :func:`~distill4d.engine.map_patterns`.
    """
    from ..engine import map_patterns, read_patterns
    from ..imaging.origin import find_bf_disk
    from ..results import Provenance
    from .strain import StrainMap, reference_region, strain_from_deformation

    region = reference_region(reference, datacube.scan_shape)
    sigma = nonnegative_float("smooth_px", smooth_px)
    if template is None:
        timg, origin_px, built = build_template(datacube, region, origin_px, smooth_px=sigma, params=params,
                                                **engine_options)
    else:
        timg = np.asarray(template, dtype=np.float64)
        if timg.shape != tuple(datacube.pattern_shape):
            raise Distill4dError(f"template has shape {timg.shape}, the patterns {tuple(datacube.pattern_shape)}")
        if origin_px is None:
            cx, cy, _ = find_bf_disk(timg)
            origin_px = (cx, cy)
        built = {"template": "given"}
    tmpl = make_template(timg, origin_px)
    job = f"template:{params}:{hashlib.sha1(timg.tobytes()).hexdigest()}:{origin_px}"
    out = map_patterns(datacube, functools.partial(_fit_task, template=tmpl, params=params),
                       job_key=job, desc="template fit", **engine_options)
    ok = out["ok"].astype(bool) & np.all(np.isfinite(out["M"]), axis=(-2, -1))
    F = np.swapaxes(out["M"], -1, -2)
    # strain relative to the reference region: F_rel = F F_ref^-1 with F_ref its median
    in_ref = np.zeros(ok.shape, bool)
    in_ref[region] = True
    if not (ok & in_ref).any():
        raise Distill4dError("no pattern of the reference region could be fitted to the template: choose another "
                             "--reference (a region of the crystal, not vacuum)")
    # a position whose disks are much fainter or brighter than the reference's (vacuum, a hole,
    # another phase) is not this crystal: invalid rather than a number
    s_ref = np.median(out["scale"][ok & in_ref])
    ok &= (out["scale"] > 0.5 * s_ref) & (out["scale"] < 2.0 * s_ref)
    # the reference: one deformation fitted jointly to the region's patterns (up to 1024 of them,
    # 256 MB), not the median of their noisy fits (at 1e3 e- on the low-dose benchmark, six noise
    # seeds: the eps_xx bias it leaves is 0.060 % RMS with the median of 144 fits, 0.043 % jointly)
    ref_pos = np.argwhere(ok & in_ref)
    n_max = min(1024, max(16, (256 << 20) // (4 * int(np.prod(datacube.pattern_shape)))))
    ref_pos = ref_pos[np.linspace(0, len(ref_pos) - 1, min(len(ref_pos), n_max)).round().astype(int)]
    read = {k: engine_options[k] for k in ("scheduler", "n_workers") if k in engine_options}
    at = tuple(ref_pos.T)
    joint = fit_shared_deformation(
        read_patterns(datacube, ref_pos, **read), tmpl,
        {"M": out["M"][at], "shift_px": out["shift_px"][at], "scale": out["scale"][at],
         "background": out["background"][at], "ok": np.ones(len(ref_pos), bool)}, params)
    F_ref = joint["M"].T
    ref_se = {k[3:]: float(v) for k, v in _standard_errors(joint["cov"]).items()}
    F_rel = F @ np.linalg.inv(F_ref)
    comps = {k: np.where(ok, v, np.nan) for k, v in strain_from_deformation(F_rel).items()}
    se = {k[3:]: np.where(ok, out[k], np.nan) for k in _SE_KEYS}
    prov = Provenance("strain_map_template", {
        "reference": [[region[0].start, region[0].stop], [region[1].start, region[1].stop]],
        **built, "smooth_px": sigma, "reference_deformation": F_ref,
        "reference_fit": f"one deformation fitted jointly to {int(joint['used'].sum())} patterns of the region",
        "reference_standard_error": ref_se,
        "origin_px": [float(origin_px[0]), float(origin_px[1])], **dataclasses.asdict(params),
        "pixels_used": int(tmpl.pixels.size)})
    smap = StrainMap(**comps, mask=~ok, reference=F_ref, calibration=datacube.calibration, provenance=prov)
    return TemplateStrain(smap, se, out["shift_px"], out["scale"], out["background"])
