#!/usr/bin/env python3
"""The simulated scans of the ML phase-retrieval benchmark (abTEM multislice, noise-free),
cached in ``benchmarks/data/phase/`` with their projected-potential labels.

Every scan is :func:`distill4d.simulate.realspace.simulate_realspace_scan` of the whole cell
(periodic scan grid, ``scan_step_A`` 0.25 adjusted per axis to tile the cell), static atoms
(no frozen phonons), 80 kV, 25 mrad convergence semiangle, defocus 0 (focus on the entrance
plane), a 48 x 48 detector reaching 75 mrad (3 x semiangle) at the edge of its shorter axis,
simulated up to the detector corners; the data are float32 fractions of the incident beam per
pixel (no noise: the benchmark applies its doses with ``apply_dose`` later, so one simulation
serves every dose). Simulation seed 0, ``num_workers=2``.

- ``mos2_train``: ``mos2_monolayer(repeats=(6, 4), vacancy_fraction=0)``: 2H-MoS2 monolayer,
  18.96 x 21.89 Å (48 Mo + 96 S), no vacancies, 1 Å slices. The training field.
- ``mos2_test``: the same cell with vacancies never seen in training: 6 S vacancies
  (``vacancy_fraction=0.06, vacancy_element="S", seed=1``) plus one Mo vacancy, the Mo atom
  farthest (periodic distance in x, y) from every S vacancy. ``labels["atoms_removed"]``
  lists all seven (indices in the vacancy-free supercell, positions in Å, symbols). 1 Å slices.
- ``sto_thick``: ``perovskite_slab(thickness_A=121, repeats=(4, 4))``: SrTiO3 [001], 31 cells
  = 121.06 Å thick, 15.62 x 15.62 Å (1 Å slices: 126 slices of the 125.06 Å cell, 2 Å of
  vacuum each side). A thick (> 10 nm), strongly dynamical sample: phase up to 31.7 rad, and
  8 % of the beam scatters beyond the detector (detected fraction 0.919 vs 0.998 for MoS2).
- Thick crystals of other structures (no perovskite), :func:`~distill4d.simulate.realspace.cubic_slab`
  viewed along [001], 1 Å slices: the training set of the "mixed" models — ``mgo_train``
  (MgO rocksalt, a 4.212 Å, 3 x 3 cells, 80 Å → 80.0 Å), ``gaas_train`` (GaAs zincblende,
  5.653 Å, 2 x 2, 150 Å → 152.6 Å), ``ceo2_train`` (CeO2 fluorite, 5.411 Å, 2 x 2, 100 Å →
  97.4 Å), ``cu_train`` (Cu fcc, 3.615 Å, 3 x 3, 40 Å → 39.8 Å), ``si_train`` (Si diamond,
  5.431 Å, 2 x 2, 200 Å → 201.0 Å) — and ``mo_val`` (Mo bcc, 3.147 Å, 4 x 4, 120 Å → 119.6 Å),
  the validation crystal on which choices for the mixed models are made before the SrTiO3
  test is scored.
- ``mos2_large``: a field of the size of a lab scan for the ptychography pipeline, never used in
  training: ``mos2_monolayer(repeats=(18, 12), vacancy_fraction=0.06, vacancy_element="S",
  seed=2)`` (52 S vacancies) plus 9 Mo vacancies (as ``mos2_test``: 3 x 3 times its cell, its own random vacancies),
  56.9 x 65.7 Å, 228 x 263 positions. abTEM propagates a wave of the whole cell for every
  position, so a cell 9x larger would cost 81x; it is simulated in tiles instead
  (:func:`simulate_tiled`: 38 x 38 positions per tile, each on a window of the cell's atoms 6 Å
  beyond the tile, ``num_workers=1``); the labels are those of the whole cell. Checked on
  ``mos2_test``: tiles differ from its whole-cell simulation by 1.4 % (mean |difference| / mean
  intensity), the same at the tile's centre (1.4 %) as at its edges (1.5-1.6 %): the window's
  coarser k sampling of the probe, not the margin.
- ``bto_val``: ``perovskite_slab(thickness_A=120, repeats=(4, 4), formula="BaTiO3", a_A=4.00)``:
  BaTiO3 [001] (cubic), 30 cells = 120 Å, 16 x 16 Å, 2 Å of vacuum each side; phase up to 45.2 rad,
  detected fraction 0.934. A validation crystal of the test's structure type for ptychography
  settings (``ptycho_tied.py``), never the test.
- ``sto_020`` ... ``sto_160``: a thickness series of the test material, SrTiO3 [001] 2 x 2 cells
  (7.81 x 7.81 Å, 31 x 31 positions), 20, 40, 60, 80, 121 and 160 Å (rounded to whole cells:
  19.5, 39.1, 58.6, 78.1, 121.1, 160.1 Å); test scans only.

Each cache ``<name>.h5`` is a distill4d DataCube file (:func:`distill4d.io.write`) with the
labels under ``/results`` (``projected_potential``, ``phase``, ``projected_potential_point``,
``projected_potential_blurred``, ``scan_positions_A``, and ``atoms_removed_indices``,
``atoms_removed_positions_A`` when there are vacancies) and, as JSON file attributes, the
simulation ``metadata``, the removed atoms' symbols and the parameters ``phase_params`` that
:func:`load_or_simulate` compares with :data:`SCANS` (a mismatch re-simulates).

Measured on the 2-core CPU machine (another benchmark running beside it, ``num_workers=2``);
every scan has the same detector, 48 x 48 px of 3.125 mrad = 0.074837 1/Å (80 kV,
λ = 0.041757 Å), origin at pixel (24, 24):

==========  ==========  =================  ========  ========  =====================
scan        scan shape  steps x, y (Å)     sim grid  slices    simulation wall time
==========  ==========  =================  ========  ========  =====================
mos2_train  76 x 88     0.2495, 0.2488     160x180   8         40 s
mos2_test   76 x 88     0.2495, 0.2488     160x180   8         43 s
sto_thick   62 x 62     0.2519, 0.2519     128x128   126       83 s
mgo_train   51 x 51     0.2478, 0.2478     210x210   85        121 s
gaas_train  45 x 45     0.2512, 0.2512     189x189   157       211 s (*)
ceo2_train  43 x 43     0.2517, 0.2517     180x180   102       60 s
cu_train    43 x 43     0.2522, 0.2522     180x180   44        26 s
si_train    43 x 43     0.2526, 0.2526     180x180   205       110 s
mo_val      50 x 50     0.2518, 0.2518     210x210   124       164 s
mos2_large  228 x 263   0.2495, 0.2497     180x180   8         488 CPU s (**)
bto_val     64 x 64     0.2500, 0.2500     135x135   124       192 s
==========  ==========  =================  ========  ========  =====================

(*) a second copy of the simulation ran beside it for about a minute. (**) 42 tiles, one thread,
CPU time (the machine was loaded: 1615 s wall); sim grid per tile window. Detected fractions of
the thick crystals: MgO 0.985, GaAs 0.940, CeO2 0.926, Cu 0.923, Si 0.985, Mo 0.866.

(Simulation sampling 0.119-0.122 Å, no cell repetition needed; reading a cache takes < 0.3 s.)

Usage: ``.venv/bin/python benchmarks/phase_data.py [--only NAME ...] [--resimulate]``.
API: :func:`scan_names`, :func:`load_or_simulate` ``(name) -> (DataCube, labels)``,
:func:`cache_path`, :func:`build_atoms`, :data:`SCANS`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = HERE / "data" / "phase"
#: Bump when the cache layout changes (old caches are then re-simulated).
FORMAT = 1

#: Simulation settings shared by every scan (``simulate_realspace_scan`` keywords).
COMMON: dict[str, Any] = {
    "energy_eV": 80e3,
    "semiangle_mrad": 25.0,
    "defocus_A": 0.0,
    "scan_step_A": 0.25,
    "detector_shape": 48,
    "q_max_mrad": None,  # default: 3 x semiangle
    "cover_corners": True,
    "frozen_phonons": 0,
    "seed": 0,
}
NUM_WORKERS = 2

#: name -> {"structure": builder keywords, "sim": per-scan simulation keywords}.
SCANS: dict[str, dict[str, Any]] = {
    "mos2_train": {
        "structure": {"kind": "mos2", "repeats": [6, 4], "vacancy_fraction": 0.0},
        "sim": {"slice_thickness_A": 1.0},
    },
    "mos2_test": {
        "structure": {
            "kind": "mos2",
            "repeats": [6, 4],
            "vacancy_fraction": 0.06,
            "vacancy_element": "S",
            "seed": 1,
            "extra_mo_vacancies": 1,
        },
        "sim": {"slice_thickness_A": 1.0},
    },
    "sto_thick": {
        "structure": {
            "kind": "perovskite",
            "thickness_A": 121.0,
            "repeats": [4, 4],
            "formula": "SrTiO3",
        },
        "sim": {"slice_thickness_A": 1.0},
    },
}

#: Thick crystals of other structures (no perovskite): the diverse training set of the
#: "thick" models, plus one validation crystal (``mo_val``) for choices made before testing.
_CUBIC = {
    "mgo_train": ("MgO", "rocksalt", 4.212, (3, 3), 80.0),
    "gaas_train": ("GaAs", "zincblende", 5.653, (2, 2), 150.0),
    "ceo2_train": ("CeO2", "fluorite", 5.411, (2, 2), 100.0),
    "cu_train": ("Cu", "fcc", 3.615, (3, 3), 40.0),
    "si_train": ("Si", "diamond", 5.431, (2, 2), 200.0),
    "mo_val": ("Mo", "bcc", 3.147, (4, 4), 120.0),
}
for _name, (_f, _k, _a, _rep, _t) in _CUBIC.items():
    SCANS[_name] = {
        "structure": {"kind": "cubic", "formula": _f, "crystalstructure": _k, "a_A": _a,
                      "repeats": list(_rep), "thickness_A": _t},
        "sim": {"slice_thickness_A": 1.0},
    }
#: The thick training crystals, in order.
THICK_TRAIN = [n for n in _CUBIC if n.endswith("_train")]
#: A thickness series of the test material (SrTiO3 [001], 2 x 2 cells): test scans only.
STO_SERIES = {f"sto_{t:03d}": float(t) for t in (20, 40, 60, 80, 121, 160)}
for _name, _t in STO_SERIES.items():
    SCANS[_name] = {
        "structure": {"kind": "perovskite", "thickness_A": _t, "repeats": [2, 2], "formula": "SrTiO3"},
        "sim": {"slice_thickness_A": 1.0},
    }

#: A larger held-out MoS2 field (the pipeline rows of ``ptycho_benchmark.py``): 3 x 3 times the
#: ``mos2_test`` cell, its own random vacancies (seed 2), simulated in tiles (:func:`simulate_tiled`).
SCANS["mos2_large"] = {
    "structure": {"kind": "mos2", "repeats": [18, 12], "vacancy_fraction": 0.06, "vacancy_element": "S",
                  "seed": 2, "extra_mo_vacancies": 9},
    "sim": {"slice_thickness_A": 1.0},
    "tiles": {"tile_steps": 38, "margin_A": 6.0},
}
#: Last in SCANS, so that no other scan's index (its dose seed) moves. A perovskite validation crystal for ptychography settings chosen before the SrTiO3 test (BaTiO3, cubic,
#: a 4.00 Å, [001], 4 x 4 cells, 120 Å): the test's structure type with other atoms and spacing.
SCANS["bto_val"] = {
    "structure": {"kind": "perovskite", "thickness_A": 120.0, "repeats": [4, 4], "formula": "BaTiO3", "a_A": 4.00},
    "sim": {"slice_thickness_A": 1.0},
}

LABEL_ARRAYS = (
    "projected_potential",
    "phase",
    "projected_potential_point",
    "projected_potential_blurred",
)


def scan_names() -> list[str]:
    """The names of the benchmark's scans, in order (training field first)."""
    return list(SCANS)


