"""Per-pattern strain by Poisson maximum likelihood against a noise-free template.

Every pattern ``k`` (counts) is modelled as ``lam(q) = s T(o + M (q - o) + t) + b``: the
template ``T`` (the reference state's pattern at detector resolution) seen through the
reciprocal-space map ``M = F^T`` of the real-space deformation ``F`` (Bragg vectors go as
``g = F^-T g0``), a shift ``t`` (px), an intensity scale ``s`` and a flat background ``b``.
The eight parameters are fitted per pattern by Fisher scoring with Levenberg-Marquardt
damping on the Poisson negative log-likelihood ``sum(lam - k log lam)``, with analytic
derivatives, all patterns of a batch at once (NumPy). Every detector pixel counts: no
spot-finding, no prepared grid, so the estimate approaches the Cramér–Rao bound of
:mod:`distill4d.lattice.precision`. The inverse Fisher information at the solution gives each
position's standard error.

The template is sampled by bilinear interpolation of a cubic-spline upsampling (``UPSAMPLE``
times) of ``T``, with the interpolant's exact derivatives, so interpolation errors stay well
below the shot noise of a pattern and the optimum is that of the likelihood.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any

import numpy as np

from .._validate import positive_float, positive_int
from ..errors import Distill4dError

__all__ = ["TemplateFitParameters", "Template", "TemplateStrain", "fit_template_batch", "make_template",
           "fit_outputs_to_strain", "strain_map_template"]

UPSAMPLE = 8
_N_PARAMS = 8  # M00, M01, M10, M11, t0, t1, s, b


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
    grid : ``(UPSAMPLE*Qx, UPSAMPLE*Qy)`` the template upsampled by a cubic spline.
    pixels : flat indices of the detector pixels the fit uses: those near the places where the
        template changes (elsewhere a pattern tells little about the strain).
    """

    image: np.ndarray
    origin_px: tuple[float, float]
    grid: np.ndarray
    pixels: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape  # type: ignore[return-value]


def make_template(image: Any, origin_px: Any, *, reach_px: float = 4.0) -> Template:
    """Prepare ``image`` (a noise-free or averaged pattern, >= 0) as a :class:`Template` whose
    deformation acts about ``origin_px`` ``(qx, qy)`` in pixels; the fit uses the pixels within
    ``reach_px`` of those holding 99.5 % of the template's Fisher information on a displacement."""
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
    up = UPSAMPLE
    coords = np.meshgrid(np.arange(up * t.shape[0]) / up, np.arange(up * t.shape[1]) / up, indexing="ij")
    fine = ndimage.map_coordinates(t, coords, order=3, mode="nearest")
    reach = positive_float("reach_px", reach_px)
    # Fisher information of a pixel on a displacement: |grad T|^2 / T, weighted by the distance
    # from the origin (strain moves far pixels more); keep the pixels holding 99.5 % of it
    gx, gy = np.gradient(t)
    qx, qy = np.indices(t.shape, dtype=np.float64)
    r2 = (qx - o[0]) ** 2 + (qy - o[1]) ** 2
    info = (gx**2 + gy**2) * (1.0 + r2 / max(r2.max(), 1.0)) / (t + 1e-3 * t.max())
    order = np.argsort(info, axis=None)[::-1]
    cum = np.cumsum(info.reshape(-1)[order])
    core = np.zeros(t.size, dtype=bool)
    core[order[: int(np.searchsorted(cum, 0.995 * cum[-1])) + 1]] = True
    r = int(np.ceil(reach))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    near = ndimage.binary_dilation(core.reshape(t.shape), structure=np.hypot(xx, yy) <= reach)
    return Template(t, (float(o[0]), float(o[1])), np.clip(fine, 0.0, None), np.flatnonzero(near))


