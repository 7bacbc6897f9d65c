"""4D-STEM scans of a crystal with a known strain, tilt and thickness at every probe position.

A scan is built from per-state multislice patterns: the positions are grouped into states
(the diagonal part of the deformation, rounded to ``strain_step``; the tilt, rounded to
``tilt_step_mrad``), each state is simulated once by :func:`~distill4d.simulate.multislice.simulate_cbed`
(one propagation gives every thickness the scan needs), and each position's pattern is the
state's pattern warped exactly onto the position's own deformation ``F``: Bragg vectors go as
``g = F^-T g0``, so the warp is ``A = F^-T F_s^T`` about the pattern origin (cubic spline),
where ``F_s`` is the state's simulated deformation. The warp carries rotation, shear and the
rounding of the diagonal strain; disk shapes follow the warp too, which is off by
``|A - I| · radius`` (< 0.05 px for 1 % on a 5 px disk). Vacuum positions get the vacuum
probe.

Ground truth (:class:`MultisliceTruth`) holds ``F``, ``eps_xx``, ``eps_yy``, ``eps_xy``,
``theta`` (DESIGN conventions: ``ε = ½(F + Fᵀ) − I``), the tilt and thickness maps, the vacuum
mask, and the kinematic Bragg peak positions of every position.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np

from .._validate import nonnegative_float, positive_float, positive_int
from ..datacube import DataCube
from ..errors import Distill4dError
from .kinematic import ScanTruth, deformation_to_strain
from .multislice import CBEDSettings, simulate_cbed, stretch_cell, vacuum_probe_pattern

__all__ = ["PRESETS", "ScanFields", "scan_preset", "MultisliceTruth", "simulate_scan", "state_keys", "save_scan",
           "load_scan"]

PRESETS = ("uniform", "multilayer", "gradient", "rotation")


@dataclasses.dataclass(frozen=True)
class ScanFields:
    """What the sample is at every position: ``F`` (Rx, Ry, 2, 2) deformation gradients,
    ``tilt_mrad`` (Rx, Ry, 2), ``thickness_A`` (Rx, Ry), ``vacuum`` (Rx, Ry) bool."""

    F: np.ndarray
    tilt_mrad: np.ndarray
    thickness_A: np.ndarray
    vacuum: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.F.shape[:2]


def _rot(theta: np.ndarray) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def scan_preset(
    name: str,
    scan_shape: tuple[int, int] = (32, 32),
    *,
    strain: float = 0.01,
    layer_width: int = 4,
    rotation_deg: float = 1.0,
    core_px: float = 3.0,
    tilt_mrad: tuple[float, float] = (0.0, 0.0),
    thickness_A: float = 200.0,
    vacuum_fraction: float = 0.0,
) -> ScanFields:
    """A sample on a ``scan_shape`` grid.

    name : ``"uniform"`` (εxx = ``strain`` everywhere), ``"multilayer"`` (layers
        ``layer_width`` rows thick along Rx, εxx alternating ±``strain``), ``"gradient"`` (εxx
        from −``strain`` to +``strain`` linearly along Rx), ``"rotation"`` (a dislocation-like
        lattice rotation ``θ = θmax · 2 r0 (x − xc) / (r² + r0²)``, θmax = ``rotation_deg``,
        r0 = ``core_px`` scan pixels, centred in the scan; no strain).
    tilt_mrad, thickness_A : the same at every position (edit the returned arrays for more).
    vacuum_fraction : the last ``vacuum_fraction`` of the columns (along Ry) are vacuum.
    """
    if name not in PRESETS:
        raise Distill4dError(f"preset must be one of {PRESETS}, got {name!r}")
    rx, ry = (positive_int("scan_shape", s) for s in scan_shape)
    s = float(strain)
    if not math.isfinite(s) or abs(s) >= 0.2:
        raise Distill4dError(f"strain must be a fraction with |strain| < 0.2, got {strain!r}")
    frac = nonnegative_float("vacuum_fraction", vacuum_fraction)
    if frac >= 1:
        raise Distill4dError(f"vacuum_fraction must be below 1, got {vacuum_fraction!r}")
    exx = np.zeros((rx, ry))
    theta = np.zeros((rx, ry))
    x = np.arange(rx)[:, None] * np.ones((1, ry))
    if name == "uniform":
        exx[:] = s
    elif name == "multilayer":
        w = positive_int("layer_width", layer_width)
        exx[:] = np.where((x // w) % 2 == 0, s, -s)
    elif name == "gradient":
        exx[:] = -s + 2 * s * x / max(rx - 1, 1)
    else:
        r0 = positive_float("core_px", core_px)
        X = x - (rx - 1) / 2
        Y = np.arange(ry)[None, :] - (ry - 1) / 2
        theta = math.radians(float(rotation_deg)) * 2 * r0 * X / (X**2 + Y**2 + r0**2)
    U = np.zeros((rx, ry, 2, 2))
    U[..., 0, 0] = 1 + exx
    U[..., 1, 1] = 1.0
    F = _rot(theta) @ U
    tilt = np.asarray(tilt_mrad, dtype=np.float64)
    if tilt.shape != (2,) or not np.all(np.isfinite(tilt)):
        raise Distill4dError(f"tilt_mrad must be two finite angles (mrad), got {tilt_mrad!r}")
    vacuum = np.zeros((rx, ry), dtype=bool)
    n_vac = int(round(frac * ry))
    if n_vac:
        vacuum[:, ry - n_vac :] = True
    return ScanFields(
        F=F,
        tilt_mrad=np.broadcast_to(tilt, (rx, ry, 2)).copy(),
        thickness_A=np.full((rx, ry), positive_float("thickness_A", thickness_A, maximum=5000.0)),
        vacuum=vacuum,
    )


@dataclasses.dataclass
class MultisliceTruth(ScanTruth):
    """:class:`~distill4d.simulate.kinematic.ScanTruth` plus ``tilt_mrad`` (Rx, Ry, 2),
    ``thickness_A`` (Rx, Ry; the simulated whole-cell thickness) and ``vacuum`` (Rx, Ry).
    ``hk`` indexes the orthogonal simulation cell's x and y reciprocal vectors."""

    tilt_mrad: np.ndarray = None  # type: ignore[assignment]
    thickness_A: np.ndarray = None  # type: ignore[assignment]
    vacuum: np.ndarray = None  # type: ignore[assignment]


