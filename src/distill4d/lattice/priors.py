"""Spatial priors on strain maps: strain is piecewise smooth, so neighbouring positions inform
each other.

Two priors, for every strain method alike (so comparisons are like for like):

- ``gaussian SIGMA``: each component averaged over a Gaussian of ``SIGMA`` scan positions
  (:meth:`~distill4d.lattice.strain.StrainMap.smoothed`). Lowers the noise by about
  ``1 / (2 sqrt(pi) SIGMA)`` and widens every edge by about ``2.56 SIGMA`` (10-90 %).
- ``tv LAMBDA``: total-variation denoising, edge-preserving. Each component ``f`` is replaced
  by the ``x`` that minimises ``sum_i w_i (x_i - f_i)^2 / 2 + LAMBDA s sum_i |grad x|_i``: the
  Gaussian approximation of every position's likelihood (weights ``w_i = (s / se_i)^2`` from
  the per-position standard errors ``se_i`` where a method gives them, else 1) plus an
  isotropic TV penalty. ``s`` is the median standard error (or, without standard errors, the
  noise of the map estimated from neighbour differences), so ``LAMBDA`` is in units of the
  per-position noise and means the same for every method; 0.5-2 is the useful range. With
  standard errors this is the maximum a posteriori strain field under a TV prior, the joint
  fit of all positions. Solved by the Chambolle-Pock primal-dual algorithm.

Positions that are masked or NaN do not count and stay NaN.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ..errors import Distill4dError

__all__ = ["PRIORS", "parse_prior", "tv_denoise", "tv_weighted", "noise_level", "apply_prior"]

PRIORS = ("none", "gaussian", "tv")
_COMPONENTS = ("eps_xx", "eps_yy", "eps_xy", "theta")


def parse_prior(text: Any) -> tuple[str, float]:
    """``"none"``, ``"gaussian SIGMA"`` or ``"tv LAMBDA"`` (also a ``(name, value)`` pair) as
    ``(name, value)``; a clear error for anything else."""
    if text is None:
        return ("none", 0.0)
    if isinstance(text, (tuple, list)):
        parts = [str(p) for p in text]
        if len(parts) == 2 and parts[0].lower() == "none" and parts[1] in ("0", "0.0"):
            parts = parts[:1]  # a parsed ("none", 0.0) given back
    else:
        parts = str(text).replace("=", " ").replace(":", " ").split()
    if not parts or parts[0].lower() not in PRIORS:
        raise Distill4dError(f"prior must be 'none', 'gaussian SIGMA' or 'tv LAMBDA', got {text!r}")
    name = parts[0].lower()
    if name == "none":
        if len(parts) > 1:
            raise Distill4dError(f"prior 'none' takes no value, got {text!r}")
        return ("none", 0.0)
    if len(parts) != 2:
        raise Distill4dError(f"prior '{name}' needs one value ({'SIGMA in scan positions' if name == 'gaussian' else 'LAMBDA'}), "
                             f"got {text!r}")
    try:
        value = float(parts[1])
    except ValueError:
        raise Distill4dError(f"prior '{name}' needs a number, got {parts[1]!r}") from None
    if not math.isfinite(value) or value <= 0 or value > 100:
        raise Distill4dError(f"prior '{name}' value must be in (0, 100], got {value!r}")
    return (name, value)


def noise_level(values: Any, mask: Any = None) -> float:
    """Per-position noise of a map, robustly: the median absolute difference of neighbours
    (along both scan axes, valid pairs only) / (sqrt(2) 0.6745). Edges barely move it."""
    v = np.asarray(values, dtype=np.float64)
    valid = np.isfinite(v) if mask is None else (np.isfinite(v) & ~np.asarray(mask, bool))
    diffs = []
    for axis in (0, 1):
        a = np.moveaxis(v, axis, 0)
        m = np.moveaxis(valid, axis, 0)
        ok = m[1:] & m[:-1]
        diffs.append(np.abs(a[1:] - a[:-1])[ok])
    d = np.concatenate(diffs)
    if d.size == 0:
        raise Distill4dError("the map has no two valid neighbouring positions: its noise cannot be estimated")
    return float(np.median(d) / (math.sqrt(2) * 0.6745))


def _grad(x: np.ndarray) -> np.ndarray:
    g = np.zeros((2, *x.shape))
    g[0, :-1] = x[1:] - x[:-1]
    g[1, :, :-1] = x[:, 1:] - x[:, :-1]
    return g


def _div(g: np.ndarray) -> np.ndarray:  # -grad^T
    d = np.zeros(g.shape[1:])
    d[:-1] += g[0, :-1]
    d[1:] -= g[0, :-1]
    d[:, :-1] += g[1, :, :-1]
    d[:, 1:] -= g[1, :, :-1]
    return d


def tv_denoise(values: Any, weight: float, *, weights: Any = None, n_iter: int = 300) -> np.ndarray:
    """Minimise ``sum w (x - f)^2 / 2 + weight sum |grad x|`` (isotropic TV) over ``x``.

    ``values`` ``f`` (Rx, Ry), NaN where unknown (weight 0 there: filled by the prior);
    ``weights`` ``w`` (Rx, Ry) >= 0 (default 1); ``weight`` in the units of ``f``.
    Chambolle-Pock iterations (step sizes 1 / sqrt(8)); returns ``x``.
    """
    f = np.asarray(values, dtype=np.float64)
    if f.ndim != 2:
        raise Distill4dError(f"values must be a 2D map, got shape {f.shape}")
    lam = float(weight)
    if not math.isfinite(lam) or lam < 0:
        raise Distill4dError(f"weight must be finite and >= 0, got {weight!r}")
    w = np.ones(f.shape) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != f.shape or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise Distill4dError(f"weights must be finite, >= 0 and of shape {f.shape}")
    known = np.isfinite(f)
    w = np.where(known, w, 0.0)
    f0 = np.where(known, f, 0.0)
    if lam == 0 or not known.any():
        return f.copy()
    x = np.where(known, f, np.nanmedian(f))
    xbar = x.copy()
    y = np.zeros((2, *f.shape))
    tau = sigma = 1.0 / math.sqrt(8.0)
    for _ in range(n_iter):
        y += sigma * _grad(xbar)
        norm = np.maximum(1.0, np.hypot(y[0], y[1]) / lam)
        y /= norm
        x_new = (x + tau * _div(y) + tau * w * f0) / (1.0 + tau * w)
        xbar = 2 * x_new - x
        x = x_new
    return x


def tv_weighted(values: np.ndarray, standard_error: Any, lam: float) -> tuple[np.ndarray | None, float | None]:
    """:func:`tv_denoise` of ``values`` (NaN: no data) with each position's data term weighted
    by ``(s / standard_error)**2``, ``s`` the median standard error, and the weight ``lam * s``
    (``lam`` in units of the noise): ``(denoised, s)``, or ``(None, None)`` when
    ``standard_error`` is None or has no positive finite value."""
    if standard_error is None:
        return None, None
    se = np.asarray(standard_error, dtype=np.float64)
    if not np.isfinite(se).any() or not np.nanmedian(se) > 0:
        return None, None
    s = float(np.nanmedian(se))
    w = np.where(np.isfinite(se) & (se > 0), (s / np.where(se > 0, se, 1.0)) ** 2, 0.0)
    return tv_denoise(values, lam * s, weights=w), s


def apply_prior(strain: Any, prior: Any, standard_error: dict[str, np.ndarray] | None = None) -> Any:
    """``strain`` (a :class:`~distill4d.lattice.strain.StrainMap`) under ``prior`` (see
    :func:`parse_prior`), recorded in its provenance. ``standard_error`` (component → map,
    e.g. from :func:`~distill4d.lattice.template.strain_map_template`) weights the TV data term."""
    name, value = parse_prior(prior)
    if name == "none":
        return strain
    if name == "gaussian":
        return strain.smoothed(value)
    mask = np.asarray(strain.mask, bool)
    out: dict[str, np.ndarray] = {}
    used: dict[str, float] = {}
    for c in _COMPONENTS:
        f = np.where(mask, np.nan, np.asarray(getattr(strain, c), dtype=np.float64))
        if not np.isfinite(f).any():
            out[c] = f
            continue
        x, s = tv_weighted(f, None if standard_error is None else standard_error[c], value)
        if x is None:
            s = noise_level(f)
            x = tv_denoise(f, value * s)
        used[c] = s
        out[c] = np.where(np.isfinite(f), x, np.nan)
    prov = strain.provenance
    if prov is not None:
        prov = prov.replace(parameters={**prov.parameters, "prior": {"tv": value, "noise_scale": used,
                                                                      "weighted": standard_error is not None}})
    return dataclasses.replace(strain, **out, provenance=prov)
