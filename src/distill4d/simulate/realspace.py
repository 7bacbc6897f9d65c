"""Atomic-resolution 4D-STEM scans by multislice (abTEM), labelled with the projected potential.

``simulate_realspace_scan(atoms)`` scans a focused probe over a periodic specimen
(``ase.Atoms`` with an orthogonal cell, beam along +z) and records a diffraction pattern at
every probe position: a calibrated :class:`~distill4d.datacube.DataCube` with axes
``(Rx, Ry, Qx, Qy)`` (Rx and qx along the atoms' x, Ry and qy along y) and, on the same scan
grid, the labels an ML phase retrieval learns to predict: the projected potential (V·Å),
the phase ``σ V`` (rad) and the potential blurred by the probe intensity. Vacancy-bearing
MoS2 (:func:`mos2_monolayer`) and SrTiO3-like slabs (:func:`perovskite_slab`) are built in.

Grids (all reported in the returned ``metadata``):

- Scan: the cell (Lx, Ly) is tiled by ``n = round(L / scan_step_A)`` positions per axis at
  ``step = L / n`` (abTEM ``GridScan``, ``endpoint=False``), so the scan is periodic: a scan
  of a sub-region or of a region larger than the cell picks positions of that same grid.
  The two steps differ from ``scan_step_A`` by at most ``scan_step_A / (2 L)`` (relative).
- Detector: ``detector_shape`` pixels of ``mrad_per_px`` (from ``q_max_mrad``, the angle from
  the centre pixel ``Q // 2`` to the edge of the shorter axis, default 3 × semiangle).
- Simulation: the cell is repeated in x and y until it is at least ``probe_window_A`` wide
  (the probe fits without wrapping onto itself) and ``1 / q_pixel`` wide (the simulated
  reciprocal pixel is no larger than a detector pixel); the real-space sampling makes
  abTEM's anti-aliasing aperture (flat up to ``(2/3 · Nyquist) − taper``) reach the
  detector's corners (``cover_corners=True``) or the middle of its edges; the grid sizes
  are rounded up to FFT-friendly 2·3·5·7-smooth numbers.
- The simulated intensities (fraction of the incident beam per simulated pixel) are
  rebinned onto the detector by exact pixel-overlap fractions (flux conserving).
- Labels (static atoms, whole cell): abTEM's projected potential (``Potential.project()``,
  infinite projection) is computed on a finer grid whose sampling divides the scan step
  (sampling ≤ 0.05 Å). ``projected_potential`` is that array Fourier-resampled to the scan
  grid: its Fourier coefficients below the scan grid's Nyquist frequency ``1 / (2 step)``,
  i.e. the potential band-limited to what the scan grid can hold (smooth, no aliasing,
  the same for a column on or between scan points). ``projected_potential_point`` is the
  fine array read at the scan positions (exact samples, sharp and position dependent).
  ``projected_potential_blurred`` is the fine array correlated with the incident (vacuum)
  probe intensity ``|ψ|²`` (unit sum) in Fourier space, read at the scan positions.

CPU results are bit-for-bit reproducible for the same arguments: abTEM runs with
FFTW_ESTIMATE plans (no timing-dependent plan choice), one FFTW thread per task, and the
frozen-phonon displacements, vacancies and Poisson noise all come from ``seed``.
abTEM and ASE are imported only when these functions are called.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .._validate import nonnegative_float, positive_float, positive_int
from ..calibration import (
    ELECTRON_MASS_KG,
    ELEMENTARY_CHARGE_C,
    SPEED_OF_LIGHT_M_S,
    Calibration,
    electron_wavelength_A,
)
from ..datacube import DataCube
from ..errors import Distill4dError
from ._abtem import abtem_session
from .multislice import orthogonal_cell_lengths, rebin_matrix

if TYPE_CHECKING:  # pragma: no cover
    import ase

__all__ = [
    "MOS2_A_A",
    "MOS2_S_S_A",
    "apply_dose",
    "cubic_slab",
    "interaction_parameter",
    "mos2_monolayer",
    "perovskite_slab",
    "simulate_realspace_scan",
]

#: In-plane lattice constant of 2H-MoS2 (Å).
MOS2_A_A = 3.16
#: Vertical S–S distance within a MoS2 layer (Å); with ``MOS2_A_A`` the Mo–S bond is 2.42 Å.
MOS2_S_S_A = 3.17
#: Finest label sampling (Å): the label grid divides the scan step into steps at most this.
_LABEL_SAMPLING_A = 0.05
#: Largest simulation grid accepted per axis.
_MAX_GPTS = 4096


# ---------------------------------------------------------------------------- physics
def interaction_parameter(energy_eV: float) -> float:
    """Interaction parameter σ in rad/(V·Å): the phase of a projected potential is ``σ · V_proj``.

    ``σ = 2π / (λ E) · (m0c² + E) / (2 m0c² + E)`` (relativistic; E in eV, λ in Å);
    0.000653 rad/(V·Å) at 300 kV, 0.00101 at 80 kV.
    """
    energy = positive_float("energy_eV", energy_eV)
    rest_eV = ELECTRON_MASS_KG * SPEED_OF_LIGHT_M_S**2 / ELEMENTARY_CHARGE_C
    lam = electron_wavelength_A(energy)
    return 2 * math.pi / (lam * energy) * (rest_eV + energy) / (2 * rest_eV + energy)


# ---------------------------------------------------------------------------- structures
def _pair(name: str, value: Any, *, minimum: int = 1) -> tuple[int, int]:
    """``value`` (one integer or two) as a pair of integers >= ``minimum``."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer or a pair of integers, got {value!r}") from None
    if len(items) != 2:
        raise Distill4dError(f"{name} must be a pair of integers, got {value!r}")
    a, b = (positive_int(name, v, minimum=minimum) for v in items)
    return a, b