def _check_fields(fields: ScanFields) -> None:
    rx, ry = fields.F.shape[:2]
    if fields.F.shape != (rx, ry, 2, 2) or not np.all(np.isfinite(fields.F)):
        raise Distill4dError(f"fields.F must be finite with shape (Rx, Ry, 2, 2), got {fields.F.shape}")
    if fields.tilt_mrad.shape != (rx, ry, 2) or fields.thickness_A.shape != (rx, ry) or fields.vacuum.shape != (rx, ry):
        raise Distill4dError("fields.tilt_mrad, thickness_A and vacuum must match the scan shape of fields.F")
    if np.any(np.linalg.det(fields.F) <= 0):
        raise Distill4dError("fields.F must have positive determinants (no inverted lattices)")


#: Default rounding of the simulated states (see module doc): stretch (fraction) and tilt (mrad).
STRAIN_STEP = 5e-4
TILT_STEP_MRAD = 0.5


def state_keys(F: Any, tilt_mrad: Any, strain_step: float = STRAIN_STEP,
               tilt_step_mrad: float = TILT_STEP_MRAD) -> np.ndarray:
    """The simulated state of each position, ``(..., 4)`` integers ``(dx, dy, tx, ty)``: the
    diagonal of the stretch ``U`` (``F = R U``) minus 1 in units of ``strain_step`` and the tilt
    (mrad) in units of ``tilt_step_mrad``, rounded. ``simulate_scan`` runs one multislice
    simulation per distinct key, of the cell stretched by ``1 + dx * strain_step`` and
    ``1 + dy * strain_step`` and tilted by ``(tx, ty) * tilt_step_mrad``."""
    F = np.asarray(F, dtype=np.float64)
    FtF = np.swapaxes(F, -1, -2) @ F
    w, v = np.linalg.eigh(FtF)
    U = v @ (np.sqrt(w)[..., None] * np.swapaxes(v, -1, -2))
    dx = np.round((U[..., 0, 0] - 1) / strain_step).astype(np.int64)
    dy = np.round((U[..., 1, 1] - 1) / strain_step).astype(np.int64)
    tq = np.round(np.asarray(tilt_mrad, dtype=np.float64) / tilt_step_mrad).astype(np.int64)
    return np.stack([dx, dy, tq[..., 0], tq[..., 1]], -1)


