"""The best strain precision one diffraction pattern allows: a Cramér–Rao bound.

A pattern recorded with ``dose_e`` electrons is a set of Poisson counts with means
``lam = dose_e * pattern / sum(pattern)``. Its Fisher information on the strain components
``s`` is ``F_ij = sum over pixels of (d lam / d s_i)(d lam / d s_j) / lam``, written here in
the equivalent square-root form ``4 sum (d sqrt(lam) / d s_i)(d sqrt(lam) / d s_j)`` and
evaluated by central differences of the noise-free pattern (which stays finite where the
pattern is zero, e.g. between sharp-edged disks). The standard deviation of any unbiased
estimate of ``s_i`` from that one pattern is at least ``sqrt((F^-1)_ii)``; it scales as
``1 / sqrt(dose_e)``.

The pattern's response to strain comes from a renderer (any simulator: kinematic disks,
multislice), so the bound includes everything the simulator models (disk positions,
dynamical intensities inside the disks) and nothing it does not (the detector's point-spread
function, read noise). Components left out of ``components`` (and the pattern origin) are
treated as known, which only lowers the bound: it stays a lower bound for a detector that
fits them. A detector whose strain follows the lattice with a slope ``s < 1`` (shrinks
strains) can show a scatter down to ``s`` times the bound, at the price of a bias.

Strain components follow :mod:`distill4d.lattice.strain`: ``eps_xx``, ``eps_yy``, ``eps_xy``
(fractions) and ``theta`` (radians) of the real-space deformation ``F`` in detector
coordinates.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from .._validate import pattern_array, positive_float
from ..errors import Distill4dError

__all__ = ["STRAIN_COMPONENTS", "deformation_step", "poisson_fisher", "strain_crb"]

STRAIN_COMPONENTS = ("eps_xx", "eps_yy", "eps_xy", "theta")


def deformation_step(component: str, h: float) -> np.ndarray:
    """The deformation ``F`` (2x2) that changes only ``component`` by ``h`` to first order."""
    if component == "eps_xx":
        return np.array([[1.0 + h, 0.0], [0.0, 1.0]])
    if component == "eps_yy":
        return np.array([[1.0, 0.0], [0.0, 1.0 + h]])
    if component == "eps_xy":
        return np.array([[1.0, h], [h, 1.0]])
    if component == "theta":
        c, s = math.cos(h), math.sin(h)
        return np.array([[c, -s], [s, c]])
    raise Distill4dError(f"unknown strain component {component!r}; expected one of {STRAIN_COMPONENTS}")


def _check_pattern(name: str, p: Any, shape: tuple[int, ...] | None) -> np.ndarray:
    a = pattern_array(name, p).astype(np.float64)  # 2D, real, finite, not empty
    if shape is not None and a.shape != shape:
        raise Distill4dError(f"{name} has shape {a.shape}, but the reference pattern has {shape}")
    if a.min() < 0:
        raise Distill4dError(f"{name} must be >= 0 (expected intensities), got minimum {a.min()!r}")
    return a


def poisson_fisher(minus: Any, plus: Any, steps: Any, *, total: float) -> np.ndarray:
    """Fisher information (n x n) per electron of a Poisson pattern on n parameters.

    ``minus[i]`` and ``plus[i]`` are the noise-free pattern at parameter i moved by
    ``-steps[i]`` and ``+steps[i]`` (the others fixed); counts are ``dose_e * pattern / total``.
    Multiply by the dose (electrons) for the information of a recorded pattern.
    """
    lo, hi = np.asarray(minus, dtype=np.float64), np.asarray(plus, dtype=np.float64)
    h = np.asarray(steps, dtype=np.float64).reshape(-1)
    if lo.shape != hi.shape or lo.ndim < 2 or lo.shape[0] != h.size:
        raise Distill4dError(f"minus {lo.shape} and plus {hi.shape} must be (n, ...) with n = len(steps) = {h.size}")
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))) or min(lo.min(), hi.min()) < 0:
        raise Distill4dError("minus and plus must be finite patterns >= 0")
    if not np.all(np.isfinite(h)) or np.any(h <= 0):
        raise Distill4dError(f"steps must be finite and > 0, got {h.tolist()}")
    t = positive_float("total", total)
    d = (np.sqrt(hi / t) - np.sqrt(lo / t)).reshape(h.size, -1) / h[:, None]  # = 2 d sqrt(lam)/ds per electron
    return d @ d.T


def strain_crb(
    render: Callable[[np.ndarray], Any],
    *,
    dose_e: float,
    components: tuple[str, ...] = STRAIN_COMPONENTS,
    step: float = 3e-4,
) -> dict[str, float]:
    """Cramér–Rao lower bound on the per-pattern standard deviation of strain components.

    Parameters
    ----------
    render : ``F -> pattern``: the noise-free pattern (any scale, >= 0) of the crystal under
        the real-space deformation ``F`` (2x2) relative to the state of interest; it is called
        with the identity and with ``F`` one ``step`` either side for each component.
    dose_e : electrons in the pattern of the state of interest.
    components : the strain components estimated together (any of ``eps_xx``, ``eps_yy``,
        ``eps_xy``, ``theta``); the others are held known.
    step : finite-difference step (fraction; radians for ``theta``), in (0, 0.01].

    Returns
    -------
    ``{component: std}`` in fractions (``theta`` in radians).
    """
    dose = positive_float("dose_e", dose_e)
    h = positive_float("step", step, maximum=0.01)
    comps = tuple(components)
    if not comps or len(set(comps)) != len(comps):
        raise Distill4dError(f"components must be distinct strain components, got {components!r}")
    for c in comps:
        deformation_step(c, 0.0)  # names an unknown component
    p0 = _check_pattern("render(identity)", render(np.eye(2)), None)
    total = float(p0.sum())
    if total <= 0:
        raise Distill4dError("render(identity) is an empty pattern (all zero): it carries no strain information")
    plus = np.stack([_check_pattern(f"render(+{c})", render(deformation_step(c, h)), p0.shape) for c in comps])
    minus = np.stack([_check_pattern(f"render(-{c})", render(deformation_step(c, -h)), p0.shape) for c in comps])
    fisher = dose * poisson_fisher(minus, plus, np.full(len(comps), h), total=total)
    w = np.linalg.eigvalsh(fisher)
    if w[0] <= 1e-12 * max(w[-1], 0.0) or w[-1] <= 0:
        raise Distill4dError(f"the pattern does not change independently with {comps}: their Fisher information is "
                             "singular (too few disks, or disks on one line), so no finite bound exists")
    cov = np.linalg.inv(fisher)
    return {c: float(math.sqrt(cov[i, i])) for i, c in enumerate(comps)}
