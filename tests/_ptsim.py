"""A NumPy multislice scan simulator for the ptychography tests (independent of the PyTorch model)."""

import numpy as np

from distill4d import Calibration, DataCube
from distill4d.calibration import electron_wavelength_A
from distill4d.simulate.phase_object import probe_wave

Q, ENERGY, SEMIANGLE = 0.05, 300e3, 20.0


def random_atoms(shape, pixel_A, n_atoms, peak_rad, seed, sigma_A=0.35):
    """A periodic phase of Gaussian 'atoms' at random positions."""
    rng = np.random.default_rng(seed)
    x = np.arange(shape[0])[:, None] * pixel_A
    y = np.arange(shape[1])[None, :] * pixel_A
    lx, ly = shape[0] * pixel_A, shape[1] * pixel_A
    phase = np.zeros(shape)
    for cx, cy in rng.uniform(0, 1, (n_atoms, 2)) * (lx, ly):
        dx = (x - cx + lx / 2) % lx - lx / 2
        dy = (y - cy + ly / 2) % ly - ly / 2
        phase += peak_rad * np.exp(-(dx**2 + dy**2) / (2 * sigma_A**2))
    return phase


def multislice_scan(phases, *, dz_A=0.0, n=48, step_px=2, scan_shape=(20, 20), defocus_A=0.0, dose=None, seed=0,
                    offsets_px=None):
    """Patterns of a probe (hard aperture, ``defocus_A`` positive = underfocus) scanned over the slices
    ``phases`` (S, H, W) (periodic, ``dz_A`` apart); returns (DataCube, summed phase at the positions).
    ``offsets_px``: optional (Rx, Ry, 2) integer errors of the true positions from the nominal grid."""
    phases = np.asarray(phases, dtype=np.float64)
    s_count, h, w = phases.shape
    lam = electron_wavelength_A(ENERGY)
    probe = probe_wave(n, Q, SEMIANGLE, ENERGY, defocus_A)
    k = np.fft.fftfreq(n, d=1.0 / (n * Q))
    prop = np.exp(-1j * np.pi * lam * dz_A * (k[:, None] ** 2 + k[None, :] ** 2))
    obj = np.exp(1j * phases)
    idx = np.arange(n) - n // 2
    rng = np.random.default_rng(seed)
    data = np.empty(scan_shape + (n, n), np.float32)
    for i in range(scan_shape[0]):
        for j in range(scan_shape[1]):
            dx, dy = (0, 0) if offsets_px is None else offsets_px[i, j]
            rows = (i * step_px + dx + idx) % h
            cols = (j * step_px + dy + idx) % w
            psi = probe * obj[0][np.ix_(rows, cols)]
            for s in range(1, s_count):
                psi = np.fft.ifft2(np.fft.fft2(psi) * prop) * obj[s][np.ix_(rows, cols)]
            inten = np.abs(np.fft.fftshift(np.fft.fft2(psi, norm="ortho"))) ** 2
            data[i, j] = inten if dose is None else rng.poisson(inten * dose)
    pixel = 1.0 / (n * Q)
    cal = Calibration(scan_step_A=step_px * pixel, q_pixel_inv_A=Q, energy_eV=ENERGY, semiangle_mrad=SEMIANGLE,
                      origin_px=(n // 2, n // 2), scan_rotation_rad=0.0)
    total = phases.sum(axis=0)
    truth = total[np.ix_(np.arange(scan_shape[0]) * step_px % h, np.arange(scan_shape[1]) * step_px % w)]
    return DataCube(data, cal, name="multislice test"), truth
