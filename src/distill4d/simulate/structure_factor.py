"""Kinematic reflections and the FCU-Net structure-factor target image.

For a periodic crystal (an ``ase.Atoms`` with an orthogonal cell, beam along +z) the
Fourier transform of the electrostatic potential is a set of reciprocal-lattice points
``G = inv(cell)^T (h, k, l)`` with coefficients

    V(G) = (1 / Ω) Σ_j f_j(|G|) exp(-2πi G · r_j)        [Å⁻¹ · Å = dimensionless per Å²]

where ``f_j`` is the electron scattering factor of atom j (Å; abTEM's Lobato
parametrisation, the one its multislice potentials use) and Ω the cell volume (Å³).

The FCU-Net target (Munshi et al. 2022) is ``S(qx, qy) = Σ_qz w(qz) |FT3[t · V](q)|`` with
``t`` a Tukey window over the sample and ``w(qz) = exp(-qz² / 2σ²)``, σ = 0.05 1/Å. For a
periodic crystal this is, up to one constant factor, a sum over reflections of
``|V(G)| exp(-Gz² / 2σ²)`` times the window's transfer function ``|t̂(q_xy - G_xy)|``
centred on each reflection. :func:`structure_factor_image` evaluates exactly that on the
detector's pixel grid, with each reflection at its exact sub-pixel position. Deviation from
a literal 3D FFT of a windowed potential: the window is separable and its width is a
parameter (``window_A``), not the simulated cell, so that peak widths do not depend on how
many unit cells a simulation happened to use; where neighbouring reflections' windows
overlap their magnitudes add instead of their complex amplitudes (negligible for
spots a few pixels apart).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np

from .._validate import positive_float, positive_int
from ..errors import Distill4dError

__all__ = ["Reflections", "kinematic_reflections", "structure_factor_image", "tukey_transfer"]

#: σ of the qz weight of the FCU-Net target (1/Å).
SIGMA_QZ_INV_A = 0.05


@dataclasses.dataclass(frozen=True)
class Reflections:
    """Kinematic reflections of a crystal.

    ``hkl`` (n, 3) Miller indices in the basis of the cell they were computed for;
    ``g_inv_A`` (n, 3) reciprocal vectors (1/Å, lab frame, no 2π); ``amplitude`` (n,)
    ``|V(G)|`` (1/Å²·Å = see module doc; only ratios matter); ``weight`` (n,) the qz weight
    ``exp(-Gz² / 2σ²)``. The direct beam (000) is included.
    """

    hkl: np.ndarray
    g_inv_A: np.ndarray
    amplitude: np.ndarray
    weight: np.ndarray

    def __len__(self) -> int:
        return len(self.hkl)

    def projected(self) -> tuple[np.ndarray, np.ndarray]:
        """Reflections merged by in-plane position: ``(g_xy (m, 2) in 1/Å, Σ amplitude·weight (m,))``.

        Reflections whose (gx, gy) agree to 1e-6 1/Å (in an orthogonal cell, all l of one
        (h, k)) are one spot of the target image.
        """
        key = np.round(self.g_inv_A[:, :2] * 1e6).astype(np.int64)
        uniq, inverse = np.unique(key, axis=0, return_inverse=True)
        amp = np.zeros(len(uniq))
        np.add.at(amp, inverse.ravel(), self.amplitude * self.weight)
        gxy = np.zeros((len(uniq), 2))
        np.add.at(gxy, inverse.ravel(), self.g_inv_A[:, :2])
        counts = np.bincount(inverse.ravel(), minlength=len(uniq))
        return gxy / counts[:, None], amp


@functools.lru_cache(maxsize=128)
def _scattering_factor(symbol: str) -> Any:
    from abtem.parametrizations import LobatoParametrization

    return LobatoParametrization().scattering_factor(symbol)


def kinematic_reflections(
    atoms: Any,
    *,
    q_max_inv_A: float,
    sigma_qz_inv_A: float = SIGMA_QZ_INV_A,
    qz_cutoff_sigmas: float = 4.0,
    min_relative_amplitude: float = 1e-6,
) -> Reflections:
    """All reflections with ``|G_xy| ≤ q_max_inv_A`` and ``|Gz| ≤ qz_cutoff_sigmas · σ``.

    Parameters
    ----------
    atoms : ``ase.Atoms`` with a periodic cell (any shape; an orthogonal cell puts all
        l of one (h, k) on one detector position).
    q_max_inv_A : largest in-plane |G| kept (1/Å).
    sigma_qz_inv_A : σ of the qz weight (1/Å); FCU-Net uses 0.05.
    qz_cutoff_sigmas : reflections with ``|Gz| > qz_cutoff_sigmas · σ`` are dropped.
    min_relative_amplitude : reflections weaker than this fraction of the strongest
        (extinct ones, e.g. Si (200)) are dropped, except (000).
    """
    q_max = positive_float("q_max_inv_A", q_max_inv_A, maximum=50.0)
    sigma = positive_float("sigma_qz_inv_A", sigma_qz_inv_A)
    cutoff = positive_float("qz_cutoff_sigmas", qz_cutoff_sigmas)
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    if abs(np.linalg.det(cell)) < 1e-9:
        raise Distill4dError("atoms must have a 3D periodic cell (non-zero volume) to have reflections")
    recip = np.linalg.inv(cell)  # columns b_i: cell[i] · recip[:, j] = δij
    # h_i = G · a_i, so |h_i| ≤ |G| |a_i| bounds every reflection that can pass both cuts.
    qz_max = cutoff * sigma
    lengths = np.linalg.norm(cell, axis=1)
    q_len = math.hypot(q_max, qz_max)
    n = [int(math.ceil(q_len * length)) + 1 for length in lengths]
    h, k, l = np.meshgrid(*(np.arange(-m, m + 1) for m in n), indexing="ij")
    hkl = np.stack([h.ravel(), k.ravel(), l.ravel()], axis=1)
    g = hkl @ recip.T
    keep = (np.hypot(g[:, 0], g[:, 1]) <= q_max + 1e-12) & (np.abs(g[:, 2]) <= qz_max + 1e-12)
    hkl, g = hkl[keep], g[keep]
    positions = np.asarray(atoms.positions, dtype=np.float64)
    symbols = np.asarray(atoms.get_chemical_symbols())
    g2 = np.sum(g**2, axis=1)
    amp = np.zeros(len(g), dtype=np.complex128)
    for symbol in np.unique(symbols):
        f = np.asarray(_scattering_factor(str(symbol))(g2), dtype=np.float64)
        phase = np.exp(-2j * np.pi * (g @ positions[symbols == symbol].T))
        amp += f * phase.sum(axis=1)
    volume = abs(np.linalg.det(cell))
    amplitude = np.abs(amp) / volume
    is_000 = np.all(hkl == 0, axis=1)
    strong = amplitude >= min_relative_amplitude * amplitude[~is_000].max(initial=0.0)
    keep = strong | is_000
    weight = np.exp(-g[keep, 2] ** 2 / (2 * sigma**2))
    return Reflections(hkl=hkl[keep], g_inv_A=g[keep], amplitude=amplitude[keep], weight=weight)


@functools.lru_cache(maxsize=32)
def _tukey_table(alpha: float, samples: int = 2048, pad: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """|FT| of a unit-length Tukey window on a fine frequency grid (cycles per window length)."""
    from scipy.signal.windows import tukey

    w = tukey(samples, alpha)
    spec = np.abs(np.fft.rfft(w, n=samples * pad))
    spec /= spec[0]
    freq = np.arange(len(spec)) / pad  # in units of 1 / window length
    return freq, spec


def tukey_transfer(q_inv_A: np.ndarray, window_A: float, alpha: float = 0.5) -> np.ndarray:
    """``|t̂(q)| / t̂(0)`` of a Tukey window of length ``window_A`` (Å) at frequencies q (1/Å).

    Truncated after the third side lobe (|q| > 4 / window_A → 0) to keep peaks local.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise Distill4dError(f"alpha (the Tukey taper fraction) must be in [0, 1], got {alpha!r}")
    freq, spec = _tukey_table(float(alpha))
    x = np.abs(np.asarray(q_inv_A, dtype=np.float64)) * positive_float("window_A", window_A)
    out = np.interp(x, freq, spec, right=0.0)
    out[x > 4.0] = 0.0
    return out