def cache_path(name: str) -> Path:
    """Where the scan ``name`` is cached."""
    _spec(name)
    return CACHE / f"{name}.h5"


def _spec(name: str) -> dict[str, Any]:
    if name not in SCANS:
        raise KeyError(f"unknown scan {name!r}; choose one of {scan_names()}")
    return SCANS[name]


def _params(name: str) -> dict[str, Any]:
    """Everything that determines the cached scan (compared on load), JSON-normalised."""
    spec = _spec(name)
    params = {
        "format": FORMAT,
        "name": name,
        "structure": spec["structure"],
        "sim": {**COMMON, **spec["sim"]},
    }
    if "tiles" in spec:
        params["tiles"] = spec["tiles"]
    return json.loads(json.dumps(params))


# ---------------------------------------------------------------------------- structures
def _remove_isolated_mo(atoms, full, n: int):
    """Delete the ``n`` Mo atoms of ``atoms`` farthest (periodic x, y distance) from every atom
    already removed (``atoms.info``); update ``removed_*`` with indices of the vacancy-free
    supercell ``full``."""
    info = dict(atoms.info)
    lengths = np.diag(np.asarray(atoms.cell))[:2]
    removed_pos = [np.asarray(p) for p in info["removed_positions"]]
    removed_idx = [int(i) for i in info["removed_indices"]]
    removed_sym = list(info["removed_symbols"])
    full_symbols = np.array(full.get_chemical_symbols())
    for _ in range(n):
        symbols = np.array(atoms.get_chemical_symbols())
        mo = np.flatnonzero(symbols == "Mo")
        xy = atoms.positions[mo, :2]
        if removed_pos:
            d = xy[:, None, :] - np.array(removed_pos)[None, :, :2]
            d -= lengths * np.round(d / lengths)
            score = np.min(np.hypot(d[..., 0], d[..., 1]), axis=1)
        else:
            score = np.zeros(len(mo))
        pick = int(mo[np.argmax(score)])  # first of the farthest (deterministic)
        pos = atoms.positions[pick].copy()
        # its index in the vacancy-free supercell
        cand = np.flatnonzero(full_symbols == "Mo")
        j = int(cand[np.argmin(np.linalg.norm(full.positions[cand] - pos, axis=1))])
        del atoms[pick]
        removed_pos.append(pos)
        removed_idx.append(j)
        removed_sym.append("Mo")
    order = np.argsort(removed_idx, kind="stable")
    info.update(
        {
            "removed_indices": np.asarray(removed_idx, dtype=np.int64)[order],
            "removed_positions": np.asarray(removed_pos, dtype=np.float64)[order],
            "removed_symbols": [removed_sym[i] for i in order],
            "vacancy_element": "S+Mo",
        }
    )
    atoms.info.clear()
    atoms.info.update(info)
    return atoms


