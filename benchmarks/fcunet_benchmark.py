#!/usr/bin/env python3
"""FCU-Net Bragg-disk detection vs the classical correlation detector: accuracy, strain, speed.

1. Disk accuracy on a held-out simulated test library (``--test-library``, built from
   ``src/distill4d/ml/configs/fcunet_test.toml``: crystals absent from training,
   thicknesses beyond the training range). Every entry is detected by
   ``find_bragg_disks_fcunet`` (the entries of one simulation, which share a probe, as one
   (1, n) DataCube) and by the classical ``find_bragg_disks`` (automatic parameters, each
   entry alone as a 1x1 DataCube), noise-free and at a low dose (Poisson, ``LOW_DOSE_E``
   electrons per pattern, seed ``[--seed, entry index]``; the probe stays noise-free).
   Truth: ``true_peaks(entry["peaks"], (128, 128))`` (amplitude >= 0.01 of (000), on the
   detector), weighted by the amplitude. Score: ``disk_detection_accuracy`` at a match radius
   of 0.0125 1/Å (0.5 px) and 0.05 1/Å (2 px), and the mean distance of the matched pairs,
   per split (all, thin, thick, beyond the training thickness, on/off zone, overlapping
   disks, each crystal).
2. Strain on multislice multilayer scans (Si [011], the sets of ``strain_vs_py4dstem.py``:
   ``thick``, ``tilt``, plus ``tilt_gradient``: the ``tilt`` sample with the off-zone tilt
   growing linearly across the scan columns). Peaks of both detectors go through
   ``strain_map(peaks, reference=<first layer>)``; RMS errors against the simulator's truth;
   disk accuracy at 0.05 1/Å against ``truth.bragg_peaks()``; and the stretch response: how
   much of a known geometric stretch of the first layer's patterns each detector's peaks and
   strain follow (``stretch_response``). Simulated scans are cached in
   ``benchmarks/data/fcunet/`` (``--resimulate`` to redo them).
3. Throughput of ``find_bragg_disks_fcunet`` (``--passes``, 1 and 8 passes) on the CPU, and on a
   GPU when torch sees one, on the first strain set; the classical detector on the same
   patterns for reference.

Usage (from the repository root):
    .venv/bin/python benchmarks/fcunet_benchmark.py --test-library TESTLIB     # writes RESULTS.md
    .venv/bin/python benchmarks/fcunet_benchmark.py --quick --test-library TESTLIB --weights W.pt
where TESTLIB comes from
    distill4d simulate library --config src/distill4d/ml/configs/fcunet_test.toml -o TESTLIB
Wall times of the last run (whole run and each part) are in RESULTS.md;
``--quick`` (6 entries, 8x8 scans, 8 throughput patterns) does not write RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import strain_vs_py4dstem as svp  # noqa: E402
from _results import machine_info, machine_line, write_section  # noqa: E402

import distill4d  # noqa: E402
from distill4d.bragg import BraggPeaks, disk_detection_accuracy, find_bragg_disks  # noqa: E402
from distill4d.calibration import Calibration, electron_wavelength_A  # noqa: E402
from distill4d.datacube import DataCube  # noqa: E402
from distill4d.lattice import strain_map  # noqa: E402
from distill4d.ml.fcunet import DEFAULT_WEIGHTS  # noqa: E402
from distill4d.ml.fcunet.detect import find_bragg_disks_fcunet, load_fcunet, true_peaks  # noqa: E402
from distill4d.simulate.augment import poisson_noise  # noqa: E402
from distill4d.simulate.library import Library, LibraryConfig  # noqa: E402

SECTION = "fcunet"
CONFIGS = REPO / "src" / "distill4d" / "ml" / "configs"
TRAIN_CONFIG = CONFIGS / "fcunet_train.toml"
TEST_CONFIG = CONFIGS / "fcunet_test.toml"
CACHE = HERE / "data" / "fcunet"
#: Suffix of the cached multislice strain scans: ``_v2`` since every strained state of a scan shares one
#: simulation grid (``simulate_scan``); scans cached before (no suffix) carry the grid artefact of
#: docs/design.md and are not read.
SETS_VERSION = "_v2"

RADIUS_FINE_INV_A = 0.0125  # 0.5 px at 0.025 1/Å per pixel
RADIUS_COARSE_INV_A = svp.THRESHOLD_INV_A  # 0.05 1/Å = 2 px, the strain benchmark's radius
MIN_AMPLITUDE = 0.01  # true peaks: amplitude >= 1 % of (000)
LOW_DOSE_E = 1e4  # electrons per pattern of the low-dose variant
THIN_MAX_A = 200.0  # thin: < 20 nm
THICK_MIN_A = 400.0  # thick: >= 40 nm
TILT_GRADIENT_MAX_MRAD = 8.0
TILT_GRADIENT_STEP_MRAD = 1.0
GOAL_EYY_ON_ZONE_PCT = 0.02  # the FCU-Net paper's goal, eps_yy RMS on zone ...
GOAL_EYY_TILTED_PCT = 0.1  # ... and tilted (strictly below)
PAPER_CORRELATION_EYY_PCT = {"on zone": 0.2, "tilted": 0.6}  # correlation in the paper
STRAIN_KEYS = ("eps_xx", "eps_yy", "eps_xy", "theta")

# strain set -> (description, on zone?)
STRAIN_SETS: dict[str, tuple[str, bool]] = {
    "thick": (svp.MULTISLICE["thick"][0], True),
    "tilt": (svp.MULTISLICE["tilt"][0], False),
    "tilt_gradient": ("tilt varying across the scan: multislice Si [011], 20 nm, off-zone tilt along x growing "
                      f"linearly with the scan column (Ry) from 0 to {TILT_GRADIENT_MAX_MRAD:g} mrad (simulated in "
                      f"{TILT_GRADIENT_STEP_MRAD:g} mrad steps), high dose; the reference layer spans every tilt, so a "
                      "tilt-dependent bias of the disk positions does not cancel as it does in `tilt`", False),
}


def log(msg: str) -> None:
    print(msg, flush=True)


def _finite(x) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


# ============================================================================ 1. test library
def entry_info(entry: dict, index: int, q_pixel_inv_A: float, shape: tuple[int, int]) -> dict:
    """Metadata of one library entry and its true peaks, with the disk-overlap test."""
    truth = true_peaks(entry["peaks"], shape, min_amplitude=MIN_AMPLITUDE)
    radius_px = entry["semiangle_mrad"] * 1e-3 / electron_wavelength_A(entry["energy_eV"]) / q_pixel_inv_A
    if len(truth) >= 2:
        d = np.hypot(truth[:, None, 0] - truth[None, :, 0], truth[:, None, 1] - truth[None, :, 1])
        min_spacing_px = float(d[np.triu_indices(len(truth), 1)].min())
    else:
        min_spacing_px = float("inf")
    tilt = np.asarray(entry["tilt_mrad"], dtype=np.float64)
    return {
        "index": int(index), "sample_index": int(entry["sample_index"]), "crystal": str(entry["crystal"]),
        "zone_axis": [int(v) for v in entry["zone_axis"]], "thickness_A": float(entry["thickness_A"]),
        "tilt_mrad": float(np.hypot(*tilt)), "energy_eV": float(entry["energy_eV"]),
        "semiangle_mrad": float(entry["semiangle_mrad"]), "radius_px": float(radius_px),
        "min_spacing_px": min_spacing_px if math.isfinite(min_spacing_px) else None,
        "overlapping": bool(radius_px >= 0.5 * min_spacing_px), "n_true": len(truth),
    }


def pick_entries(n_total: int, max_entries: int | None) -> np.ndarray:
    """All entries, or ``max_entries`` spread evenly over the library (covers its crystals)."""
    if max_entries is None or max_entries >= n_total:
        return np.arange(n_total)
    return np.unique(np.linspace(0, n_total - 1, max(1, max_entries)).round().astype(int))


def probe_groups(lib: Library, indices: np.ndarray) -> list[list[int]]:
    """Consecutive entries of one simulation (same sample index, identical probe)."""
    groups: list[list[int]] = []
    last_sample, last_probe = None, None
    for i in indices:
        e = lib[int(i)]
        if groups and e["sample_index"] == last_sample and np.array_equal(e["probe"], last_probe):
            groups[-1].append(int(i))
        else:
            groups.append([int(i)])
        last_sample, last_probe = e["sample_index"], e["probe"]
    return groups


def detect_library(lib: Library, groups: list[list[int]], *, dose_e: float | None, weights, passes: int,
                   device: str, seed: int, classical: bool = True, views: str = "none") -> dict:
    """FCU-Net and (unless ``classical`` is False) classical peaks ((m, 3) per entry, in the order of
    ``groups``) and their wall times."""
    q = float(lib.config.q_pixel_inv_A)
    shape = tuple(lib.config.shape)
    fc, cl = [], []
    fc_s = cl_s = 0.0
    for group in groups:
        entries = [lib[i] for i in group]
        probe = np.asarray(entries[0]["probe"], dtype=np.float64)
        patterns = []
        for i, e in zip(group, entries, strict=True):
            p = np.asarray(e["pattern"], dtype=np.float64)
            if dose_e is not None:
                p = poisson_noise(p, dose_e=dose_e, rng=np.random.default_rng([seed, i]))
            patterns.append(p)
        cal = Calibration(q_pixel_inv_A=q, energy_eV=float(entries[0]["energy_eV"]),
                          semiangle_mrad=float(entries[0]["semiangle_mrad"]),
                          origin_px=(shape[0] // 2, shape[1] // 2))
        t = time.perf_counter()
        bp = find_bragg_disks_fcunet(DataCube(np.stack(patterns)[None].astype(np.float32), cal), probe,
                                     weights=weights, n_passes=passes, views=views, seed=seed, device=device,
                                     progress=False)
        fc_s += time.perf_counter() - t
        fc += [bp[0, j] for j in range(len(group))]
        for p in patterns if classical else ():
            t = time.perf_counter()
            bc = find_bragg_disks(DataCube(p[None, None], cal), probe, progress=False, scheduler="inline")
            cl_s += time.perf_counter() - t
            cl.append(bc[0, 0])
    return {"fcunet": fc, "classical": cl if classical else None, "fcunet_s": fc_s, "classical_s": cl_s}


def score(pred: list[np.ndarray], truth: list[np.ndarray], q_pixel_inv_A: float) -> dict:
    """Accuracy and mean matched error (px) at both match radii, plus peaks per pattern."""
    out: dict = {"n": len(truth), "peaks_per_pattern": float(np.mean([len(p) for p in pred])) if pred else None}
    for label, r in (("fine", RADIUS_FINE_INV_A), ("coarse", RADIUS_COARSE_INV_A)):
        s = disk_detection_accuracy(pred, truth, threshold_inv_A=r, q_pixel_inv_A=q_pixel_inv_A)
        out[f"accuracy_{label}"] = _finite(s.accuracy)
        out[f"mean_error_px_{label}"] = _finite(s.mean_error_px)
    return out


def training_config(card: dict) -> tuple[LibraryConfig, str]:
    """The training library's configuration: from the model card, else the shipped TOML."""
    d = card.get("training", {}).get("library_config")
    if d:
        return LibraryConfig.from_dict(d), "the model card"
    return LibraryConfig.from_file(TRAIN_CONFIG), f"`{TRAIN_CONFIG.relative_to(REPO)}` (the card has none)"