def structure_factor_image(
    g_xy_inv_A: np.ndarray,
    amplitude: np.ndarray,
    *,
    shape: tuple[int, int],
    q_pixel_inv_A: float,
    origin_px: tuple[float, float] | None = None,
    window_A: float | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """Render reflections as the FCU-Net target on a detector grid (float32, shape ``shape``).

    Each spot ``amplitude[i] · |t̂(qx - gx)| |t̂(qy - gy)|`` is centred at pixel
    ``origin_px + g_xy / q_pixel_inv_A`` exactly (sub-pixel). ``window_A`` (Å) is the Tukey
    window length: spots are about ``1.5 / (window_A · q_pixel_inv_A)`` px wide (FWHM);
    default ``1 / q_pixel_inv_A`` (≈ 1.5 px FWHM: well sampled wherever the spot falls).
    """
    if np.ndim(shape) != 1 or len(shape) != 2:
        raise Distill4dError(f"shape must be the detector size (Nx, Ny) in pixels, got {shape!r}")
    nx, ny = positive_int("shape", shape[0]), positive_int("shape", shape[1])
    dq = positive_float("q_pixel_inv_A", q_pixel_inv_A)
    window = 1.0 / dq if window_A is None else positive_float("window_A", window_A)
    ox, oy = (nx // 2, ny // 2) if origin_px is None else (float(origin_px[0]), float(origin_px[1]))
    g = np.asarray(g_xy_inv_A, dtype=np.float64).reshape(-1, 2)
    amp = np.asarray(amplitude, dtype=np.float64).reshape(-1)
    if len(amp) != len(g):
        raise Distill4dError(f"amplitude has {len(amp)} values for {len(g)} reflections")
    qx = (np.arange(nx) - ox) * dq
    qy = (np.arange(ny) - oy) * dq
    px = tukey_transfer(qx[None, :] - g[:, :1], window, alpha)  # (n, nx)
    py = tukey_transfer(qy[None, :] - g[:, 1:2], window, alpha)  # (n, ny)
    return np.einsum("n,ni,nj->ij", amp, px, py).astype(np.float32)
