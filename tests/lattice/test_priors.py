"""Spatial priors: TV keeps a ±1 % step sharp while it removes noise, Gaussian blurs it, the
weights of standard errors count, and bad prior values are refused with a clear message."""

import numpy as np
import pytest

from distill4d.lattice.priors import apply_prior, noise_level, parse_prior, tv_denoise
from distill4d.lattice.strain import StrainMap


def _step_field(noise: float, seed: int = 0):
    """eps_xx = +1 % for rows < 16, -1 % below, on a 32x24 scan, with Gaussian noise."""
    truth = np.where(np.arange(32)[:, None] < 16, 0.01, -0.01) * np.ones((32, 24))
    rng = np.random.default_rng(seed)
    return truth, truth + rng.normal(0, noise, truth.shape)


def _edge_width(profile: np.ndarray) -> float:
    """10-90 % rise (in positions) of a falling step profile from +1 % to -1 %."""
    hi, lo = profile[:8].mean(), profile[-8:].mean()
    p = (profile - lo) / (hi - lo)
    x = np.arange(p.size)
    above90 = x[p >= 0.9].max()
    below10 = x[p <= 0.1].min()
    return float(below10 - above90)  # integer positions between the last >=90 % and first <=10 %


def test_tv_keeps_the_step_within_two_positions_and_lowers_the_noise():
    truth, noisy = _step_field(0.003)
    x = tv_denoise(noisy, 1.0 * noise_level(noisy))
    rms_in = np.sqrt(np.mean((noisy - truth) ** 2))
    rms_out = np.sqrt(np.mean((x - truth) ** 2))
    assert rms_out < 0.5 * rms_in  # measured: 0.3 % -> below 0.1 %
    assert _edge_width(x.mean(axis=1)) <= 2
    # a Gaussian prior with the same noise reduction widens the edge
    sm = StrainMap(noisy, noisy * 0, noisy * 0, noisy * 0, np.zeros(noisy.shape, bool), np.eye(2))
    g = apply_prior(sm, "gaussian 2").eps_xx
    assert _edge_width(g.mean(axis=1)) > 2


def test_noise_level_is_robust_to_the_edge():
    _, noisy = _step_field(0.003, seed=1)
    assert noise_level(noisy) == pytest.approx(0.003, rel=0.1)


def test_standard_errors_weight_the_data_and_masked_positions_stay_nan():
    truth, noisy = _step_field(0.002, seed=2)
    bad = np.zeros(truth.shape, bool)
    bad[5, 5] = True
    noisy[3, 3] = 0.05  # an outlier the standard error says to distrust
    se = np.full(truth.shape, 0.002)
    se[3, 3] = 0.05
    z = np.zeros(truth.shape)
    sm = StrainMap(noisy, z, z, z, bad, np.eye(2))
    errs = {c: se for c in ("eps_xx", "eps_yy", "eps_xy", "theta")}
    weighted = apply_prior(sm, ("tv", 1.0), standard_error=errs)
    plain = apply_prior(sm, ("tv", 1.0))
    assert np.isnan(weighted.eps_xx[5, 5])
    assert abs(weighted.eps_xx[3, 3] - 0.01) < 0.002 < abs(plain.eps_xx[3, 3] - 0.01)


@pytest.mark.parametrize("bad", ["tv", "tv -1", "tv abc", "gaussian 0", "median 2", "none 3", "tv 1e9", ""])
def test_bad_prior_values_are_named(bad):
    with pytest.raises(ValueError, match="prior"):
        parse_prior(bad)


def test_parse_prior_forms():
    assert parse_prior("none") == ("none", 0.0) and parse_prior(None) == ("none", 0.0)
    assert parse_prior("tv 0.5") == ("tv", 0.5) and parse_prior("gaussian=1.5") == ("gaussian", 1.5)
    assert parse_prior(("tv", 2)) == ("tv", 2.0)