def build_atoms(name: str):
    """The ``ase.Atoms`` of scan ``name`` (see the module doc)."""
    from distill4d.simulate.realspace import cubic_slab, mos2_monolayer, perovskite_slab

    st = dict(_spec(name)["structure"])
    kind = st.pop("kind")
    if kind == "mos2":
        extra = int(st.pop("extra_mo_vacancies", 0))
        st["repeats"] = tuple(st["repeats"])
        atoms = mos2_monolayer(**st)
        if extra:
            full = mos2_monolayer(repeats=st["repeats"], vacancy_fraction=0.0)
            atoms = _remove_isolated_mo(atoms, full, extra)
        return atoms
    if kind == "perovskite":
        st["repeats"] = tuple(st["repeats"])
        return perovskite_slab(**st)
    if kind == "cubic":
        st["repeats"] = tuple(st["repeats"])
        return cubic_slab(st.pop("formula"), st.pop("crystalstructure"), **st)
    raise ValueError(f"unknown structure kind {kind!r}")


# ---------------------------------------------------------------------------- simulate / cache
def simulate(name: str, scan_region=None):
    """Simulate scan ``name`` (optionally only ``scan_region``, for timing); no caching.

    Returns ``(DataCube, labels)`` as :func:`simulate_realspace_scan`, with
    ``labels["metadata"]["wall_seconds"]`` (structure + scan + labels).
    """
    from distill4d.simulate.realspace import simulate_realspace_scan

    t = time.perf_counter()
    atoms = build_atoms(name)
    kw = {**COMMON, **_spec(name)["sim"]}
    dc, labels = simulate_realspace_scan(
        atoms,
        scan_region=scan_region,
        num_workers=NUM_WORKERS,
        name=f"phase benchmark {name}",
        **kw,
    )
    labels["metadata"]["wall_seconds"] = time.perf_counter() - t
    labels["metadata"]["n_atoms"] = len(atoms)
    return dc, labels


