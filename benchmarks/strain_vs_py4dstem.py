#!/usr/bin/env python3
"""Bragg disk detection and strain mapping: distill4d (automatic defaults) vs tuned py4DSTEM.

On simulated multilayer scans made with distill4d's kinematic simulator
(``distill4d.simulate.kinematic.strained_scan``: Si [110]-like centred rectangular lattice,
layers 4 scan rows thick alternating eps_xx = +1 % / -1 %), for every set:

  distill4d  ``peaks = find_bragg_disks(dc, probe)`` with NO detection overrides (its
             automatic parameters), timed with the default scheduler (threads) and with
             ``scheduler='inline'`` (one thread); then
             ``strain_map(peaks, reference=(slice(0, 4), slice(None)))``.
  py4DSTEM   0.14.18 in its own virtualenv (benchmarks/envs/py4dstem), run in a subprocess
             by ``_py4dstem_strain_worker.py``: kernel from the vacuum probe
             (``Probe.get_kernel``), ``DataCube.find_Bragg_disks(template=kernel, ...)`` with
             parameters tuned ONCE on the high-dose set (a small staged grid, chosen by disk
             accuracy) and then used on every set. Its strain is computed two ways:
             (a) its detected peaks fed to distill4d's lattice fit + strain_map (same fit,
             same reference: isolates detection), and (b) py4DSTEM's own StrainMap workflow
             (choose_basis_vectors, fit_basis_vectors(max_peak_spacing=3), get_strain(gvects=
             reference-layer mask)).

Scores: disk-detection accuracy (``distill4d.bragg.disk_detection_accuracy``: intensity-
weighted TP / (TP + FP + FN), match radius 0.05 1/Å) against the simulator's true disks;
RMS error of eps_xx, eps_yy, eps_xy (in %) and theta (degrees) over the positions whose
fit succeeded, against the ground truth expressed relative to the same reference layer.
Each strain result is scored in its own convention: distill4d's ``eps = sym(F) - I`` with
``F = F_true F_ref^-1`` (theta = atan2(F10 - F01, F00 + F11)); py4DSTEM's StrainMap uses the
linearised ``eps = I - sym(T)``, ``theta = (T01 - T10) / 2`` with the reciprocal-space
transform ``T = G G_ref^-1 = F^-T F_ref^T`` (the two differ at second order, 4e-4 for these
2 % layer contrasts, and in the sign of theta; scoring py4DSTEM against distill4d's
definition would charge it for the definition, not for the measurement).
Throughput: patterns per second of the detection call alone (wall time).

Usage (from the repository root; the py4DSTEM env comes from setup_py4dstem_env.sh):
    .venv/bin/python benchmarks/strain_vs_py4dstem.py            # full run, writes RESULTS.md
    .venv/bin/python benchmarks/strain_vs_py4dstem.py --quick    # smoke test, no RESULTS.md
    .venv/bin/python benchmarks/strain_vs_py4dstem.py --sets hd,ld --no-results
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from _results import machine_info, machine_line, write_section  # noqa: E402

import distill4d  # noqa: E402
from distill4d.bragg import BraggPeaks, disk_detection_accuracy, find_bragg_disks  # noqa: E402
from distill4d.datacube import DataCube  # noqa: E402
from distill4d.lattice import strain_from_deformation, strain_map  # noqa: E402
from distill4d.simulate.kinematic import strained_scan, vacuum_probe  # noqa: E402

SECTION = "strain_vs_py4dstem"
DEFAULT_PY4DSTEM_PYTHON = HERE / "envs" / "py4dstem" / "bin" / "python"
WORKER = HERE / "_py4dstem_strain_worker.py"
LAYER_WIDTH = 4
STRAIN = 0.01
HIGH_DOSE = 1e5
LOW_DOSE = 3e3
BACKGROUND = 0.05
ROTATION_DEG = 2.0
THRESHOLD_INV_A = 0.05

# name -> (description, strained_scan options)
SETS: dict[str, tuple[str, dict]] = {
    "ideal": ("noise-free (infinite dose), no background", dict(dose=None)),
    "hd": (f"high dose, {HIGH_DOSE:.0e} e-/pattern (Poisson), no background", dict(dose=HIGH_DOSE)),
    "ld": (f"low dose, {LOW_DOSE:.0e} e-/pattern (Poisson), no background", dict(dose=LOW_DOSE)),
    "hd_bg": (f"high dose + diffuse background (Gaussian halo, {BACKGROUND} x direct-beam level at the centre)",
              dict(dose=HIGH_DOSE, background=BACKGROUND)),
    "ld_bg": ("low dose + the same diffuse background", dict(dose=LOW_DOSE, background=BACKGROUND)),
    "hd_rot": (f"high dose, whole lattice rotated by {ROTATION_DEG} deg (uniform), no background",
               dict(dose=HIGH_DOSE, rotation_deg=ROTATION_DEG)),
}
THICK_A = 600.0
TILT_MRAD = (6.0, 3.0)
# multislice sets (abTEM, distill4d[sim]): Si [011] (the same projected cell as the kinematic
# sets), same detector and optics, the same multilayer; set -> (description, options)
MULTISLICE: dict[str, tuple[str, dict]] = {
    "thick": (f"thick crystal: multislice Si [011], {THICK_A / 10:.0f} nm, on zone, high dose (dynamical scattering: "
              "non-kinematic disk intensities, contrast inside the disks)", dict(thickness_A=THICK_A, tilt_mrad=(0.0, 0.0))),
    "tilt": (f"tilted crystal: multislice Si [011], 20 nm, {TILT_MRAD[0]:g} / {TILT_MRAD[1]:g} mrad off zone, high dose "
             "(uneven disk intensities)", dict(thickness_A=200.0, tilt_mrad=TILT_MRAD)),
}
SETS.update({k: (v[0], {"multislice": True, **v[1]}) for k, v in MULTISLICE.items()})
NOT_AVAILABLE: dict[str, str] = {}
TUNING_SET = "hd"

# py4DSTEM parameters that stay fixed during the search (a careful user's choices for these data)
P4_FIXED = dict(subpixel="multicorr", upsample_factor=16, relativeToPeak=0, minAbsoluteIntensity=0,
                edgeBoundary=4, maxNumPeaks=200)
P4_START = dict(corrPower=1.0, sigma=2.0, minRelativeIntensity=0.005, minPeakSpacing=8.0)  # py4DSTEM's defaults
# except minPeakSpacing (its default 60 px would leave one disk per pattern) / edgeBoundary (default 20)
P4_STRAIN = {"max_peak_spacing": 3.0, "basis": {"minSpacing": 8, "edgeBoundary": 4, "maxNumPeaks": 20}}


# ============================================================================ data
def make_multislice_set(name: str, scan: tuple[int, int], pattern: tuple[int, int], seed: int,
                        dose_e: float | None = HIGH_DOSE):
    """A multislice multilayer set; ``dose_e`` electrons per pattern (None: noise-free)."""
    from distill4d.simulate.crystals import orient, prototype
    from distill4d.simulate.kinematic import DEFAULT_CALIBRATION
    from distill4d.simulate.multislice import CBEDSettings, vacuum_probe_pattern
    from distill4d.simulate.scan import scan_preset, simulate_scan

    opts = MULTISLICE[name][1]
    cal = DEFAULT_CALIBRATION
    atoms, _ = orient(prototype("Si"), (0, 1, 1))
    settings = CBEDSettings(energy_eV=cal.energy_eV, semiangle_mrad=cal.semiangle_mrad, shape=pattern,
                            q_pixel_inv_A=cal.q_pixel_inv_A)
    fields = scan_preset("multilayer", scan, strain=STRAIN, layer_width=LAYER_WIDTH, **opts)
    dc, truth = simulate_scan(atoms, fields, settings, dose_e=dose_e, seed=seed)
    return dc, truth, vacuum_probe_pattern(settings)


def make_set(name: str, scan: tuple[int, int], pattern: tuple[int, int], seed: int):
    _, opts = SETS[name]
    if opts.get("multislice"):
        return make_multislice_set(name, scan, pattern, seed)
    dc, truth = strained_scan(scan, pattern, kind="multilayer", strain=STRAIN, layer_width=LAYER_WIDTH,
                              seed=seed, **opts)
    probe = vacuum_probe(pattern, calibration=dc.calibration)
    return dc, truth, probe


def expected_strain(truth, ref_rows: tuple[int, int]) -> tuple[dict, dict]:
    """Ground truth relative to the reference layer: (distill4d convention, py4DSTEM convention)."""
    F = truth.F
    Fref = F[ref_rows[0]:ref_rows[1]].reshape(-1, 2, 2)
    assert np.allclose(Fref, Fref[0]), "reference region is not uniform"
    F0 = Fref[0]
    d4 = strain_from_deformation(F @ np.linalg.inv(F0))
    T = np.swapaxes(np.linalg.inv(F), -1, -2) @ F0.T  # G G0^-1
    p4 = {"eps_xx": 1 - T[..., 0, 0], "eps_yy": 1 - T[..., 1, 1], "eps_xy": -(T[..., 0, 1] + T[..., 1, 0]) / 2,
          "theta": (T[..., 0, 1] - T[..., 1, 0]) / 2}
    return d4, p4


def strain_errors(values: dict, expected: dict) -> dict:
    ok = np.isfinite(values["eps_xx"]) & np.isfinite(values["eps_yy"]) & np.isfinite(values["eps_xy"])
    out = {"n_failed": int((~ok).sum())}
    for k in ("eps_xx", "eps_yy", "eps_xy", "theta"):
        d = (np.asarray(values[k]) - expected[k])[ok]
        scale = 100.0 if k != "theta" else 180.0 / math.pi
        out[k] = float(np.sqrt(np.mean(d**2)) * scale) if d.size else float("nan")
    out["eps_all"] = float(np.sqrt(np.mean([out[k] ** 2 for k in ("eps_xx", "eps_yy", "eps_xy")])))
    return out


def detection_score(peaks: BraggPeaks, truth_peaks: BraggPeaks) -> dict:
    s = disk_detection_accuracy(peaks, truth_peaks, threshold_inv_A=THRESHOLD_INV_A)
    return {"accuracy": s.accuracy, "tp": s.tp, "fp": s.fp, "fn": s.fn, "mean_error_px": s.mean_error_px,
            "peaks_per_pattern": peaks.n_peaks / len(peaks), "true_per_pattern": truth_peaks.n_peaks / len(truth_peaks)}


def subset_peaks(bp: BraggPeaks, subset) -> BraggPeaks:
    if subset is None:
        return bp
    r0, r1, cs = subset
    qx, qy, it, c = bp.to_padded()
    sl = (slice(r0, r1), slice(None, None, cs))
    return BraggPeaks.from_padded(qx[sl], qy[sl], it[sl], c[sl], bp.calibration)


def padded_to_peaks(z, name: str, calibration) -> BraggPeaks:
    return BraggPeaks.from_padded(z[f"{name}__qx"], z[f"{name}__qy"], z[f"{name}__intensity"],
                                  z[f"{name}__count"], calibration)


# ============================================================================ py4DSTEM side
def _pin(cpu: int | None):
    return None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))


def run_worker(python: Path, runs: list[dict], job: str, workdir: Path, q_pixel: float, timeout: float,
               cpu: int | None = None):
    out = workdir / f"{job}.npz"
    spec = {"q_pixel_inv_A": q_pixel, "out": str(out), "runs": runs}
    spec_path = workdir / f"{job}.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    env = dict(os.environ, TQDM_DISABLE="1", MPLBACKEND="Agg")
    env.pop("PYTHONPATH", None)
    t = time.perf_counter()
    proc = subprocess.run([str(python), str(WORKER), str(spec_path)], cwd=str(REPO), env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, preexec_fn=_pin(cpu))
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"py4DSTEM worker failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    meta = json.loads(Path(str(out) + ".json").read_text())
    for name, rec in meta["runs"].items():
        if not rec.get("ok"):
            print(f"  py4DSTEM run {name} failed: {rec.get('error')}\n{rec.get('traceback', '')}", file=sys.stderr)
    return np.load(out), meta, wall


def p4_run(name: str, files: dict, kernel: dict, detect: dict, *, subset=None, strain=None, warmup=False) -> dict:
    return {"name": name, "data": str(files["data"]), "probe": str(files["probe"]), "kernel": kernel,
            "detect": {**P4_FIXED, **detect}, "subset": subset, "strain": strain, "warmup": warmup}


def kernel_label(k: dict) -> str:
    if k["mode"] == "sigmoid":
        ri, ro = k.get("radii_factor", [1.0, 2.0])
        return f"sigmoid (r_i, r_o) = ({ri:g} r, {ro:g} r)"
    return k["mode"]


def tune_py4dstem(python, files, truth_bp, cal, workdir, q_pixel, subset, quick, timeout, log):
    """Staged grid on the tuning set; returns (kernel, detect params, list of trials)."""
    truth_sub = subset_peaks(truth_bp, subset)
    trials: list[dict] = []

    def stage(label: str, candidates: list[tuple[dict, dict]]):
        runs = [p4_run(f"t{len(trials) + i}", files, k, d, subset=subset, warmup=(i == 0))
                for i, (k, d) in enumerate(candidates)]
        z, meta, _ = run_worker(python, runs, f"tune_{label}", workdir, q_pixel, timeout)
        for run, (k, d) in zip(runs, candidates):
            rec = meta["runs"][run["name"]]
            t = {"stage": label, "kernel": k, "detect": d, "ok": rec.get("ok", False)}
            if t["ok"]:
                t.update(detection_score(padded_to_peaks(z, run["name"], cal), truth_sub))
                t["patterns_per_s"] = rec["n_patterns"] / rec["detect_s"]
            trials.append(t)
            log(f"    [{label}] {kernel_label(k):32s} {d} -> "
                + (f"accuracy {t['accuracy']:.4f}, mean error {t['mean_error_px']:.3f} px" if t["ok"] else "FAILED"))
        return best(trials)

    def best(ts):
        ok = [t for t in ts if t["ok"]]
        top = max(t["accuracy"] for t in ok)
        near = [t for t in ok if t["accuracy"] >= top - 1e-3]  # ties: the smaller position error
        return min(near, key=lambda t: t["mean_error_px"])

    kernels = [{"mode": "flat"}, {"mode": "sigmoid", "radii_factor": [1.0, 2.0]}]
    if quick:
        b = stage("s1", [(k, dict(P4_START)) for k in kernels])
        return b["kernel"], b["detect"], trials
    # stage 1: kernel x correlation power x smoothing of the correlation (thresholds at defaults)
    s1 = [(k, {**P4_START, "corrPower": cp, "sigma": sg}) for k in kernels for cp in (1.0, 0.5) for sg in (0.0, 2.0)]
    b = stage("s1", s1)
    # stage 2: intensity threshold x minimum spacing, with the best of stage 1
    s2 = [(b["kernel"], {**b["detect"], "minRelativeIntensity": mri, "minPeakSpacing": mps})
          for mri in (0.001, 0.005, 0.02, 0.05) for mps in (6.0, 10.0)]
    b = stage("s2", s2)
    # stage 3: a finer look at the kernel's trench and the smoothing around the best
    s3 = []
    if b["kernel"]["mode"] == "sigmoid":
        s3 += [({"mode": "sigmoid", "radii_factor": rf}, b["detect"]) for rf in ([1.0, 1.5], [1.0, 3.0])]
    s3 += [(b["kernel"], {**b["detect"], "sigma": sg}) for sg in (1.0, 3.0) if sg != b["detect"]["sigma"]]
    b = stage("s3", s3)
    return b["kernel"], b["detect"], trials


def pinned_distill4d(files: dict, cpu: int, timeout: float) -> dict:
    """distill4d's detection (scheduler='inline') in a fresh process confined to one core (all its threads)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_pinned-distill4d", str(files["data"]), str(files["probe"])]
    proc = subprocess.run(cmd, cwd=str(REPO), text=True, capture_output=True, timeout=timeout, preexec_fn=_pin(cpu))
    if proc.returncode != 0:
        raise RuntimeError(f"pinned distill4d run failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _pinned_distill4d_main(data_path: str, probe_path: str) -> int:
    data, probe = np.load(data_path), np.load(probe_path)
    dc = DataCube(data)
    find_bragg_disks(DataCube(data[:2, :2]), probe, progress=False, scheduler="inline")
    c = time.process_time()
    t = time.perf_counter()
    pk = find_bragg_disks(dc, probe, progress=False, scheduler="inline")
    wall = time.perf_counter() - t
    print(json.dumps({"s": wall, "cpu_s": time.process_time() - c, "n_patterns": dc.n_patterns,
                      "n_peaks": pk.n_peaks, "affinity": sorted(os.sched_getaffinity(0))}))
    return 0


# ============================================================================ main
def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny smoke run (8x8 scans, 2 sets, 2-point search); "
                   "does not write RESULTS.md")
    p.add_argument("--sets", default=None, help=f"comma list from {','.join(SETS)} (default: all)")
    p.add_argument("--scan", type=int, nargs=2, default=None, metavar=("RX", "RY"), help="default 32 32")
    p.add_argument("--pattern", type=int, nargs=2, default=(128, 128), metavar=("QX", "QY"))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--py4dstem-python", type=Path, default=DEFAULT_PY4DSTEM_PYTHON)
    p.add_argument("--py4dstem-params", type=Path, default=None,
                   help="JSON {'kernel': ..., 'detect': ...}: skip the search and use these")
    p.add_argument("--data", type=Path, default=HERE / "data" / "strain_vs_py4dstem")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per py4DSTEM subprocess")
    p.add_argument("--pinned-set", default=TUNING_SET,
                   help="set on which both are also timed confined to ONE core (all threads); '' to skip")
    p.add_argument("--_pinned-distill4d", nargs=2, default=None, help=argparse.SUPPRESS)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--results", action="store_true", help="write RESULTS.md even with --quick")
    g.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    if a._pinned_distill4d:
        return _pinned_distill4d_main(*a._pinned_distill4d)
    t_start = time.perf_counter()
    scan = tuple(a.scan) if a.scan else ((8, 8) if a.quick else (32, 32))
    pattern = tuple(a.pattern)
    names = a.sets.split(",") if a.sets else (["hd", "ld"] if a.quick else list(SETS))
    unknown = [n for n in names if n not in SETS]
    if unknown:
        raise SystemExit(f"unknown set(s) {unknown}; known: {list(SETS)}")
    if scan[0] < 2 * LAYER_WIDTH:
        raise SystemExit(f"the scan needs at least {2 * LAYER_WIDTH} rows (two layers)")
    if not a.py4dstem_python.exists():
        raise SystemExit(f"{a.py4dstem_python} not found: run `bash benchmarks/setup_py4dstem_env.sh` first")
    write = (a.results or not a.quick) and not a.no_results
    a.data.mkdir(parents=True, exist_ok=True)
    ref_rows = (0, LAYER_WIDTH)
    ref_region = (slice(*ref_rows), slice(None))
    log = lambda s: print(s, flush=True)  # noqa: E731

    # ---------------------------------------------------------------- simulate
    data: dict[str, dict] = {}
    for name in dict.fromkeys(names + [TUNING_SET]):
        t = time.perf_counter()
        dc, truth, probe = make_set(name, scan, pattern, a.seed + list(SETS).index(name))
        files = {"data": a.data / f"{name}.npy", "probe": a.data / f"{name}_probe.npy"}
        np.save(files["data"], np.asarray(dc.data, dtype=np.float32))
        np.save(files["probe"], probe)
        data[name] = {"dc": dc, "truth": truth, "probe": probe, "files": files, "truth_bp": truth.bragg_peaks()}
        log(f"simulated {name}: {scan[0]}x{scan[1]} x {pattern[0]}x{pattern[1]}, "
            f"{np.isfinite(truth.qx).sum() / truth.qx[..., 0].size:.1f} disks/pattern on the detector, "
            f"{time.perf_counter() - t:.1f} s")
    cal = data[TUNING_SET]["dc"].calibration
    q_pixel = cal.q_pixel_inv_A

    # ---------------------------------------------------------------- py4DSTEM parameter search
    if a.py4dstem_params:
        chosen = json.loads(a.py4dstem_params.read_text())
        kernel, detect, trials = chosen["kernel"], chosen["detect"], []
        log(f"py4DSTEM parameters from {a.py4dstem_params}: {kernel} {detect}")
    else:
        rows = min(scan[0], 2 * LAYER_WIDTH)
        subset = [0, rows, 2 if scan[1] >= 16 else 1]
        log(f"py4DSTEM parameter search on set '{TUNING_SET}', patterns [{subset[0]}:{subset[1]}, ::{subset[2]}]")
        t = time.perf_counter()
        kernel, detect, trials = tune_py4dstem(a.py4dstem_python, data[TUNING_SET]["files"],
                                               data[TUNING_SET]["truth_bp"], cal, a.data, q_pixel, subset,
                                               a.quick, a.timeout, log)
        tune_s = time.perf_counter() - t
        log(f"  chosen: kernel {kernel_label(kernel)}, {detect} ({tune_s:.0f} s)")
    tuning = {"set": TUNING_SET, "kernel": kernel, "detect": {**P4_FIXED, **detect}, "trials": trials,
              "subset": None if a.py4dstem_params else subset}

    # ---------------------------------------------------------------- py4DSTEM on every set
    runs = []
    for name in names:
        strain_spec = {"reference_rows": list(ref_rows), **P4_STRAIN}
        runs.append(p4_run(name, data[name]["files"], kernel, detect, strain=strain_spec, warmup=True))
    log(f"py4DSTEM on {len(runs)} set(s) ...")
    z, p4meta, _ = run_worker(a.py4dstem_python, runs, "final", a.data, q_pixel, a.timeout)

    # ---------------------------------------------------------------- distill4d + scoring
    results: dict[str, dict] = {}
    for name in names:
        d = data[name]
        dc, truth, probe, truth_bp = d["dc"], d["truth"], d["probe"], d["truth_bp"]
        exp_d4, exp_p4 = expected_strain(truth, ref_rows)
        res: dict = {"description": SETS[name][0], "options": SETS[name][1]}
        # distill4d: warm-up on 2x2 patterns (imports, FFT plans, thread pool), then the timed calls
        find_bragg_disks(DataCube(np.asarray(dc.data[:2, :2]), dc.calibration), probe, progress=False)
        timing = {}
        peaks = {}
        for sched in ("threads", "inline"):
            c = time.process_time()
            t = time.perf_counter()
            peaks[sched] = find_bragg_disks(dc, probe, progress=False, scheduler=sched)
            timing[sched] = {"s": time.perf_counter() - t, "cpu_s": time.process_time() - c}
        same = (np.array_equal(peaks["threads"].qx, peaks["inline"].qx)
                and np.array_equal(peaks["threads"].offsets, peaks["inline"].offsets))
        pk = peaks["threads"]
        sm = strain_map(pk, reference=ref_region)
        vals = {k: getattr(sm, k) for k in ("eps_xx", "eps_yy", "eps_xy", "theta")}
        res["distill4d"] = {
            **detection_score(pk, truth_bp), "strain": strain_errors(vals, exp_d4),
            "patterns_per_s": {s: dc.n_patterns / timing[s]["s"] for s in timing}, "timing": timing,
            "threads_equal_inline": bool(same),
            "auto_params": {k: pk.params[k] for k in ("radius_px", "edge_px", "min_spacing_px",
                                                      "min_relative_intensity", "max_peaks")},
        }
        # diagnostic only (not a goal): distill4d with py4DSTEM's chosen intensity threshold
        diag_mri = float(tuning["detect"]["minRelativeIntensity"])
        pkd = find_bragg_disks(dc, probe, progress=False, min_relative_intensity=diag_mri)
        smd = strain_map(pkd, reference=ref_region)
        res["distill4d_diag"] = {
            **detection_score(pkd, truth_bp), "min_relative_intensity": diag_mri,
            "strain": strain_errors({k: getattr(smd, k) for k in ("eps_xx", "eps_yy", "eps_xy", "theta")}, exp_d4),
            "max_peaks": pkd.params["max_peaks"],
        }
        # py4DSTEM
        rec = p4meta["runs"][name]
        if rec.get("ok"):
            bp = padded_to_peaks(z, name, dc.calibration)
            sm4 = strain_map(bp, reference=ref_region)
            vals4 = {k: getattr(sm4, k) for k in ("eps_xx", "eps_yy", "eps_xy", "theta")}
            native = {k: np.where(z[f"{name}__mask"] > 0, z[f"{name}__{kk}"], np.nan)
                      for k, kk in (("eps_xx", "e_xx"), ("eps_yy", "e_yy"), ("eps_xy", "e_xy"), ("theta", "theta"))}
            res["py4dstem"] = {
                **detection_score(bp, truth_bp), "strain_d4fit": strain_errors(vals4, exp_d4),
                "strain_native": strain_errors(native, exp_p4), "patterns_per_s": dc.n_patterns / rec["detect_s"],
                "timing": {"s": rec["detect_s"], "cpu_s": rec["detect_cpu_s"]},
                "strain_info": rec.get("strain_info"),
            }
        else:
            res["py4dstem"] = {"error": rec.get("error")}
        results[name] = res
        r4 = res["py4dstem"]
        log(f"{name}: distill4d acc {res['distill4d']['accuracy']:.4f} strain {res['distill4d']['strain']['eps_all']:.4f} % "
            f"{res['distill4d']['patterns_per_s']['threads']:.0f}/s (inline {res['distill4d']['patterns_per_s']['inline']:.0f}/s) | "
            + (f"py4DSTEM acc {r4['accuracy']:.4f} strain {r4['strain_d4fit']['eps_all']:.4f} % (own fit "
               f"{r4['strain_native']['eps_all']:.4f} %) {r4['patterns_per_s']:.1f}/s" if "accuracy" in r4 else
               f"py4DSTEM failed: {r4['error']}"))

    # ---------------------------------------------------------------- one core, one set
    pinned = None
    if a.pinned_set and a.pinned_set in names and p4meta["runs"][a.pinned_set].get("ok"):
        cpu = sorted(os.sched_getaffinity(0))[0]
        log(f"single-core timing on set '{a.pinned_set}' (both processes confined to CPU {cpu}) ...")
        files = data[a.pinned_set]["files"]
        d4p = pinned_distill4d(files, cpu, a.timeout)
        _, mp, _ = run_worker(a.py4dstem_python, [p4_run(a.pinned_set, files, kernel, detect, warmup=True)],
                               "pinned", a.data, q_pixel, a.timeout, cpu=cpu)
        rp = mp["runs"][a.pinned_set]
        n = data[a.pinned_set]["dc"].n_patterns
        pinned = {"set": a.pinned_set, "cpu": cpu,
                  "distill4d": {**d4p, "patterns_per_s": n / d4p["s"]},
                  "py4dstem": {"s": rp["detect_s"], "cpu_s": rp["detect_cpu_s"], "patterns_per_s": n / rp["detect_s"]}}
        log(f"  distill4d {pinned['distill4d']['patterns_per_s']:.0f}/s, py4DSTEM {pinned['py4dstem']['patterns_per_s']:.1f}/s")

    total_s = time.perf_counter() - t_start
    info = machine_info()
    meta = {"scan": scan, "pattern": pattern, "seed": a.seed, "sets": names, "total_s": total_s,
            "py4dstem_version": p4meta.get("py4dstem_version"), "py4dstem_numpy": p4meta.get("numpy_version"),
            "distill4d_version": distill4d.__version__, "numpy_version": np.__version__,
            "calibration": {"q_pixel_inv_A": q_pixel, "energy_eV": cal.energy_eV, "semiangle_mrad": cal.semiangle_mrad},
            "quick": a.quick}
    raw = {"meta": meta, "machine": info, "tuning": tuning, "results": results, "pinned": pinned}
    raw_path = HERE / "data" / f"strain_vs_py4dstem_{'quick' if a.quick else 'last'}.json"
    raw_path.write_text(json.dumps(raw, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    text = render(raw)
    print("\n" + text)
    log(f"\nraw results: {raw_path.relative_to(REPO)}; total {total_s:.0f} s")
    if write:
        write_section(SECTION, text)
        log(f"wrote section '{SECTION}' of {(HERE / 'RESULTS.md').relative_to(REPO)}")
    return 0


# ============================================================================ report
def _f(x, nd=4):
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{nd}f}"


def render(raw: dict) -> str:
    meta, info, tuning, results = raw["meta"], raw["machine"], raw["tuning"], raw["results"]
    scan, pattern = meta["scan"], meta["pattern"]
    L = ["## Bragg disk detection and strain: distill4d (automatic) vs py4DSTEM (tuned)", "",
         f"Written by `benchmarks/strain_vs_py4dstem.py` on {info['date']} (whole run {meta['total_s']:.0f} s).", "",
         machine_line(info),
         f"- Versions: distill4d {meta['distill4d_version']} (numpy {meta['numpy_version']}), py4DSTEM "
         f"{meta['py4dstem_version']} (numpy {meta['py4dstem_numpy']}, own virtualenv, run in a subprocess)",
         f"- Data: `distill4d.simulate.kinematic.strained_scan(({scan[0]}, {scan[1]}), ({pattern[0]}, {pattern[1]}), "
         f"kind='multilayer', strain={STRAIN}, layer_width={LAYER_WIDTH}, ...)`: kinematic disk patterns of the "
         f"default Si [110]-like centred rectangular cell (a = 3.84 Å, b = 5.431 Å), layers {LAYER_WIDTH} scan rows "
         f"thick alternating eps_xx = +1 % / -1 % (real space), q pixel {meta['calibration']['q_pixel_inv_A']} 1/Å, "
         f"{meta['calibration']['energy_eV'] / 1e3:.0f} kV, semiangle {meta['calibration']['semiangle_mrad']} mrad "
         f"(disk radius ~4.1 px), seed {meta['seed']} + set index. The vacuum probe is `vacuum_probe(shape)` "
         f"(noise-free). Strain reference: the first layer (scan rows 0-{LAYER_WIDTH - 1}), so the truth is "
         f"0 there and 0.99/1.01 - 1 = -1.98 % eps_xx in the other layers.",
         f"- Sets `thick` and `tilt`: `distill4d.simulate.scan.simulate_scan` (abTEM multislice, Si [011] from "
         f"`crystals.orient`, the same detector, optics and multilayer; {HIGH_DOSE:.0e} e-/pattern); their truth "
         "peaks are the kinematic positions with structure-factor amplitudes as intensities (the FCU-Net paper's "
         "scoring), and their vacuum probe is the simulated one.",
         "- distill4d: `find_bragg_disks(dc, probe)` with no detection overrides (automatic parameters, "
         "`progress=False`), timed with the default scheduler (threads, 2 workers) and with `scheduler='inline'`; "
         "strain: `strain_map(peaks, reference=(slice(0, 4), slice(None)))`.",
         "- py4DSTEM: `DataCube.find_Bragg_disks(template=Probe.get_kernel(...), ...)` on the CPU (its default "
         "serial loop), with the parameters chosen below on ONE set and used on all. Strain two ways: "
         "**py4DSTEM peaks -> distill4d fit** (its peaks into the same `strain_map` as distill4d: compares detection "
         "only) and **py4DSTEM StrainMap** (its own workflow: `choose_basis_vectors(minSpacing=8, edgeBoundary=4, "
         "maxNumPeaks=20)` (automatic g1/g2 choice), `fit_basis_vectors(max_peak_spacing=3)`, "
         "`get_strain(gvects=<reference-layer mask>)`, origin set from the vacuum probe).",
         f"- Disk accuracy: `disk_detection_accuracy(peaks, truth.bragg_peaks(), threshold_inv_A={THRESHOLD_INV_A})` "
         "(intensity-weighted TP/(TP+FP+FN), greedy matching within 0.05 1/Å = 2 px; the truth has every disk "
         "whose centre is on the detector, so disks cut by the edge count as misses for both). Mean error: mean "
         "distance of the matched pairs in pixels.",
         "- Strain error: RMS over the positions with a successful fit (failures counted separately) of "
         "eps_xx, eps_yy, eps_xy (in %, i.e. 0.01 % = 1e-4) and theta (degrees) against the truth relative to the "
         "reference layer, each scored in its own convention (distill4d: eps = sym(F) - I, F = F F_ref^-1; "
         "py4DSTEM StrainMap: linearised eps = I - sym(T), theta = (T01 - T10)/2 with T = G G_ref^-1, the opposite "
         "sign of theta; they differ by ~4e-4 on these layers, which is not charged to either).",
         "- Patterns/s: patterns / wall time of the detection call alone (distill4d's includes its automatic "
         "parameter estimation; both after an untimed 2x2-pattern warm-up).",
         "- The *diagnostic* row (not part of any goal) reruns distill4d with one override, py4DSTEM's chosen "
         "`minRelativeIntensity` as `min_relative_intensity`, to show how much of a gap comes from the automatic "
         "intensity threshold alone.", ""]
    L += ["### Sets", "", "| set | how it differs |", "|---|---|"]
    for name in meta["sets"]:
        L.append(f"| `{name}` | {results[name]['description']} |")
    for name, why in NOT_AVAILABLE.items():
        L.append(f"| `{name}` | {why}: **not yet available (needs multislice simulation)** |")
    L.append("")

    # ---- tables
    L += ["### Results", ""]
    head = ("| method | strain fit | disk accuracy | mean error (px) | peaks / pattern | RMS eps_xx (%) | "
            "RMS eps_yy (%) | RMS eps_xy (%) | RMS theta (deg) | failed fits | patterns/s |")
    sep = "|---|---|---|---|---|---|---|---|---|---|---|"
    for name in meta["sets"]:
        r = results[name]
        d4, p4 = r["distill4d"], r["py4dstem"]
        L += [f"**`{name}`**: {r['description']} (true disks on the detector: {d4['true_per_pattern']:.1f} per pattern)",
              "", head, sep]
        s = d4["strain"]
        pps = d4["patterns_per_s"]
        L.append(f"| distill4d (automatic) | distill4d | {_f(d4['accuracy'])} | {_f(d4['mean_error_px'], 3)} | "
                 f"{d4['peaks_per_pattern']:.1f} | {_f(s['eps_xx'])} | {_f(s['eps_yy'])} | {_f(s['eps_xy'])} | "
                 f"{_f(s['theta'])} | {s['n_failed']} | {pps['threads']:.0f} (threads), {pps['inline']:.0f} (inline) |")
        dg = r.get("distill4d_diag")
        if dg:
            s = dg["strain"]
            L.append(f"| *diagnostic, not a goal:* distill4d with `min_relative_intensity={dg['min_relative_intensity']:g}` "
                     f"| distill4d | {_f(dg['accuracy'])} | {_f(dg['mean_error_px'], 3)} | {dg['peaks_per_pattern']:.1f} | "
                     f"{_f(s['eps_xx'])} | {_f(s['eps_yy'])} | {_f(s['eps_xy'])} | {_f(s['theta'])} | {s['n_failed']} | - |")
        if "accuracy" in p4:
            for label, key in (("distill4d (same fit)", "strain_d4fit"), ("py4DSTEM StrainMap", "strain_native")):
                s = p4[key]
                L.append(f"| py4DSTEM (tuned) | {label} | {_f(p4['accuracy'])} | {_f(p4['mean_error_px'], 3)} | "
                         f"{p4['peaks_per_pattern']:.1f} | {_f(s['eps_xx'])} | {_f(s['eps_yy'])} | {_f(s['eps_xy'])} | "
                         f"{_f(s['theta'])} | {s['n_failed']} | {p4['patterns_per_s']:.1f} |")
        else:
            L.append(f"| py4DSTEM (tuned) | - | failed: {p4.get('error')} | | | | | | | | |")
        ap = d4["auto_params"]
        L += ["", f"distill4d's automatic parameters: min_relative_intensity {ap['min_relative_intensity']:.4f}, "
                  f"min_spacing_px {ap['min_spacing_px']:.2f}, max_peaks {ap['max_peaks']}, edge_px "
                  f"{ap['edge_px']:.2f}. CPU time of the detection: distill4d threads "
                  f"{d4['timing']['threads']['cpu_s']:.1f} s / inline {d4['timing']['inline']['cpu_s']:.1f} s"
                  + (f", py4DSTEM {p4['timing']['cpu_s']:.1f} s (wall {p4['timing']['s']:.1f} s)" if "timing" in p4 else "")
                  + ("" if d4["threads_equal_inline"] else " (**threads and inline peaks differ**)") + ".", ""]
    for name, why in NOT_AVAILABLE.items():
        L += [f"**`{name}`**: not yet available (needs multislice simulation).", ""]

    pinned = raw.get("pinned")
    if pinned:
        d, p = pinned["distill4d"], pinned["py4dstem"]
        L += ["### Throughput on one core", "",
              "Both libraries use more than one core even in their 'serial' modes: OpenBLAS threads in the matrix "
              "products of the DFT-upsampling refinement (CPU time ~2x wall time for py4DSTEM above; with "
              "`OPENBLAS_NUM_THREADS=1` its CPU time halves and its wall time does not grow). To compare one core with one "
              f"core, set `{pinned['set']}` was also run with each process and all its threads confined to CPU "
              f"{pinned['cpu']} (`os.sched_setaffinity` before exec; distill4d with `scheduler='inline'`):", "",
              "| method | wall s | CPU s | patterns/s |", "|---|---|---|---|",
              f"| distill4d (inline, 1 core) | {d['s']:.2f} | {d['cpu_s']:.2f} | {d['patterns_per_s']:.0f} |",
              f"| py4DSTEM (1 core) | {p['s']:.2f} | {p['cpu_s']:.2f} | {p['patterns_per_s']:.1f} |", "",
              f"Ratio: {d['patterns_per_s'] / p['patterns_per_s']:.1f}x.", ""]

    # ---- tuning
    L += ["### py4DSTEM parameter search", ""]
    if tuning["trials"]:
        sub = tuning["subset"]
        L += [f"On set `{tuning['set']}` only, patterns `[{sub[0]}:{sub[1]}, ::{sub[2]}]` (both layer kinds), "
              "scored by disk accuracy against the truth (ties within 0.001: the smaller mean position error). "
              f"Fixed throughout: {json.dumps(P4_FIXED)} (edgeBoundary 4 = the disk radius; maxNumPeaks above the "
              "~100 disks on the detector; py4DSTEM's own defaults minPeakSpacing=60 and edgeBoundary=20 are for "
              "larger patterns and would keep a handful of disks here). Staged search: (1) kernel x corrPower x "
              "sigma (smoothing of the correlation) at the default thresholds; (2) minRelativeIntensity x "
              "minPeakSpacing; (3) kernel trench radii / sigma around the best.", "",
              "| stage | kernel | corrPower | sigma | minRelativeIntensity | minPeakSpacing | disk accuracy | "
              "mean error (px) | patterns/s |", "|---|---|---|---|---|---|---|---|---|"]
        for t in tuning["trials"]:
            d = t["detect"]
            acc = f"{t['accuracy']:.4f} | {t['mean_error_px']:.3f} | {t['patterns_per_s']:.1f}" if t["ok"] else "failed | | "
            L.append(f"| {t['stage']} | {kernel_label(t['kernel'])} | {d['corrPower']:g} | {d['sigma']:g} | "
                     f"{d['minRelativeIntensity']:g} | {d['minPeakSpacing']:g} | {acc} |")
        L.append("")
    chosen = {k: v for k, v in tuning["detect"].items()}
    L += [f"**Chosen** (used on every set): kernel `{kernel_label(tuning['kernel'])}`, "
          f"`find_Bragg_disks({', '.join(f'{k}={v!r}' for k, v in chosen.items())})`.", ""]

    # ---- goals
    L += ["### Goals", "", "distill4d with automatic parameters vs tuned py4DSTEM: disk accuracy >= py4DSTEM's and "
          "strain error (RMS over eps_xx, eps_yy, eps_xy) <= the better of py4DSTEM's two strain results, on every "
          "set; throughput >= 2x py4DSTEM's on the CPU.", ""]
    all_ok = {"acc": True, "strain": True, "speed": True, "speed_inline": True}
    for name in meta["sets"]:
        d4, p4 = results[name]["distill4d"], results[name]["py4dstem"]
        if "accuracy" not in p4:
            L.append(f"- `{name}`: py4DSTEM failed; no comparison")
            continue
        acc_ok = d4["accuracy"] >= p4["accuracy"]
        best4 = min(p4["strain_d4fit"]["eps_all"], p4["strain_native"]["eps_all"])
        st_ok = d4["strain"]["eps_all"] <= best4
        sp = d4["patterns_per_s"]["threads"] / p4["patterns_per_s"]
        spi = d4["patterns_per_s"]["inline"] / p4["patterns_per_s"]
        all_ok["acc"] &= acc_ok
        all_ok["strain"] &= st_ok
        all_ok["speed"] &= sp >= 2
        all_ok["speed_inline"] &= spi >= 2
        tiny = "" if st_ok or d4["strain"]["eps_all"] - best4 > 1e-3 else " (difference below 1e-3 %, i.e. 1e-5)"
        L.append(f"- `{name}`: disk accuracy {d4['accuracy']:.4f} vs {p4['accuracy']:.4f} "
                 f"(**{'PASS' if acc_ok else 'FAIL'}**); strain RMS {d4['strain']['eps_all']:.4f} % vs {best4:.4f} % "
                 f"(**{'PASS' if st_ok else 'FAIL'}**{tiny}); throughput {sp:.1f}x (threads, **{'PASS' if sp >= 2 else 'FAIL'}**)"
                 f", {spi:.1f}x (inline, {'PASS' if spi >= 2 else 'FAIL'})")
    if pinned:
        r = pinned["distill4d"]["patterns_per_s"] / pinned["py4dstem"]["patterns_per_s"]
        L.append(f"- one core each (`{pinned['set']}`): {r:.1f}x (**{'PASS' if r >= 2 else 'FAIL'}**)")
    L += ["", f"Overall: accuracy no worse on every set **{'PASS' if all_ok['acc'] else 'FAIL'}**; strain error no "
          f"worse on every set **{'PASS' if all_ok['strain'] else 'FAIL'}**; >= 2x throughput "
          f"**{'PASS' if all_ok['speed'] else 'FAIL'}** (threads), {'PASS' if all_ok['speed_inline'] else 'FAIL'} "
          "(inline; see the one-core timing).", "",
          "Rerun: `.venv/bin/python benchmarks/strain_vs_py4dstem.py` (see benchmarks/README.md); raw numbers in "
          "`benchmarks/data/strain_vs_py4dstem_last.json`."]
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