def library_splits(infos: list[dict], train: LibraryConfig) -> list[tuple[str, str, np.ndarray]]:
    """(name, how it differs from training, mask over the entries) for every split."""
    th = np.array([e["thickness_A"] for e in infos])
    tilt = np.array([e["tilt_mrad"] for e in infos])
    over = np.array([e["overlapping"] for e in infos])
    crystals = np.array([e["crystal"] for e in infos])
    t_lo, t_hi = train.thickness_A
    trained = set(train.prototypes)
    held = sorted(set(crystals) - trained)
    held_txt = "all held out of training" if not set(crystals) & trained else f"held out: {', '.join(held)}"
    splits = [
        ("all", f"crystals {', '.join(sorted(set(crystals)))} ({held_txt}); thickness {th.min() / 10:.0f}-"
                f"{th.max() / 10:.0f} nm (training {t_lo / 10:g}-{t_hi / 10:g} nm)", np.ones(len(infos), bool)),
        (f"thin (< {THIN_MAX_A / 10:g} nm)", "thickness inside the training range", th < THIN_MAX_A),
        (f"thick (>= {THICK_MIN_A / 10:g} nm)", "the thick end of the training range and beyond", th >= THICK_MIN_A),
        (f"beyond training (> {t_hi / 10:g} nm)", "thicker than any training pattern", th > t_hi),
        ("on zone (tilt 0)", f"training: {train.on_zone_fraction:.0%} of simulations on zone", tilt == 0),
        ("off zone (tilt > 0)", f"tilt up to {tilt.max():.1f} mrad (training up to {train.tilt_mrad:g} mrad)",
         tilt > 0),
        ("overlapping disks", "disk radius >= half the smallest distance between two true peaks", over),
    ]
    for c in sorted(set(crystals)):
        splits.append((f"crystal {c}", "in training" if c in trained else "held out of training", crystals == c))
    return splits