def cell_labels(atoms, **kw):
    """The labels of :func:`~distill4d.simulate.realspace.simulate_realspace_scan` for the whole cell of
    ``atoms`` (same keywords), without simulating the patterns: ``(labels, grids)``."""
    from distill4d.simulate import realspace as rs
    from distill4d.simulate._abtem import abtem_session

    lengths = np.diag(np.asarray(atoms.cell, dtype=np.float64)).copy()
    energy, semiangle = float(kw["energy_eV"]), float(kw["semiangle_mrad"])
    shape_q = rs._pair("detector_shape", kw["detector_shape"], minimum=8)
    grids = rs._plan(lengths, wavelength=rs.electron_wavelength_A(energy), semiangle_mrad=semiangle,
                     defocus_A=float(kw["defocus_A"]), scan_step_A=float(kw["scan_step_A"]), scan_region=None,
                     detector_shape=shape_q, q_max_mrad=kw.get("q_max_mrad"), mrad_per_px=None,
                     cover_corners=bool(kw["cover_corners"]), sampling_A=None, probe_window_A=None)
    probe_kwargs: dict[str, Any] = {"semiangle_cutoff": semiangle, "energy": energy}
    if kw["defocus_A"]:
        probe_kwargs["aberrations"] = {"C10": -float(kw["defocus_A"])}
    with abtem_session("cpu", lazy=True) as abtem:
        fine = rs._label_potential(abtem, atoms, grids)
        spectrum = rs._probe_spectrum(abtem, grids, probe_kwargs, fine.shape)
    blurred = np.fft.ifft2(np.fft.fft2(fine) * np.conj(spectrum)).real
    ix = np.arange(grids.cell_scan[0]) * grids.label_sub[0]
    iy = np.arange(grids.cell_scan[1]) * grids.label_sub[1]
    v_proj = rs._fourier_crop(fine, grids.cell_scan)
    xs, ys = (np.arange(grids.cell_scan[i]) * grids.step_A[i] for i in range(2))
    labels = {"projected_potential": v_proj, "phase": rs.interaction_parameter(energy) * v_proj,
              "projected_potential_point": fine[np.ix_(ix, iy)],
              "projected_potential_blurred": blurred[np.ix_(ix, iy)],
              "scan_positions_A": np.stack(np.meshgrid(xs, ys, indexing="ij"), axis=-1)}
    return labels, grids


