"""The probe of ptychography: sign convention of defocus, vacuum probe, validation."""

import numpy as np
import pytest

from distill4d import Calibration, Distill4dError
from distill4d.phase.probe import probe_from_calibration, spatial_frequencies
from distill4d.simulate.phase_object import probe_wave

CAL = Calibration(q_pixel_inv_A=0.05, energy_eV=300e3, semiangle_mrad=20.0, scan_step_A=0.4)


def _propagate(wave, dz_A, q, lam):
    kx, ky = spatial_frequencies(wave.shape, q)
    return np.fft.ifft2(np.fft.fft2(wave) * np.exp(-1j * np.pi * lam * dz_A * (kx**2 + ky**2)))


def test_positive_defocus_is_underfocus():
    """A probe of defocus D (> 0) comes to focus D Å downstream: the Fresnel propagator over +D
    gives the in-focus probe, over −D a probe defocused by 2D."""
    d = 150.0
    focused = probe_from_calibration(CAL, (64, 64))
    p = probe_from_calibration(CAL, (64, 64), defocus_A=d)
    lam = CAL.wavelength_A
    down = _propagate(p, +d, 0.05, lam)
    up = _propagate(p, -d, 0.05, lam)
    assert np.allclose(down, focused, atol=1e-10)
    assert np.abs(up).max() ** 2 < 0.5 * np.abs(down).max() ** 2
    assert np.abs(p).max() < 0.5 * np.abs(focused).max()


def test_simulated_phase_object_probe_has_the_same_convention():
    """simulate.phase_object builds its probe here (hard aperture): same defocus sign."""
    a = probe_wave(64, 0.05, 20.0, 300e3, defocus_A=80.0)
    kx, ky = spatial_frequencies((64, 64), 0.05)
    lam = CAL.wavelength_A
    k2 = kx**2 + ky**2
    ref = np.fft.fftshift(np.fft.ifft2((k2 <= (20e-3 / lam) ** 2) * np.exp(1j * np.pi * lam * 80.0 * k2)))
    assert np.allclose(a, ref / np.sqrt(np.sum(np.abs(ref) ** 2)), atol=1e-12)


def test_cs_changes_only_the_phase_and_probe_is_normalised():
    a = probe_from_calibration(CAL, (48, 48), Cs_A=1e7)
    b = probe_from_calibration(CAL, (48, 48))
    assert np.sum(np.abs(a) ** 2) == pytest.approx(1.0)
    assert np.allclose(np.abs(np.fft.fft2(a)), np.abs(np.fft.fft2(b)), atol=1e-9)
    assert not np.allclose(a, b, atol=1e-3)


def test_vacuum_probe_amplitude():
    vac = np.zeros((48, 48))
    vac[24 - 5 : 24 + 6, 24 - 5 : 24 + 6] = 4.0  # a square 'aperture'
    p = probe_from_calibration(CAL, (48, 48), defocus_A=50.0, vacuum=vac)
    amp = np.fft.fftshift(np.abs(np.fft.fft2(np.fft.ifftshift(p))))
    assert np.allclose(amp / amp.max(), np.sqrt(vac) / 2.0, atol=1e-9)


@pytest.mark.parametrize("kwargs, match", [
    ({"defocus_A": 2e5}, "defocus_A"),
    ({"defocus_A": float("nan")}, "defocus_A"),
    ({"vacuum": np.ones((40, 48))}, "shape"),
    ({"vacuum": np.zeros((48, 48))}, "no positive"),
])
def test_bad_probe_input(kwargs, match):
    with pytest.raises(Distill4dError, match=match):
        probe_from_calibration(CAL, (48, 48), **kwargs)


def test_missing_calibration_names_the_field():
    with pytest.raises(Distill4dError, match="energy_eV"):
        probe_from_calibration(Calibration(q_pixel_inv_A=0.05, semiangle_mrad=20.0), (48, 48))