def simulate_scan(
    atoms: Any,
    fields: ScanFields,
    settings: CBEDSettings,
    *,
    scan_step_A: float = 10.0,
    dose_e: float | None = None,
    plasmon_fraction: float = 0.0,
    seed: int = 0,
    strain_step: float = STRAIN_STEP,
    tilt_step_mrad: float = TILT_STEP_MRAD,
    device: str = "auto",
    scheduler: str | Any = "inline",
    n_workers: int | None = None,
    progress: bool | None = None,
) -> tuple[DataCube, MultisliceTruth]:
    """Simulate a scan of ``atoms`` (orthogonal cell, beam along z) deformed by ``fields``.

    Parameters
    ----------
    settings : detector and microscope (its ``thicknesses_A`` and ``tilt_mrad`` are replaced
        by the fields').
    scan_step_A : the scan step written to the calibration (Å).
    dose_e : electrons per pattern (Poisson noise); None: noise-free fractions of the beam.
    plasmon_fraction : a plasmon-like background (Lorentzian ⊛ probe) of this fraction of
        each pattern's flux, added before the noise.
    seed : noise seed.
    strain_step, tilt_step_mrad : rounding of the simulated states (see module doc).
    scheduler, n_workers : where the states are simulated, as in
        :func:`~distill4d.engine.run_tasks` (``"inline"`` by default; ``"processes"`` runs one
        state per core; never threads, see :mod:`distill4d.simulate.multislice`).
    progress : a progress bar over the states (default: when stderr is a terminal).
    """
    from ..engine import run_tasks
    from .augment import affine, plasmon_background, poisson_noise

    if scheduler == "threads":
        raise Distill4dError("scheduler='threads' is refused for simulations (abTEM's settings are process-wide): "
                             "use 'inline' or 'processes'")

    _check_fields(fields)
    rx, ry = fields.shape
    step = positive_float("strain_step", strain_step)
    tstep = positive_float("tilt_step_mrad", tilt_step_mrad)
    pfrac = nonnegative_float("plasmon_fraction", plasmon_fraction)
    if dose_e is not None:
        positive_float("dose_e", dose_e)
    cell = np.diag(np.asarray(atoms.cell.array, dtype=np.float64))
    keys = state_keys(fields.F, fields.tilt_mrad, step, tstep).reshape(-1, 4)
    crystal = ~fields.vacuum.reshape(-1)
    states = {tuple(k) for k in keys[crystal]}
    qshape = settings.shape
    o = np.array(settings.origin_px, dtype=np.float64)
    data = np.zeros((rx * ry, *qshape), dtype=np.float32)
    thick_px = fields.thickness_A.reshape(-1)
    Fflat = fields.F.reshape(-1, 2, 2)
    peaks_per: list[np.ndarray] = [np.zeros((0, 3))] * (rx * ry)
    hk_all: dict[tuple[int, int], int] = {}
    sim_thick = np.zeros(rx * ry)
    probe = None  # the vacuum probe: every simulation returns it (tilt does not move it)
    tasks = []
    positions = {}  # state -> (its positions, its simulated diagonal deformation F_s)
    stretch = {key: np.diag([1 + key[0] * step, 1 + key[1] * step, 1.0]) for key in sorted(states)}
    # every state on one grid (supercell and grid points), its sampling scaling with its cell: grids rounded
    # per state made the disk contrast jump between states (simulate_cbed's grid_cells)
    cells = sorted({(cell[0] * Fs[0, 0], cell[1] * Fs[1, 1]) for Fs in stretch.values()})
    for key, Fs in stretch.items():
        idx = np.flatnonzero(crystal & np.all(keys == np.array(key), axis=1))
        positions[key] = (idx, Fs)
        wanted = sorted(set(np.round(thick_px[idx], 6)))
        s = dataclasses.replace(settings, thicknesses_A=tuple(wanted), tilt_mrad=(key[2] * tstep, key[3] * tstep))
        tasks.append((key, stretch_cell(atoms, Fs[0, 0], Fs[1, 1]), s, device, cells))
    done = {task[0]: res for task, res in run_tasks(_simulate_state, tasks, scheduler=scheduler, n_workers=n_workers,
                                                    progress=progress, desc="simulate", unit="state")}
    for key, (idx, Fs) in positions.items():  # in the order of the states, whatever order they finished in
        res = done[key]
        probe = res.probe
        sim_cells = np.round(res.thicknesses_A / cell[2]).astype(int)
        peaks0 = res.peaks
        gxy = (peaks0[:, :2] - o) * settings.q_pixel_inv_A
        hk = np.round(gxy * (cell[:2] * np.array([Fs[0, 0], Fs[1, 1]]))).astype(int)
        for h in map(tuple, hk):
            hk_all.setdefault(h, len(hk_all))
        for i in idx:
            k = int(np.argmin(np.abs(sim_cells - max(1, round(thick_px[i] / cell[2])))))
            sim_thick[i] = res.thicknesses_A[k]
            A = np.linalg.inv(Fflat[i]).T @ Fs[:2, :2].T
            pat = res.patterns[k]
            pk = peaks0.copy()
            if not np.allclose(A, np.eye(2), atol=1e-9):
                pat, _, pk2 = affine(pat, None, peaks0[:, :2], matrix=A, origin_px=o, order=3)
                pat = np.clip(pat, 0.0, None)
                pk[:, :2] = pk2
            data[i] = pat
            peaks_per[i] = np.column_stack([pk[:, :2], pk[:, 2], [hk_all[tuple(h)] for h in hk]])
    if probe is None:  # vacuum only
        probe = vacuum_probe_pattern(settings, device=device)
    data[~crystal] = probe
    for i in np.flatnonzero(~crystal):
        peaks_per[i] = np.array([[o[0], o[1], 1.0, hk_all.setdefault((0, 0), len(hk_all))]])
    rng = np.random.default_rng(seed)
    if pfrac > 0 or dose_e is not None:
        for i in range(rx * ry):
            p = data[i].astype(np.float64)
            if pfrac > 0:
                p = plasmon_background(p, probe, fraction=pfrac, width_px=max(2.0, 0.05 * min(qshape)))
            if dose_e is not None:
                p = poisson_noise(p, dose_e=dose_e, rng=rng)
            data[i] = p
    m = len(hk_all)
    qx = np.full((rx * ry, m), np.nan)
    qy = np.full((rx * ry, m), np.nan)
    inten = np.full((rx * ry, m), np.nan)
    for i, pk in enumerate(peaks_per):
        cols = pk[:, 3].astype(int)
        qx[i, cols], qy[i, cols], inten[i, cols] = pk[:, 0], pk[:, 1], pk[:, 2]
    hk_arr = np.zeros((m, 2), dtype=int)
    for h, j in hk_all.items():
        hk_arr[j] = h
    cal = settings.calibration().replace(scan_step_A=positive_float("scan_step_A", scan_step_A))
    dc = DataCube(data.reshape(rx, ry, *qshape), cal, name="multislice scan")
    truth = MultisliceTruth(
        F=fields.F.copy(),
        **deformation_to_strain(fields.F),
        qx=qx.reshape(rx, ry, m),
        qy=qy.reshape(rx, ry, m),
        intensity=inten.reshape(rx, ry, m),
        hk=hk_arr,
        radius_px=settings.semiangle_mrad * 1e-3 / settings.wavelength_A / settings.q_pixel_inv_A,
        origin_px=(float(o[0]), float(o[1])),
        calibration=cal,
        tilt_mrad=fields.tilt_mrad.copy(),
        thickness_A=np.where(fields.vacuum, 0.0, sim_thick.reshape(rx, ry)),
        vacuum=fields.vacuum.copy(),
    )
    return dc, truth


