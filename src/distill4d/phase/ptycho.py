"""Gradient-based ptychography with automatic differentiation (PyTorch).

Forward model of one position ``j`` (pixel ``(0, 0)`` of the object at the origin, the object on
the detector's axes, probe modes ``P_m`` centred at window pixel ``(N//2, N//2)``)::

    ψ_m = P_m(r − f_j) · O_1(r + c_j)                 (sub-pixel shift f_j by a Fourier phase ramp)
    ψ_m ← IFFT[FFT(ψ_m) exp(−iπ λ Δz k²)] · O_s(r + c_j),  s = 2 .. S   (multislice)
    I_j = Σ_m |FFT(ψ_m)|²                                 (orthonormal FFT)

with ``c_j`` the integer and ``f_j`` the fractional part of the window's corner. The object
slices are ``O_s = A_s exp(iφ_s)`` (phase and amplitude are the parameters), and Adam
minimises, over mini-batches of positions drawn by ``default_rng([seed, iteration])``, either the
amplitude loss ``Σ (√I − √y)² / Σ y`` or the Poisson loss ``Σ (I − y log(I + δ)) / Σ y`` (``y`` the
measured intensity). The probe is refined from the second iteration, positions (when asked)
from the third. Scan positions map to the object frame as the CoM convention says
(:mod:`distill4d.imaging.com`): ``d = R(θ) P s``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .._validate import nonnegative_float, positive_float, positive_int
from ..calibration import Calibration
from ..datacube import DataCube
from ..errors import Distill4dError
from ..results import Provenance, Results
from ._noise import (AUTO_POISSON_RATIO, AUTO_TRIAL_ITERATIONS, AUTO_TRIAL_POSITIONS, BRIGHT_COUNTS, counted,
                     shot_noise_floor)
from .probe import aperture_from_mean_pattern, check_aberrations, probe_from_calibration

__all__ = ["LOSSES", "PtychoResult", "reconstruct"]

#: Loss functions ("auto": the Poisson loss where the data are counts that a short single-slice trial fits to
#: within :data:`~distill4d.phase._noise.AUTO_POISSON_RATIO` times their shot noise, else the amplitude loss).
LOSSES = ("auto", "amplitude", "poisson")
#: Default iterations (passes over all positions) and positions per mini-batch.
DEFAULT_ITERATIONS = 10
DEFAULT_BATCH_SIZE = 128
#: With tied slices and the default batch size, the mini-batch grows geometrically from this size (or the
#: default, if smaller) at the first iteration to the default at the last: small steps early make the
#: strongly scattering object take off sooner, larger ones late fit less noise. Chosen on the validation
#: crystals of ``benchmarks/ptycho_tied.py`` (30 iterations; against the fixed default, 115 positions on CeO2 and
#: 128 on MgO and BaTiO3: CeO2 2e3 e⁻ SSIM 0.90 after
#: 6 CPU s instead of 20, final 0.934 instead of 0.929; MgO 2e4 0.948 after 14 s instead of about 40, final
#: 0.958 instead of 0.954; BaTiO3 120 Å 0.50 after 71 s instead of 177, final 0.492 instead of 0.503; a fixed 32
#: took off as fast but ended at 0.928 and 0.954 on CeO2 and MgO; docs/experiments.md).
TIED_BATCH_START = 32
#: The Poisson loss is ``Σ (I − y log(I + δ))`` with this δ (in the data's units: counts): its gradient
#: ``(1 − y / (I + δ)) ψ`` would otherwise blow up where the model predicts almost nothing but a count
#: arrived (dark-field pixels of the first iterations). Without it the MoS2 scan of 160 x 180 positions
#: at 2e4 e⁻ ended its first iteration at 3.3x its shot noise (δ = 0.01: 1.26), and the whole 228 x 263 scan
#: scored SSIM 0.26 after 12 iterations; on the validation MoS2 (``mos2_train``) 0.965 / 0.933 at 2e4 / 2e3
#: against 0.962 / 0.926 without it, 0.951 / 0.937 with δ = 1 % of the mean count per pixel.
POISSON_OFFSET = 0.01
#: Default Adam learning rates: object phase (rad), object amplitude, probe (relative to its
#: peak), positions (object pixels).
DEFAULT_LR = {"phase": 0.05, "amplitude": 0.02, "probe": 0.01, "positions": 0.05, "object_step": 0.5}
#: Optimisers of the object: "gd" (a Gauss-Newton-like gradient step divided by the probe's
#: illumination, as ePIE/LSQ-ML do; the probe and positions still by Adam) or "adam".
OPTIMIZERS = ("gd", "adam")
#: Default ``object_step`` with tied slices (its step is divided by slices²): chosen on the validation
#: crystals of ``benchmarks/ptycho_tied.py`` (CeO2 97 Å: SSIM 0.915 at 4 against 0.838 at 2 after 20
#: iterations; Mo 120 Å: no step between 2 and 16 converges) and a synthetic six-slice crystal.
TIED_OBJECT_STEP = 4.0
#: With tied slices, the first iterations model the crystal with this many times fewer, thicker slices (each
#: the tied transmission function raised to that power): as many times fewer FFTs per position while the
#: object takes off. Chosen on the validation crystals of ``benchmarks/ptycho_tied.py`` (docs/experiments.md).
COARSE_DEPTH_FACTOR = 4
#: Default most coarse iterations (``coarse_iterations``) with tied slices (and at most half the iterations).
TIED_COARSE_ITERATIONS = 6
#: The coarse iterations end early after one that lowers the error by less than this fraction.
COARSE_MIN_GAIN = 0.02
_GD_ALPHA = 0.1
#: Divergence guard of the object steps: an iteration whose error exceeds this factor times the one before
#: (or 1, or is not finite) restarts the previous iteration with half the step, at most MAX_STEP_HALVINGS times.
DIVERGENCE_FACTOR = 2.0
MAX_STEP_HALVINGS = 4
_CHECKPOINT_FORMAT = "distill4d-ptycho-checkpoint-1"
#: Default fraction of the scan positions held out of the updates to choose the iteration (0: none).
DEFAULT_VALIDATION_FRACTION = 0.0


# ---------------------------------------------------------------------- result
@dataclasses.dataclass
class PtychoResult:
    """A ptychographic reconstruction.

    Attributes
    ----------
    object_phase : (H, W) float32, the phase of all slices summed, in radians (mean 0 over the
        scanned area).
    object_amplitude : (H, W) float32, the product of the slices' amplitudes.
    object_slices : (S, H, W) complex64, the transmission function of each slice.
    sampling_A : (dx, dy) Å per object pixel.
    probe_modes : (M, Nx, Ny) complex64 real-space probe modes (orthogonal, strongest first),
        centred at pixel (Nx//2, Ny//2); their total intensity is the patterns' mean intensity.
    positions_A : (N, 2) probe centres in the object frame (Å from object pixel (0, 0)),
        refined when asked; position ``i`` is scan position ``(i // ny, i % ny)`` of the region.
    errors : per-iteration error ``Σ(√I − √y)² / Σ y`` over the iteration's batches.
    noise_ratios : per iteration, the error over its shot-noise expectation where the model predicts at
        least :data:`~distill4d.phase._noise.BRIGHT_COUNTS` counts: ``Σ (√I − √y)² / Σ E[(√y' − √I)²]`` for
        ``y' ~ Poisson(I)`` (meaningful for counted data: near 1, only the shot noise is left unexplained;
        well above 1, the model does not fit the data). Computed in the last iteration only (NaN before it:
        it costs about a quarter of an iteration).
    validation_errors : per-iteration data loss (the loss of the run) on the held-out positions (see
        ``validation_fraction`` of :func:`reconstruct`); empty when none were held out.
    chosen_iteration : the iteration (1-based) whose object, probe and positions these are: the one
        of the lowest held-out loss (then one pass over every position refined the object), or the last
        one when none were held out.
    scan_shape : (nx, ny) positions of the reconstructed region.
    scan_rotation_rad, scan_flip : the scan-to-detector rotation used (``d = R(θ) P s``).
    calibration : the calibration of the data.
    provenance : method ``"ptychography"`` and its parameters.
    """

    object_phase: np.ndarray
    object_amplitude: np.ndarray
    object_slices: np.ndarray
    sampling_A: tuple[float, float]
    probe_modes: np.ndarray
    positions_A: np.ndarray
    errors: np.ndarray
    scan_shape: tuple[int, int]
    scan_rotation_rad: float
    scan_flip: bool
    calibration: Calibration = dataclasses.field(repr=False)
    provenance: Provenance | None = dataclasses.field(default=None, repr=False)
    validation_errors: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0), repr=False)
    chosen_iteration: int | None = None
    noise_ratios: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0), repr=False)

    @property
    def noise_ratio(self) -> float:
        """The last iteration's error over its shot noise (of :attr:`noise_ratios`) where ``loss="auto"`` found
        the patterns to be counts, else NaN (for data that are not counts of electrons it means nothing)."""
        choice = (self.provenance.parameters.get("loss_choice") or {}) if self.provenance is not None else {}
        if not choice.get("counted") or not len(self.noise_ratios):
            return math.nan
        return float(self.noise_ratios[-1])

    def phase_on_scan_grid(self, *, order: int = 3) -> np.ndarray:
        """The summed object phase sampled at the probe centres: an ``scan_shape`` float32 image in
        radians, pixel ``(x, y)`` at scan position ``(x, y)`` of the region (spline of ``order``; the cubic
        spline without SciPy, whose ``ndimage`` takes about 0.4 CPU s to import)."""
        coords = (self.positions_A / np.asarray(self.sampling_A)).T
        if order == 3:
            vals = spline3_at(self.object_phase, coords)
        else:
            from scipy import ndimage

            vals = ndimage.map_coordinates(self.object_phase.astype(np.float64), coords, order=order, mode="nearest")
        return vals.reshape(self.scan_shape).astype(np.float32)

    def to_results(self) -> Results:
        """The common result container (``object_phase`` rad, ``object_amplitude``, ``object_slices``
        real/imag, ``probe_modes`` real/imag, ``positions_A`` Å, ``errors``, ``validation_errors``,
        ``phase_on_scan_grid`` rad; attribute ``chosen_iteration``)."""
        arrays = {
            "object_phase": self.object_phase,
            "object_amplitude": self.object_amplitude,
            "object_slices_real": self.object_slices.real.astype(np.float32),
            "object_slices_imag": self.object_slices.imag.astype(np.float32),
            "probe_modes_real": self.probe_modes.real.astype(np.float32),
            "probe_modes_imag": self.probe_modes.imag.astype(np.float32),
            "positions_A": self.positions_A,
            "errors": self.errors,
            "validation_errors": np.asarray(self.validation_errors, np.float64),
            "noise_ratios": np.asarray(self.noise_ratios, np.float64),
            "phase_on_scan_grid": self.phase_on_scan_grid(),
            "sampling_A": np.asarray(self.sampling_A, np.float64),
        }
        units = {"object_phase": "rad", "phase_on_scan_grid": "rad", "positions_A": "Å", "sampling_A": "Å"}
        attrs = {"scan_rotation_rad": float(self.scan_rotation_rad), "scan_flip": bool(self.scan_flip),
                 "scan_shape": list(self.scan_shape), "chosen_iteration": int(len(self.errors) if self.chosen_iteration is None else self.chosen_iteration)}
        return Results(arrays, units, attrs, self.calibration, self.provenance)

    @classmethod
    def from_results(cls, res: Results) -> "PtychoResult":
        """Inverse of :meth:`to_results` (e.g. of a file read with :func:`distill4d.read_results`)."""
        a = res.arrays
        return cls(np.asarray(a["object_phase"]), np.asarray(a["object_amplitude"]),
                   (a["object_slices_real"] + 1j * a["object_slices_imag"]).astype(np.complex64),
                   tuple(float(v) for v in a["sampling_A"]),
                   (a["probe_modes_real"] + 1j * a["probe_modes_imag"]).astype(np.complex64),
                   np.asarray(a["positions_A"]), np.asarray(a["errors"]),
                   tuple(int(v) for v in res.attrs["scan_shape"]), float(res.attrs["scan_rotation_rad"]),
                   bool(res.attrs["scan_flip"]), res.calibration, res.provenance,
                   np.asarray(a.get("validation_errors", np.zeros(0)), np.float64),
                   int(res.attrs.get("chosen_iteration", len(a["errors"]))),
                   np.asarray(a.get("noise_ratios", np.zeros(0)), np.float64))


def _spline3_coefficients(line: np.ndarray) -> np.ndarray:
    """Cubic B-spline coefficients along the first axis of ``line`` (mirror-symmetric ends, the usual
    causal / anticausal recursion with pole √3 − 2)."""
    z = np.sqrt(3.0) - 2.0
    n = line.shape[0]
    c = np.empty_like(line)
    horizon = min(n, 40)  # z**40 < 1e-22
    c[0] = np.tensordot(z ** np.arange(horizon), line[:horizon], axes=1)
    for k in range(1, n):
        c[k] = line[k] + z * c[k - 1]
    c[n - 1] = (z / (z * z - 1.0)) * (c[n - 1] + z * c[n - 2])
    for k in range(n - 2, -1, -1):
        c[k] = z * (c[k + 1] - c[k])
    return 6.0 * c


def spline3_at(image: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """``image`` (2D) read by its cubic B-spline at ``coords`` ``(2, P)`` (pixel units, first axis first):
    what ``scipy.ndimage.map_coordinates(image, coords, order=3)`` gives away from the edges (beyond
    them the coefficients are extended by their edge values)."""
    img = np.asarray(image, np.float64)
    if img.ndim != 2 or min(img.shape) < 2:
        raise Distill4dError(f"image must be 2D with at least 2 pixels per axis, got shape {img.shape}")
    c = _spline3_coefficients(_spline3_coefficients(img).T).T
    x, y = (np.asarray(v, np.float64) for v in coords)
    out = np.zeros(x.shape)
    ix, iy = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    tx, ty = x - ix, y - iy

    def weights(t: np.ndarray) -> list[np.ndarray]:
        return [(1 - t) ** 3 / 6, (3 * t**3 - 6 * t**2 + 4) / 6, (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6, t**3 / 6]

    wx, wy = weights(tx), weights(ty)
    for a in range(4):
        xa = np.clip(ix + a - 1, 0, img.shape[0] - 1)
        for b in range(4):
            out += wx[a] * wy[b] * c[xa, np.clip(iy + b - 1, 0, img.shape[1] - 1)]
    return out


# ---------------------------------------------------------------------- validation
def _check_region(region: Any, scan_shape: tuple[int, int]) -> tuple[slice, slice]:
    if region is None:
        return slice(0, scan_shape[0]), slice(0, scan_shape[1])
    try:
        rx, ry = region
        out = []
        for s, n in ((rx, scan_shape[0]), (ry, scan_shape[1])):
            if not isinstance(s, slice) or s.step not in (None, 1):
                raise TypeError
            a, b, _ = s.indices(n)
            out.append(slice(a, b))
    except (TypeError, ValueError):
        raise Distill4dError(f"region must be (slice(x0, x1), slice(y0, y1)) of scan positions, got {region!r}") from None
    for s, n in zip(out, scan_shape):
        if s.stop - s.start < 2:
            raise Distill4dError(f"region {region!r} holds fewer than 2 positions along an axis of the "
                                 f"{scan_shape} scan")
    return out[0], out[1]


def _require_calibration(cal: Calibration) -> None:
    for name in ("energy_eV", "semiangle_mrad", "q_pixel_inv_A", "scan_step_A"):
        cal.require(name)  # a one-line error naming the field and how to set it


def _scan_rotation(cube: DataCube, region: tuple[slice, slice], rotation: float | None,
                   flip: bool | None, trial: Callable[..., Any]) -> tuple[float, bool, dict[str, Any]]:
    """The scan rotation and flip: given, else the calibration's, else estimated from the CoM (minimal
    curl) with its 180° ambiguity settled by ptychography: a few iterations on a central patch of at
    most 12 x 12 positions for θ and θ + π, the lower final error wins (the CoM's skewness rule fails
    where a broad, defocused probe inverts the contrast); then checked by :func:`_rotation_scan`."""
    cal = cube.calibration
    if rotation is not None:
        return float(rotation), bool(flip), {"source": "given"}
    if cal.scan_rotation_rad is not None:
        return float(cal.scan_rotation_rad), bool(cal.scan_flip if flip is None else flip), {"source": "calibration"}
    theta, est_flip = _com_rotation(cube, region, flip)
    patch = _central_patch(region, 12)
    errors = {}
    for cand in (theta, math.remainder(theta + math.pi, 2 * math.pi)):
        errors[cand] = float(trial(region=patch, scan_rotation_rad=cand, scan_flip=est_flip).errors[-1])
    best = min(errors, key=errors.get)
    info = {"source": "estimated from the CoM (minimal curl), 180° ambiguity by ptychographic error",
            "com_estimate_rad": theta, "trial_errors": {f"{k:.6f}": v for k, v in errors.items()}}
    flips = (bool(flip),) if flip is not None else (bool(est_flip), not est_flip)
    better, scan = _rotation_scan(patch, best, bool(est_flip), errors, flips, trial)
    info["rotation_scan"] = scan
    if better is not None:
        best, est_flip = better
        info["source"] = "ptychographic rotation scan (the CoM's estimate fitted worse)"
    return float(best), bool(est_flip), info


def _com_rotation(cube: DataCube, region: tuple[slice, slice], flip: bool | None) -> tuple[float, bool]:
    """The scan rotation (rad) and flip that make the region's CoM field curl-free (the flip given, if it is)."""
    from ..imaging.com import center_of_mass, estimate_scan_rotation

    theta, est_flip = estimate_scan_rotation(center_of_mass(cube[region[0], region[1]], progress=False))
    return theta, bool(est_flip) if flip is None else bool(flip)


#: The ptychographic rotation scan's step (degrees) and the error margin by which it overrules the CoM.
ROTATION_SCAN_DEG = 15.0
_ROTATION_MARGIN = 0.02


def _rotation_scan(patch: tuple[slice, slice], theta: float, flip: bool, known: dict[float, float] | None,
                   flips: tuple[bool, ...], trial: Callable[..., Any],
                   **kw: Any) -> tuple[tuple[float, bool] | None, dict[str, Any]]:
    """Check a rotation by ptychography: trials (4 iterations on ``patch``) every :data:`ROTATION_SCAN_DEG`
    around the circle, for each of ``flips``, against ``(theta, flip)``; ``known`` holds trial errors already
    measured with ``flip`` (rotation -> error; e.g. the 180° check's two), which are not run again.
    Where the CoM misjudges the rotation (a broad defocused probe on a small scan: off by up to 1.6 rad,
    and the flip wrong, in ``benchmarks/ptycho_defocus.py``) the error has a narrow minimum at the true
    rotation and is flat elsewhere. A candidate whose error is lower by more than :data:`_ROTATION_MARGIN`
    wins, refined by steps of half and a quarter of the scan's step. Returns ``((rotation, flip) or None,
    record)``."""
    step = math.radians(ROTATION_SCAN_DEG)
    errs: dict[tuple[float, bool], float] = {}

    def err(c: tuple[float, bool]) -> float:
        key = (round(math.remainder(c[0], 2 * math.pi), 9), c[1])
        if key not in errs:
            errs[key] = float(trial(region=patch, scan_rotation_rad=key[0], scan_flip=key[1], **kw).errors[-1])
        return errs[key]

    for rot, e in (known or {}).items():
        errs[(round(math.remainder(rot, 2 * math.pi), 9), flip)] = e
    error = err((theta, flip))

    n = int(round(2 * math.pi / step))
    cand = min(((theta + k * step, f) for f in flips for k in range(n)), key=err)
    record: dict[str, Any] = {"step_deg": ROTATION_SCAN_DEG, "start_rad": theta, "start_flip": flip,
                              "start_error": error}
    if err(cand) >= error * (1 - _ROTATION_MARGIN):
        record["trials"] = len(errs)
        return None, record
    for h in (step / 2, step / 4):
        cand = min(((cand[0] - h, cand[1]), cand, (cand[0] + h, cand[1])), key=err)
    record["trials"] = len(errs)
    record["error"] = err(cand)
    return (math.remainder(cand[0], 2 * math.pi), cand[1]), record


#: ``defocus_A="auto"`` searches defocus within ± this many Å.
DEFOCUS_SEARCH_A = 1000.0
#: Relative difference of the two rotation candidates' best errors below which the defocus search calls a tie.
_TIE = 0.02


def _central_patch(region: tuple[slice, slice], size: int) -> tuple[slice, slice]:
    out = []
    for s in region:
        k = min(size, s.stop - s.start)
        a = s.start + (s.stop - s.start - k) // 2
        out.append(slice(a, a + k))
    return out[0], out[1]


def _defocus_search(cal: Any, region: tuple[slice, slice], rotations: list[tuple[float, bool]],
                    trial: Callable[..., Any]) -> tuple[float, float, bool, dict[str, Any]]:
    """``defocus_A="auto"``: the defocus whose 2 trial iterations on a central patch of at most 12 x 12
    positions end at the lowest data error; candidates every 2 depths of field (λ/α²) within ±
    :data:`DEFOCUS_SEARCH_A`, then every quarter depth of field within 2 coarse steps of the best, then a
    parabola through the best and its neighbours. With two rotation candidates (θ, θ + π: the scan
    rotation estimated) each gets its own search; conjugating probe and object while turning the scan
    by π leaves the data unchanged (with Cs = 0 the two fit alike, at opposite defocus), so where their
    errors are within :data:`_TIE` the one whose object phase is skewed positive (atoms are phase peaks)
    is taken. Returns ``(defocus_A, rotation_rad, flip, record)``."""
    dof = cal.wavelength_A / (cal.require("semiangle_mrad") * 1e-3) ** 2
    patch = _central_patch(region, 12)
    tried: dict[tuple[float, int], float] = {}

    def err(df: float, r: int) -> float:
        key = (round(float(df), 6), r)
        if key not in tried:
            theta, flip = rotations[r]
            tried[key] = float(trial(region=patch, defocus_A=float(df), iterations=2, scan_rotation_rad=theta,
                                     scan_flip=flip).errors[-1])
        return tried[key]

    coarse = 2 * dof
    grid = np.arange(-math.floor(DEFOCUS_SEARCH_A / coarse), math.floor(DEFOCUS_SEARCH_A / coarse) + 1) * coarse
    best = []
    for r in range(len(rotations)):
        c = min(grid, key=lambda df: err(df, r))
        fine = np.arange(c - 2 * coarse, c + 2 * coarse + 1e-9, dof / 4)
        errs = [err(df, r) for df in fine]
        i = int(np.argmin(errs))
        df = float(fine[i])
        if 0 < i < len(fine) - 1:  # the vertex of the parabola through the best and its neighbours
            curv = errs[i - 1] - 2 * errs[i] + errs[i + 1]
            if curv > 0:
                df += float(np.clip(0.5 * (errs[i - 1] - errs[i + 1]) / curv, -0.5, 0.5)) * dof / 4
        best.append((df, r, errs[i]))
    record: dict[str, Any] = {"depth_of_field_A": dof, "patch": [patch[0].start, patch[0].stop, patch[1].start,
                                                                   patch[1].stop]}
    best.sort(key=lambda b: b[2])
    chosen = best[0]
    if len(best) == 2 and best[1][2] <= best[0][2] * (1 + _TIE):
        skews = []
        for df, r, _ in best:
            theta, flip = rotations[r]
            ph = trial(region=patch, defocus_A=df, iterations=4, scan_rotation_rad=theta,
                       scan_flip=flip).phase_on_scan_grid().astype(np.float64).ravel()
            ph = ph - ph.mean()
            skews.append(float((ph**3).mean() / max((ph**2).mean(), 1e-30) ** 1.5))
        chosen = best[int(np.argmax(skews))]
        record["tie"] = {"skewness": skews, "rule": "the object phase skewed positive"}
    record["trials"] = [{"defocus_A": k[0], "rotation_rad": rotations[k[1]][0], "error": v} for k, v in tried.items()]
    theta, flip = rotations[chosen[1]]
    return chosen[0], theta, flip, record


# ---------------------------------------------------------------------- the reconstruction
def reconstruct(
    cube: DataCube,
    *,
    defocus_A: float | str = 0.0,
    Cs_A: float = 0.0,
    slices: int = 1,
    slice_thickness_A: float | None = None,
    modes: int = 1,
    iterations: int = DEFAULT_ITERATIONS,
    batch_size: int | None = None,
    loss: str = "auto",
    refine_positions: bool = False,
    probe: np.ndarray | None = None,
    region: tuple[slice, slice] | None = None,
    device: Any = "auto",
    seed: int = 0,
    checkpoint: str | os.PathLike | None = None,
    progress: bool | None = None,
    pattern_size: int | None = None,
    scan_rotation_rad: float | None = None,
    scan_flip: bool | None = None,
    learning_rates: dict[str, float] | None = None,
    probe_start: int = 1,
    positions_start: int = 2,
    memory_budget: int = 2**30,
    final_lr: float = 0.1,
    constrain_probe: bool = True,
    aperture_from_data: bool = True,
    optimizer: str = "gd",
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    pure_phase: bool = False,
    tied_slices: bool = False,
    coarse_iterations: int | None = None,
    callback: Callable[[int, float], None] | None = None,
) -> PtychoResult:
    """Reconstruct the object (and probe) of a scan by ptychography.

    Parameters
    ----------
    cube : the scan; its calibration needs ``energy_eV``, ``semiangle_mrad``, ``q_pixel_inv_A``
        and ``scan_step_A`` (``origin_px``, ``scan_rotation_rad``/``scan_flip`` are used when set).
    defocus_A : probe defocus in Å, positive = underfocus (``C10 = −defocus_A``, abTEM's and
        py4DSTEM's convention; see :mod:`distill4d.phase.probe`); ``|defocus_A| <= 1e5``. ``"auto"``: the
        defocus within ± :data:`DEFOCUS_SEARCH_A` whose short trial on a central patch fits the data best
        (recorded in the provenance as ``defocus_search``; where the scan rotation is estimated, its 180°
        ambiguity is settled in the same search).
    Cs_A : spherical aberration in Å.
    slices : object slices (1: single slice; more: multislice).
    slice_thickness_A : distance between slices in Å (needed when ``slices > 1``).
    modes : incoherent probe modes (mixed state), kept orthogonal.
    iterations : passes over all positions.
    batch_size : positions per step; default ``n // 16`` clipped to 16-128 for ``n`` positions (at
        least 16 steps per iteration on small scans, 128 positions per step on large ones); with
        ``tied_slices`` the default grows from :data:`TIED_BATCH_START` (if smaller) to that over the iterations.
    loss : ``"amplitude"``, ``"poisson"`` (counted data that the model explains down to the shot noise)
        or ``"auto"``: the Poisson loss where the patterns are counts (non-negative whole numbers) and a
        single-slice trial (:data:`~distill4d.phase._noise.AUTO_TRIAL_ITERATIONS` iterations, amplitude loss,
        a central patch of up to 16 x 16 positions) leaves an error below
        :data:`~distill4d.phase._noise.AUTO_POISSON_RATIO` times its shot-noise floor (a thin specimen), else
        the amplitude loss (more robust where the model is wrong: a thick crystal); recorded in the
        provenance as ``loss`` and ``loss_choice``.
    refine_positions : also refine each probe position (sub-pixel, by its gradient).
    probe : optional vacuum-probe pattern (Qx, Qy), same detector as the scan: its amplitude
        replaces the aperture (the phase comes from ``defocus_A`` and ``Cs_A``).
    region : ``(slice(x0, x1), slice(y0, y1))`` of scan positions to reconstruct (default all).
    device : ``"auto"`` (the GPU when PyTorch sees one), ``"cpu"`` or ``"cuda[:N]"``.
    seed : seed of the mini-batch order and of the extra probe modes.
    checkpoint : a file where the state (object, probe, positions, optimiser, iteration, errors)
        is saved after every iteration; an existing checkpoint of the same reconstruction is
        resumed, one of another refused. Removed by the caller, not here.
    progress : a progress bar on stderr (None: when stderr is a terminal).
    pattern_size : the square window N (pixels) of the patterns around the origin (default the
        largest that fits the detector, even); the object pixel is ``1 / (N q_pixel_inv_A)`` Å.
    scan_rotation_rad, scan_flip : override the calibration's; when neither is known the
        rotation is estimated from the centre of mass as ``distill4d com`` does.
    learning_rates : overrides of :data:`DEFAULT_LR`: ``object_step`` (the object's step, 0.5 of a
        Gauss-Newton step), Adam rates ``probe`` (divided by ``slices``), ``positions`` (object pixels)
        and, with ``optimizer="adam"``, ``phase`` and ``amplitude``.
    probe_start, positions_start : first iteration (0-based) that updates the probe / positions.
    final_lr : the learning rates fall from their values to ``final_lr`` times them over the
        iterations (cosine).
    constrain_probe : hold the probe's Fourier amplitude (all modes together) to that of the initial
        probe (the aperture, or the vacuum probe), refining its phase only; this keeps the probe from
        taking up a periodic factor of the object (the raster-grid artefact of regular scans).
    memory_budget : bytes of patterns held in memory; beyond it they are read from a temporary file.
    aperture_from_data : without a vacuum probe, the aperture's amplitude is read from the scan's mean
        pattern inside the calibrated disk (:func:`~distill4d.phase.probe.aperture_from_mean_pattern`);
        False: the calibrated disk with a one-pixel soft edge.
    validation_fraction : the fraction of the positions held out of the updates (one drawn at random,
        by ``seed``, from each run of ``1 / validation_fraction`` consecutive positions of the scan, so they
        spread over it); after each iteration the loss on them is computed (no gradient) and the object,
        probe and positions of the iteration with the lowest held-out loss are kept, a stopping rule that
        needs no truth; with ``optimizer="gd"`` one more pass over every position (the held-out ones put
        back; object only, at the last iteration's step) refines that object. 0 (the default: on the
        benchmark's thick SrTiO3 it did not help, see docs/experiments.md) disables it and the last iterate
        is returned; ``0 <= validation_fraction < 0.5``. The best state is a second copy of the object,
        probe and positions in memory; held-out positions are never refined (with ``refine_positions``
        they keep their nominal place, moved with the common shift).
    pure_phase : hold every slice's amplitude at 1 (a pure phase object, for elastic data: nothing is
        absorbed, and the scattering that leaves the detector cannot pass for absorption; with a
        ``pattern_size`` larger than the detector it leaves through the unmeasured pixels instead).
    tied_slices : one transmission function for every slice (a crystal that repeats along the beam, with
        ``slice_thickness_A`` its period or a multiple): the depth is no longer an unknown. Its step is
        divided by ``slices²`` (its gradient gathers every slice's, and a change of it changes the phase of
        every slice), and its ``object_step`` defaults to :data:`TIED_OBJECT_STEP`.
    coarse_iterations : with ``tied_slices``, at most this many first iterations model the same thickness
        with ``slices / COARSE_DEPTH_FACTOR`` slices (:data:`COARSE_DEPTH_FACTOR`), each the tied transmission
        function raised to that factor: that many times fewer FFTs per position while the object takes off.
        They end early after one that lowers the error by less than :data:`COARSE_MIN_GAIN`; the rest are
        at full depth (recorded in the provenance as ``coarse_iterations_run``). None:
        :data:`TIED_COARSE_ITERATIONS` (at most half the iterations) with ``2 * COARSE_DEPTH_FACTOR`` or more
        tied slices, else 0. It must be 0 without tied slices and leave one iteration or more at full depth.
    callback : called as ``callback(iteration, error)`` after each iteration.
    """
    import torch

    from ..ml import torch_device

    t_start = time.perf_counter()
    if not isinstance(cube, DataCube):
        raise TypeError(f"cube must be a distill4d.DataCube, got {type(cube).__name__}")
    cal = cube.calibration
    _require_calibration(cal)
    auto_defocus = isinstance(defocus_A, str) and defocus_A == "auto"
    if isinstance(defocus_A, str) and not auto_defocus:
        raise Distill4dError(f"defocus_A must be a number of Å or 'auto', got {defocus_A!r}")
    defocus_A, Cs_A = check_aberrations(0.0 if auto_defocus else defocus_A, Cs_A)
    slices = positive_int("slices", slices)
    modes = positive_int("modes", modes)
    iterations = positive_int("iterations", iterations, minimum=0)
    if batch_size is not None:
        batch_size = positive_int("batch_size", batch_size)
    if optimizer not in OPTIMIZERS:
        raise Distill4dError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if loss not in LOSSES:
        raise Distill4dError(f"loss must be one of {LOSSES}, got {loss!r}")
    validation_fraction = _check_fraction(validation_fraction)
    if slices > 1:
        if slice_thickness_A is None:
            raise Distill4dError("slice_thickness_A (Å) is needed when slices > 1")
        slice_thickness_A = positive_float("slice_thickness_A", slice_thickness_A, maximum=1e4)
    elif slice_thickness_A is not None:
        slice_thickness_A = positive_float("slice_thickness_A", slice_thickness_A, maximum=1e4)
    if tied_slices and slices < 2:
        raise Distill4dError(f"tied_slices (--tied-slices) ties several slices: give slices >= 2, got {slices}")
    if coarse_iterations is None:
        coarse_iterations = (min(TIED_COARSE_ITERATIONS, iterations // 2)
                             if tied_slices and slices >= 2 * COARSE_DEPTH_FACTOR else 0)
    coarse_iterations = positive_int("coarse_iterations", coarse_iterations, minimum=0)
    if coarse_iterations and not tied_slices:
        raise Distill4dError("coarse_iterations needs tied_slices (a crystal that repeats along the beam)")
    if coarse_iterations >= max(iterations, 1):
        raise Distill4dError(f"coarse_iterations ({coarse_iterations}) must leave at least one of the "
                             f"{iterations} iterations at full depth")
    lr = dict(DEFAULT_LR)
    for k, v in (learning_rates or {}).items():
        if k not in lr:
            raise Distill4dError(f"learning_rates has an unknown key {k!r}; known: {sorted(lr)}")
        lr[k] = float(v) if k in ("probe", "positions") and v == 0 else positive_float(f"learning_rates[{k!r}]", v)
    if tied_slices and "object_step" not in (learning_rates or {}):
        lr["object_step"] = TIED_OBJECT_STEP
    reg = _check_region(region, cube.scan_shape)
    qx, qy = cube.pattern_shape
    if pattern_size is None:
        n = min(qx, qy) - (min(qx, qy) % 2)
    else:
        n = positive_int("pattern_size", pattern_size, minimum=8)
    vacuum = None
    if probe is not None:
        vacuum = np.asarray(probe)
        if vacuum.shape != (qx, qy):
            raise Distill4dError(f"probe (the vacuum pattern) has shape {vacuum.shape}, expected the pattern "
                                 f"shape {(qx, qy)}")
    dev = torch_device(device)

    # --- origin, rotation, patterns
    origin = cal.origin_px
    if origin is None:
        from ..imaging.origin import find_bf_disk

        sub = cube[reg[0], reg[1]]
        ox, oy, _ = find_bf_disk(sub.mean_pattern(progress=False))
        origin = (ox, oy)

    def trial(**kw: Any) -> PtychoResult:
        kw = {"defocus_A": defocus_A, "iterations": 4, "Cs_A": Cs_A, "slices": slices,
              "slice_thickness_A": slice_thickness_A, "batch_size": batch_size,
              "loss": "amplitude" if loss == "auto" else loss, "probe": probe,  # auto: chosen after the searches
              "device": dev, "seed": seed, "progress": False, "pattern_size": pattern_size,
              "learning_rates": learning_rates, "memory_budget": memory_budget, "constrain_probe": constrain_probe,
              "aperture_from_data": aperture_from_data, "optimizer": optimizer, "validation_fraction": 0.0,
              "pure_phase": pure_phase, "tied_slices": tied_slices, "coarse_iterations": 0, **kw}
        return reconstruct(cube.with_calibration(origin_px=origin), **kw)

    search = None
    if auto_defocus:
        if scan_rotation_rad is None and cal.scan_rotation_rad is None:  # both rotation candidates in the search
            theta0, flip0 = _com_rotation(cube, reg, scan_flip)
            rotations = [(theta0, flip0), (math.remainder(theta0 + math.pi, 2 * math.pi), flip0)]
            import warnings

            warnings.warn("defocus_A='auto' with the scan rotation unknown: the search starts from the rotation "
                          "estimated from the centre of mass and can stay wrong where that is far off, and on thick "
                          "crystals it can take the wrong half-turn (docs/tutorials/ptycho.md); give scan_rotation_rad "
                          "(--scan-rotation-deg)", stacklevel=2)
        else:
            theta0, flip0, _ = _scan_rotation(cube, reg, scan_rotation_rad, scan_flip, trial)
            rotations = [(theta0, flip0)]
        given_flip = scan_flip
        defocus_A, scan_rotation_rad, scan_flip, search = _defocus_search(cal, reg, rotations, trial)
        if len(rotations) == 2:  # the rotation checked at that defocus, and the defocus searched again if it moved
            flips = (bool(scan_flip),) if given_flip is not None else (bool(scan_flip), not scan_flip)
            better, rscan = _rotation_scan(_central_patch(reg, 12), scan_rotation_rad, scan_flip, None, flips,
                                           trial, defocus_A=defocus_A)
            if better is not None:
                t1, f1 = better
                first = search
                defocus_A, scan_rotation_rad, scan_flip, search = _defocus_search(
                    cal, reg, [(t1, f1), (math.remainder(t1 + math.pi, 2 * math.pi), f1)], trial)
                search["first_search"] = first
            search["rotation_scan"] = rscan
    theta, flip, rot_source = _scan_rotation(cube, reg, scan_rotation_rad, scan_flip, trial)
    if search is not None and len(rotations) == 2:
        rot_source = {"source": "ptychographic rotation scan (trials every 15°) overruled the CoM's rotation; 180° "
                                "ambiguity settled by the defocus search" if "first_search" in search else
                                "estimated from the CoM (minimal curl), 180° ambiguity settled by the defocus search"}
    loss_choice = None
    if loss == "auto":
        loss, loss_choice = _choose_loss(cube, reg, theta, flip, trial)
    store_ = _store(cube, reg, origin, n, memory_budget)
    try:
        res = _run(torch, dev, cube, store_, reg, origin, n, theta, flip, rot_source, vacuum, defocus_A, Cs_A,
                   slices, slice_thickness_A, modes, iterations, batch_size, loss, refine_positions, seed,
                   checkpoint, progress, lr, probe_start, positions_start, final_lr, constrain_probe,
                   aperture_from_data, optimizer, validation_fraction, bool(pure_phase), bool(tied_slices),
                   coarse_iterations, callback, t_start)
        if search is not None:
            res.provenance.parameters["defocus_search"] = search
        if loss_choice is not None:
            res.provenance.parameters["loss_choice"] = loss_choice
        return res
    finally:
        store_.close()


def _choose_loss(cube: DataCube, reg: tuple[slice, slice], theta: float, flip: bool,
                 trial: Callable[..., Any]) -> tuple[str, dict[str, Any]]:
    """``loss="auto"``: the loss, and the record of the choice (see :func:`reconstruct`)."""
    if not counted(cube[reg[0], reg[1]].data):
        return "amplitude", {"rule": "amplitude: the patterns are not counts (whole numbers >= 0)", "counted": False}
    patch = _central_patch(reg, AUTO_TRIAL_POSITIONS)
    t = trial(region=patch, iterations=AUTO_TRIAL_ITERATIONS, loss="amplitude", slices=1,
              slice_thickness_A=None, tied_slices=False, modes=1, refine_positions=False,
              scan_rotation_rad=theta, scan_flip=flip)
    ratio = float(t.noise_ratios[-1])
    # no pixel predicted at one count or more: the shot noise dominates everywhere, the counts' likelihood wins
    chosen = "poisson" if not ratio >= AUTO_POISSON_RATIO else "amplitude"
    return chosen, {"rule": f"poisson where the single-slice trial's error / shot-noise floor < "
                            f"{AUTO_POISSON_RATIO:g}, else amplitude", "counted": True,
                    "error_to_floor": ratio, "trial_region": [patch[0].start, patch[0].stop, patch[1].start,
                                                              patch[1].stop],
                    "trial_iterations": AUTO_TRIAL_ITERATIONS}


def _store(cube: DataCube, reg: tuple[slice, slice], origin: tuple[float, float], n: int, budget: int) -> Any:
    from ._data import PatternStore

    return PatternStore(cube, reg, origin, n, memory_budget=budget)


def _geometry(scan_shape: tuple[int, int], step_A: float, pixel_A: tuple[float, float], theta: float, flip: bool,
              n: int, margin: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Window corners (P, 2) in object pixels and the object shape."""
    i, j = np.meshgrid(np.arange(scan_shape[0]), np.arange(scan_shape[1]), indexing="ij")
    s = np.stack([i.ravel(), j.ravel()], axis=1).astype(np.float64) * step_A
    if flip:
        s = s[:, ::-1]
    c, sn = math.cos(theta), math.sin(theta)
    d = s @ np.array([[c, -sn], [sn, c]]).T  # d = R(θ) P s
    px = d / np.asarray(pixel_A)
    corner = px - n // 2
    corner -= corner.min(axis=0) - margin
    shape = tuple(int(math.ceil(corner[:, k].max())) + n + margin + 1 for k in range(2))
    return corner, shape  # type: ignore[return-value]


def _check_fraction(value: Any) -> float:
    v = nonnegative_float("validation_fraction", value)
    if v >= 0.5:
        raise Distill4dError(f"validation_fraction must be a number in [0, 0.5), got {value!r}")
    return v


def _held_out(n_pos: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of the held-out positions: one drawn at random from each of ``round(fraction n_pos)``
    equal runs of consecutive (raster-order) positions; none when ``fraction`` is 0 or ``n_pos`` < 2."""
    k = int(round(fraction * n_pos))
    if fraction <= 0 or n_pos < 2:
        return np.zeros(0, dtype=np.int64)
    k = min(max(k, 1), n_pos - 1)
    edges = np.linspace(0, n_pos, k + 1).round().astype(np.int64)
    rng = np.random.default_rng([seed, 2])
    return np.asarray([rng.integers(a, b) for a, b in zip(edges[:-1], edges[1:])], dtype=np.int64)


def _job_key(**kw: Any) -> str:
    return json.dumps(kw, sort_keys=True, default=str)


def _run(torch: Any, dev: Any, cube: DataCube, store: Any, reg: tuple[slice, slice], origin: tuple[float, float],
         n: int, theta: float, flip: bool, rot_source: str, vacuum: np.ndarray | None, defocus_A: float, Cs_A: float,
         slices: int, dz: float | None, modes: int, iterations: int, batch_size: int, loss: str,
         refine_positions: bool, seed: int, checkpoint: Any, progress: bool | None, lr: dict[str, float],
         probe_start: int, positions_start: int, final_lr: float, constrain_probe: bool, aperture_from_data: bool,
         optimizer: str, validation_fraction: float, pure_phase: bool, tied: bool, coarse: int, callback: Any,
         t_start: float) -> PtychoResult:
    cal = cube.calibration
    q = cal.q_pixel_inv_A
    pixel_A = (1.0 / (n * q), 1.0 / (n * q))
    lam = cal.wavelength_A
    scan_shape = store.scan_shape
    n_pos = scan_shape[0] * scan_shape[1]
    grow = tied and batch_size is None
    if batch_size is None:
        batch_size = min(DEFAULT_BATCH_SIZE, max(16, n_pos // 16))
    batch_start = min(TIED_BATCH_START, batch_size) if grow else batch_size

    def batch_of(it: int) -> int:
        """The mini-batch size of iteration ``it`` (0-based): ``batch_size``, or with tied slices and the
        default size a geometric growth from ``batch_start`` to it over the iterations."""
        if batch_start == batch_size:
            return batch_size
        f = min(it, iterations - 1) / max(iterations - 1, 1)
        return int(round(batch_start * (batch_size / batch_start) ** f))
    margin = max(4, n // 8)
    val_idx = _held_out(n_pos, validation_fraction, seed)
    train_idx = np.setdiff1d(np.arange(n_pos), val_idx) if len(val_idx) else None
    corner_np, obj_shape = _geometry(scan_shape, cal.scan_step_A, pixel_A, theta, flip, n, margin)
    if obj_shape[0] * obj_shape[1] * slices > 2e8:
        raise Distill4dError(f"the object would be {slices} x {obj_shape[0]} x {obj_shape[1]} pixels: "
                             "reconstruct a smaller region or use a smaller pattern_size")

    # --- probe
    if vacuum is not None:
        vac = _crop_centre(vacuum.astype(np.float64), origin, n)
        probe0 = probe_from_calibration(cal, (n, n), defocus_A=defocus_A, Cs_A=Cs_A, vacuum=vac)
    elif aperture_from_data:
        amp = aperture_from_mean_pattern(store.mean_pattern, cal)
        probe0 = probe_from_calibration(cal, (n, n), defocus_A=defocus_A, Cs_A=Cs_A,
                                        vacuum=np.fft.fftshift(amp) ** 2)
    else:
        probe0 = probe_from_calibration(cal, (n, n), defocus_A=defocus_A, Cs_A=Cs_A)
    probe0 = probe0 * math.sqrt(store.mean_intensity)
    probe_modes = _initial_modes(probe0, modes, seed)
    scale = float(np.abs(probe0).max())

    ftype, ctype = torch.float32, torch.complex64
    S, (H, W) = slices, obj_shape
    So = 1 if tied else S  # transmission functions held: one for every slice when they are tied
    state = {
        "phase": torch.zeros((So, H, W), dtype=ftype, device=dev),
        "amplitude": torch.ones((So, H, W), dtype=ftype, device=dev),
        "probe": torch.as_tensor(probe_modes / scale, dtype=ctype, device=dev),
        "positions": torch.zeros((n_pos, 2), dtype=ftype, device=dev),
    }
    for t in state.values():
        t.requires_grad_(True)
    state["amplitude"].requires_grad_(not pure_phase)
    object_keys = ("phase",) if pure_phase else ("phase", "amplitude")
    adam_keys = ("probe", "positions") if optimizer == "gd" else object_keys + ("probe", "positions")
    from ..ml import Adam  # torch.optim's update, without importing torch._dynamo

    # the probe's modes share Adam's second moment: a weak mode moves by its gradient relative to the
    # strongest mode's, not by about the learning rate (which filled the extra modes with noise, and on
    # partially coherent data spread the power over every mode; docs/design.md); one mode: Adam as before
    opt = Adam([{"params": [state[k]], "lr": lr[k], "name": k, **({"shared_dim": 0} if k == "probe" else {})}
                for k in adam_keys])
    corner = torch.as_tensor(corner_np, dtype=torch.float64, device=dev)
    mask = torch.as_tensor(store.mask, dtype=ftype, device=dev)
    k = torch.fft.fftfreq(n, device=dev, dtype=ftype)
    kx, ky = k[:, None], k[None, :]
    prop = prop_coarse = None
    # coarse iterations (tied slices): S_c thicker slices of the same total depth, each the transmission
    # function to the power S / S_c
    S_c = max(1, round(S / COARSE_DEPTH_FACTOR)) if coarse else S
    if S > 1:
        k2 = (kx * n * q) ** 2 + (ky * n * q) ** 2
        prop = torch.exp(-1j * math.pi * lam * dz * k2.to(torch.float64)).to(ctype)
        if coarse:
            prop_coarse = torch.exp(-1j * math.pi * lam * dz * (S / S_c) * k2.to(torch.float64)).to(ctype)
    depth = {"coarse": False}  # this iteration's model: set at the start of every iteration

    def coarse_run(errs: list[float]) -> int:
        """How many first iterations are coarse, as far as the errors ``errs`` of the iterations done tell:
        ``coarse``, or fewer after the first coarse iteration that lowered the error by less than
        COARSE_MIN_GAIN (from the saved errors alone, so a resumed or restarted run decides alike)."""
        for j in range(1, min(len(errs), coarse)):
            if errs[j] > (1 - COARSE_MIN_GAIN) * errs[j - 1]:
                return j + 1
        return coarse
    # |FFT| of the probe (all modes together) is held to that of the initial probe (the aperture or the
    # vacuum probe): the probe keeps learning its phase (aberrations) and its modes, but cannot take up
    # a periodic factor of the object (the raster-grid ambiguity of a regular scan).
    aperture = torch.as_tensor(np.abs(np.fft.fft2(probe0 / scale)), dtype=ftype, device=dev)
    constrain = bool(constrain_probe)
    ar = torch.arange(n, device=dev)
    gd_alpha = _GD_ALPHA
    one = torch.ones((), dtype=ftype, device=dev)
    eps = 1e-8 * store.mean_intensity / (n * n)

    key = _job_key(shape=cube.shape, region=[reg[0].start, reg[0].stop, reg[1].start, reg[1].stop], n=n,
                   origin=origin, theta=theta, flip=flip, defocus=defocus_A, Cs=Cs_A, slices=S, dz=dz, modes=modes,
                   batch=batch_size, loss=loss, refine=refine_positions, seed=seed, lr=lr, probe_start=probe_start,
                   positions_start=positions_start, final_lr=final_lr, iterations=iterations,
                   constrain_probe=bool(constrain_probe), aperture_from_data=bool(aperture_from_data),
                   optimizer=optimizer, vacuum=vacuum is not None, device=dev.type,
                   **({"pure_phase": True} if pure_phase else {}), **({"tied_slices": True} if tied else {}),
                   **({"batch_start": batch_start} if batch_start != batch_size else {}),
                   **({"coarse_iterations": coarse, "coarse_slices": S_c} if coarse else {}),
                   **({"validation_fraction": validation_fraction} if validation_fraction > 0 else {}),
                   **({"poisson_offset": POISSON_OFFSET} if loss == "poisson" else {}))
    errors: list[float] = []
    ratios: list[float] = []  # each iteration's error over its shot noise (noise_ratios)
    step_scale = 1.0  # the object step's factor after the divergence guard's halvings (checkpointed)
    # held-out loss per iteration, and the state of the iteration (1-based) with the lowest one
    val: dict[str, Any] = {"errors": [], "best_iteration": 0, "best_state": None}
    start_it = 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.exists():
        start_it, step_scale = _load_checkpoint(torch, ckpt, key, state, opt, errors, val, ratios)

    def forward(idx: Any, with_illum: bool = True) -> Any:
        pos = corner[idx].to(ftype) + state["positions"][idx]
        ipos = torch.floor(pos.detach())
        frac = pos - ipos
        ipos = ipos.long()
        flat = ((ipos[:, 0, None] + ar)[:, :, None] * W + (ipos[:, 1, None] + ar)[:, None, :]).reshape(-1)
        b = len(idx)
        ph = state["phase"].reshape(So, -1).index_select(1, flat).reshape(So, b, n, n)
        am = state["amplitude"].reshape(So, -1).index_select(1, flat).reshape(So, b, n, n)
        # unbind, not obj[s]: each select's backward would fill a zero tensor of every slice (O(S²) memory
        # traffic; 32 slices: 9x slower per iteration), unbind's stacks the slices' gradients once
        n_slices, p_slice = S, prop
        if depth["coarse"]:
            f = S / S_c
            am, ph = am**f, ph * f
            n_slices, p_slice = S_c, prop_coarse
        obj = torch.polar(am, ph).unbind(0)
        ramp = (torch.polar(one, -2 * math.pi * kx[None] * frac[:, 0, None, None])
                * torch.polar(one, -2 * math.pi * ky[None] * frac[:, 1, None, None]))  # separable
        pk = torch.fft.fft2(state["probe"] * scale)  # (M, N, N)
        shifted = torch.fft.ifft2(pk[None] * ramp[:, None])  # (B, M, N, N)
        psi = shifted * obj[0][:, None]
        for s in range(1, n_slices):
            psi = torch.fft.ifft2(torch.fft.fft2(psi) * p_slice) * obj[0 if tied else s][:, None]
        far = torch.fft.fft2(psi, norm="ortho")
        inten = (far.real**2 + far.imag**2).sum(dim=1)  # (B, N, N)
        if optimizer != "gd" or not with_illum:
            return inten, None
        with torch.no_grad():  # the illumination Σ_j Σ_m |P_m(r - r_j)|² on the object grid
            p0 = shifted.detach()
            illum = torch.zeros(H * W, dtype=ftype, device=dev)
            illum.index_add_(0, flat, (p0.real**2 + p0.imag**2).sum(dim=1).reshape(-1))
        return inten, illum

    # multislice: the probe and the top slices trade off (a phase of one passes for the other), so the
    # probe learns S times slower (on the thick SrTiO3 patch: SSIM 0.44 after 6 iterations, 0.40 at the
    # single-slice rate)
    lr_now = {"phase": lr["phase"], "amplitude": lr["amplitude"], "probe": lr["probe"] / S,
              "positions": lr["positions"] if refine_positions else 0.0}
    def data_loss(inten: Any, amp: Any) -> tuple[Any, float]:
        """The run's loss of a batch, summed over the masked detector pixels (a tensor), and Σ y there."""
        y = amp * amp
        if loss == "amplitude":
            diff = torch.sqrt(inten + eps) - amp
            total = (mask * diff * diff).sum()
        else:
            total = (mask * (inten - y * torch.log(inten + POISSON_OFFSET))).sum()
        return total, float((y * mask).sum())

    def one_pass(order: np.ndarray, step_now: float, it: int, adam: bool = True,
                 noise: bool = False) -> tuple[float, float, float]:
        """One pass of mini-batch updates over the positions ``order``: (Σ (√I − √y)², Σ y, and with ``noise``
        the error over its shot-noise expectation in the bright pixels, else NaN) before them. ``adam=False``:
        the object's Gauss-Newton steps only (optimizer "gd"; probe and positions held)."""
        num = den = num_b = flo = 0.0
        bs = batch_of(it)
        for b0 in range(0, len(order), bs):
            idx = np.sort(order[b0 : b0 + bs])
            amp = torch.fft.ifftshift(torch.as_tensor(store.get(idx), device=dev), dim=(-2, -1))
            inten, illum = forward(torch.as_tensor(idx, device=dev))
            total, denom = data_loss(inten, amp)
            value = total / max(denom, 1e-30)
            opt.zero_grad(set_to_none=False)
            if optimizer == "gd":
                state["phase"].grad = None
                state["amplitude"].grad = None
            value.backward()
            if adam:
                opt.step()
            if optimizer == "gd":
                with torch.no_grad():  # a Gauss-Newton step: gradient / (illumination + α max)
                    pre = (illum + gd_alpha * illum.max()).reshape(1, H, W)
                    # the Poisson gradient (1 - y/I)ψ is about twice the amplitude one (1 - √y/|ψ|)ψ
                    f = step_now * max(denom, 1e-30) / (2 if loss == "amplitude" else 4) / (S * S if tied else 1)
                    for k in object_keys:
                        state[k].sub_(f * state[k].grad / pre)
            if adam and constrain and it >= probe_start:
                with torch.no_grad():
                    state["probe"].copy_(_fourier_amplitude(torch, state["probe"], aperture))
            with torch.no_grad():
                state["amplitude"].clamp_(0.0, 2.0)
                d = torch.sqrt(inten.detach() + eps) - amp
                num += float((mask * d * d).sum())
                if noise:
                    bright = mask * (inten.detach() >= BRIGHT_COUNTS)
                    num_b += float((bright * d * d).sum())
                    flo += float((bright * shot_noise_floor(torch, inten.detach())).sum())
                den += denom
        return num, den, (num_b / flo if flo > 0 else math.nan)  # NaN: no pixel predicted >= 1 count

    def held_out_loss() -> float:
        """The run's loss on the held-out positions (no gradient), in batches of ``batch_size``."""
        num_v = den_v = 0.0
        with torch.no_grad():
            for b0 in range(0, len(val_idx), batch_size):
                idx = val_idx[b0 : b0 + batch_size]
                amp = torch.fft.ifftshift(torch.as_tensor(store.get(idx), device=dev), dim=(-2, -1))
                inten, _ = forward(torch.as_tensor(idx, device=dev), with_illum=False)
                total, denom = data_loss(inten, amp)
                num_v += float(total)
                den_v += denom
        return num_v / max(den_v, 1e-30)

    bar = _progress_bar(progress, iterations, start_it)
    # divergence guard: the state at the start of the last two iterations is kept; an iteration whose error
    # is not finite, above 1 (worse than no signal) or above DIVERGENCE_FACTOR times the one before restarts
    # the previous iteration from its start with half the object step (at most MAX_STEP_HALVINGS times)
    snapshots: list[tuple[int, dict[str, Any], dict[str, Any]]] = []
    halvings = 0
    it = start_it
    try:
        while it < iterations:
            snapshots = (snapshots + [(it, _snapshot(state), copy.deepcopy(opt.state_dict()))])[-2:]
            n_coarse = coarse_run(errors)
            depth["coarse"] = it < n_coarse
            decay = final_lr + (1 - final_lr) * 0.5 * (1 + math.cos(math.pi * it / max(iterations, 1)))
            step_now = lr["object_step"] * decay * step_scale
            # no gradient is computed for what this iteration does not update
            state["probe"].requires_grad_(it >= probe_start)
            state["positions"].requires_grad_(refine_positions and it >= positions_start)
            if optimizer == "adam":
                for k in object_keys:
                    state[k].requires_grad_(True)
            for g in opt.param_groups:
                name = g["name"]
                active = (name != "probe" or it >= probe_start) and (name != "positions" or it >= positions_start)
                g["lr"] = lr_now[name] * decay if active else 0.0
            rng = np.random.default_rng([seed, it])
            order = rng.permutation(n_pos) if train_idx is None else rng.permutation(train_idx)
            num, den, ratio = one_pass(order, step_now, it, noise=it == iterations - 1)
            with torch.no_grad():
                if modes > 1:
                    state["probe"].copy_(_orthogonalise(torch, state["probe"]))
                if refine_positions and it >= positions_start:
                    state["positions"].sub_(state["positions"].mean(dim=0))
                    state["positions"].clamp_(-margin + 1, margin - 1)
            err = num / max(den, 1e-30)
            # the first iteration at full depth is not compared with the coarse one before it (another model)
            jump = len(errors) > 0 and it != n_coarse and err > DIVERGENCE_FACTOR * errors[-1]
            bad = not math.isfinite(err) or err > 1.0 or jump
            if bad and halvings < MAX_STEP_HALVINGS:
                back, saved, saved_opt = snapshots[0]
                _restore(torch, state, saved)
                opt.load_state_dict(saved_opt)
                del errors[back:]  # errors[i] is iteration i's (a resumed run's list starts at 0 too)
                del ratios[back:]
                if len(val_idx):
                    del val["errors"][back:]
                step_scale *= 0.5
                halvings += 1
                snapshots = []
                bar.update(back - it)
                it = back
                continue
            errors.append(err)
            ratios.append(ratio)
            if len(val_idx):
                val["errors"].append(held_out_loss())
                if val["best_state"] is None or val["errors"][-1] < val["errors"][val["best_iteration"] - 1]:
                    val["best_iteration"] = it + 1
                    val["best_state"] = _snapshot(state)
            if ckpt is not None:
                _save_checkpoint(torch, ckpt, key, it + 1, state, opt, errors, val if len(val_idx) else None,
                                 step_scale, ratios)
            bar.update(1)
            bar.set_postfix(error=f"{errors[-1]:.4g}")
            if callback is not None:
                callback(it, errors[-1])
            it += 1
    finally:
        bar.close()

    chosen = iterations
    if val["best_state"] is not None:
        chosen = val["best_iteration"]
        _restore(torch, state, val["best_state"])
        if optimizer == "gd":
            # the held-out positions put back: one pass over every position, object only, at the last
            # iteration's step, the divergence guard's halvings included (on MoS2 SSIM +0.001 to +0.015;
            # benchmarks/ptycho_validation.py)
            for k in ("probe", "positions"):
                state[k].requires_grad_(False)
            one_pass(np.random.default_rng([seed, iterations]).permutation(n_pos),
                     lr["object_step"] * final_lr * step_scale, iterations, adam=False)
    with torch.no_grad():
        obj = torch.polar(state["amplitude"], state["phase"]).expand(S, H, W).cpu().numpy().astype(np.complex64)
        probe_out = (state["probe"] * scale).cpu().numpy().astype(np.complex64)
        pos_px = corner_np + state["positions"].detach().cpu().double().numpy() + n // 2
    reps = S if tied else 1  # a tied slice stands for every slice
    phase = (reps * state["phase"].detach().sum(dim=0)).cpu().numpy().astype(np.float32)
    amplitude = (state["amplitude"].detach().prod(dim=0) ** reps).cpu().numpy().astype(np.float32)
    lo = np.floor(pos_px.min(axis=0)).astype(int)
    hi = np.ceil(pos_px.max(axis=0)).astype(int) + 1
    phase -= np.float32(phase[lo[0] : hi[0], lo[1] : hi[1]].mean())
    params = {
        "defocus_A": defocus_A, "Cs_A": Cs_A, "slices": S, "slice_thickness_A": dz, "modes": modes,
        "iterations": iterations, "batch_size": batch_size, "batch_size_start": batch_start, "loss": loss, "refine_positions": refine_positions,
        "vacuum_probe": vacuum is not None, "region": [reg[0].start, reg[0].stop, reg[1].start, reg[1].stop],
        "seed": seed, "pattern_size": n, "origin_px": list(origin), "scan_rotation_rad": theta, "scan_flip": flip,
        "scan_rotation": rot_source, "learning_rates": lr, "probe_start": probe_start,
        "positions_start": positions_start, "final_lr": final_lr, "optimizer": optimizer,
        "constrain_probe": bool(constrain_probe), "validation_fraction": validation_fraction,
        "pure_phase": pure_phase, "tied_slices": tied, "coarse_iterations": coarse, "coarse_slices": S_c,
        "coarse_iterations_run": min(coarse_run(errors), len(errors)),
        "object_step_halvings": halvings,
        "validation_positions": int(len(val_idx)),
        "device": str(dev), "resumed_at_iteration": start_it,
        "seconds": time.perf_counter() - t_start, "patterns_in_memory": store.in_memory,
    }
    return PtychoResult(phase, amplitude, obj, pixel_A, probe_out, (pos_px * np.asarray(pixel_A)).astype(np.float64),
                        np.asarray(errors, np.float64), scan_shape, theta, flip, cal,
                        Provenance("ptychography", params, inputs=(cube.name,) if cube.name else ()),
                        np.asarray(val["errors"], np.float64), int(chosen), np.asarray(ratios, np.float64))


def _crop_centre(image: np.ndarray, origin: tuple[float, float], n: int) -> np.ndarray:
    out = np.zeros((n, n))
    cx, cy = int(round(origin[0])), int(round(origin[1]))
    lo = (cx - n // 2, cy - n // 2)
    sx = slice(max(lo[0], 0), min(lo[0] + n, image.shape[0]))
    sy = slice(max(lo[1], 0), min(lo[1] + n, image.shape[1]))
    out[sx.start - lo[0] : sx.stop - lo[0], sy.start - lo[1] : sy.stop - lo[1]] = image[sx, sy]
    return out


def _initial_modes(probe0: np.ndarray, modes: int, seed: int) -> np.ndarray:
    """Mode 0 the probe; further modes the probe times low-order Hermite-like polynomials, each with
    5 % of the intensity, orthogonalised; the total intensity is that of ``probe0``."""
    n = probe0.shape[0]
    out = [probe0.astype(np.complex128)]
    x = (np.arange(n) - n // 2)[:, None] / (n / 4)
    y = (np.arange(n) - n // 2)[None, :] / (n / 4)
    polys = [x + 0 * y, y + 0 * x, x * y, x * x - y * y]
    rng = np.random.default_rng([seed, 1])
    for m in range(1, modes):
        p = polys[(m - 1) % len(polys)] if m - 1 < len(polys) else rng.standard_normal((n, n))
        out.append(probe0 * p)
    arr = np.stack(out)
    if modes > 1:
        flat = arr.reshape(modes, -1)
        # Gram-Schmidt, then intensities 1 - 0.05 (M-1) for mode 0 and 0.05 for the others
        basis = []
        for v in flat:
            for b in basis:
                v = v - np.vdot(b, v) * b
            basis.append(v / np.linalg.norm(v))
        total = np.sum(np.abs(probe0) ** 2)
        weights = [1 - 0.05 * (modes - 1)] + [0.05] * (modes - 1)
        arr = np.stack([np.sqrt(w * total) * b for w, b in zip(weights, basis)]).reshape(modes, n, n)
    return arr


def _fourier_amplitude(torch: Any, probe: Any, aperture: Any) -> Any:
    """The probe modes with their joint Fourier amplitude ``sqrt(Σ_m |FFT P_m|²)`` set to ``aperture``."""
    pk = torch.fft.fft2(probe)
    total = torch.sqrt((pk.real**2 + pk.imag**2).sum(dim=0)) + 1e-12 * aperture.max()
    return torch.fft.ifft2(pk * (aperture / total))


def _orthogonalise(torch: Any, probe: Any) -> Any:
    """Probe modes made orthogonal (the eigenmodes of their density matrix), strongest first."""
    m = probe.shape[0]
    flat = probe.reshape(m, -1)
    u, s, vh = torch.linalg.svd(flat, full_matrices=False)
    return (s[:, None].to(probe.dtype) * vh).reshape(probe.shape)


def _progress_bar(progress: bool | None, total: int, initial: int) -> Any:
    from tqdm.auto import tqdm

    if progress is None:
        progress = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, unit="iteration", desc="ptychography", disable=not progress,
                leave=False)


def _snapshot(state: dict[str, Any]) -> dict[str, Any]:
    """A detached copy of the reconstruction's tensors (object, probe, positions)."""
    return {k: v.detach().clone() for k, v in state.items()}


def _restore(torch: Any, state: dict[str, Any], saved: dict[str, Any]) -> None:
    """The tensors of ``state`` set, in place, to those of a :func:`_snapshot`."""
    with torch.no_grad():
        for k, v in state.items():
            v.copy_(saved[k])


def _save_checkpoint(torch: Any, path: Path, key: str, iteration: int, state: dict[str, Any], opt: Any,
                     errors: list[float], val: dict[str, Any] | None = None, step_scale: float = 1.0,
                     ratios: list[float] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    data = {"format": _CHECKPOINT_FORMAT, "key": key, "iteration": iteration,
            "state": {k: v.detach().cpu() for k, v in state.items()}, "optimizer": opt.state_dict(),
            "errors": list(errors), "step_scale": float(step_scale), "noise_ratios": list(ratios or [])}
    if val is not None and val["best_state"] is not None:  # the held-out curve and the best state so far
        data["validation"] = {"errors": list(val["errors"]), "best_iteration": int(val["best_iteration"]),
                              "best_state": {k: v.detach().cpu() for k, v in val["best_state"].items()}}
    torch.save(data, tmp)
    os.replace(tmp, path)


def _load_checkpoint(torch: Any, path: Path, key: str, state: dict[str, Any], opt: Any, errors: list[float],
                     val: dict[str, Any], ratios: list[float]) -> tuple[int, float]:
    """Loads a checkpoint into ``state``, ``opt``, ``errors``, ``val`` and ``ratios`` (NaN where a checkpoint
    of an older version has none): (iterations done, object-step factor)."""
    try:
        data = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # a truncated or foreign file
        raise Distill4dError(f"checkpoint {path} cannot be read ({err}); delete it to start again") from None
    if not isinstance(data, dict) or data.get("format") != _CHECKPOINT_FORMAT:
        raise Distill4dError(f"{path} is not a ptychography checkpoint; delete it or choose another checkpoint path")
    if data["key"] != key:
        raise Distill4dError(f"checkpoint {path} belongs to a reconstruction with other data or parameters; "
                             "delete it (or pass --force) to start again")
    with torch.no_grad():
        for k, v in state.items():
            v.copy_(data["state"][k].to(v.device))
    opt.load_state_dict(data["optimizer"])
    errors.extend(float(e) for e in data["errors"])
    saved = [float(f) for f in data.get("noise_ratios", [])]
    ratios.extend(saved + [math.nan] * (len(errors) - len(saved)))
    if "validation" in data:
        v = data["validation"]
        val["errors"] = [float(e) for e in v["errors"]]
        val["best_iteration"] = int(v["best_iteration"])
        val["best_state"] = {k: t.to(state[k].device) for k, t in v["best_state"].items()}
    return int(data["iteration"]), float(data.get("step_scale", 1.0))