def run_library(path: Path, max_entries: int | None, *, weights, passes: int, device: str, seed: int,
                train: LibraryConfig, classical: bool = True, views: str = "none") -> dict:
    """Accuracy per split of FCU-Net (and the classical detector unless ``classical`` is False), both doses."""
    methods = ("fcunet", "classical") if classical else ("fcunet",)
    lib = Library(path)
    q = float(lib.config.q_pixel_inv_A)
    shape = tuple(lib.config.shape)
    indices = pick_entries(len(lib), max_entries)
    groups = probe_groups(lib, indices)
    order = [i for g in groups for i in g]
    infos = [entry_info(lib[i], i, q, shape) for i in order]
    truth = [true_peaks(lib[i]["peaks"], shape, min_amplitude=MIN_AMPLITUDE) for i in order]
    splits = library_splits(infos, train)
    try:
        test_cfg = LibraryConfig.from_file(TEST_CONFIG)
        same_as_test_toml = test_cfg.to_dict() == lib.config.to_dict()
    except (OSError, ValueError):
        same_as_test_toml = None
    out: dict = {"path": str(path), "n_entries_library": len(lib), "n_entries": len(order),
                 "n_simulations": len(groups),
                 "config": lib.config.to_dict(), "same_as_test_toml": same_as_test_toml, "entries": infos,
                 "splits": [{"name": n, "differs": d, "n": int(m.sum())} for n, d, m in splits], "doses": {}}
    for label, dose in (("noise-free", None), (f"low dose ({LOW_DOSE_E:,.0f} e-/pattern)", LOW_DOSE_E)):
        log(f"test library, {label}: {len(order)} entries in {len(groups)} probe groups ...")
        det = detect_library(lib, groups, dose_e=dose, weights=weights, passes=passes, device=device, seed=seed,
                             classical=classical, views=views)
        res = {"dose_e": dose, "fcunet_s": det["fcunet_s"], "classical_s": det["classical_s"], "splits": {},
               "per_entry": []}
        for name, _, mask in splits:
            sel = np.flatnonzero(mask)
            res["splits"][name] = {m: score([det[m][k] for k in sel], [truth[k] for k in sel], q)
                                   for m in methods} if sel.size else None
        for k in range(len(order)):
            res["per_entry"].append({m: score([det[m][k]], [truth[k]], q) for m in methods})
        a = res["splits"]["all"]
        log("  all (0.5 px / 2 px): " + ", ".join(f"{m} {a[m]['accuracy_fine']} / {a[m]['accuracy_coarse']}"
                                                   for m in methods)
            + f"; {det['fcunet_s']:.0f} s / {det['classical_s']:.0f} s")
        out["doses"][label] = res
    lib.close()
    return out


# ============================================================================ 2. strain sets
def make_tilt_gradient_set(scan: tuple[int, int], pattern: tuple[int, int], seed: int,
                           dose_e: float | None = svp.HIGH_DOSE):
    """The ``tilt`` multilayer (Si [011], 20 nm) with tilt_x = 0 .. 8 mrad linear along the columns;
    ``dose_e`` electrons per pattern (None: noise-free)."""
    from distill4d.simulate.crystals import orient, prototype
    from distill4d.simulate.kinematic import DEFAULT_CALIBRATION
    from distill4d.simulate.multislice import CBEDSettings, vacuum_probe_pattern
    from distill4d.simulate.scan import scan_preset, simulate_scan

    cal = DEFAULT_CALIBRATION
    atoms, _ = orient(prototype("Si"), (0, 1, 1))
    settings = CBEDSettings(energy_eV=cal.energy_eV, semiangle_mrad=cal.semiangle_mrad, shape=pattern,
                            q_pixel_inv_A=cal.q_pixel_inv_A)
    fields = scan_preset("multilayer", scan, strain=svp.STRAIN, layer_width=svp.LAYER_WIDTH,
                         thickness_A=svp.MULTISLICE["tilt"][1]["thickness_A"], tilt_mrad=(0.0, 0.0))
    fields.tilt_mrad[..., 0] = np.linspace(0.0, TILT_GRADIENT_MAX_MRAD, scan[1])[None, :]
    fields.tilt_mrad[..., 1] = 0.0
    dc, truth = simulate_scan(atoms, fields, settings, dose_e=dose_e, seed=seed,
                              tilt_step_mrad=TILT_GRADIENT_STEP_MRAD)
    return dc, truth, vacuum_probe_pattern(settings)


def strain_set_seed(name: str) -> int:
    """``thick``/``tilt``: the seed strain_vs_py4dstem.py uses (the same data); tilt_gradient: the next one."""
    return 1 + (list(svp.SETS).index(name) if name in svp.SETS else len(svp.SETS))


def cached_scan(stem: Path, make, resimulate: bool = False) -> tuple:
    """(DataCube, truth, probe, cached?) of a simulated scan: from ``stem``.h5 and ``stem``_probe.npy
    when both are there (and not ``resimulate``), else ``make()`` -> (DataCube, truth, probe), stored there."""
    from distill4d.simulate.scan import load_scan, save_scan

    h5, probe_path = stem.with_suffix(".h5"), Path(f"{stem}_probe.npy")
    if h5.exists() and probe_path.exists() and not resimulate:
        dc, truth = load_scan(h5)
        return dc, truth, np.load(probe_path), True
    dc, truth, probe = make()
    stem.parent.mkdir(parents=True, exist_ok=True)
    save_scan(h5, dc, truth, force=True)
    np.save(probe_path, probe)
    return dc, truth, probe, False