def _simulate_state(task: tuple) -> Any:
    """One state's multislice patterns (a task of :func:`simulate_scan`)."""
    _, atoms, settings, device, cells = task
    return simulate_cbed(atoms, settings, device=device, grid_cells=cells)


_TRUTH_ARRAYS = ("F", "eps_xx", "eps_yy", "eps_xy", "theta", "qx", "qy", "intensity", "hk", "tilt_mrad", "thickness_A", "vacuum")
_TRUTH_UNITS = {
    "F": "", "eps_xx": "fraction", "eps_yy": "fraction", "eps_xy": "fraction", "theta": "rad", "qx": "px",
    "qy": "px", "intensity": "relative to (000)", "hk": "", "tilt_mrad": "mrad", "thickness_A": "A", "vacuum": "",
}


def save_scan(path: str | os.PathLike, datacube: DataCube, truth: MultisliceTruth, *, force: bool = False, attrs: dict | None = None) -> Any:
    """Write a simulated scan and its ground truth (``/results/<name>``) to one HDF5 file."""
    from ..io import write

    results = {n: np.asarray(getattr(truth, n)) for n in _TRUTH_ARRAYS}
    results["vacuum"] = results["vacuum"].astype(np.uint8)
    meta = {"truth_radius_px": truth.radius_px, "truth_origin_px": list(truth.origin_px)}
    meta.update(attrs or {})
    return write(path, datacube, force=force, results=results, units=_TRUTH_UNITS, attrs=meta)


def load_scan(path: str | os.PathLike) -> tuple[DataCube, MultisliceTruth]:
    """Read a scan written by :func:`save_scan` (the DataCube in memory) and its ground truth."""
    from ..io import read, read_results

    dc = read(path, lazy=False)
    r = read_results(path)
    missing = [n for n in _TRUTH_ARRAYS if n not in r]
    if missing:
        raise Distill4dError(f"{path} has no ground truth {missing}; was it written by distill4d simulate scan?")
    arrays = {n: np.asarray(r[n]) for n in _TRUTH_ARRAYS}
    arrays["vacuum"] = arrays["vacuum"].astype(bool)
    origin = r.attrs.get("truth_origin_px")
    return dc, MultisliceTruth(
        radius_px=float(r.attrs["truth_radius_px"]),
        origin_px=(float(origin[0]), float(origin[1])),
        calibration=dc.calibration,
        **arrays,
    )