def _sample(grid: np.ndarray, ux: np.ndarray, uy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear samples of the upsampled template ``grid`` at detector coordinates ``ux, uy``:
    ``(3, ...)`` the value and its exact x and y derivatives (per detector pixel), and the mask
    of coordinates inside the grid. Exact derivatives of the interpolant keep the fit's gradient
    consistent with its likelihood, so the optimum does not depend on how the gradient is taken."""
    up = UPSAMPLE
    nx, ny = grid.shape
    fx, fy = ux * up, uy * up
    inside = (fx >= 0) & (fx <= nx - 1) & (fy >= 0) & (fy <= ny - 1)
    fx = np.clip(fx, 0, nx - 1.000001)
    fy = np.clip(fy, 0, ny - 1.000001)
    x0 = np.floor(fx).astype(np.intp)
    y0 = np.floor(fy).astype(np.intp)
    wx, wy = fx - x0, fy - y0
    flat = grid.reshape(-1)
    i00 = x0 * ny + y0
    a, b, c, d = flat[i00], flat[i00 + ny], flat[i00 + 1], flat[i00 + ny + 1]  # (x0,y0) (x1,y0) (x0,y1) (x1,y1)
    value = a + (b - a) * wx + (c - a) * wy + (a - b - c + d) * (wx * wy)
    gx = ((b - a) + (a - b - c + d) * wy) * up
    gy = ((c - a) + (a - b - c + d) * wx) * up
    return np.stack([value, gx, gy]), inside


def _model(template: Template, p: np.ndarray, dx: np.ndarray, dy: np.ndarray):
    """lam (n, P), its Jacobian (n, 8, P) and the valid-pixel mask (n, P) for parameters p (n, 8)."""
    o = template.origin_px
    M00, M01, M10, M11, t0, t1, s, b = (p[:, i : i + 1] for i in range(_N_PARAMS))
    ux = o[0] + M00 * dx + M01 * dy + t0
    uy = o[1] + M10 * dx + M11 * dy + t1
    (T, Tx, Ty), inside = _sample(template.grid, ux, uy)
    lam = s * T + b
    sx, sy = s * Tx, s * Ty
    J = np.stack([sx * dx, sx * dy, sy * dx, sy * dy, sx, sy, T, np.ones_like(T)], axis=1)  # (n, 8, P)
    return lam, J, inside


def _nll(lam: np.ndarray, k: np.ndarray, w: np.ndarray) -> np.ndarray:
    return np.sum(w * (lam - k * np.log(lam)), axis=1)


def fit_template_batch(batch: np.ndarray, template: Template,
                       params: TemplateFitParameters = TemplateFitParameters()) -> dict[str, np.ndarray]:
    """Fit ``n`` patterns ``batch`` (n, Qx, Qy) of counts to ``template``: the engine's batch function.

    Returns ``M`` (n, 2, 2) = ``F^T``, ``shift_px`` (n, 2), ``scale`` (n,), ``background`` (n,)
    (counts per pixel), ``cov`` (n, 8, 8) the inverse Fisher information of the parameters
    (M00, M01, M10, M11, t0, t1, s, b), ``iterations`` (n,) and ``ok`` (n,) (False where the
    pattern is empty or the fit did not converge).
    """
    k = np.asarray(batch, dtype=np.float64)
    if k.ndim != 3 or k.shape[1:] != template.shape:
        raise Distill4dError(f"patterns must be (n, {template.shape[0]}, {template.shape[1]}), got {k.shape}")
    n = k.shape[0]
    sel = template.pixels
    k = k.reshape(n, -1)[:, sel]
    finite = np.isfinite(k)
    k = np.where(finite, np.clip(k, 0.0, None), 0.0)
    qx, qy = np.indices(template.shape, dtype=np.float64)
    dx = (qx.reshape(1, -1)[:, sel] - template.origin_px[0])
    dy = (qy.reshape(1, -1)[:, sel] - template.origin_px[1])
    T0 = template.image.reshape(1, -1)[:, sel]
    total = k.sum(axis=1)
    p = np.zeros((n, _N_PARAMS))
    p[:, 0] = p[:, 3] = 1.0
    # start: shift from the centres of mass, scale from the totals
    tk = np.where(total > 0, total, 1.0)
    p[:, 4] = (T0 * dx).sum() / T0.sum() - (k * dx).sum(axis=1) / tk
    p[:, 5] = (T0 * dy).sum() / T0.sum() - (k * dy).sum(axis=1) / tk
    p[:, 6] = total / T0.sum()
    floor = 0.02 * max(float(total.mean()) / k.shape[1], 1e-12)  # counts/pixel: keeps lam > 0 off the disks

    # The pixels that count are fixed before the fit (a mask that moved with the parameters would
    # make the likelihood jump): those whose starting coordinates lie inside the template with a
    # margin for the deformation (3 % of the distance from the origin) and shift (3 px).
    _, _, inside0 = _model(template, p, dx, dy)
    ux0 = template.origin_px[0] + dx + p[:, 4:5]
    uy0 = template.origin_px[1] + dy + p[:, 5:6]
    margin = 3.0 + 0.03 * np.hypot(dx, dy)
    nx, ny = template.shape
    keep = inside0 & (ux0 >= margin) & (ux0 <= nx - 1 - margin) & (uy0 >= margin) & (uy0 <= ny - 1 - margin)
    weight = (keep & finite).astype(np.float64)

    def evaluate(p, rows=slice(None)):
        lam, J, _ = _model(template, p, dx, dy)
        return np.maximum(lam, floor), J, weight[rows]

    lam, J, w = evaluate(p)
    f = _nll(lam, k, w)
    mu = np.full(n, 1e-6)
    active = total > 0
    iters = np.zeros(n, dtype=np.int64)
    converged = np.zeros(n, dtype=bool)
    eye = np.eye(_N_PARAMS)
    for _ in range(params.max_iter):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        Ji = J[idx]
        H = Ji @ np.swapaxes(Ji * (w[idx] / lam[idx])[:, None, :], 1, 2)
        g = (Ji @ (w[idx] * (1.0 - k[idx] / lam[idx]))[..., None])[..., 0]
        d = np.sqrt(np.maximum(np.einsum("nii->ni", H), 1e-300))
        A = H / (d[:, :, None] * d[:, None, :]) + mu[idx, None, None] * eye  # scaled LM
        try:
            step = -np.linalg.solve(A, (g / d)[..., None])[..., 0] / d
        except np.linalg.LinAlgError:
            step = -np.linalg.lstsq(A[0], (g / d)[0], rcond=None)[0][None] / d  # pragma: no cover
        trial = p[idx] + step
        lam_t, J_t, w_t = evaluate(trial, idx)
        f_t = _nll(lam_t, k[idx], w_t)
        better = np.isfinite(f_t) & (f_t <= f[idx])
        acc = idx[better]
        p[acc], lam[acc], J[acc], w[acc], f[acc] = trial[better], lam_t[better], J_t[better], w_t[better], f_t[better]
        mu[acc] = np.maximum(mu[acc] / 10.0, 1e-9)
        mu[idx[~better]] *= 10.0
        iters[idx] += 1
        # converged when the step is a small fraction of the standard errors (Newton decrement)
        dec = np.einsum("ni,nij,nj->n", step, H, step)
        done = (better & (dec < params.tol)) | (mu[idx] > 1e8)
        converged[idx[done]] = True
        active[idx[done]] = False
    H = J @ np.swapaxes(J * (w / lam)[:, None, :], 1, 2)
    cov = np.full((n, _N_PARAMS, _N_PARAMS), np.nan)
    good = total > 0
    for i in np.flatnonzero(good):
        try:
            cov[i] = np.linalg.inv(H[i])
        except np.linalg.LinAlgError:
            good[i] = False
    ok = good & converged & np.all(np.isfinite(p), axis=1)
    return {
        "M": p[:, :4].reshape(n, 2, 2),
        "shift_px": p[:, 4:6],
        "scale": p[:, 6],
        "background": p[:, 7],
        "cov": cov,
        "iterations": iters,
        "ok": ok,
    }


def fit_outputs_to_strain(out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Strain components of fitted ``M`` (``F = M^T``, see :func:`~distill4d.lattice.strain.strain_from_deformation`)
    and their standard errors ``se_eps_xx`` ... ``se_theta`` from the covariance (first order)."""
    from .strain import strain_from_deformation

    M = np.asarray(out["M"], dtype=np.float64)
    F = np.swapaxes(M, -1, -2)
    s = strain_from_deformation(F)
    C = np.asarray(out["cov"], dtype=np.float64)
    # F00 = M00, F11 = M11, F01 = M10, F10 = M01: eps_xy = (M01 + M10)/2, theta ~ (M01 - M10)/2
    s["se_eps_xx"] = np.sqrt(C[..., 0, 0])
    s["se_eps_yy"] = np.sqrt(C[..., 3, 3])
    s["se_eps_xy"] = 0.5 * np.sqrt(np.maximum(C[..., 1, 1] + C[..., 2, 2] + 2 * C[..., 1, 2], 0.0))
    s["se_theta"] = 0.5 * np.sqrt(np.maximum(C[..., 1, 1] + C[..., 2, 2] - 2 * C[..., 1, 2], 0.0))
    return s


def _fit_task(batch: np.ndarray, template: Template, params: TemplateFitParameters) -> dict[str, np.ndarray]:
    out = fit_template_batch(batch, template, params)
    s = fit_outputs_to_strain(out)
    return {**{k: s[k] for k in _STRAIN_KEYS}, "shift_px": out["shift_px"], "scale": out["scale"],
            "background": out["background"], "ok": out["ok"].astype(np.uint8)}


_STRAIN_KEYS = ("eps_xx", "eps_yy", "eps_xy", "theta", "se_eps_xx", "se_eps_yy", "se_eps_xy", "se_theta")


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
    params: TemplateFitParameters = TemplateFitParameters(),
    **engine_options: Any,
) -> TemplateStrain:
    """Strain at every position by Poisson maximum likelihood against a template (see module doc).

    Parameters
    ----------
    datacube : a DataCube of counts (electrons per pixel; other units make the standard errors wrong).
    reference : region ``(slice, slice)`` of the scan whose mean pattern is the template (the
        strain is relative to it); checked before any pattern is read.
    template : a noise-free pattern (Qx, Qy) to use instead of the reference's mean.
    origin_px : the direct beam ``(qx, qy)`` in pixels (default: the bright-field disk of the template).
    params : :class:`TemplateFitParameters`.
    **engine_options : ``scheduler``, ``n_workers``, ``memory_budget``, ``checkpoint``, ``progress``
        of :func:`~distill4d.engine.map_patterns`.
    """
    from ..engine import map_patterns
    from ..imaging.origin import find_bf_disk
    from ..results import Provenance
    from .strain import StrainMap, reference_region

    region = reference_region(reference, datacube.scan_shape)
    if template is None:
        from ..bragg.mean import finite_mean_pattern

        timg = finite_mean_pattern(datacube[region], scheduler="inline", progress=False)
    else:
        timg = np.asarray(template, dtype=np.float64)
        if timg.shape != tuple(datacube.pattern_shape):
            raise Distill4dError(f"template has shape {timg.shape}, the patterns {tuple(datacube.pattern_shape)}")
    if origin_px is None:
        cx, cy, _ = find_bf_disk(timg)
        origin_px = (cx, cy)
    tmpl = make_template(timg, origin_px)
    job = f"template:{params}:{hashlib.sha1(timg.tobytes()).hexdigest()}:{origin_px}"
    out = map_patterns(datacube, functools.partial(_fit_task, template=tmpl, params=params),
                       job_key=job, desc="template fit", **engine_options)
    ok = out["ok"].astype(bool) & np.all([np.isfinite(out[k]) for k in _STRAIN_KEYS[:4]], axis=0)
    comps = {k: np.where(ok, out[k], np.nan) for k in _STRAIN_KEYS[:4]}
    se = {k[3:]: np.where(ok, out[k], np.nan) for k in _STRAIN_KEYS[4:]}
    prov = Provenance("strain_map_template", {
        "reference": [[region[0].start, region[0].stop], [region[1].start, region[1].stop]],
        "template": "given" if template is not None else "mean of the reference region",
        "origin_px": [float(origin_px[0]), float(origin_px[1])], **dataclasses.asdict(params),
        "pixels_used": int(tmpl.pixels.size), "upsample": UPSAMPLE})
    smap = StrainMap(**comps, mask=~ok, reference=np.eye(2), calibration=datacube.calibration, provenance=prov)
    return TemplateStrain(smap, se, out["shift_px"], out["scale"], out["background"])
