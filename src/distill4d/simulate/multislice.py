"""Convergent-beam diffraction patterns by multislice (abTEM), on a detector's pixel grid.

``simulate_cbed(atoms, settings)`` runs one multislice propagation of a convergent probe
through a periodic crystal (``ase.Atoms`` with an orthogonal cell, beam along +z) and
returns the diffraction pattern at every requested thickness (one propagation gives the
whole thickness series), the vacuum probe, the FCU-Net structure-factor target and the
kinematic Bragg peak list, all on the same detector grid (``shape`` pixels of
``q_pixel_inv_A``; pixel ``(i, j)`` is centred at ``q = ((i, j) - origin_px) · q_pixel_inv_A``
with ``origin_px = (Nx // 2, Ny // 2)``; axis 0 is qx along the atoms' x).

How the grid is built:
- The crystal is tiled in x and y to a square-ish supercell at least
  ``oversample / q_pixel_inv_A`` and ``3 λ / α`` wide, so that the simulation's reciprocal
  sampling ``1 / extent`` is at least as fine as a detector pixel and the probe fits.
- The real-space sampling is chosen so that abTEM's anti-aliasing aperture (2/3 of the
  Nyquist frequency) reaches the largest detector |q| on the axes, ``min(shape) / 2 · q``:
  the corners of the detector beyond that circle are zero.
- Thicknesses are whole numbers of the cell's z period (the actual values are returned),
  one potential unit repeated along z (abTEM ``CrystalPotential``).
- The diffraction intensity ``|FFT ψ|²`` (normalised so that the incident probe has total 1)
  is rebinned onto the detector by exact pixel-overlap fractions (flux conserving, separable
  in x and y).
- Tilt is a beam/sample tilt in the Fresnel propagator (abTEM ``Probe(tilt=...)``): the
  transmitted disk stays at the detector origin and the Laue circle moves.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np

from .._validate import nonnegative_float, positive_float, positive_int
from ..calibration import Calibration
from ..errors import Distill4dError
from ._abtem import abtem_session
from .structure_factor import kinematic_reflections, structure_factor_image

__all__ = [
    "CBEDResult",
    "CBEDSettings",
    "bragg_peak_list",
    "orthogonal_cell_lengths",
    "rebin_matrix",
    "simulate_cbed",
    "stretch_cell",
    "strain_renderer",
    "vacuum_probe_pattern",
    "wavelength_A",
]


def wavelength_A(energy_eV: float) -> float:
    """Relativistic electron wavelength (Å) at ``energy_eV``."""
    return Calibration(energy_eV=energy_eV).wavelength_A


@dataclasses.dataclass(frozen=True)
class CBEDSettings:
    """Microscope and detector settings of a CBED simulation.

    energy_eV : beam energy (eV), 20 keV to 1 MeV.
    semiangle_mrad : probe convergence semiangle (mrad).
    shape : detector pixels (Nx, Ny).
    q_pixel_inv_A : detector pixel size (1/Å).
    thicknesses_A : sample thicknesses (Å); rounded to whole cells (see ``CBEDResult``).
    tilt_mrad : sample (beam) tilt about y and x, (tx, ty) in mrad.
    defocus_A : probe defocus (Å; positive = underfocus, abTEM's convention).
    slice_thickness_A : target multislice slice thickness (Å); the cell's z period is cut
        into a whole number of slices closest to it.
    frozen_phonons : number of frozen-phonon configurations (0: static lattice).
    phonon_sigma_A : r.m.s. thermal displacement per direction (Å) for frozen phonons.
    oversample : simulation extent in units of ``1 / q_pixel_inv_A`` (≥ 1).
    """

    energy_eV: float = 200e3
    semiangle_mrad: float = 2.0
    shape: tuple[int, int] = (256, 256)
    q_pixel_inv_A: float = 0.02
    thicknesses_A: tuple[float, ...] = (200.0,)
    tilt_mrad: tuple[float, float] = (0.0, 0.0)
    defocus_A: float = 0.0
    slice_thickness_A: float = 2.0
    frozen_phonons: int = 0
    phonon_sigma_A: float = 0.08
    oversample: float = 1.0

    def __post_init__(self) -> None:
        energy = positive_float("energy_eV", self.energy_eV, maximum=1e6)
        if energy < 20e3:
            raise Distill4dError(f"energy_eV must be between 20e3 and 1e6 eV, got {energy!r}")
        positive_float("semiangle_mrad", self.semiangle_mrad, maximum=200.0)
        shape = tuple(self.shape) if np.ndim(self.shape) == 1 else ()
        if len(shape) != 2:
            raise Distill4dError(f"shape must be two detector sizes (Nx, Ny), got {self.shape!r}")
        for n in shape:
            positive_int("shape", n, minimum=8)
        object.__setattr__(self, "shape", (int(shape[0]), int(shape[1])))
        positive_float("q_pixel_inv_A", self.q_pixel_inv_A, maximum=1.0)
        thick = np.atleast_1d(np.asarray(self.thicknesses_A, dtype=np.float64))
        if thick.ndim != 1 or len(thick) == 0 or not np.all(np.isfinite(thick)) or np.any(thick <= 0):
            raise Distill4dError(f"thicknesses_A must be positive thicknesses in Å, got {self.thicknesses_A!r}")
        if thick.max() > 5000:
            raise Distill4dError(f"thicknesses_A must be at most 5000 Å (500 nm), got {thick.max()!r}")
        object.__setattr__(self, "thicknesses_A", tuple(float(t) for t in thick))
        tilt = np.asarray(self.tilt_mrad, dtype=np.float64)
        if tilt.shape != (2,) or not np.all(np.isfinite(tilt)) or np.any(np.abs(tilt) > 200):
            raise Distill4dError(f"tilt_mrad must be two finite angles (tx, ty) within ±200 mrad, got {self.tilt_mrad!r}")
        object.__setattr__(self, "tilt_mrad", (float(tilt[0]), float(tilt[1])))
        if not math.isfinite(float(self.defocus_A)):
            raise Distill4dError(f"defocus_A must be finite, got {self.defocus_A!r}")
        positive_float("slice_thickness_A", self.slice_thickness_A, maximum=50.0)
        if not isinstance(self.frozen_phonons, (int, np.integer)) or self.frozen_phonons < 0:
            raise Distill4dError(f"frozen_phonons must be a whole number >= 0, got {self.frozen_phonons!r}")
        nonnegative_float("phonon_sigma_A", self.phonon_sigma_A)
        if positive_float("oversample", self.oversample, maximum=16.0) < 1.0:
            raise Distill4dError(f"oversample must be between 1 and 16, got {self.oversample!r}")

    @property
    def wavelength_A(self) -> float:
        return wavelength_A(self.energy_eV)

    @property
    def max_q_inv_A(self) -> float:
        """Largest |q| simulated (1/Å): the detector's inscribed circle."""
        return min(self.shape) / 2 * self.q_pixel_inv_A

    @property
    def origin_px(self) -> tuple[int, int]:
        return (self.shape[0] // 2, self.shape[1] // 2)

    def calibration(self) -> Calibration:
        """The detector calibration of the simulated patterns."""
        return Calibration(
            q_pixel_inv_A=self.q_pixel_inv_A,
            energy_eV=self.energy_eV,
            semiangle_mrad=self.semiangle_mrad,
            origin_px=tuple(float(o) for o in self.origin_px),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class CBEDResult:
    """Output of :func:`simulate_cbed`.

    patterns : (n_thickness, Nx, Ny) float32, fraction of the incident beam per pixel.
    thicknesses_A : (n_thickness,) the thicknesses simulated (whole cells, Å; sorted, requests
        that round to the same number of cells give one pattern).
    probe : (Nx, Ny) float32 vacuum probe on the same grid (total 1 within the detector).
    target : (Nx, Ny) float32 structure-factor image (FCU-Net target), the (000) spot = 1.
    peaks : (m, 3) kinematic Bragg peaks on the detector: qx, qy (px), amplitude
        relative to (000) (qz-weighted |V(G)|, summed over the reflections at one spot).
    calibration : the detector calibration.
    info : grid and timing details (supercell repetitions, gpts, sampling, slices, seconds).
    """

    patterns: np.ndarray
    thicknesses_A: np.ndarray
    probe: np.ndarray
    target: np.ndarray
    peaks: np.ndarray
    calibration: Calibration
    info: dict[str, Any]


def rebin_matrix(native_k: np.ndarray, native_dk: float, n_out: int, dq: float, origin: float) -> np.ndarray:
    """``(n_out, n_native)`` overlap fractions of native pixels in detector pixels.

    Native pixel i covers ``[native_k[i] ± native_dk / 2]`` (1/Å), detector pixel j covers
    ``[(j - origin) · dq ± dq / 2]``. ``W[j, i]`` is the fraction of native pixel i inside
    detector pixel j, so ``W @ I`` conserves flux.
    """
    k = np.asarray(native_k, dtype=np.float64)
    lo_n, hi_n = k - native_dk / 2, k + native_dk / 2
    q = (np.arange(n_out) - origin) * dq
    lo_d, hi_d = q - dq / 2, q + dq / 2
    overlap = np.minimum(hi_d[:, None], hi_n[None, :]) - np.maximum(lo_d[:, None], lo_n[None, :])
    return np.clip(overlap, 0.0, None) / native_dk


def orthogonal_cell_lengths(atoms: Any) -> np.ndarray:
    """The x, y, z lengths (Å) of ``atoms``' cell; ValueError unless it is orthogonal (beam along z) and holds atoms."""
    if not hasattr(atoms, "cell") or not hasattr(atoms, "positions"):
        raise TypeError(f"atoms must be an ase.Atoms, got {type(atoms).__name__}")
    if len(atoms) == 0:
        raise Distill4dError("atoms has no atoms to simulate")
    cell = np.asarray(atoms.cell, dtype=np.float64).reshape(3, 3)
    lengths = np.diag(cell).copy()
    if np.any(np.abs(cell - np.diag(lengths)) > 1e-6 * max(1.0, lengths.max())) or np.any(lengths <= 0):
        raise Distill4dError(
            "atoms must have an orthogonal cell with positive lengths (beam along z) for multislice; "
            f"got cell {np.round(cell, 4).tolist()}; orient it with distill4d.simulate.crystals.orient"
        )
    return lengths


def _grid(lengths: np.ndarray, settings: CBEDSettings, cells: Any = None) -> dict[str, Any]:
    """The simulation grid of a crystal of cell ``lengths`` (Å). ``cells``: the in-plane cell lengths of every
    crystal that must share its discretisation (strained states of one scan): the supercell repetitions come
    from the smallest cell and the grid points from the largest, so every state has the same repetitions and
    grid points, and its sampling scales with its cell."""
    lam = settings.wavelength_A
    alpha = settings.semiangle_mrad * 1e-3
    extent_min = max(settings.oversample / settings.q_pixel_inv_A, 3 * lam / alpha)
    xy = np.asarray([lengths[:2]] + ([] if cells is None else [np.asarray(c, float)[:2] for c in cells]))
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    reps = [max(1, int(math.ceil(extent_min / lo[i] - 1e-9))) for i in range(2)]
    extent = [reps[i] * lengths[i] for i in range(2)]
    # abTEM keeps |k| < 2/3 · 1 / (2 · sampling); reach max_q with 3 % to spare.
    sampling = 1.0 / (3.0 * 1.03 * settings.max_q_inv_A)
    gpts = [int(math.ceil(reps[i] * hi[i] / sampling)) for i in range(2)]
    gpts = [g + (g % 2) for g in gpts]
    # at least two slices per cell: abTEM 1.0.11 misplaces exit planes of one-slice units
    per_cell = max(2, int(round(lengths[2] / settings.slice_thickness_A)))
    # whole cells, each thickness once (two requests may round to the same cell count)
    cells = sorted({max(1, int(round(t / lengths[2]))) for t in settings.thicknesses_A})
    return {
        "repetitions": reps,
        "extent_A": extent,
        "gpts": gpts,
        "sampling_A": [extent[i] / gpts[i] for i in range(2)],
        "slices_per_cell": per_cell,
        "cells": cells,
    }


def _to_detector(intensity: np.ndarray, sampling: list[float], settings: CBEDSettings) -> np.ndarray:
    """Rebin ``|FFT ψ|²`` (unshifted FFT order, last two axes) onto the detector grid."""
    nx, ny = intensity.shape[-2:]
    kx = np.fft.fftshift(np.fft.fftfreq(nx, sampling[0]))
    ky = np.fft.fftshift(np.fft.fftfreq(ny, sampling[1]))
    shifted = np.fft.fftshift(intensity, axes=(-2, -1))
    ox, oy = settings.origin_px
    wx = rebin_matrix(kx, 1.0 / (nx * sampling[0]), settings.shape[0], settings.q_pixel_inv_A, ox)
    wy = rebin_matrix(ky, 1.0 / (ny * sampling[1]), settings.shape[1], settings.q_pixel_inv_A, oy)
    return np.einsum("ai,...ij,bj->...ab", wx, shifted, wy, optimize=True).astype(np.float32)


def _intensity(waves_array: Any) -> np.ndarray:
    arr = waves_array
    if hasattr(arr, "get"):  # CuPy
        import cupy

        spec = cupy.fft.fft2(arr, axes=(-2, -1))
        return cupy.asnumpy(spec.real**2 + spec.imag**2).astype(np.float64)
    spec = np.fft.fft2(np.asarray(arr), axes=(-2, -1))
    return (spec.real**2 + spec.imag**2).astype(np.float64)


def _probe(abtem: Any, settings: CBEDSettings) -> Any:
    return abtem.Probe(
        energy=settings.energy_eV,
        semiangle_cutoff=settings.semiangle_mrad,
        tilt=settings.tilt_mrad,
        aberrations={"C10": -settings.defocus_A} if settings.defocus_A else None,
    )


def vacuum_probe_pattern(settings: CBEDSettings, *, device: str = "auto") -> np.ndarray:
    """The vacuum probe's diffraction pattern on the detector grid ((Nx, Ny) float32, total ≈ 1)."""
    lengths = np.array([1.0 / settings.q_pixel_inv_A] * 2 + [1.0])
    grid = _grid(lengths * np.array([settings.oversample, settings.oversample, 1.0]), settings)
    with abtem_session(device) as abtem:
        probe = _probe(abtem, dataclasses.replace(settings, tilt_mrad=(0.0, 0.0)))
        probe.grid.gpts = tuple(grid["gpts"])
        probe.grid.extent = tuple(grid["extent_A"])
        wave = probe.build(lazy=False)
        return _to_detector(_intensity(wave.array), grid["sampling_A"], settings)


def bragg_peak_list(atoms: Any, settings: CBEDSettings) -> tuple[np.ndarray, Any]:
    """Kinematic Bragg peaks on the detector: ``((m, 3) qx_px, qy_px, amplitude), reflections``.

    Amplitudes are qz-weighted ``|V(G)|`` relative to (000), summed over the reflections that
    fall on one spot. Only spots within the simulated circle ``|q| ≤ settings.max_q_inv_A``
    are listed (the patterns are zero beyond it).
    """
    refl = kinematic_reflections(atoms, q_max_inv_A=settings.max_q_inv_A)
    gxy, amp = refl.projected()
    zero = np.argmin(np.hypot(gxy[:, 0], gxy[:, 1]))
    amp = amp / amp[zero]
    ox, oy = settings.origin_px
    px = np.column_stack([ox + gxy[:, 0] / settings.q_pixel_inv_A, oy + gxy[:, 1] / settings.q_pixel_inv_A, amp])
    return px, refl


def _multislice_patterns(
    atoms: Any, settings: CBEDSettings, grid: dict[str, Any], lengths: np.ndarray, *, seed: int, device: str
) -> np.ndarray:
    """The detector-plane patterns (one per thickness of ``settings``) of ``atoms`` on ``grid``."""
    unit_atoms = atoms * (grid["repetitions"][0], grid["repetitions"][1], 1)
    n_cells = max(grid["cells"])
    per_cell = grid["slices_per_cell"]
    exit_planes = tuple(c * per_cell - 1 for c in grid["cells"])
    with abtem_session(device) as abtem:
        probe = _probe(abtem, settings)
        configs = max(1, settings.frozen_phonons)
        total = None
        for i in range(configs):
            if settings.frozen_phonons:
                source = abtem.FrozenPhonons(
                    unit_atoms, num_configs=1, sigmas=settings.phonon_sigma_A, seed=int(seed) * 1000 + i
                )
            else:
                source = unit_atoms
            unit = abtem.Potential(
                source,
                gpts=tuple(grid["gpts"]),
                slice_thickness=lengths[2] / per_cell,
                projection="infinite",
            )
            crystal = abtem.CrystalPotential(unit, repetitions=(1, 1, n_cells), exit_planes=exit_planes)
            waves = probe.multislice(crystal, lazy=False)
            arr = waves.array.reshape((-1,) + tuple(grid["gpts"]))[-len(exit_planes):]
            inten = _intensity(arr)
            total = inten if total is None else total + inten
        return _to_detector(total / configs, grid["sampling_A"], settings)


def simulate_cbed(atoms: Any, settings: CBEDSettings, *, seed: int = 0, device: str = "auto",
                  grid_cells: Any = None) -> CBEDResult:
    """Multislice CBED patterns of a crystal at every thickness of ``settings``.

    Parameters
    ----------
    atoms : ``ase.Atoms`` with an orthogonal cell (x, y, z lengths > 0), beam along +z, one
        period along z (it is repeated to each thickness).
    settings : :class:`CBEDSettings`.
    seed : seed of the frozen-phonon displacements (ignored without frozen phonons).
    device : ``"auto"`` (the GPU when CuPy sees one), ``"cpu"`` or ``"gpu"`` (abTEM's CuPy path).
    grid_cells : the (x, y) cell lengths (Å) of every crystal whose patterns will be compared with these (the
        strained states of one scan): all of them get the same supercell and grid points, so the sampling
        scales with the cell. Without it the grid points are rounded up for this cell alone, and two cells
        1 % apart can be sampled differently, which changes the dynamical contrast in the disks by a jump
        (Si [011], 60 nm: a disk-position strain error of 0.1 % where the grid changed).
    """
    if not isinstance(settings, CBEDSettings):
        raise TypeError(f"settings must be a CBEDSettings, got {type(settings).__name__}")
    lengths = orthogonal_cell_lengths(atoms)
    if grid_cells is not None:
        xy = np.asarray(grid_cells, dtype=np.float64)
        if xy.ndim != 2 or xy.shape[0] < 1 or xy.shape[1] < 2 or not np.all(np.isfinite(xy) & (xy > 0)):
            raise Distill4dError(f"grid_cells must be (x, y) cell lengths in Å, positive and finite, got shape "
                                 f"{xy.shape}")
    grid = _grid(lengths, settings, grid_cells)
    t0 = time.perf_counter()
    patterns = _multislice_patterns(atoms, settings, grid, lengths, seed=seed, device=device)
    seconds = time.perf_counter() - t0
    probe_img = vacuum_probe_pattern(settings, device=device)
    peaks, refl = bragg_peak_list(atoms, settings)
    target = structure_factor_image(
        (peaks[:, :2] - np.array(settings.origin_px)) * settings.q_pixel_inv_A,
        peaks[:, 2],
        shape=settings.shape,
        q_pixel_inv_A=settings.q_pixel_inv_A,
    )
    info = dict(grid)
    info.update(
        {
            "seconds": seconds,
            "n_slices": max(grid["cells"]) * grid["slices_per_cell"],
            "slice_thickness_A": lengths[2] / grid["slices_per_cell"],
            "cell_A": lengths.tolist(),
            "n_reflections": len(refl),
        }
    )
    return CBEDResult(
        patterns=patterns,
        thicknesses_A=np.array([c * lengths[2] for c in grid["cells"]]),
        probe=probe_img,
        target=target,
        peaks=peaks,
        calibration=settings.calibration(),
        info=info,
    )


def stretch_cell(atoms: Any, fx: float, fy: float) -> Any:
    """A copy of ``atoms`` with its cell (and the atoms in it) stretched by ``fx`` along x and
    ``fy`` along y (real-space deformation ``diag(fx, fy, 1)``)."""
    for name, f in (("fx", fx), ("fy", fy)):
        positive_float(name, f, maximum=2.0)
    out = atoms.copy()
    out.set_cell(atoms.cell.array @ np.diag([fx, fy, 1.0]).T, scale_atoms=True)
    return out


def strain_renderer(atoms: Any, settings: CBEDSettings, *, device: str = "auto") -> Any:
    """``render(F) -> pattern`` for :func:`distill4d.lattice.precision.strain_crb`: the multislice
    pattern (first thickness of ``settings``) of ``atoms`` under the diagonal real-space
    deformation ``F`` (2x2), i.e. ``eps_xx`` and ``eps_yy`` only (the cell must stay
    orthogonal). Raises if a deformation changes the simulation grid (supercell or sampling),
    which would make finite differences jump: use a smaller step."""
    grid0 = _grid(orthogonal_cell_lengths(atoms), settings)

    def render(F: np.ndarray) -> np.ndarray:
        F = np.asarray(F, dtype=np.float64)
        if F.shape != (2, 2) or abs(F[0, 1]) > 1e-12 or abs(F[1, 0]) > 1e-12:
            raise Distill4dError(f"the multislice renderer takes diagonal deformations only (eps_xx, eps_yy), got {F.tolist()}")
        strained = stretch_cell(atoms, F[0, 0], F[1, 1])
        lengths = orthogonal_cell_lengths(strained)
        grid = _grid(lengths, settings)
        if any(np.any(np.asarray(grid[k]) != np.asarray(grid0[k])) for k in ("repetitions", "gpts")):
            raise Distill4dError(f"deformation {np.diag(F).tolist()} changes the simulation grid; use a smaller step")
        # the patterns only: the probe image, peaks and target of simulate_cbed are not needed
        return _multislice_patterns(strained, settings, grid, lengths, seed=0, device=device)[0]

    return render
