"""Integration of a gradient field: the phase of iDPC, and the sign check of the CoM scan rotation."""

from __future__ import annotations

import math

import numpy as np

from ..errors import Distill4dError

__all__ = ["integrate_gradient"]


def integrate_gradient(gx: np.ndarray, gy: np.ndarray, step: float = 1.0) -> np.ndarray:
    """The function φ (zero mean) whose gradient best matches ``(gx, gy)`` = (∂φ/∂x, ∂φ/∂y).

    ``gx`` and ``gy`` are per unit length and ``step`` is the grid spacing in that unit, so
    φ comes out in the gradient's unit times that length. The field is mirrored to four
    times its size before Fourier integration, which avoids the wrap-around artefacts of a
    plain periodic integration. Non-finite values must be removed first.
    """
    gx = np.asarray(gx, dtype=np.float64)
    gy = np.asarray(gy, dtype=np.float64)
    if gx.ndim != 2 or gx.shape != gy.shape:
        raise Distill4dError(f"gx and gy must be 2D arrays of one shape, got {gx.shape} and {gy.shape}")
    if min(gx.shape) < 2:
        raise Distill4dError(f"integrating a gradient needs at least 2x2 positions, got {gx.shape}")
    if not (np.all(np.isfinite(gx)) and np.all(np.isfinite(gy))):
        raise Distill4dError("gx and gy must be finite (replace NaN first)")
    # Even extension of φ: ∂φ/∂x is odd along x and even along y, and vice versa.
    ex = np.concatenate([gx, -gx[::-1]], axis=0)
    ex = np.concatenate([ex, ex[:, ::-1]], axis=1)
    ey = np.concatenate([gy, gy[::-1]], axis=0)
    ey = np.concatenate([ey, -ey[:, ::-1]], axis=1)
    kx = np.fft.fftfreq(ex.shape[0], d=step)[:, None]
    ky = np.fft.fftfreq(ex.shape[1], d=step)[None, :]
    k2 = kx**2 + ky**2
    k2[0, 0] = 1.0
    fphi = (kx * np.fft.fft2(ex) + ky * np.fft.fft2(ey)) / (2j * math.pi * k2)
    fphi[0, 0] = 0.0
    phi = np.fft.ifft2(fphi).real[: gx.shape[0], : gx.shape[1]]
    return phi - phi.mean()
