"""Cramér–Rao bound of per-pattern strain: the analytic bound of a spot lattice, an efficient
estimator reaching it, dose scaling, and errors that name the problem."""

import math

import numpy as np
import pytest

from distill4d.lattice.precision import deformation_step, poisson_fisher, strain_crb
from distill4d.lattice.strain import strain_from_deformation

SHAPE, ORIGIN, SIGMA, SPACING = (96, 96), np.array([48.0, 48.0]), 1.5, 14.0
G = SPACING * np.array([(i, j) for i in range(-2, 3) for j in range(-2, 3)], dtype=np.float64)  # px


def spots(F: np.ndarray, g: np.ndarray = G) -> np.ndarray:
    """Equal Gaussian spots (sigma 1.5 px) at the reciprocal lattice of the real-space deformation F."""
    c = ORIGIN + g @ np.linalg.inv(F)  # rows: g F^-1 = (F^-T g)^T
    ix, iy = np.indices(SHAPE, dtype=np.float64)
    d2 = (ix[..., None] - c[:, 0]) ** 2 + (iy[..., None] - c[:, 1]) ** 2
    return np.exp(-d2 / (2 * SIGMA**2)).sum(-1)


def test_deformation_steps_change_one_component():
    for c in ("eps_xx", "eps_yy", "eps_xy", "theta"):
        s = strain_from_deformation(deformation_step(c, 1e-3))
        for k, v in s.items():
            assert v == pytest.approx(1e-3 if k == c else 0.0, abs=1e-6), (c, k)  # second order: 5e-7


def test_spot_lattice_matches_analytic_bound():
    # n electrons per spot, each located to sigma / sqrt(n): std eps_xx = sigma / sqrt(n sum g_x^2),
    # std theta = std eps_xy = sigma / sqrt(n sum |g|^2) (the square lattice decouples the components)
    dose = 2.5e4
    n = dose / len(G)
    b = strain_crb(spots, dose_e=dose)
    assert b["eps_xx"] == pytest.approx(SIGMA / math.sqrt(n * np.sum(G[:, 0] ** 2)), rel=0.02)
    assert b["eps_yy"] == pytest.approx(SIGMA / math.sqrt(n * np.sum(G[:, 1] ** 2)), rel=0.02)
    assert b["eps_xy"] == pytest.approx(SIGMA / math.sqrt(n * np.sum(G**2)), rel=0.02)
    assert b["theta"] == pytest.approx(SIGMA / math.sqrt(n * np.sum(G**2)), rel=0.02)


def test_bound_scales_with_dose_and_knowing_components_only_lowers_it():
    lo = strain_crb(spots, dose_e=1e4)
    hi = strain_crb(spots, dose_e=1e6)
    assert hi["eps_yy"] == pytest.approx(lo["eps_yy"] / 10, rel=1e-9)
    # a sheared lattice couples the components: estimating eps_xx alone is easier than jointly
    g = G @ np.array([[1.0, 0.6], [0.0, 1.0]])
    joint = strain_crb(lambda F: spots(F, g), dose_e=1e5)
    alone = strain_crb(lambda F: spots(F, g), dose_e=1e5, components=("eps_xx",))
    assert alone["eps_xx"] < 0.9 * joint["eps_xx"]


def test_centroid_estimator_reaches_the_bound():
    # Spot centroids are efficient for Gaussian spots without background: their least-squares
    # strain scatters at the bound (not below: it is a bound; not far above: it is tight).
    dose = 2.5e4
    lam = spots(np.eye(2))
    lam *= dose / lam.sum()
    rng = np.random.default_rng(3)
    ix, iy = np.indices(SHAPE, dtype=np.float64)
    win = [((ix - ORIGIN[0] - gx) ** 2 + (iy - ORIGIN[1] - gy) ** 2) <= 6.5**2 for gx, gy in G]
    est = []
    for _ in range(400):
        counts = rng.poisson(lam)
        c = np.array([[(counts * w * ix).sum(), (counts * w * iy).sum()] / (counts * w).sum() for w in win])
        M = np.linalg.lstsq(G, c - ORIGIN, rcond=None)[0]  # c - o = g M, M = F^-1
        est.append(strain_from_deformation(np.linalg.inv(M)))
    b = strain_crb(spots, dose_e=dose)
    for k in ("eps_xx", "theta"):
        ratio = np.std([e[k] for e in est]) / b[k]
        assert 0.9 < ratio < 1.2, (k, ratio)


def test_poisson_fisher_of_a_shifted_spot():
    # one spot of N electrons: information on its position N / sigma^2 per axis
    ix, iy = np.indices(SHAPE, dtype=np.float64)

    def spot(dx):
        return np.exp(-((ix - 48 - dx) ** 2 + (iy - 48) ** 2) / (2 * SIGMA**2))

    h = 1e-3
    f = poisson_fisher(spot(-h)[None], spot(h)[None], [h], total=spot(0).sum())
    assert f[0, 0] == pytest.approx(1 / SIGMA**2, rel=1e-3)


@pytest.mark.parametrize(
    "render, kw, match",
    [
        (lambda F: spots(F), {"dose_e": 0}, "dose_e"),
        (lambda F: spots(F), {"dose_e": float("nan")}, "dose_e"),
        (lambda F: spots(F), {"dose_e": 1e5, "step": 0.5}, "step"),
        (lambda F: spots(F), {"dose_e": 1e5, "components": ("eps_zz",)}, "unknown strain component"),
        (lambda F: spots(F), {"dose_e": 1e5, "components": ("eps_xx", "eps_xx")}, "distinct"),
        (lambda F: np.zeros(SHAPE), {"dose_e": 1e5}, "empty pattern"),
        (lambda F: spots(F) * np.nan, {"dose_e": 1e5}, "NaN or Inf"),
        (lambda F: spots(F) - 1.0, {"dose_e": 1e5}, ">= 0"),
        (lambda F: spots(F)[0], {"dose_e": 1e5}, "2D array"),
        (lambda F: spots(F) if np.allclose(F, np.eye(2)) else spots(F)[:90], {"dose_e": 1e5}, "reference pattern"),
        (lambda F: spots(F, G[12:13]), {"dose_e": 1e5}, "singular"),  # only the direct beam: no strain information
    ],
)
def test_bad_input_is_named(render, kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        strain_crb(render, **kw)
