"""Ptychography's shot-noise floor and its automatic loss (``loss="auto"``)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _ptsim import Q, multislice_scan, random_atoms  # noqa: E402

from distill4d.phase import PtychoResult, reconstruct  # noqa: E402
from distill4d.phase._noise import AUTO_POISSON_RATIO, counted, shot_noise_floor  # noqa: E402
from distill4d.simulate.phase_object import phase_object_scan  # noqa: E402


@pytest.mark.parametrize("lam", [0.01, 0.3, 2.0, 30.0, 5000.0])
def test_shot_noise_floor_is_the_poisson_mean_square_amplitude_error(lam):
    """E[(√y − √λ)²] for y ~ Poisson(λ) against 400,000 draws: within 2 % (2λ for small λ, 1/4 for large)."""
    y = np.random.default_rng(0).poisson(lam, 400_000)
    sampled = float(np.mean((np.sqrt(y) - np.sqrt(lam)) ** 2))
    for dtype in (torch.float64, torch.float32):
        got = float(shot_noise_floor(torch, torch.tensor([lam], dtype=dtype))[0])
        assert got == pytest.approx(sampled, rel=0.02), (lam, dtype, got, sampled)


def test_shot_noise_floor_at_the_ends_of_its_table():
    """Zero counts, the table's ends and far beyond them, in float32: finite, 0 at 0, near 1/4 when bright."""
    lam = torch.tensor([0.0, 1e-6, 1e-4, 999.99, 1e3, 1e3 + 1, 1e6], dtype=torch.float32)
    got = shot_noise_floor(torch, lam).numpy()
    assert np.all(np.isfinite(got)) and got[0] == 0 and got[1] == pytest.approx(2e-6, rel=0.01)
    np.testing.assert_allclose(got[3:], 0.25, atol=0.001)


def test_shot_noise_floor_of_a_diverged_model_is_finite():
    """NaN, infinite or negative intensities (a diverging model) give a value, not an index error, so that the
    divergence guard sees the NaN error instead of the run crashing."""
    got = shot_noise_floor(torch, torch.tensor([np.nan, -1.0, 5.0], dtype=torch.float32)).numpy()
    y = np.arange(60)
    pmf = np.exp(y * np.log(5.0) - 5.0 - np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, 60)))]))
    exact = float(np.sum(pmf * (np.sqrt(y) - np.sqrt(5.0)) ** 2))
    assert got[0] == 0 and got[1] == 0 and got[2] == pytest.approx(exact, rel=1e-3), (got, exact)


def test_counted_data_are_whole_non_negative_numbers():
    base = np.random.default_rng(0).poisson(3.0, (4, 5, 8, 8))
    assert counted(base.astype(np.uint16))
    assert counted(base.astype(np.float32))
    assert not counted(base + 0.5)
    assert not counted(base.astype(np.int32) - 4)
    nan = base.astype(np.float64)
    nan[0, 0, 0, 0] = np.nan
    assert not counted(nan)


@pytest.fixture(scope="module")
def weak_counted():
    """A weak phase object (0.3 rad) under a 60 Å underfocused probe, 2e4 e-/pattern (Poisson counts)."""
    return phase_object_scan(scan_shape=(20, 20), pattern_size=32, step_px=2, q_pixel_inv_A=0.07,
                             semiangle_mrad=20.0, energy_eV=300e3, defocus_A=60.0, dose_per_pattern=2e4, seed=1)


def test_auto_loss_is_poisson_on_a_thin_counted_scan(weak_counted):
    """A thin specimen's counts: the single-slice trial fits them down to the shot noise (ratio measured 1.03),
    so the Poisson loss is chosen; the run's own final error is near its floor too (measured 1.04)."""
    res = reconstruct(weak_counted.datacube, defocus_A=60.0, iterations=2, device="cpu")
    p = res.provenance.parameters
    assert p["loss"] == "poisson" and p["loss_choice"]["counted"]
    assert 0.8 < p["loss_choice"]["error_to_floor"] < AUTO_POISSON_RATIO, p["loss_choice"]
    assert res.noise_ratios.shape == (2,) and 0.8 < res.noise_ratios[-1] < 1.2
    assert res.noise_ratio == res.noise_ratios[-1]
    back = PtychoResult.from_results(res.to_results())
    np.testing.assert_array_equal(back.noise_ratios, res.noise_ratios)


def test_auto_loss_is_amplitude_where_one_slice_cannot_fit_the_counts():
    """Three strong slices 40 Å apart (the multislice test's object) at 2e5 e-/pattern: one slice leaves far
    more than the shot noise (trial ratio measured 4.8 against the threshold 2; 1.3 at 2e4, where the noise
    hides the misfit), so the amplitude loss is kept, also for a multislice run (the trial is single-slice)."""
    pixel = 1 / (48 * Q)
    phases = np.stack([random_atoms((40, 40), pixel, 14, 1.0, seed=s) for s in range(3)])
    cube, _ = multislice_scan(phases, dz_A=40.0, scan_shape=(20, 20), defocus_A=50.0, dose=2e5)
    res = reconstruct(cube, defocus_A=50.0, iterations=1, device="cpu", slices=3, slice_thickness_A=40.0)
    p = res.provenance.parameters
    assert p["loss"] == "amplitude" and p["loss_choice"]["error_to_floor"] > AUTO_POISSON_RATIO, p["loss_choice"]


def test_auto_loss_is_amplitude_on_data_that_are_not_counts():
    """Noise-free intensities (fractions of the beam) are not counts: amplitude, without a trial."""
    sim = phase_object_scan(scan_shape=(12, 12), pattern_size=32, step_px=2, q_pixel_inv_A=0.07,
                            semiangle_mrad=20.0, energy_eV=300e3, defocus_A=60.0, seed=1)
    res = reconstruct(sim.datacube, defocus_A=60.0, iterations=1, device="cpu")
    p = res.provenance.parameters
    assert p["loss"] == "amplitude" and p["loss_choice"] == {
        "rule": "amplitude: the patterns are not counts (whole numbers >= 0)", "counted": False}
    assert np.isnan(res.noise_ratio)  # a shot-noise ratio means nothing for beam fractions
    explicit = reconstruct(sim.datacube, defocus_A=60.0, iterations=1, device="cpu", loss="poisson")
    assert explicit.provenance.parameters["loss"] == "poisson" and "loss_choice" not in explicit.provenance.parameters


def test_auto_loss_is_poisson_where_no_pixel_reaches_one_count():
    """20 e-/pattern over 32 x 32 pixels: no pixel is predicted a whole count, the trial cannot judge the fit (its
    ratio is NaN) and the counts' likelihood, the Poisson loss, is taken."""
    sim = phase_object_scan(scan_shape=(20, 20), pattern_size=32, step_px=2, q_pixel_inv_A=0.07,
                            semiangle_mrad=20.0, energy_eV=300e3, defocus_A=60.0, dose_per_pattern=20, seed=1)
    res = reconstruct(sim.datacube, defocus_A=60.0, iterations=1, device="cpu")
    p = res.provenance.parameters
    assert p["loss"] == "poisson" and np.isnan(p["loss_choice"]["error_to_floor"]) and np.isnan(res.noise_ratios[-1])
