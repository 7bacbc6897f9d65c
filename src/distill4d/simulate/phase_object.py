"""A probe scanned over a thin phase object: 4D-STEM data with a known phase.

Each pattern is ``|FFT(probe(r - r0) · exp(iφ(r)))|²`` (NumPy's FFT convention, zero
frequency shifted to the centre pixel ``(N//2, N//2)``). For such data the pattern CoM in
1/Å equals ``∇φ / 2π`` averaged over the probe intensity, which makes it the reference for
the CoM, DPC and iDPC tests and for ``distill4d demo``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validate import positive_float, positive_int
from ..calibration import Calibration, electron_wavelength_A
from ..datacube import DataCube
from ..errors import Distill4dError

__all__ = ["PhaseObjectScan", "atomic_phase", "probe_wave", "phase_object_scan"]


def probe_wave(
    n: int, q_pixel_inv_A: float, semiangle_mrad: float, energy_eV: float, defocus_A: float = 0.0
) -> np.ndarray:
    """Complex probe wave (n x n, real space, centred at pixel (n//2, n//2)), unit total intensity.

    The real-space pixel is ``1 / (n · q_pixel_inv_A)`` Å. Aberrations: defocus only, positive =
    underfocus (``C10 = −defocus_A``, the package's convention: :mod:`distill4d.phase.probe`); a hard
    aperture.
    """
    from ..phase.probe import check_aberrations, probe_wave_k

    n = positive_int("n", n, minimum=4)
    q = positive_float("q_pixel_inv_A", q_pixel_inv_A)
    lam = electron_wavelength_A(energy_eV)
    k_max = positive_float("semiangle_mrad", semiangle_mrad) * 1e-3 / lam
    if k_max < 2 * q:
        raise Distill4dError(
            f"the probe aperture ({k_max:.4g} 1/Å) spans fewer than 2 pixels of {q:.4g} 1/Å: "
            "raise semiangle_mrad or lower q_pixel_inv_A"
        )
    if k_max >= q * n / 2:
        raise Distill4dError(f"the probe aperture ({k_max:.4g} 1/Å) does not fit in the {n}x{n} detector")
    defocus_A, _ = check_aberrations(defocus_A, 0.0)
    wave = np.fft.fftshift(np.fft.ifft2(probe_wave_k((n, n), q, semiangle_mrad, energy_eV, defocus_A)))
    return wave / np.sqrt(np.sum(np.abs(wave) ** 2))


def atomic_phase(shape: tuple[int, int], pixel_A: float, cell_A: float = 4.0, sigma_A: float = 0.4,
                 peak_rad: float = 0.3) -> np.ndarray:
    """A weak phase object: Gaussian 'atoms' on a square lattice of period ``cell_A`` (Å).

    ``shape`` in pixels of ``pixel_A`` Å; every atom has peak phase ``peak_rad`` (radians)
    and width ``sigma_A``; a second, weaker species sits at the cell centres.
    """
    x = np.arange(shape[0]) * pixel_A
    y = np.arange(shape[1]) * pixel_A
    phase = np.zeros(shape)
    for (ox, oy), amp in (((0.0, 0.0), 1.0), ((0.5, 0.5), 0.5)):
        dx = (x[:, None] - (ox + 0.25) * cell_A + cell_A / 2) % cell_A - cell_A / 2
        dy = (y[None, :] - (oy + 0.25) * cell_A + cell_A / 2) % cell_A - cell_A / 2
        phase += amp * peak_rad * np.exp(-(dx**2 + dy**2) / (2 * sigma_A**2))
    return phase


@dataclass
class PhaseObjectScan:
    """Simulated scan and its ground truth.

    Attributes
    ----------
    datacube : the 4D data, calibrated.
    phase_rad : (Rx, Ry) object phase at the probe positions, in radians.
    smoothed_phase_rad : the phase convolved with the probe intensity (what iDPC measures).
    probe : the complex probe wave used.
    """

    datacube: DataCube
    phase_rad: np.ndarray
    smoothed_phase_rad: np.ndarray
    probe: np.ndarray


def phase_object_scan(
    phase_rad: np.ndarray | None = None,
    *,
    scan_shape: tuple[int, int] = (32, 32),
    pattern_size: int = 64,
    step_px: int = 1,
    q_pixel_inv_A: float = 0.04,
    semiangle_mrad: float = 20.0,
    energy_eV: float = 300e3,
    defocus_A: float = 0.0,
    dose_per_pattern: float | None = None,
    seed: int = 0,
) -> PhaseObjectScan:
    """Scan a probe over a periodic phase object and record the diffraction patterns.

    Parameters
    ----------
    phase_rad : the object phase on the real-space grid (pixel ``1/(pattern_size · q_pixel_inv_A)`` Å),
        periodic; default :func:`atomic_phase` covering the scan.
    scan_shape : number of probe positions (Rx, Ry).
    pattern_size : detector size N (N x N pixels); also the real-space window of the probe.
    step_px : scan step in real-space pixels.
    q_pixel_inv_A, semiangle_mrad, energy_eV, defocus_A : optics (1/Å, mrad, eV, Å).
    dose_per_pattern : electrons per pattern for Poisson noise; None for noise-free float data.
    seed : random seed for the noise.
    """
    n = positive_int("pattern_size", pattern_size, minimum=8)
    step = positive_int("step_px", step_px)
    rx, ry = (positive_int("scan_shape", s) for s in scan_shape)
    pixel_A = 1.0 / (n * q_pixel_inv_A)
    if phase_rad is None:
        phase_rad = atomic_phase((rx * step, ry * step), pixel_A)
    phase_rad = np.asarray(phase_rad, dtype=np.float64)
    if phase_rad.ndim != 2:
        raise Distill4dError(f"phase_rad must be 2D, got shape {phase_rad.shape}")
    probe = probe_wave(n, q_pixel_inv_A, semiangle_mrad, energy_eV, defocus_A)
    obj = np.exp(1j * phase_rad)
    idx = np.arange(n) - n // 2
    patterns = np.empty((rx, ry, n, n), dtype=np.float32 if dose_per_pattern is None else np.uint32)
    rng = np.random.default_rng(seed)
    for i in range(rx):
        xs = (i * step + idx) % phase_rad.shape[0]
        rows = obj[xs]
        windows = np.stack([rows[:, (j * step + idx) % phase_rad.shape[1]] for j in range(ry)])
        far = np.fft.fftshift(np.fft.fft2(windows * probe, norm="ortho"), axes=(1, 2))
        inten = np.abs(far) ** 2
        if dose_per_pattern is None:
            patterns[i] = inten
        else:
            patterns[i] = rng.poisson(inten * positive_float("dose_per_pattern", dose_per_pattern))
    # Ground truth at the probe positions, and smoothed by the probe intensity.
    sample = phase_rad[np.ix_(np.arange(rx) * step % phase_rad.shape[0], np.arange(ry) * step % phase_rad.shape[1])]
    intensity = np.zeros(phase_rad.shape)
    intensity[np.ix_(idx % phase_rad.shape[0], idx % phase_rad.shape[1])] = np.abs(probe) ** 2
    smoothed = np.fft.ifft2(np.fft.fft2(phase_rad) * np.conj(np.fft.fft2(intensity))).real
    smoothed = smoothed[np.ix_(np.arange(rx) * step % phase_rad.shape[0], np.arange(ry) * step % phase_rad.shape[1])]
    cal = Calibration(
        scan_step_A=step * pixel_A,
        q_pixel_inv_A=q_pixel_inv_A,
        energy_eV=energy_eV,
        semiangle_mrad=semiangle_mrad,
        origin_px=(n // 2, n // 2),
    )
    return PhaseObjectScan(DataCube(patterns, cal, name="phase object"), sample, smoothed, probe)