def load_or_simulate(name: str, scan: tuple[int, int], pattern: tuple[int, int], resimulate: bool,
                     dose_e: float | None = svp.HIGH_DOSE):
    """(DataCube, truth, probe, seconds, cached?) of a strain set at ``dose_e`` electrons per
    pattern (None: noise-free), from ``CACHE`` when there."""
    seed = strain_set_seed(name)
    dose = "" if dose_e == svp.HIGH_DOSE else ("_noisefree" if dose_e is None else f"_dose{dose_e:.0e}")
    stem = CACHE / f"{name}_{scan[0]}x{scan[1]}_{pattern[0]}x{pattern[1]}_seed{seed}{dose}{SETS_VERSION}"

    def make():
        if name == "tilt_gradient":
            return make_tilt_gradient_set(scan, pattern, seed, dose_e)
        return svp.make_multislice_set(name, scan, pattern, seed, dose_e)

    t = time.perf_counter()
    dc, truth, probe, cached = cached_scan(stem, make, resimulate)
    return dc, truth, probe, time.perf_counter() - t, cached


def error_parts(values: np.ndarray, expected: np.ndarray) -> dict:
    """RMS error (%) split into its scan-row means (the part shared by a row's patterns: a bias
    that depends on the row's strain and, in `tilt_gradient`, averages the columns' tilts) and
    the rest (pattern-to-pattern scatter); rms**2 = rows**2 + scatter**2 over the fitted patterns."""
    d = (np.asarray(values, dtype=np.float64) - expected) * 100.0
    ok = np.isfinite(d)
    if not ok.any():
        return {"rms": None, "rows": None, "scatter": None}
    rows = np.array([d[i][ok[i]].mean() if ok[i].any() else 0.0 for i in range(d.shape[0])])
    r = np.where(ok, d - rows[:, None], 0.0)
    w = ok.sum(axis=1)
    return {"rms": float(np.sqrt(np.mean(d[ok] ** 2))), "rows": float(np.sqrt(np.sum(w * rows**2) / w.sum())),
            "scatter": float(np.sqrt(np.sum(r**2) / w.sum()))}


def strain_result(peaks: BraggPeaks, truth_bp: BraggPeaks, expected: dict, ref_region) -> dict:
    """Disk accuracy at 0.05 1/Å and strain RMS errors (%; theta in degrees) of one detector's peaks."""
    s = disk_detection_accuracy(peaks, truth_bp, threshold_inv_A=RADIUS_COARSE_INV_A)
    out: dict = {"accuracy": _finite(s.accuracy), "mean_error_px": _finite(s.mean_error_px),
                 "peaks_per_pattern": peaks.n_peaks / len(peaks)}
    try:
        sm = strain_map(peaks, reference=ref_region)
        out["strain"] = svp.strain_errors({k: getattr(sm, k) for k in STRAIN_KEYS}, expected)
        out["strain_parts"] = {k: error_parts(getattr(sm, k), expected[k]) for k in ("eps_xx", "eps_yy")}
    except Exception as err:  # a detector whose peaks cannot be fitted at all: report, do not abort
        out["strain"] = {"error": f"{type(err).__name__}: {err}", "n_failed": len(peaks)}
    return out


STRETCH_PCT = (-2.0, -1.0, 1.0, 2.0)  # stretch-response test: the patterns magnified along qx or qy by 1 + e


def stretch_response(dc: DataCube, truth, probe: np.ndarray, *, weights, passes: int, device: str,
                     seed: int, classical: bool = True, views: str = "none") -> dict:
    """How far each detector's peaks follow a known geometric stretch of real patterns.

    The first layer's patterns (rows ``0 .. LAYER_WIDTH``) are magnified about the direct beam by
    ``1 + e`` along qx (then qy), ``e`` in ``STRETCH_PCT`` (bilinear ``augment.affine``; the
    unstretched block is the reference); true strain ``1 / (1 + e) - 1`` in eps_xx (eps_yy).
    Returns per detector and axis: ``strain_slope`` (block-mean strain regressed on the true
    strain; 1 = full response) and ``peak_slope`` (each matched peak's displacement regressed on
    the true one, matches within 1 px of the exactly mapped true peaks of amplitude >= 0.01).
    """
    from distill4d.simulate.augment import affine

    rows = svp.LAYER_WIDTH
    a = np.asarray(dc.data[:rows], dtype=np.float64)
    ry = a.shape[1]
    origin = np.asarray(dc.calibration.origin_px, dtype=np.float64)
    es = [0.0] + [e / 100 for e in STRETCH_PCT]
    tb = truth.bragg_peaks()
    blocks, truths = [], []
    for axis in (0, 1):
        for e in es:
            M = np.eye(2)
            M[axis, axis] = 1 + e
            for x in range(rows):
                for y in range(ry):
                    blocks.append(affine(a[x, y], matrix=M, origin_px=origin)[0])
                    t = np.asarray(tb[x, y], dtype=np.float64)
                    t = t[t[:, 2] >= 0.01 * t[:, 2].max()]
                    truths.append(origin + (t[:, :2] - origin) @ M.T)
    nb = len(es)
    cube = DataCube(np.stack(blocks).reshape(2 * nb * rows, ry, *a.shape[2:]).astype(np.float32), dc.calibration)
    expected = np.array([1 / (1 + e) - 1 for e in es])
    found = {"fcunet": find_bragg_disks_fcunet(cube, probe, weights=weights, n_passes=passes, views=views,
                                               seed=seed, device=device, progress=False),
             **({"classical": find_bragg_disks(cube, probe, progress=False, scheduler="inline")} if classical else {})}
    out: dict = {"stretch_pct": list(STRETCH_PCT), "patterns_per_block": rows * ry}
    for m, pk in found.items():
        out[m] = {}
        for axis, key in ((0, "eps_xx"), (1, "eps_yy")):
            r0 = axis * nb * rows
            sm = strain_map(pk, reference=(slice(r0, r0 + rows), slice(None)))
            v = getattr(sm, key)
            means = np.array([np.nanmean(v[r0 + k * rows: r0 + (k + 1) * rows]) for k in range(nb)])
            true_d, err = [], []
            for k in range(nb):
                for x in range(rows):
                    for y in range(ry):
                        i = (r0 + k * rows + x) * ry + y
                        d = np.asarray(pk[r0 + k * rows + x, y])
                        t, t0 = truths[i], truths[(r0 + x) * ry + y]
                        if len(d) == 0:
                            continue
                        dist = np.hypot(d[:, None, 0] - t[None, :, 0], d[:, None, 1] - t[None, :, 1])
                        j = np.argmin(dist, axis=0)
                        matched = dist[j, np.arange(len(t))] < 1.0
                        true_d += list(t[matched, axis] - t0[matched, axis])
                        err += list(d[j[matched], axis] - t[matched, axis])
            ok = np.isfinite(means)
            out[m][key] = {
                "measured_pct": [_finite(x * 100) for x in means], "true_pct": [float(x * 100) for x in expected],
                "strain_slope": float(np.polyfit(expected[ok], means[ok], 1)[0]) if ok.sum() >= 2 else None,
                "peak_slope": float(1 + np.polyfit(true_d, err, 1)[0]) if len(true_d) > 2 else None,
                "matched_peaks": len(true_d)}
    return out