def mos2_monolayer(
    *,
    repeats: tuple[int, int] = (4, 2),
    vacancy_fraction: float = 0.0,
    vacancy_element: str = "S",
    seed: int = 0,
    a_A: float = MOS2_A_A,
    vacuum_A: float = 2.0,
) -> ase.Atoms:
    """Orthogonal supercell of monolayer 2H-MoS2 with optional random vacancies.

    The hexagonal cell (``ase.build.mx2``, a = ``a_A``, S–S distance ``MOS2_S_S_A``) is made
    rectangular with ``abtem.orthogonalize_cell`` (a × √3 a, 2 Mo + 4 S: 3.16 × 5.47 Å) and
    repeated ``repeats = (n1, n2)`` times along x and y. The layer sits in the middle of the
    cell with ``vacuum_A`` of vacuum above and below (abTEM needs the atoms inside the cell).

    ``round(vacancy_fraction · N)`` of the N atoms of ``vacancy_element`` ("S" or "Mo") are
    removed at random (``seed``). ``atoms.info`` records ``removed_indices`` (indices in the
    vacancy-free supercell), ``removed_positions`` (Å), ``removed_symbols`` and the inputs.
    """
    import abtem
    import ase.build

    n1, n2 = _pair("repeats", repeats)
    a = positive_float("a_A", a_A, maximum=100.0)
    vacuum = nonnegative_float("vacuum_A", vacuum_A)
    fraction = nonnegative_float("vacancy_fraction", vacancy_fraction)
    if fraction > 1:
        raise Distill4dError(f"vacancy_fraction must be in [0, 1], got {vacancy_fraction!r}")
    if vacancy_element not in ("S", "Mo"):
        raise Distill4dError(f"vacancy_element must be 'S' or 'Mo', got {vacancy_element!r}")
    seed = _seed(seed)

    cell = ase.build.mx2("MoS2", kind="2H", a=a, thickness=MOS2_S_S_A, vacuum=vacuum)
    atoms = abtem.orthogonalize_cell(cell) * (n1, n2, 1)
    lengths = atoms.cell.lengths()
    atoms.positions[:, :2] = np.mod(atoms.positions[:, :2], lengths[:2])
    # mod can return L itself for -1e-16; fold it back to 0
    atoms.positions[:, :2] = np.where(atoms.positions[:, :2] >= lengths[:2], 0.0, atoms.positions[:, :2])
    atoms.pbc = (True, True, False)

    candidates = np.flatnonzero(np.array(atoms.get_chemical_symbols()) == vacancy_element)
    n_remove = round(fraction * len(candidates))
    removed = np.sort(np.random.default_rng(seed).choice(candidates, size=n_remove, replace=False))
    info = {
        "material": "MoS2 (2H monolayer)",
        "repeats": (n1, n2),
        "a_A": a,
        "vacancy_element": vacancy_element,
        "vacancy_fraction": fraction,
        "seed": seed,
        "removed_indices": removed.astype(np.int64),
        "removed_positions": atoms.positions[removed].copy(),
        "removed_symbols": [vacancy_element] * n_remove,
    }
    if n_remove:
        del atoms[removed.tolist()]
    atoms.info.update(info)
    return atoms


_FORMULA = re.compile(r"^([A-Z][a-z]?)([A-Z][a-z]?)([A-Z][a-z]?)3$")


def perovskite_slab(
    *,
    thickness_A: float,
    repeats: tuple[int, int] = (4, 4),
    formula: str = "SrTiO3",
    a_A: float = 3.905,
    zone: str = "001",
    vacuum_A: float = 2.0,
) -> ase.Atoms:
    """A cubic ABX3 perovskite slab viewed along [001] (the beam, +z).

    Unit cell: A at (0, 0, 0), B at (½, ½, ½), X at (½, ½, 0), (½, 0, ½), (0, ½, ½) (×a).
    Along z: columns of A, of B+X (alternating) and of X only. The slab is
    ``max(1, round(thickness_A / a_A))`` cells thick (``atoms.info["thickness_A"]``),
    ``repeats`` cells wide in x and y, with ``vacuum_A`` above and below.
    """
    import ase

    thickness = positive_float("thickness_A", thickness_A, maximum=5000.0)
    nx, ny = _pair("repeats", repeats)
    a = positive_float("a_A", a_A, maximum=100.0)
    vacuum = nonnegative_float("vacuum_A", vacuum_A)
    if str(zone).strip("[]") != "001":
        raise Distill4dError(f"zone must be '001' (the only zone axis implemented), got {zone!r}")
    match = _FORMULA.match(str(formula))
    if match is None:
        raise Distill4dError(f"formula must be an ABX3 perovskite such as 'SrTiO3', got {formula!r}")
    a_sym, b_sym, x_sym = match.groups()
    frac = [(0.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, 0.5, 0.0), (0.5, 0.0, 0.5), (0.0, 0.5, 0.5)]
    unit = ase.Atoms(
        symbols=[a_sym, b_sym, x_sym, x_sym, x_sym],
        scaled_positions=frac,
        cell=[a, a, a],
        pbc=True,
    )
    atoms = _stack_slab(unit, thickness, (nx, ny), vacuum)
    atoms.info.update({"material": f"{formula} [001]", "a_A": a})
    return atoms


