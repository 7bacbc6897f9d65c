#!/usr/bin/env python3
"""py4DSTEM side of ``strain_vs_py4dstem.py``: disk detection (and strain) with py4DSTEM 0.14.

Runs with the py4DSTEM virtualenv's python (benchmarks/envs/py4dstem, NumPy 1.26), so it
imports neither distill4d nor anything from the project's .venv. It is driven by a JSON
spec written by the parent script::

    {"q_pixel_inv_A": 0.025,
     "out": "benchmarks/data/strain_vs_py4dstem/<job>.npz",
     "runs": [{"name": "...",
               "data": ".../<set>.npy",                   # float32 (Rx, Ry, Qx, Qy)
               "probe": ".../<set>_probe.npy",            # float32 (Qx, Qy) vacuum probe
               "kernel": {"mode": "sigmoid", "radii_factor": [1.0, 2.0]},
               "detect": {find_Bragg_disks keyword arguments},
               "subset": [r0, r1, col_step] or null,      # data[r0:r1, ::col_step] (null: all)
               "warmup": true,                            # untimed run on 2x2 patterns first
               "strain": null or {"reference_rows": [0, 4], "max_peak_spacing": 3.0,
                                  "basis": {choose_basis_vectors keyword arguments}}}]}

For every run it writes into ``out`` (one .npz): ``<name>__qx``, ``__qy``, ``__intensity``
(padded (Rx', Ry', K), NaN padding, in detector pixels, uncalibrated) and ``__count``; and,
when strain is asked for, ``__e_xx``, ``__e_yy``, ``__e_xy``, ``__theta``, ``__mask``
(py4DSTEM's StrainMap slices, py4DSTEM's own conventions). Timings and notes go to
``<out>.json``: ``detect_s`` is the wall time of ``datacube.find_Bragg_disks(...)`` only
(``detect_cpu_s`` the process CPU time over the same call, all threads).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
import warnings

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars in the timed loop's output
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402


def make_kernel(py4DSTEM, probe_image: np.ndarray, spec: dict):
    """The correlation kernel the way the py4DSTEM tutorials build it from a vacuum probe."""
    from py4DSTEM.process.calibration import get_probe_size

    probe = py4DSTEM.Probe(data=probe_image.astype(np.float64))
    radius, qx0, qy0 = get_probe_size(probe.probe)
    mode = spec.get("mode", "sigmoid")
    if mode == "flat":
        kernel = probe.get_kernel(mode="flat", origin=(qx0, qy0))
    elif mode == "sigmoid":
        ri, ro = spec.get("radii_factor", [1.0, 2.0])
        kernel = probe.get_kernel(mode="sigmoid", origin=(qx0, qy0), radii=(ri * radius, ro * radius))
    elif mode == "gaussian":
        kernel = probe.get_kernel(mode="gaussian", origin=(qx0, qy0), sigma=spec.get("sigma", 4.0))
    else:
        raise ValueError(f"unknown kernel mode {mode!r}")
    return kernel, float(radius), (float(qx0), float(qy0))


def padded(bv, shape) -> dict[str, np.ndarray]:
    rx, ry = shape
    lists = [[bv.raw[i, j] for j in range(ry)] for i in range(rx)]
    counts = np.array([[len(v.qx) for v in row] for row in lists], dtype=np.int64)
    k = max(1, int(counts.max(initial=0)))
    out = {n: np.full((rx, ry, k), np.nan) for n in ("qx", "qy", "intensity")}
    for i in range(rx):
        for j in range(ry):
            v = lists[i][j]
            c = counts[i, j]
            out["qx"][i, j, :c] = v.qx
            out["qy"][i, j, :c] = v.qy
            out["intensity"][i, j, :c] = v.I
    out["count"] = counts
    return out


def run_strain(py4DSTEM, dc, bv, origin, spec: dict) -> tuple[dict[str, np.ndarray], dict]:
    """py4DSTEM's own strain workflow (StrainMap: choose_basis_vectors, fit_basis_vectors, get_strain)."""
    import matplotlib.pyplot as plt

    shape = dc.Rshape
    dc.calibration.set_origin((np.full(shape, origin[0]), np.full(shape, origin[1])))
    bv.setcal(center=True, ellipse=False, pixel=False, rotate=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sm = py4DSTEM.StrainMap(braggvectors=bv)
        sm.choose_basis_vectors(**spec.get("basis", {}))
        plt.close("all")
        sm.fit_basis_vectors(max_peak_spacing=spec.get("max_peak_spacing", 3.0))
        plt.close("all")
        a, b = spec["reference_rows"]
        ref = np.zeros(shape, dtype=bool)
        ref[a:b] = True
        sm.get_strain(gvects=ref)
        plt.close("all")
    names = ("e_xx", "e_yy", "e_xy", "theta", "mask")
    out = {n: np.array(sm.get_slice(n).data, dtype=np.float64) for n in names}
    g1, g2 = np.asarray(sm.g1, float), np.asarray(sm.g2, float)
    cross = abs(g1[0] * g2[1] - g1[1] * g2[0]) / max(np.hypot(*g1) * np.hypot(*g2), 1e-12)
    info = {"g0": [float(x) for x in sm.g0], "g1": g1.tolist(), "g2": g2.tolist(),
            "basis_sin_angle": float(cross), "n_fit_ok": int(np.sum(sm.mask))}
    return out, info


def main(spec_path: str) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    t0 = time.perf_counter()
    import py4DSTEM

    import_s = time.perf_counter() - t0
    cache: dict[str, np.ndarray] = {}

    def load(path: str) -> np.ndarray:
        if path not in cache:
            cache[path] = np.load(path)
        return cache[path]
    meta = {"py4dstem_version": py4DSTEM.__version__, "numpy_version": np.__version__, "import_s": import_s,
            "runs": {}}
    arrays: dict[str, np.ndarray] = {}
    for run in spec["runs"]:
        name = run["name"]
        rec: dict = {"detect": run["detect"], "kernel": run.get("kernel", {})}
        try:
            data = load(run["data"])
            probe_image = load(run["probe"])
            subset = run.get("subset")
            sub = data if subset is None else data[subset[0]:subset[1], ::subset[2]]
            kernel, radius, origin = make_kernel(py4DSTEM, probe_image, run.get("kernel", {}))
            rec.update(probe_radius_px=radius, probe_origin_px=origin)
            det = dict(run["detect"])
            if run.get("warmup"):
                warm = py4DSTEM.DataCube(data=np.ascontiguousarray(sub[:2, :2]))
                warm.find_Bragg_disks(template=kernel, **det)
            dc = py4DSTEM.DataCube(data=np.ascontiguousarray(sub))
            dc.calibration.set_Q_pixel_size(spec["q_pixel_inv_A"])
            dc.calibration.set_Q_pixel_units("A^-1")
            c = time.process_time()
            t = time.perf_counter()
            bv = dc.find_Bragg_disks(template=kernel, **det)
            rec["detect_s"] = time.perf_counter() - t
            rec["detect_cpu_s"] = time.process_time() - c
            rec["n_patterns"] = int(sub.shape[0] * sub.shape[1])
            p = padded(bv, dc.Rshape)
            for k, v in p.items():
                arrays[f"{name}__{k}"] = v
            if run.get("strain"):
                t = time.perf_counter()
                s, info = run_strain(py4DSTEM, dc, bv, origin, run["strain"])
                rec["strain_s"] = time.perf_counter() - t
                rec["strain_info"] = info
                for k, v in s.items():
                    arrays[f"{name}__{k}"] = v
            rec["ok"] = True
        except Exception as exc:  # report and go on with the next run
            rec["ok"] = False
            rec["error"] = f"{type(exc).__name__}: {exc}"
            rec["traceback"] = traceback.format_exc()
        meta["runs"][name] = rec
        print(f"[py4dstem worker] {name}: " + (f"{rec['detect_s']:.2f} s" if rec.get("ok") else rec["error"]),
              file=sys.stderr, flush=True)
    np.savez(spec["out"], **arrays)
    with open(spec["out"] + ".json", "w") as f:
        json.dump(meta, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