def check_strain_sets(names: list[str], scan: tuple[int, int]) -> None:
    """Exit with a message naming unknown strain sets or a scan too short for two layers."""
    unknown = [n for n in names if n not in STRAIN_SETS]
    if unknown:
        raise SystemExit(f"unknown strain set(s) {unknown}; known: {list(STRAIN_SETS)}")
    if names and scan[0] < 2 * svp.LAYER_WIDTH:
        raise SystemExit(f"the scan needs at least {2 * svp.LAYER_WIDTH} rows (two layers)")


def run_strain_sets(names: list[str], scan: tuple[int, int], *, weights, passes: int, device: str, seed: int,
                    resimulate: bool, classical: bool = True, dose_e: float | None = svp.HIGH_DOSE,
                    stretch: bool = True, views: str = "none") -> tuple[dict, dict]:
    """Results per set (the classical detector's too unless ``classical`` is False; the stretch
    response unless ``stretch`` is False) at ``dose_e`` electrons per pattern (None: noise-free),
    and the (DataCube, probe) of every set for the throughput part."""
    pattern = (128, 128)
    ref_rows = (0, svp.LAYER_WIDTH)
    ref_region = (slice(*ref_rows), slice(None))
    results, data = {}, {}
    for name in names:
        dc, truth, probe, sim_s, cached = load_or_simulate(name, scan, pattern, resimulate, dose_e)
        log(f"strain set {name}: {scan[0]}x{scan[1]} ({'cache' if cached else 'simulated'}, {sim_s:.0f} s)")
        data[name] = (dc, probe)
        truth_bp = truth.bragg_peaks()
        expected = svp.expected_strain(truth, ref_rows)[0]
        res: dict = {"description": STRAIN_SETS[name][0], "on_zone": STRAIN_SETS[name][1],
                     "seed": strain_set_seed(name),
                     "true_per_pattern": truth_bp.n_peaks / len(truth_bp), "simulation_s": sim_s, "cached": cached}
        t = time.perf_counter()
        pk = find_bragg_disks_fcunet(dc, probe, weights=weights, n_passes=passes, views=views, seed=seed,
                                     device=device, progress=False)
        fc_s = time.perf_counter() - t
        res["fcunet"] = {**strain_result(pk, truth_bp, expected, ref_region), "seconds": fc_s,
                         "patterns_per_s": dc.n_patterns / fc_s}
        if classical:
            t = time.perf_counter()
            pc = find_bragg_disks(dc, probe, progress=False, scheduler="inline")
            cl_s = time.perf_counter() - t
            res["classical"] = {**strain_result(pc, truth_bp, expected, ref_region), "seconds": cl_s,
                                "patterns_per_s": dc.n_patterns / cl_s}
        if stretch:
            res["stretch"] = stretch_response(dc, truth, probe, weights=weights, passes=passes, device=device,
                                              seed=seed, classical=classical, views=views)
        for m in ("fcunet", "classical") if classical else ("fcunet",):
            r = res[m]
            if stretch:
                log(f"  {m}: stretch response eps_xx {res['stretch'][m]['eps_xx']['strain_slope']:.3f}, "
                    f"eps_yy {res['stretch'][m]['eps_yy']['strain_slope']:.3f}")
            log(f"  {m}: accuracy {r['accuracy']}, eps_yy RMS {r['strain'].get('eps_yy')} %, "
                f"failed {r['strain']['n_failed']}, {r['patterns_per_s']:.1f} patterns/s")
        results[name] = res
    return results, data


# ============================================================================ 3. throughput
def _time_fcunet(dc: DataCube, warm: DataCube, probe: np.ndarray, *, device: str, passes: int, weights,
                 seed: int) -> dict:
    """Wall time of ``find_bragg_disks_fcunet`` on ``dc`` after an untimed call on ``warm``."""
    opts = dict(weights=weights, n_passes=passes, seed=seed, device=device, progress=False)
    find_bragg_disks_fcunet(warm, probe, **opts)
    t = time.perf_counter()
    find_bragg_disks_fcunet(dc, probe, **opts)
    seconds = time.perf_counter() - t
    return {"passes": passes, "patterns": dc.n_patterns, "seconds": seconds, "patterns_per_s": dc.n_patterns / seconds}


def throughput(dc: DataCube, probe: np.ndarray, *, weights, passes_list: list[int], n_patterns: int,
               seed: int) -> dict:
    """Patterns/s of FCU-Net on the CPU (first ``n_patterns`` in scan order) and on a GPU (whole scan)."""
    import torch

    rx, ry = dc.scan_shape
    rows = max(1, min(rx, math.ceil(n_patterns / ry)))
    sub = DataCube(np.asarray(dc.data[:rows]), dc.calibration)
    warm = DataCube(np.asarray(dc.data[:1, :2]), dc.calibration)
    out: dict = {"torch": torch.__version__, "cpu_threads": torch.get_num_threads(), "cpu": [], "gpu": [],
                 "gpu_name": None, "scan_shape": [rx, ry]}
    for p in passes_list:
        r = _time_fcunet(sub, warm, probe, device="cpu", passes=p, weights=weights, seed=seed)
        out["cpu"].append(r)
        log(f"  CPU, {p} pass(es): {r['patterns_per_s']:.2f} patterns/s ({out['cpu_threads']} threads)")
    find_bragg_disks(warm, probe, progress=False, scheduler="inline")
    t = time.perf_counter()
    find_bragg_disks(sub, probe, progress=False, scheduler="inline")
    s = time.perf_counter() - t
    out["classical_cpu"] = {"patterns": sub.n_patterns, "seconds": s, "patterns_per_s": sub.n_patterns / s}
    if torch.cuda.is_available():
        out["gpu_name"] = torch.cuda.get_device_name(0)
        for p in passes_list:
            r = _time_fcunet(dc, warm, probe, device="cuda", passes=p, weights=weights, seed=seed)
            out["gpu"].append(r)
            log(f"  GPU, {p} pass(es): {r['patterns_per_s']:.1f} patterns/s")
    return out