_CUBIC_KINDS = ("sc", "fcc", "bcc", "diamond", "zincblende", "rocksalt", "cesiumchloride", "fluorite")


def cubic_slab(
    formula: str,
    crystalstructure: str,
    *,
    a_A: float,
    thickness_A: float,
    repeats: tuple[int, int] = (3, 3),
    vacuum_A: float = 2.0,
) -> ase.Atoms:
    """A slab of a cubic crystal viewed along [001] (the beam, +z).

    The conventional cubic cell of ``ase.build.bulk(formula, crystalstructure, a=a_A,
    cubic=True)`` (e.g. ``("Si", "diamond")``, ``("MgO", "rocksalt")``, ``("GaAs",
    "zincblende")``, ``("CeO2", "fluorite")``, ``("Cu", "fcc")``) is repeated ``repeats`` times
    in x, y and ``max(1, round(thickness_A / a_A))`` times along z, with ``vacuum_A`` above
    and below. ``atoms.info`` records the material, ``a_A``, ``repeats``, ``n_cells_z`` and
    ``thickness_A`` (the slab's actual thickness).
    """
    import ase.build

    thickness = positive_float("thickness_A", thickness_A, maximum=5000.0)
    nx, ny = _pair("repeats", repeats)
    a = positive_float("a_A", a_A, maximum=100.0)
    vacuum = nonnegative_float("vacuum_A", vacuum_A)
    if crystalstructure not in _CUBIC_KINDS:
        raise Distill4dError(f"crystalstructure must be one of {_CUBIC_KINDS}, got {crystalstructure!r}")
    try:
        unit = ase.build.bulk(formula, crystalstructure, a=a, cubic=True)
    except (ValueError, KeyError, AssertionError) as err:
        raise Distill4dError(f"cannot build {crystalstructure} {formula!r}: {err}") from None
    atoms = _stack_slab(unit, thickness, (nx, ny), vacuum)
    atoms.info.update({"material": f"{formula} ({crystalstructure}) [001]", "a_A": a})
    return atoms


def _stack_slab(unit: ase.Atoms, thickness_A: float, repeats: tuple[int, int], vacuum_A: float) -> ase.Atoms:
    """``unit`` (orthogonal cell, atoms in [0, c) along z) repeated to a slab about ``thickness_A``
    thick with ``vacuum_A`` above and below; periodic in x, y only."""
    c = float(unit.cell[2, 2])
    nz = max(1, round(thickness_A / c))
    atoms = unit * (repeats[0], repeats[1], nz)
    atoms.positions[:, 2] = np.mod(atoms.positions[:, 2], nz * c) + vacuum_A
    atoms.cell[2, 2] = nz * c + 2 * vacuum_A
    atoms.pbc = (True, True, False)
    atoms.info.update({"repeats": tuple(repeats), "n_cells_z": nz, "thickness_A": nz * c})
    return atoms


# ---------------------------------------------------------------------------- grids
def _seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise Distill4dError(f"seed must be an integer >= 0, got {seed!r}")
    return int(seed)


def _smooth_size(n: int) -> int:
    """Smallest 2·3·5·7-smooth integer >= n (fast FFT sizes)."""
    m = max(1, int(n))
    while True:
        k = m
        for p in (2, 3, 5, 7):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def _check_atoms(atoms: Any) -> ase.Atoms:
    """A copy of ``atoms`` with x, y wrapped into an orthogonal cell; z checked inside (0, Lz)."""
    lengths = orthogonal_cell_lengths(atoms)
    z = atoms.positions[:, 2]
    if z.min() < 0 or z.max() >= lengths[2]:
        raise Distill4dError(
            f"atoms must lie inside the cell along z (0 <= z < {lengths[2]:.4g} Å), got z in "
            f"[{z.min():.4g}, {z.max():.4g}] Å; add vacuum (atoms.center(vacuum=2.0, axis=2))"
        )
    out = atoms.copy()
    out.positions[:, :2] = np.mod(out.positions[:, :2], lengths[:2])
    out.positions[:, :2] = np.where(out.positions[:, :2] >= lengths[:2], 0.0, out.positions[:, :2])
    out.pbc = (True, True, False)
    return out


@dataclass(frozen=True)
class _Grids:
    """Scan, detector, simulation and label grids (lengths in Å, k in 1/Å)."""

    cell_A: tuple[float, float, float]
    cell_scan: tuple[int, int]  # scan positions tiling the cell
    step_A: tuple[float, float]
    region: tuple[tuple[int, int], tuple[int, int]]  # scan-grid indices [start, stop)
    shape_q: tuple[int, int]
    mrad_per_px: float
    q_pixel: float
    repetitions: tuple[int, int]
    gpts: tuple[int, int]
    sampling_A: tuple[float, float]
    k_needed: float
    label_sub: tuple[int, int]  # label grid points per scan step