def _window_atoms(atoms, origin_A: tuple[float, float], size_A: tuple[float, float]):
    """The atoms of the periodic cell of ``atoms`` inside the window ``origin_A + [0, size_A)`` (x, y, Å),
    moved to a cell of that size (periodic images included)."""
    lengths = np.diag(np.asarray(atoms.cell))[:2]
    rel = (atoms.positions[:, :2] - np.asarray(origin_A)) % lengths
    keep = (rel[:, 0] < size_A[0]) & (rel[:, 1] < size_A[1])
    win = atoms[keep]
    win.positions[:, :2] = rel[keep]
    win.set_cell([size_A[0], size_A[1], atoms.cell[2, 2]])
    win.info.clear()
    return win


def simulate_tiled(name: str, partial_dir: Path | None = None, tiles: list[int] | None = None):
    """Scan ``name`` simulated tile by tile (``SCANS[name]["tiles"]``): the scan grid of the whole cell
    is cut into tiles of ``tile_steps`` x ``tile_steps`` positions; each tile is simulated with
    :func:`~distill4d.simulate.realspace.simulate_realspace_scan` on a window of the cell's atoms (periodic
    images included) reaching ``margin_A`` beyond the tile on every side, so the abTEM wave of each
    position spans the window, not the whole cell. The probe (25 mrad, 80 kV, in focus) is negligible
    beyond the margin; the labels are those of the whole cell (:func:`cell_labels`). Each finished tile
    is saved in ``partial_dir`` (resumable); ``tiles`` (indices) limits a call to those tiles, and the
    scan is returned only when every tile is done (else None)."""
    from distill4d.datacube import DataCube
    from distill4d.calibration import Calibration
    from distill4d.simulate.realspace import simulate_realspace_scan

    t = time.perf_counter()
    c = time.process_time()
    spec = _spec(name)
    atoms = build_atoms(name)
    kw = {**COMMON, **spec["sim"]}
    labels, grids = cell_labels(atoms, **kw)
    nx, ny = grids.cell_scan
    sx, sy = grids.step_A
    ts = int(spec["tiles"]["tile_steps"])
    mx, my = (int(math.ceil(spec["tiles"]["margin_A"] / s)) for s in (sx, sy))
    boxes = [(i, min(i + ts, nx), j, min(j + ts, ny)) for i in range(0, nx, ts) for j in range(0, ny, ts)]
    partial_dir = partial_dir or CACHE / f"{name}.partial"
    partial_dir.mkdir(parents=True, exist_ok=True)
    todo = range(len(boxes)) if tiles is None else tiles
    for k in todo:
        path = partial_dir / f"tile_{k:03d}.npz"
        if path.exists():
            continue
        i0, i1, j0, j1 = boxes[k]
        kx, ky = i1 - i0 + 2 * mx, j1 - j0 + 2 * my
        win = _window_atoms(atoms, ((i0 - mx) * sx, (j0 - my) * sy), (kx * sx, ky * sy))
        ct, tt = time.process_time(), time.perf_counter()
        dc, lab = simulate_realspace_scan(win, scan_region=((mx * sx, my * sy), ((kx - mx) * sx, (ky - my) * sy)),
                                          num_workers=1, name=f"{name} tile {k}", **kw)
        m = lab["metadata"]
        if not np.allclose(m["scan_step_xy_A"], (sx, sy), rtol=0, atol=1e-9) or dc.scan_shape != (i1 - i0, j1 - j0):
            raise RuntimeError(f"tile {k}: step {m['scan_step_xy_A']} / shape {dc.scan_shape}, expected "
                               f"{(sx, sy)} / {(i1 - i0, j1 - j0)}")
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, data=np.asarray(dc.data, np.float32), cpu_s=time.process_time() - ct,
                 wall_s=time.perf_counter() - tt, sim_gpts=np.asarray(m["sim_gpts"]),
                 detected=m["detected_fraction_mean"])
        os.replace(tmp, path)
        print(f"  {name} tile {k + 1}/{len(boxes)}: {i1 - i0} x {j1 - j0} positions, window {kx * sx:.1f} x "
              f"{ky * sy:.1f} Å ({m['sim_gpts'][0]} x {m['sim_gpts'][1]} gpts), "
              f"{time.process_time() - ct:.1f} CPU s", flush=True)
    if not all((partial_dir / f"tile_{k:03d}.npz").exists() for k in range(len(boxes))):
        return None
    data = None
    cpu = wall = 0.0
    detected = []
    for k, (i0, i1, j0, j1) in enumerate(boxes):
        z = np.load(partial_dir / f"tile_{k:03d}.npz")
        if data is None:
            data = np.empty((nx, ny) + z["data"].shape[2:], np.float32)
        data[i0:i1, j0:j1] = z["data"]
        cpu += float(z["cpu_s"])
        wall += float(z["wall_s"])
        detected.append(float(z["detected"]) * (i1 - i0) * (j1 - j0))
    cal = Calibration(scan_step_A=math.sqrt(sx * sy), q_pixel_inv_A=grids.q_pixel, energy_eV=float(kw["energy_eV"]),
                      semiangle_mrad=float(kw["semiangle_mrad"]), origin_px=(data.shape[2] // 2, data.shape[3] // 2))
    dc = DataCube(data, cal, name=f"phase benchmark {name}")
    info = atoms.info
    meta = {"energy_eV": float(kw["energy_eV"]), "semiangle_mrad": float(kw["semiangle_mrad"]),
            "defocus_A": float(kw["defocus_A"]), "cell_A": grids.cell_A, "scan_step_A": float(kw["scan_step_A"]),
            "scan_step_xy_A": grids.step_A, "scan_shape": (nx, ny), "scan_start_index": (0, 0),
            "cell_scan_shape": grids.cell_scan, "detector_shape": tuple(data.shape[2:]),
            "mrad_per_px": grids.mrad_per_px, "q_pixel_inv_A": grids.q_pixel,
            "sim_gpts": tuple(int(v) for v in np.load(partial_dir / "tile_000.npz")["sim_gpts"]),
            "num_slices": int(math.ceil(grids.cell_A[2] / float(kw["slice_thickness_A"]) - 1e-9)),
            "slice_thickness_A": float(kw["slice_thickness_A"]), "frozen_phonons": 0,
            "tiles": {"tile_steps": ts, "margin_steps": (mx, my), "count": len(boxes)},
            "detected_fraction_mean": float(sum(detected) / (nx * ny)),
            "tile_cpu_seconds": cpu, "tile_wall_seconds": wall,
            "wall_seconds": time.perf_counter() - t, "cpu_seconds_this_call": time.process_time() - c,
            "n_atoms": len(atoms), "units": "fraction of the incident beam per pixel"}
    labels["metadata"] = meta
    if "removed_indices" in info and len(info["removed_indices"]):
        labels["atoms_removed"] = {"indices": np.asarray(info["removed_indices"]),
                                   "positions_A": np.asarray(info["removed_positions"]),
                                   "symbols": list(info.get("removed_symbols", []))}
    return dc, labels


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} as JSON")


def _save(path: Path, name: str, dc, labels: dict[str, Any]) -> None:
    from distill4d.io import write

    results = {k: np.asarray(labels[k]) for k in (*LABEL_ARRAYS, "scan_positions_A")}
    attrs = {
        "phase_params": json.dumps(_params(name)),
        "metadata": json.dumps(labels["metadata"], default=_json_default),
    }
    removed = labels.get("atoms_removed")
    if removed is not None:
        results["atoms_removed_indices"] = np.asarray(
            removed["indices"], dtype=np.int64
        )
        results["atoms_removed_positions_A"] = np.asarray(
            removed["positions_A"], dtype=np.float64
        )
        attrs["atoms_removed_symbols"] = json.dumps(list(removed["symbols"]))
    units = {
        "data": "fraction of the incident beam per pixel",
        "projected_potential": "V*A",
        "phase": "rad",
        "projected_potential_point": "V*A",
        "projected_potential_blurred": "V*A",
        "scan_positions_A": "A",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path, dc, results=results, attrs=attrs, units=units, force=True)


def _tuples(meta: dict[str, Any]) -> dict[str, Any]:
    """JSON lists of scalars back to tuples (as ``simulate_realspace_scan`` returns them)."""
    return {
        k: tuple(v)
        if isinstance(v, list) and all(not isinstance(x, (list, dict)) for x in v)
        else v
        for k, v in meta.items()
    }


def _load(path: Path, name: str):
    """``(DataCube, labels)`` from the cache, or None when absent, unreadable or stale."""
    from distill4d.io import read, read_results

    if not path.exists():
        return None
    try:
        res = read_results(path)
        if json.loads(res.attrs.get("phase_params", "null")) != _params(name):
            return None
        dc = read(path, lazy=False)
    except (OSError, ValueError, KeyError) as err:
        print(f"{path}: unreadable cache ({err}); re-simulating")
        return None
    labels: dict[str, Any] = {k: res[k] for k in (*LABEL_ARRAYS, "scan_positions_A")}
    labels["metadata"] = _tuples(json.loads(res.attrs["metadata"]))
    if "atoms_removed_indices" in res:
        labels["atoms_removed"] = {
            "indices": res["atoms_removed_indices"],
            "positions_A": res["atoms_removed_positions_A"],
            "symbols": json.loads(res.attrs["atoms_removed_symbols"]),
        }
    return dc, labels


def load_or_simulate(name: str, resimulate: bool = False):
    """``(DataCube, labels)`` of scan ``name``: the cache when present and made with the current
    parameters, else a fresh simulation (then cached). ``labels`` as
    :func:`~distill4d.simulate.realspace.simulate_realspace_scan` returns them;
    ``labels["metadata"]["wall_seconds"]`` is the time the simulation took and
    ``labels["metadata"]["from_cache"]`` says whether this call read the cache."""
    path = cache_path(name)
    out = None if resimulate else _load(path, name)
    if out is not None:
        out[1]["metadata"]["from_cache"] = True
        return out
    if "tiles" in _spec(name):
        out = simulate_tiled(name)
        if out is None:
            raise RuntimeError(f"{name}: tiles missing")
        dc, labels = out
    else:
        dc, labels = simulate(name)
    _save(path, name, dc, labels)
    if "tiles" in _spec(name):  # the cache holds them now
        import shutil

        shutil.rmtree(CACHE / f"{name}.partial", ignore_errors=True)
    labels["metadata"]["from_cache"] = False
    return dc, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=scan_names(), help="only these scans")
    ap.add_argument("--resimulate", action="store_true", help="ignore the caches")
    a = ap.parse_args()
    for name in a.only or scan_names():
        t = time.perf_counter()
        dc, labels = load_or_simulate(name, a.resimulate)
        m = labels["metadata"]
        how = "loaded from cache in" if m["from_cache"] else "simulated in"
        print(
            f"{name}: {cache_path(name)} {dc.shape} {dc.dtype}, step {m['scan_step_xy_A'][0]:.4f} x "
            f"{m['scan_step_xy_A'][1]:.4f} A, q_pixel {m['q_pixel_inv_A']:.5f} 1/A = {m['mrad_per_px']:.4f} "
            f"mrad/px, sim grid {m['sim_gpts']}, {m['num_slices']} slices; {how} "
            f"{time.perf_counter() - t:.1f} s (simulation took {m['wall_seconds']:.1f} s)",
            flush=True,
        )
        if math.isfinite(m.get("detected_fraction_mean", float("nan"))):
            print(
                f"  detected fraction mean {m['detected_fraction_mean']:.4f}, "
                f"phase {labels['phase'].min():.3f} .. {labels['phase'].max():.3f} rad",
                flush=True,
            )


if __name__ == "__main__":
    main()