# ============================================================================ report
def _f(x, nd: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{nd}f}"


def render(raw: dict) -> str:
    meta, info = raw["meta"], raw["machine"]
    card = meta["card"]
    L = ["## FCU-Net Bragg-disk detection vs correlation", "",
         f"Written by `benchmarks/fcunet_benchmark.py` on {info['date']} (whole run {meta['total_s']:.0f} s).", "",
         machine_line(info),
         f"- Command: `{meta['command']}`",
         f"- Versions: distill4d {meta['distill4d_version']}, torch {meta['torch_version']}, "
         f"numpy {meta['numpy_version']}",
         f"- Weights: `{meta['weights']}` (architecture "
         f"{', '.join(f'{k}={v}' for k, v in card.get('architecture', {}).items())}); trained for "
         f"{card.get('training', {}).get('steps', 'n/a')} steps on {card.get('training', {}).get('device', 'n/a')} "
         f"(training library configuration from {meta['train_config_source']}).",
         f"- FCU-Net: `find_bragg_disks_fcunet(dc, probe, n_passes={meta['passes']}, seed={meta['seed']})` "
         f"({'one pass, dropout off' if meta['passes'] == 1 else 'Monte-Carlo dropout passes averaged'}; its "
         "intensity threshold from the model card: "
         f"{card.get('detection', {}).get('min_intensity', 'the default 0.02')}) on device `{meta['device']}`. "
         "Classical: `find_bragg_disks(dc, probe, scheduler='inline')` with its automatic parameters (no overrides).",
         ""]

    # ---- 1. library
    L += ["### Disk accuracy on the held-out test library", ""]
    lib = raw.get("library")
    if lib is None:
        L += ["Not run (no `--test-library` given).", ""]
    else:
        cfg = lib["config"]
        src = {True: "identical to `fcunet_test.toml`", False: "**not** the configuration of `fcunet_test.toml`",
               None: "`fcunet_test.toml` not readable"}[lib["same_as_test_toml"]]
        L += [f"Test library `{lib['path']}` ({src}; build: `distill4d simulate library --config "
              f"src/distill4d/ml/configs/fcunet_test.toml -o TESTLIB`): {lib['n_entries']} of its "
              f"{lib['n_entries_library']} entries from {lib['n_simulations']} multislice simulations "
              f"({cfg['shape'][0]}x{cfg['shape'][1]} px at {cfg['q_pixel_inv_A']} 1/Å, "
              f"{', '.join(f'{e:g}' for e in cfg['energies_kV'])} kV, semiangle {cfg['semiangle_mrad'][0]:g}-"
              f"{cfg['semiangle_mrad'][1]:g} mrad, zone axes up to index {cfg['max_zone_index']}, tilt up to "
              f"{cfg['tilt_mrad']:g} mrad with {cfg['on_zone_fraction']:.0%} on zone, strain up to "
              f"{cfg['strain']:.0%}, seed {cfg['seed']}).",
              "",
              "- Each simulation's entries (its thicknesses, one probe) go to FCU-Net as one (1, n) DataCube; the "
              "classical detector sees each entry alone (1x1 DataCube; its automatic parameters from that pattern). "
              "Both get the entry's noise-free simulated vacuum probe and `Calibration(q_pixel_inv_A=0.025, "
              "origin_px=(64, 64))` plus the entry's energy and semiangle.",
              f"- Truth: `true_peaks(entry['peaks'], (128, 128))`: the kinematic disk positions with amplitude >= "
              f"{MIN_AMPLITUDE} of (000), at least 1 px inside the detector's inscribed circle; weights = amplitudes "
              "(the FCU-Net paper's scoring).",
              f"- Score: `disk_detection_accuracy` (intensity-weighted TP / (TP + FP + FN), greedy one-to-one "
              f"matching) at match radius {RADIUS_FINE_INV_A} 1/Å (0.5 px) and {RADIUS_COARSE_INV_A} 1/Å (2 px, the "
              "strain benchmark's radius); mean error = mean distance (px) of the pairs matched within 2 px. "
              "Summed over the entries of a split before the ratio.",
              f"- Low dose: `poisson_noise(pattern, dose_e={LOW_DOSE_E:g}, rng=default_rng([{meta['seed']}, "
              f"entry index]))` (the pattern scaled to {LOW_DOSE_E:,.0f} detected electrons; the probe kept "
              "noise-free).",
              "- Overlapping disks: disk radius (semiangle / wavelength, in px) >= half the smallest distance "
              "between two true peaks.", ""]
        head = ("| split | entries | how it differs from training | FCU-Net acc. 0.5 px | classical acc. 0.5 px | "
                "FCU-Net acc. 2 px | classical acc. 2 px | FCU-Net error px | classical error px | "
                "FCU-Net peaks/pattern | classical peaks/pattern |")
        sep = "|---|---|---|---|---|---|---|---|---|---|---|"
        for label, res in lib["doses"].items():
            L += [f"**{label}** (detection wall time: FCU-Net {res['fcunet_s']:.0f} s, classical "
                  f"{res['classical_s']:.0f} s)", "", head, sep]
            for sp in lib["splits"]:
                r = res["splits"][sp["name"]]
                if r is None:
                    L.append(f"| {sp['name']} | 0 | {sp['differs']} | - | - | - | - | - | - | - | - |")
                    continue
                fc, cl = r["fcunet"], r["classical"]
                L.append(f"| {sp['name']} | {sp['n']} | {sp['differs']} | {_f(fc['accuracy_fine'])} | "
                         f"{_f(cl['accuracy_fine'])} | {_f(fc['accuracy_coarse'])} | {_f(cl['accuracy_coarse'])} | "
                         f"{_f(fc['mean_error_px_coarse'], 3)} | {_f(cl['mean_error_px_coarse'], 3)} | "
                         f"{_f(fc['peaks_per_pattern'], 1)} | {_f(cl['peaks_per_pattern'], 1)} |")
            L.append("")

    # ---- 2. strain
    L += ["### Strain on multislice multilayer scans", ""]
    strain = raw.get("strain") or {}
    if not strain:
        L += ["Not run (`--sets none`).", ""]
    else:
        scan = meta["scan"]
        L += [f"Scans of {scan[0]}x{scan[1]} positions x 128x128 px (`distill4d.simulate.scan.simulate_scan`, abTEM "
              f"multislice; Si [011], 300 kV, 2 mrad, 0.025 1/Å per pixel, {svp.HIGH_DOSE:.0e} e-/pattern): the "
              f"multilayer of `strain_vs_py4dstem.py` (layers {svp.LAYER_WIDTH} scan rows thick alternating "
              f"eps_xx = +{svp.STRAIN:.0%} / -{svp.STRAIN:.0%}; sets `thick` and `tilt` with that benchmark's "
              "seeds, i.e. the same data). Strain: `strain_map(peaks, reference=(slice(0, "
              f"{svp.LAYER_WIDTH}), slice(None)))` for both detectors; RMS error over the positions whose fit "
              "succeeded against the simulator's truth relative to the same first layer (eps in %, theta in "
              f"degrees). Disk accuracy: against `truth.bragg_peaks()` at {RADIUS_COARSE_INV_A} 1/Å (2 px). "
              "Patterns/s: the whole detection call on the scan (FCU-Net on device "
              f"`{meta['device']}`, classical inline on the CPU).", "",
              "| set | how it differs |", "|---|---|"]
        for name, r in strain.items():
            L.append(f"| `{name}` | {r['description']} |")
        L += ["", "| set | method | disk accuracy | mean error px | peaks/pattern | RMS eps_xx (%) | RMS eps_yy (%) | "
              "RMS eps_xy (%) | RMS theta (deg) | failed fits | patterns/s |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in strain.items():
            for m, label in (("fcunet", "FCU-Net"), ("classical", "correlation")):
                x, s = r[m], r[m]["strain"]
                if "error" in s:
                    cells = f"fit failed: {s['error']} | | | | {s['n_failed']}"
                else:
                    cells = (f"{_f(s['eps_xx'])} | {_f(s['eps_yy'])} | {_f(s['eps_xy'])} | {_f(s['theta'])} | "
                             f"{s['n_failed']}")
                L.append(f"| `{name}` | {label} | {_f(x['accuracy'])} | {_f(x['mean_error_px'], 3)} | "
                         f"{x['peaks_per_pattern']:.1f} | {cells} | {x['patterns_per_s']:.1f} |")
        L += ["", "Where the strain error comes from: RMS error (%) = sqrt(row part² + scatter²), the row part "
              "being the RMS of each scan row's mean error (shared by the row's patterns: a bias that moves with "
              "the layer's strain, and in `tilt_gradient` with the tilt averaged over the row), the scatter the "
              "rest (pattern to pattern).", "",
              "| set | method | eps_xx RMS | row part | scatter | eps_yy RMS | row part | scatter |",
              "|---|---|---|---|---|---|---|---|"]
        for name, r in strain.items():
            for m, label in (("fcunet", "FCU-Net"), ("classical", "correlation")):
                parts = r[m].get("strain_parts")
                if not parts:
                    continue
                cells = " | ".join(f"{_f(parts[k]['rms'], 3)} | {_f(parts[k]['rows'], 3)} | "
                                   f"{_f(parts[k]['scatter'], 3)}" for k in ("eps_xx", "eps_yy"))
                L.append(f"| `{name}` | {label} | {cells} |")
        if any("stretch" in r for r in strain.values()):
            L += ["", ("Stretch response (`stretch_response`): each set's first-layer patterns magnified about the "
                  "direct beam by 1 + e along qx (then qy), e = "
                  f"{', '.join(f'{e:+g}' for e in STRETCH_PCT)} % (bilinear `augment.affine`; the unstretched "
                  "patterns are the reference), so the true strain 1/(1+e) - 1 is known exactly and nothing but "
                  "geometry changes. Strain slope: block-mean eps regressed on the true eps; peak slope: matched "
                  "peaks' displacement regressed on the true displacement (1 = the detector follows the "
                  "lattice fully; below 1 it reports that fraction of a strain step)."), "",
                  ("| set | method | eps_xx strain slope | eps_xx peak slope | eps_yy strain slope | "
                   "eps_yy peak slope |"), "|---|---|---|---|---|---|"]
            for name, r in strain.items():
                st = r.get("stretch")
                if not st:
                    continue
                for m, label in (("fcunet", "FCU-Net"), ("classical", "correlation")):
                    cells = " | ".join(f"{_f(st[m][k]['strain_slope'], 3)} | {_f(st[m][k]['peak_slope'], 3)}"
                                       for k in ("eps_xx", "eps_yy"))
                    L.append(f"| `{name}` | {label} | {cells} |")
        L += ["", f"Goal (the FCU-Net paper, Munshi et al. 2022): eps_yy RMS <= {GOAL_EYY_ON_ZONE_PCT} % on zone and "
              f"< {GOAL_EYY_TILTED_PCT} % tilted (their correlation method: {PAPER_CORRELATION_EYY_PCT['on zone']} % "
              f"and {PAPER_CORRELATION_EYY_PCT['tilted']} %). Here the true eps_yy is 0 everywhere.", ""]
        for name, r in strain.items():
            on = r["on_zone"]
            goal = GOAL_EYY_ON_ZONE_PCT if on else GOAL_EYY_TILTED_PCT
            parts = []
            for m, label in (("fcunet", "FCU-Net"), ("classical", "correlation")):
                e = r[m]["strain"].get("eps_yy")
                ok = e is not None and math.isfinite(e) and (e <= goal if on else e < goal)
                parts.append(f"{label} {_f(e)} % (**{'PASS' if ok else 'FAIL'}**)")
            L.append(f"- `{name}` ({'on zone' if on else 'tilted'}, goal {'<=' if on else '<'} {goal} %): "
                     + ", ".join(parts))
        L.append("")

    # ---- 3. throughput
    L += ["### Throughput", ""]
    tp = raw.get("throughput")
    if tp is None:
        L += ["Not run (no strain set to take the patterns from).", ""]
    else:
        L += [f"`find_bragg_disks_fcunet` on set `{tp['set']}` (after an untimed 1x2-pattern warm-up; wall time of "
              "the whole call: resampling, network passes, peak finding). CPU: the first "
              f"{tp['cpu'][0]['patterns']} patterns, torch {tp['torch']} with {tp['cpu_threads']} threads "
              f"(`torch.get_num_threads()`)"
              + (f"; GPU: the whole {tp['scan_shape'][0]}x{tp['scan_shape'][1]} scan." if tp["gpu"] else "."), "",
              "| detector | device | passes | patterns | wall s | patterns/s |", "|---|---|---|---|---|---|"]
        for r in tp["cpu"]:
            L.append(f"| FCU-Net | CPU ({tp['cpu_threads']} threads) | {r['passes']} | {r['patterns']} | "
                     f"{r['seconds']:.2f} | {r['patterns_per_s']:.2f} |")
        for r in tp["gpu"]:
            L.append(f"| FCU-Net | GPU ({tp['gpu_name']}) | {r['passes']} | {r['patterns']} | {r['seconds']:.2f} | "
                     f"{r['patterns_per_s']:.1f} |")
        c = tp["classical_cpu"]
        L.append(f"| correlation (inline) | CPU | - | {c['patterns']} | {c['seconds']:.2f} | "
                 f"{c['patterns_per_s']:.1f} |")
        if not tp["gpu"]:
            L += ["", "GPU: no GPU on this machine (`torch.cuda.is_available()` is False)."]
        L.append("")
    L += [f"Raw numbers (every entry, every split, both doses): `benchmarks/data/{meta['raw_name']}`."]
    return "\n".join(L)


# ============================================================================ main
def _repo_relative(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 6 library entries, 8x8 scans, 8 throughput "
                   "patterns; does not write RESULTS.md")
    p.add_argument("--weights", type=Path, default=None, help="FCU-Net weights (.pt, model card .json beside it); "
                   "default: the shipped ones")
    p.add_argument("--test-library", type=Path, default=None, help="held-out library (fcunet_test.toml); "
                   "without it part 1 is skipped")
    p.add_argument("--max-entries", type=int, default=None, help="at most this many library entries, spread "
                   "evenly (default: all; --quick: 6)")
    p.add_argument("--passes", type=int, default=1, help="FCU-Net passes per pattern (default 1: the package "
                   "default, dropout off; > 1: Monte-Carlo dropout passes averaged)")
    p.add_argument("--sets", default=None, help=f"comma list of strain sets from {','.join(STRAIN_SETS)}, or "
                   "'none' (default: all)")
    p.add_argument("--scan", type=int, nargs=2, default=None, metavar=("RX", "RY"), help="strain scans "
                   "(default 32 32; --quick 8 8)")
    p.add_argument("--throughput-patterns", type=int, default=None, help="patterns timed on the CPU "
                   "(default 128; --quick 8)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="FCU-Net device of parts "
                   "1 and 2 (the throughput part times the CPU and, when present, the GPU)")
    p.add_argument("--seed", type=int, default=0, help="FCU-Net dropout seed and low-dose noise seed")
    p.add_argument("--resimulate", action="store_true", help="simulate the strain sets even when cached")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--results", action="store_true", help="write RESULTS.md even with --quick")
    g.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    return p.parse_args(argv)


def main(argv=None) -> int:
    import torch

    argv = sys.argv[1:] if argv is None else list(argv)
    a = parse_args(argv)
    t_start = time.perf_counter()
    write = (a.results or not a.quick) and not a.no_results
    max_entries = a.max_entries if a.max_entries is not None else (6 if a.quick else None)
    scan = tuple(a.scan) if a.scan else ((8, 8) if a.quick else (32, 32))
    n_tp = a.throughput_patterns or (8 if a.quick else 128)
    names = [] if a.sets == "none" else (a.sets.split(",") if a.sets else list(STRAIN_SETS))
    check_strain_sets(names, scan)
    if a.passes < 1:
        raise SystemExit("--passes must be >= 1")
    if a.test_library is None:
        log("no --test-library: the test-library part is skipped")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    _, card = load_fcunet(a.weights)  # fail early on missing or broken weights
    train_cfg, train_src = training_config(card)
    weights_label = str(a.weights) if a.weights else _repo_relative(DEFAULT_WEIGHTS)
    log(f"FCU-Net {weights_label}, {a.passes} passes, device {device}")

    library = None
    if a.test_library is not None:
        library = run_library(a.test_library, max_entries, weights=a.weights, passes=a.passes, device=device,
                              seed=a.seed, train=train_cfg)
    strain, data = run_strain_sets(names, scan, weights=a.weights, passes=a.passes, device=device, seed=a.seed,
                                   resimulate=a.resimulate)
    tp = None
    if names:
        log(f"throughput on set '{names[0]}' ...")
        dc, probe = data[names[0]]
        passes_list = sorted({a.passes, 1, 8}, reverse=True)
        tp = {"set": names[0], **throughput(dc, probe, weights=a.weights, passes_list=passes_list, n_patterns=n_tp,
                                            seed=a.seed)}

    raw_name = f"fcunet_{'quick' if a.quick else 'last'}.json"
    meta = {"command": ".venv/bin/python benchmarks/fcunet_benchmark.py" + (" " + shlex.join(argv) if argv else ""),
            "quick": a.quick, "weights": weights_label, "card": {k: v for k, v in card.items() if k != "validation"},
            "train_config_source": train_src, "train_config": train_cfg.to_dict(), "passes": a.passes,
            "seed": a.seed, "device": device, "scan": list(scan), "sets": names, "raw_name": raw_name,
            "distill4d_version": distill4d.__version__, "torch_version": torch.__version__,
            "numpy_version": np.__version__, "total_s": time.perf_counter() - t_start}
    raw = {"meta": meta, "machine": machine_info(), "library": library, "strain": strain, "throughput": tp}
    raw_path = HERE / "data" / raw_name
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    raw_path.write_text(json.dumps(raw, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    text = render(raw)
    print("\n" + text)
    log(f"\nraw results: {raw_path.relative_to(REPO)}; total {meta['total_s']:.0f} s")
    if write:
        write_section(SECTION, text)
        log(f"wrote section '{SECTION}' of {(HERE / 'RESULTS.md').relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
