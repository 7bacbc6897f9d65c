"""The probe of ptychography: from the calibration and the aberrations, or from a vacuum pattern.

Sign convention (abTEM's and py4DSTEM's): the probe is ``ψ(r) = IFFT[A(k) exp(−iχ(k))]`` with
``χ(k) = π λ C10 k² + (π/2) Cs λ³ k⁴`` and ``C10 = −defocus_A``, so a positive ``defocus_A`` is
underfocus: the probe comes to focus ``defocus_A`` Å *below* the entrance surface, where the
Fresnel propagator ``exp(−iπ λ Δz k²)`` over ``Δz = defocus_A`` brings it (tested). Diffraction
patterns are ``|FFT(ψ · O)|²`` (NumPy's FFT, zero frequency shifted to pixel ``(N//2, N//2)``), as in
:mod:`distill4d.simulate.phase_object`, which builds its probe here.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._validate import pattern_array, positive_float, positive_int
from ..calibration import Calibration, electron_wavelength_A
from ..errors import Distill4dError

__all__ = ["MAX_DEFOCUS_A", "aberration_phase", "aperture_from_mean_pattern", "probe_from_calibration", "probe_wave_k", "spatial_frequencies"]

#: Largest |defocus| accepted, in Å (10 µm): beyond it the probe leaves any sensible window.
MAX_DEFOCUS_A = 1e5


def check_aberrations(defocus_A: Any, Cs_A: Any) -> tuple[float, float]:
    """``(defocus_A, Cs_A)`` as floats after checking they are finite and ``|defocus_A| <= 1e5`` Å."""
    out = []
    for name, value, limit in (("defocus_A", defocus_A, MAX_DEFOCUS_A), ("Cs_A", Cs_A, 1e9)):
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a number in Å, got {value!r}") from None
        if not math.isfinite(v) or abs(v) > limit:
            raise Distill4dError(f"{name} must be a finite number of Å with |{name}| <= {limit:g}, got {value!r}")
        out.append(v)
    return out[0], out[1]


def spatial_frequencies(shape: tuple[int, int], q_pixel_inv_A: float) -> tuple[np.ndarray, np.ndarray]:
    """``(kx, ky)`` in 1/Å on the FFT grid of ``shape`` (unshifted, broadcastable (Nx, 1) and (1, Ny))."""
    kx = np.fft.fftfreq(shape[0], d=1.0 / (shape[0] * q_pixel_inv_A))[:, None]
    ky = np.fft.fftfreq(shape[1], d=1.0 / (shape[1] * q_pixel_inv_A))[None, :]
    return kx, ky


def aberration_phase(kx: Any, ky: Any, wavelength_A: float, defocus_A: float = 0.0, Cs_A: float = 0.0) -> np.ndarray:
    """``χ(k)`` in radians for spatial frequencies in 1/Å (``C10 = −defocus_A``; see the module docstring)."""
    k2 = np.asarray(kx) ** 2 + np.asarray(ky) ** 2
    lam = float(wavelength_A)
    return math.pi * lam * (-defocus_A) * k2 + 0.5 * math.pi * Cs_A * lam**3 * k2**2


def probe_wave_k(
    shape: tuple[int, int], q_pixel_inv_A: float, semiangle_mrad: float, energy_eV: float,
    defocus_A: float = 0.0, Cs_A: float = 0.0, *, amplitude: np.ndarray | None = None, soft_edge: bool = False,
) -> np.ndarray:
    """The probe in Fourier space, ``A(k) exp(−iχ(k))`` on the unshifted FFT grid of ``shape`` (complex128).

    ``A`` is the aperture of ``semiangle_mrad`` (hard, or with a one-pixel linear edge when
    ``soft_edge``), or ``amplitude`` (unshifted, e.g. the square root of a vacuum pattern).
    """
    lam = electron_wavelength_A(energy_eV)
    kx, ky = spatial_frequencies(shape, q_pixel_inv_A)
    if amplitude is None:
        k = np.sqrt(kx**2 + ky**2)
        k_max = semiangle_mrad * 1e-3 / lam
        if soft_edge:
            a = np.clip((k_max - k) / q_pixel_inv_A + 0.5, 0.0, 1.0)
        else:
            a = (kx**2 + ky**2 <= k_max**2).astype(np.float64)
    else:
        a = np.asarray(amplitude, dtype=np.float64)
    return a * np.exp(-1j * aberration_phase(kx, ky, lam, defocus_A, Cs_A))


def probe_from_calibration(
    calibration: Calibration,
    shape: tuple[int, int],
    *,
    defocus_A: float = 0.0,
    Cs_A: float = 0.0,
    vacuum: Any = None,
) -> np.ndarray:
    """The real-space probe (complex128, ``shape``, centred at pixel ``(Nx//2, Ny//2)``, unit total intensity).

    Parameters
    ----------
    calibration : needs ``q_pixel_inv_A``, ``energy_eV`` and (without ``vacuum``) ``semiangle_mrad``.
    shape : the detector window ``(Nx, Ny)`` the probe lives on; the real-space pixel is
        ``1 / (Nx q_pixel_inv_A)`` by ``1 / (Ny q_pixel_inv_A)`` Å.
    defocus_A : defocus in Å, positive = underfocus (``C10 = −defocus_A``).
    Cs_A : spherical aberration ``C30`` in Å (1 mm = 1e7 Å).
    vacuum : optional vacuum-probe pattern of ``shape`` with its centre at pixel ``(Nx//2, Ny//2)``:
        its square root is the aperture amplitude (the phase comes from the aberrations).
    """
    nx, ny = (positive_int("shape", s, minimum=4) for s in shape)
    defocus_A, Cs_A = check_aberrations(defocus_A, Cs_A)
    q = positive_float("q_pixel_inv_A", calibration.require("q_pixel_inv_A"))
    energy = calibration.require("energy_eV")
    if vacuum is None:
        semiangle = calibration.require("semiangle_mrad")
        k_max = semiangle * 1e-3 / electron_wavelength_A(energy)
        if k_max < 2 * q:
            raise Distill4dError(f"the probe aperture ({k_max:.4g} 1/Å) spans fewer than 2 pixels of {q:.4g} 1/Å: "
                                 "check semiangle_mrad and q_pixel_inv_A")
        if k_max >= q * min(nx, ny) / 2:
            raise Distill4dError(f"the probe aperture ({k_max:.4g} 1/Å) does not fit in the {nx}x{ny} "
                                 "detector window")
        wave_k = probe_wave_k((nx, ny), q, semiangle, energy, defocus_A, Cs_A, soft_edge=True)
    else:
        v = pattern_array("probe", vacuum)
        if v.shape != (nx, ny):
            raise Distill4dError(f"probe (the vacuum pattern) has shape {v.shape}, expected {(nx, ny)}")
        amp = np.fft.ifftshift(np.sqrt(np.clip(v.astype(np.float64), 0.0, None)))
        if not np.any(amp > 0):
            raise Distill4dError("probe (the vacuum pattern) has no positive pixel")
        wave_k = probe_wave_k((nx, ny), q, 1.0, energy, defocus_A, Cs_A, amplitude=amp)
    wave = np.fft.fftshift(np.fft.ifft2(wave_k))
    return wave / np.sqrt(np.sum(np.abs(wave) ** 2))


def aperture_from_mean_pattern(mean_pattern: np.ndarray, calibration: Calibration, *, grow_px: float = 2.0) -> np.ndarray:
    """The aperture amplitude (0-1) as the data show it: the square root of the mean pattern (unshifted FFT
    order, the origin at pixel (0, 0)) divided by its median inside the calibrated disk, clipped to 1 and
    cut ``grow_px`` pixels outside the disk of ``semiangle_mrad``. It carries the real edge of the
    aperture (its blur, a slightly wrong semiangle) that the calibration does not."""
    m = np.asarray(mean_pattern, dtype=np.float64)
    q = calibration.require("q_pixel_inv_A")
    k_max = calibration.require("semiangle_mrad") * 1e-3 / electron_wavelength_A(calibration.require("energy_eV"))
    kx, ky = spatial_frequencies(m.shape, q)
    r_px = np.sqrt(kx**2 + ky**2) / q
    rim = k_max / q
    inner = r_px <= rim - 1.5
    if not np.any(inner):
        inner = r_px <= rim
    amp = np.sqrt(np.clip(m, 0.0, None))
    plateau = float(np.median(amp[inner]))
    if not plateau > 0:
        raise Distill4dError("the mean pattern is dark inside the probe aperture: check semiangle_mrad and origin_px")
    return np.where(r_px <= rim + grow_px, np.clip(amp / plateau, 0.0, 1.0), 0.0)