def _plan(
    lengths: np.ndarray,
    *,
    wavelength: float,
    semiangle_mrad: float,
    defocus_A: float,
    scan_step_A: float,
    scan_region: Any,
    detector_shape: tuple[int, int],
    q_max_mrad: float | None,
    mrad_per_px: float | None,
    cover_corners: bool,
    sampling_A: float | None,
    probe_window_A: float | None,
) -> _Grids:
    n_cell = tuple(max(1, round(lengths[i] / scan_step_A)) for i in range(2))
    step = tuple(float(lengths[i] / n_cell[i]) for i in range(2))
    if scan_region is None:
        region = ((0, 0), n_cell)
    else:
        try:
            (x0, y0), (x1, y1) = ((float(u), float(v)) for u, v in scan_region)
        except (TypeError, ValueError):
            raise Distill4dError(
                f"scan_region must be ((x0, y0), (x1, y1)) in Å or None, got {scan_region!r}"
            ) from None
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            raise Distill4dError(f"scan_region must be finite, got {scan_region!r}")
        start = (round(x0 / step[0]), round(y0 / step[1]))
        stop = (round(x1 / step[0]), round(y1 / step[1]))
        if stop[0] <= start[0] or stop[1] <= start[1]:
            raise Distill4dError(
                f"scan_region {scan_region!r} holds no scan position of the {step[0]:.4g} x "
                f"{step[1]:.4g} Å grid: it needs x1 > x0 and y1 > y0 by at least one step"
            )
        region = (start, stop)

    half = min(detector_shape) // 2
    if q_max_mrad is not None and mrad_per_px is not None:
        raise Distill4dError("give q_max_mrad or mrad_per_px, not both")
    if mrad_per_px is None:
        q_max = 3.0 * semiangle_mrad if q_max_mrad is None else q_max_mrad
        mrad_per_px = q_max / half
    radius_px = semiangle_mrad / mrad_per_px
    if radius_px < 2:
        raise Distill4dError(
            f"the bright-field disk ({semiangle_mrad:g} mrad) spans {radius_px:.2f} < 2 detector pixels of "
            f"{mrad_per_px:.4g} mrad: lower q_max_mrad / mrad_per_px or enlarge detector_shape"
        )
    if radius_px >= half - 1:
        raise Distill4dError(
            f"the bright-field disk ({semiangle_mrad:g} mrad = {radius_px:.1f} px) does not fit in the "
            f"{detector_shape} detector: raise q_max_mrad / mrad_per_px above semiangle_mrad"
        )
    q_pixel = mrad_per_px * 1e-3 / wavelength

    # Farthest detector pixel edge from the origin (pixel Q // 2), along the axes or at a corner.
    edges = [(q // 2 + 0.5) * q_pixel for q in detector_shape]
    k_needed = math.hypot(*edges) if cover_corners else max(edges)
    # abTEM's anti-aliasing aperture is 1 for k < (cutoff / 2 - taper) / max(sampling).
    flat = 2.0 / 3.0 / 2.0 - 0.01
    max_sampling = flat / (k_needed * 1.01)
    if sampling_A is not None:
        if sampling_A > max_sampling:
            raise Distill4dError(
                f"sampling_A = {sampling_A:g} Å is too coarse for the detector: abTEM keeps only "
                f"|k| < {flat / sampling_A:.3g} 1/Å, the detector reaches {k_needed:.3g} 1/Å; "
                f"use sampling_A <= {max_sampling:.4g} Å"
            )
        max_sampling = sampling_A
    alpha = semiangle_mrad * 1e-3
    window = 10.0 + 2 * abs(defocus_A) * alpha if probe_window_A is None else probe_window_A
    extent_min = max(window, 1.0 / q_pixel)
    reps = tuple(max(1, math.ceil(extent_min / lengths[i] - 1e-9)) for i in range(2))
    gpts = tuple(_smooth_size(math.ceil(reps[i] * lengths[i] / max_sampling - 1e-9)) for i in range(2))
    if max(gpts) > _MAX_GPTS:
        raise Distill4dError(
            f"the simulation grid would be {gpts[0]} x {gpts[1]} points (> {_MAX_GPTS}): lower q_max_mrad "
            f"or mrad_per_px, or use a smaller cell"
        )
    sampling = tuple(reps[i] * lengths[i] / gpts[i] for i in range(2))
    label_sub = tuple(max(1, math.ceil(step[i] / _LABEL_SAMPLING_A - 1e-9)) for i in range(2))
    return _Grids(
        cell_A=tuple(float(v) for v in lengths),
        cell_scan=n_cell,
        step_A=step,
        region=region,
        shape_q=tuple(detector_shape),
        mrad_per_px=float(mrad_per_px),
        q_pixel=float(q_pixel),
        repetitions=reps,
        gpts=gpts,
        sampling_A=sampling,
        k_needed=k_needed,
        label_sub=label_sub,
    )


def _rebin_matrix(n_src: int, dk_src: float, n_out: int, dq: float):
    """Sparse ``(n_out, n_src)`` overlap fractions (:func:`~distill4d.simulate.multislice.rebin_matrix`):
    source pixel i centred at ``(i - n_src//2) dk``, detector pixel j at ``(j - n_out//2) dq``."""
    import scipy.sparse

    k = (np.arange(n_src) - n_src // 2) * dk_src
    return scipy.sparse.csr_matrix(rebin_matrix(k, dk_src, n_out, dq, n_out // 2))


def _rebin_block(block: np.ndarray, wx: Any, wy: Any) -> np.ndarray:
    """Rebin a block ``(..., Sx, Sy)`` of patterns to ``(..., Qx, Qy)`` float32 (sparse, sequential)."""
    lead = block.shape[:-2]
    sx, sy = block.shape[-2:]
    arr = np.asarray(block, dtype=np.float64).reshape(-1, sx, sy)
    b = arr.shape[0]
    # x: (Qx, Sx) @ (Sx, B*Sy)
    tmp = wx @ arr.transpose(1, 0, 2).reshape(sx, b * sy)
    tmp = tmp.reshape(wx.shape[0], b, sy).transpose(1, 0, 2).reshape(b * wx.shape[0], sy)
    # y: (Qy, Sy) @ (Sy, B*Qx)
    out = (wy @ tmp.T).T.reshape(b, wx.shape[0], wy.shape[0])
    return out.astype(np.float32).reshape(lead + out.shape[1:])


# ---------------------------------------------------------------------------- labels
def _label_potential(abtem: Any, atoms: ase.Atoms, grids: _Grids) -> np.ndarray:
    """Projected potential (V·Å) on the label grid: ``label_sub`` points per scan step."""
    shape = tuple(grids.cell_scan[i] * grids.label_sub[i] for i in range(2))
    pot = abtem.Potential(atoms, gpts=shape, slice_thickness=grids.cell_A[2], projection="infinite", device="cpu")
    image = pot.project().compute(scheduler="synchronous")
    return np.asarray(image.array, dtype=np.float64)


def _fourier_crop(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resample a periodic real 2D array to ``shape`` (no finer than it) by keeping its Fourier
    coefficients below the new Nyquist frequency (the even-size Nyquist bin gets the mean of
    ±Nyquist, which keeps the result real); the mean is preserved."""
    spec = np.fft.fft2(array)
    for axis, n in enumerate(shape):
        big = spec.shape[axis]
        j = np.fft.fftfreq(n, 1.0 / n).round().astype(np.int64)
        spec_ax = np.take(spec, np.mod(j, big), axis=axis)
        if n % 2 == 0 and n < big:
            nyq = [slice(None)] * 2
            nyq[axis] = slice(n // 2, n // 2 + 1)
            spec_ax[tuple(nyq)] = 0.5 * (
                np.take(spec, [n // 2], axis=axis) + np.take(spec, [big - n // 2], axis=axis)
            )
        spec = spec_ax
    return np.fft.ifft2(spec).real * (shape[0] * shape[1]) / (array.shape[0] * array.shape[1])


def _probe_spectrum(abtem: Any, grids: _Grids, probe_kwargs: dict[str, Any], fine_shape: tuple[int, int]) -> np.ndarray:
    """Fourier coefficients of the probe intensity (unit sum, centred at the origin) at the
    frequencies of the label grid (cell-periodic, NumPy FFT order)."""
    # Twice the simulation's points over the same extent: |ψ|² (band 2 k_aperture) is not aliased.
    big = tuple(2 * g for g in grids.gpts)
    extent = tuple(grids.repetitions[i] * grids.cell_A[i] for i in range(2))
    probe = abtem.Probe(gpts=big, extent=extent, device="cpu", **probe_kwargs)
    wave = np.asarray(probe.build(lazy=False).array).reshape(big)
    inten = np.abs(wave.astype(np.complex128)) ** 2
    inten /= inten.sum()
    spec = np.fft.fft2(np.fft.ifftshift(inten))  # probe moved from the centre (N//2) to 0
    out = np.zeros(fine_shape, dtype=np.complex128)
    idx = []
    for ax in range(2):
        j = np.fft.fftfreq(fine_shape[ax], 1.0 / fine_shape[ax]).round().astype(np.int64)
        i = j * grids.repetitions[ax]
        ok = np.abs(i) < big[ax] // 2  # beyond: the probe intensity has no Fourier component
        idx.append((np.flatnonzero(ok), np.mod(i[ok], big[ax])))
    out[np.ix_(idx[0][0], idx[1][0])] = spec[np.ix_(idx[0][1], idx[1][1])]
    return out


# ---------------------------------------------------------------------------- noise
def apply_dose(datacube: DataCube, dose_e: float, *, seed: int = 0) -> DataCube:
    """Poisson counts for ``dose_e`` incident electrons per pattern (uint32 data).

    ``datacube`` holds fractions of the incident beam per pixel (as returned by
    :func:`simulate_realspace_scan` without ``dose_e``); each pixel becomes
    ``Poisson(dose_e · value)`` drawn from ``numpy.random.default_rng(seed)``.
    """
    dose = positive_float("dose_e", dose_e, maximum=1e12)
    seed = _seed(seed)
    data = np.asarray(datacube.data, dtype=np.float64)
    if np.any(data < 0) or not np.all(np.isfinite(data)):
        raise Distill4dError("datacube must hold finite, non-negative beam fractions to apply a dose")
    counts = np.random.default_rng(seed).poisson(data * dose)
    return DataCube(counts.astype(np.uint32), datacube.calibration, name=datacube.name)


# ---------------------------------------------------------------------------- simulation
def simulate_realspace_scan(
    atoms: ase.Atoms,
    *,
    energy_eV: float = 80e3,
    semiangle_mrad: float = 25.0,
    defocus_A: float = 0.0,
    scan_step_A: float = 0.2,
    scan_region: tuple[tuple[float, float], tuple[float, float]] | None = None,
    detector_shape: int | tuple[int, int] = (64, 64),
    q_max_mrad: float | None = None,
    mrad_per_px: float | None = None,
    cover_corners: bool = True,
    slice_thickness_A: float = 1.0,
    sampling_A: float | None = None,
    probe_window_A: float | None = None,
    frozen_phonons: int = 0,
    phonon_sigma_A: float | Mapping[str, float] = 0.08,
    dose_e: float | None = None,
    seed: int = 0,
    device: str = "cpu",
    num_workers: int | None = None,
    name: str = "multislice scan",
) -> tuple[DataCube, dict[str, Any]]:
    """Multislice 4D-STEM scan of ``atoms`` (abTEM) with projected-potential labels.

    Parameters
    ----------
    atoms : ``ase.Atoms`` with an orthogonal cell, periodic in x and y, beam along +z, all
        atoms inside ``0 <= z < Lz`` (e.g. :func:`mos2_monolayer`, :func:`perovskite_slab`).
    energy_eV : beam energy (eV).
    semiangle_mrad : probe convergence semiangle (mrad), abTEM's soft aperture.
    defocus_A : probe defocus (Å; positive = underfocus, ``C10 = -defocus_A``); the focus
        is at the entrance plane (z = 0) of the cell.
    scan_step_A : requested scan step (Å); adjusted per axis to tile the cell (module notes).
    scan_region : ``((x0, y0), (x1, y1))`` in Å (end excluded; may leave the cell, which is
        periodic), snapped to the cell's scan grid; None scans the whole cell.
    detector_shape : detector pixels (Qx, Qy) or one size for a square detector (>= 8).
    q_max_mrad : angle from the centre pixel to the edge of the shorter detector axis (mrad),
        default 3 × ``semiangle_mrad``; or give ``mrad_per_px`` instead.
    cover_corners : simulate angles up to the detector corners (else up to the edges; the
        corners beyond are then zero), about 2x the cost.
    slice_thickness_A : multislice slice thickness (Å).
    sampling_A : real-space sampling of the simulation (Å); default the coarsest that the
        detector allows.
    probe_window_A : smallest simulated extent (Å) so the probe does not overlap itself,
        default ``10 + 2 |defocus_A| α``; the cell is repeated in x, y to reach it.
    frozen_phonons : number of frozen-phonon configurations averaged (0: static atoms).
    phonon_sigma_A : r.m.s. displacement per direction (Å), one value or ``{symbol: value}``.
    dose_e : incident electrons per pattern for Poisson noise (uint32 counts), or None for
        noise-free float32 fractions of the incident beam per pixel.
    seed : seed of the frozen phonons (abTEM ``FrozenPhonons``) and of the noise.
    device : ``"cpu"`` or ``"gpu"`` (abTEM with CuPy; not bit-reproducible).
    num_workers : threads of the Dask scheduler (default: Dask's own, the CPU count).
    name : name of the returned DataCube.

    Returns
    -------
    datacube : patterns ``(Rx, Ry, Qx, Qy)`` with the calibration (``scan_step_A`` is the
        geometric mean of the two adjusted steps, ``origin_px = (Qx // 2, Qy // 2)``).
    labels : dict of ``(Rx, Ry)`` float64 arrays on the scan positions (module notes) —
        ``projected_potential`` (V·Å, band-limited to the scan grid), ``phase`` (rad,
        σ · ``projected_potential``, σ from :func:`interaction_parameter`),
        ``projected_potential_point`` (V·Å, exact samples), ``projected_potential_blurred``
        (V·Å, correlated with the probe intensity) — ``scan_positions_A`` ``(Rx, Ry, 2)``
        (x, y in Å), ``atoms_removed`` (``indices``, ``positions_A``, ``symbols``, when
        ``atoms.info`` records vacancies, see :func:`mos2_monolayer`) and ``metadata``
        (grids, optics, thickness, detected flux, timing).
    """
    atoms = _check_atoms(atoms)
    energy = positive_float("energy_eV", energy_eV, maximum=1e7)
    if energy < 1e3:
        raise Distill4dError(f"energy_eV must be at least 1e3 eV for multislice, got {energy_eV!r}")
    semiangle = positive_float("semiangle_mrad", semiangle_mrad, maximum=200.0)
    try:
        defocus = float(defocus_A)
    except (TypeError, ValueError):
        raise TypeError(f"defocus_A must be a number, got {defocus_A!r}") from None
    if not math.isfinite(defocus):
        raise Distill4dError(f"defocus_A must be finite, got {defocus_A!r}")
    step = positive_float("scan_step_A", scan_step_A, maximum=100.0)
    shape_q = _pair("detector_shape", detector_shape, minimum=8)
    if q_max_mrad is not None:
        q_max_mrad = positive_float("q_max_mrad", q_max_mrad, maximum=2000.0)
    if mrad_per_px is not None:
        mrad_per_px = positive_float("mrad_per_px", mrad_per_px, maximum=500.0)
    slice_thickness = positive_float("slice_thickness_A", slice_thickness_A, maximum=100.0)
    if sampling_A is not None:
        sampling_A = positive_float("sampling_A", sampling_A, maximum=10.0)
    if probe_window_A is not None:
        probe_window_A = positive_float("probe_window_A", probe_window_A, maximum=1e4)
    n_fp = frozen_phonons
    if isinstance(n_fp, bool) or not isinstance(n_fp, (int, np.integer)) or n_fp < 0:
        raise Distill4dError(f"frozen_phonons must be an integer >= 0, got {frozen_phonons!r}")
    n_fp = int(n_fp)
    symbols = sorted(set(atoms.get_chemical_symbols()))
    if isinstance(phonon_sigma_A, Mapping):
        missing = [s for s in symbols if s not in phonon_sigma_A]
        if missing:
            raise Distill4dError(f"phonon_sigma_A has no value for {missing}; give one for each of {symbols}")
        sigmas: float | dict[str, float] = {
            s: nonnegative_float(f"phonon_sigma_A[{s!r}]", phonon_sigma_A[s]) for s in symbols
        }
    else:
        sigmas = nonnegative_float("phonon_sigma_A", phonon_sigma_A)
    if dose_e is not None:
        dose_e = positive_float("dose_e", dose_e, maximum=1e12)
    seed = _seed(seed)
    if device not in ("cpu", "gpu"):
        raise Distill4dError(f"device must be 'cpu' or 'gpu', got {device!r}")
    if num_workers is not None:
        num_workers = positive_int("num_workers", num_workers)

    lengths = np.diag(np.asarray(atoms.cell, dtype=np.float64)).copy()
    wavelength = electron_wavelength_A(energy)
    grids = _plan(
        lengths,
        wavelength=wavelength,
        semiangle_mrad=semiangle,
        defocus_A=defocus,
        scan_step_A=step,
        scan_region=scan_region,
        detector_shape=shape_q,
        q_max_mrad=q_max_mrad,
        mrad_per_px=mrad_per_px,
        cover_corners=bool(cover_corners),
        sampling_A=sampling_A,
        probe_window_A=probe_window_A,
    )
    (i0, j0), (i1, j1) = grids.region
    scan_shape = (i1 - i0, j1 - j0)
    probe_kwargs: dict[str, Any] = {"semiangle_cutoff": semiangle, "energy": energy}
    if defocus:
        probe_kwargs["aberrations"] = {"C10": -defocus}

    t0 = time.perf_counter()
    with abtem_session(device, lazy=True) as abtem:
        sim_atoms = atoms * (grids.repetitions[0], grids.repetitions[1], 1)
        source: Any = sim_atoms
        if n_fp:
            source = abtem.FrozenPhonons(sim_atoms, num_configs=n_fp, sigmas=sigmas, seed=seed, ensemble_mean=True)
        potential = abtem.Potential(
            source, gpts=grids.gpts, slice_thickness=slice_thickness, projection="infinite", device=device
        )
        compute_kwargs: dict[str, Any] = {"scheduler": "threads"}
        if num_workers is not None:
            compute_kwargs["num_workers"] = num_workers
        potential_array = potential.build(lazy=True).compute(**compute_kwargs)
        n_slices = int(potential.num_slices)
        probe = abtem.Probe(device=device, **probe_kwargs)
        probe.grid.match(potential_array)
        scan = abtem.GridScan(
            start=(i0 * grids.step_A[0], j0 * grids.step_A[1]),
            end=(i1 * grids.step_A[0], j1 * grids.step_A[1]),
            gpts=scan_shape,
            endpoint=False,
        )
        n_pos = scan_shape[0] * scan_shape[1]
        workers = num_workers or os.cpu_count() or 1
        per_wave = grids.gpts[0] * grids.gpts[1] * 8 * max(1, n_fp)
        max_batch = int(max(1, min(math.ceil(n_pos / (2 * workers)), 64e6 // per_wave)))
        detector = abtem.PixelatedDetector(max_angle="cutoff")
        measured = probe.scan(potential_array, scan=scan, detectors=detector, max_batch=max_batch, lazy=True)
        src_shape = tuple(int(s) for s in measured.shape[-2:])
        dk = tuple(float(s) for s in measured.sampling[-2:])
        wx = _rebin_matrix(src_shape[0], dk[0], shape_q[0], grids.q_pixel)
        wy = _rebin_matrix(src_shape[1], dk[1], shape_q[1], grids.q_pixel)
        lazy = measured.array
        if lazy.ndim != 4 or tuple(lazy.shape[:2]) != scan_shape:
            raise RuntimeError(f"abTEM returned patterns of shape {lazy.shape}, expected {scan_shape} + (Sx, Sy)")
        lazy = lazy.rechunk({2: -1, 3: -1})
        totals_lazy = lazy.sum(axis=(2, 3))
        rebinned = lazy.map_blocks(
            _rebin_block, wx, wy, chunks=lazy.chunks[:2] + ((shape_q[0],), (shape_q[1],)), dtype=np.float32
        )
        import dask

        patterns, totals = dask.compute(rebinned, totals_lazy, **compute_kwargs)
        patterns = np.ascontiguousarray(patterns, dtype=np.float32)
        seconds_scan = time.perf_counter() - t0

        # Labels: static atoms, on a grid dividing the scan step (module notes).
        fine = _label_potential(abtem, atoms, grids)
        spectrum = _probe_spectrum(abtem, grids, probe_kwargs, fine.shape)
    blurred_fine = np.fft.ifft2(np.fft.fft2(fine) * np.conj(spectrum)).real
    ix = (np.arange(i0, i1) % grids.cell_scan[0]) * grids.label_sub[0]
    iy = (np.arange(j0, j1) % grids.cell_scan[1]) * grids.label_sub[1]
    v_point = fine[np.ix_(ix, iy)]
    v_band = _fourier_crop(fine, grids.cell_scan)
    v_proj = v_band[np.ix_(ix // grids.label_sub[0], iy // grids.label_sub[1])]
    sigma = interaction_parameter(energy)
    xs = np.arange(i0, i1) * grids.step_A[0]
    ys = np.arange(j0, j1) * grids.step_A[1]
    positions = np.stack(np.meshgrid(xs, ys, indexing="ij"), axis=-1)

    cal = Calibration(
        scan_step_A=math.sqrt(grids.step_A[0] * grids.step_A[1]),
        q_pixel_inv_A=grids.q_pixel,
        energy_eV=energy,
        semiangle_mrad=semiangle,
        origin_px=(shape_q[0] // 2, shape_q[1] // 2),
    )
    datacube = DataCube(patterns, cal, name=str(name))
    if dose_e is not None:
        datacube = apply_dose(datacube, dose_e, seed=seed)

    z = atoms.positions[:, 2]
    metadata: dict[str, Any] = {
        "energy_eV": energy,
        "wavelength_A": wavelength,
        "semiangle_mrad": semiangle,
        "defocus_A": defocus,
        "sigma_rad_per_V_A": sigma,
        "thickness_A": float(lengths[2]),
        "sample_thickness_A": float(z.max() - z.min()),
        "cell_A": grids.cell_A,
        "scan_step_A": step,
        "scan_step_xy_A": grids.step_A,
        "scan_shape": scan_shape,
        "scan_start_index": (i0, j0),
        "cell_scan_shape": grids.cell_scan,
        "detector_shape": shape_q,
        "mrad_per_px": grids.mrad_per_px,
        "q_pixel_inv_A": grids.q_pixel,
        "q_max_mrad": grids.mrad_per_px * (min(shape_q) // 2),
        "simulated_k_max_inv_A": grids.k_needed,
        "sim_repetitions": grids.repetitions,
        "sim_gpts": grids.gpts,
        "sim_sampling_A": tuple(float(v) for v in grids.sampling_A),
        "sim_extent_A": tuple(grids.repetitions[i] * grids.cell_A[i] for i in range(2)),
        "sim_pattern_shape": src_shape,
        "sim_k_sampling_inv_A": dk,
        "antialias_cutoff_inv_A": (2.0 / 3.0) / (2 * max(grids.sampling_A)),
        "slice_thickness_A": slice_thickness,
        "num_slices": n_slices,
        "frozen_phonons": n_fp,
        "phonon_sigma_A": sigmas,
        "seed": seed,
        "dose_e": dose_e,
        "units": "fraction of the incident beam per pixel" if dose_e is None else "electrons (Poisson counts)",
        # mean total intensity inside abTEM's anti-aliasing aperture, and on the detector
        "simulated_fraction_mean": float(np.mean(totals)),
        "detected_fraction_mean": float(patterns.sum(axis=(2, 3), dtype=np.float64).mean()),
        "label_sampling_A": tuple(grids.step_A[i] / grids.label_sub[i] for i in range(2)),
        "label_method": "abTEM projected potential (infinite projection, static atoms) on a grid dividing "
        "the scan step; projected_potential: Fourier-resampled to the scan grid (band-limited); "
        "projected_potential_point: read at the scan positions",
        "device": device,
        "abtem_version": abtem.__version__,
        "seconds": seconds_scan,
    }
    labels: dict[str, Any] = {
        "projected_potential": v_proj,
        "phase": sigma * v_proj,
        "projected_potential_point": v_point,
        "projected_potential_blurred": blurred_fine[np.ix_(ix, iy)],
        "scan_positions_A": positions,
        "metadata": metadata,
    }
    info = atoms.info
    if "removed_indices" in info and len(info["removed_indices"]):
        labels["atoms_removed"] = {
            "indices": np.asarray(info["removed_indices"]),
            "positions_A": np.asarray(info["removed_positions"]),
            "symbols": list(info.get("removed_symbols", [])),
        }
    return datacube, labels
