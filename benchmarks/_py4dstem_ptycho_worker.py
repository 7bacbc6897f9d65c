#!/usr/bin/env python3
"""py4DSTEM side of ``ptycho_benchmark.py``: iterative ptychography with py4DSTEM 0.14.

Runs with the py4DSTEM virtualenv's python (benchmarks/envs/py4dstem, NumPy 1.26), so it
imports neither distill4d nor anything from the project's .venv. It is driven by a JSON spec
written by the parent script::

    {"out": "benchmarks/data/ptycho/<job>.npz",
     "runs": [{"name": "...",
               "data": ".../<scan>.npy",          # (Rx, Ry, Qx, Qy) counts or fractions
               "kind": "singleslice" | "multislice" | "mixedstate",
               "energy_eV": 80e3, "semiangle_mrad": 25.0, "defocus_A": 0.0,
               "scan_step_A": 0.25, "q_pixel_inv_A": 0.0748,
               "num_slices": 8, "slice_thickness_A": 15.1,   # multislice only
               "num_probes": 3,                               # mixedstate only
               "init": {constructor keyword arguments},
               "preprocess": {preprocess keyword arguments},
               "reconstruct": {reconstruct keyword arguments (num_iter, max_batch_size, ...)}}]}

For every run it writes into ``out`` (one .npz): ``<name>__phase`` (the object phase in radians
summed over slices, (Px, Py), at every iteration: (K, Px, Py) float32), ``__amplitude`` (the
final object amplitude, product over slices), ``__positions_A`` (final probe positions in Å in
the object frame, (N, 2), row-major over the scan) and ``__positions_initial_A``. Timings and
the error curve go to ``<out>.json``: ``setup_s`` / ``setup_cpu_s`` (constructor + preprocess),
``iter_s`` / ``iter_cpu_s`` (cumulative wall and process CPU time at the end of each iteration,
from the start of ``reconstruct``), ``errors`` (py4DSTEM's normalised error per iteration),
``sampling_A`` and the versions.

The object phase: ``angle(object)`` per slice (``object_type="complex"``) or the potential
times the interaction parameter (``"potential"``: py4DSTEM stores the phase shift directly),
summed over slices.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
import warnings

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402

CLASSES = {"singleslice": "SingleslicePtychography", "multislice": "MultislicePtychography",
           "mixedstate": "MixedstatePtychography"}


def object_phase(obj: np.ndarray, object_type: str) -> np.ndarray:
    """Phase in radians, summed over slices when ``obj`` has a slice axis."""
    phase = np.angle(obj) if object_type == "complex" else np.real(obj)
    return phase.sum(0) if phase.ndim == 3 else phase


def object_amplitude(obj: np.ndarray, object_type: str) -> np.ndarray:
    amp = np.abs(obj) if object_type == "complex" else np.ones(obj.shape)
    return amp.prod(0) if amp.ndim == 3 else amp


def run_one(py4DSTEM, run: dict) -> tuple[dict, dict]:
    from py4DSTEM.process import phase as p4phase

    data = np.load(run["data"]).astype(np.float32)
    dc = py4DSTEM.DataCube(data=data)
    dc.calibration.set_R_pixel_size(run["scan_step_A"])
    dc.calibration.set_R_pixel_units("A")
    dc.calibration.set_Q_pixel_size(run["q_pixel_inv_A"])
    dc.calibration.set_Q_pixel_units("A^-1")
    kind = run["kind"]
    kw = {"energy": run["energy_eV"], "datacube": dc, "semiangle_cutoff": run["semiangle_mrad"],
          "defocus": run.get("defocus_A", 0.0), "device": "cpu", "verbose": False, **run.get("init", {})}
    if kind == "multislice":
        kw.update(num_slices=run["num_slices"], slice_thicknesses=run["slice_thickness_A"])
    if kind == "mixedstate":
        kw.update(num_probes=run["num_probes"])
    object_type = kw.get("object_type", "complex")
    cls = getattr(p4phase, CLASSES[kind])
    pre = {"plot_center_of_mass": False, "plot_rotation": False, "plot_probe_overlaps": False,
           "force_com_rotation": 0.0, "force_com_transpose": False, **run.get("preprocess", {})}

    c0, t0 = time.process_time(), time.perf_counter()
    ptycho = cls(**kw).preprocess(**pre)
    setup_s, setup_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    sampling = [float(s) for s in ptycho.sampling]
    positions_initial = np.asarray(ptycho._positions_px_initial, dtype=np.float64) * np.asarray(sampling)

    # time every iteration: py4DSTEM applies its constraints once at the end of each iteration
    marks: list[tuple[float, float]] = []
    constraints = ptycho._constraints

    def timed_constraints(*args, **kwargs):
        out = constraints(*args, **kwargs)
        marks.append((time.perf_counter(), time.process_time()))
        return out

    ptycho._constraints = timed_constraints
    rec_kw = {"progress_bar": False, "store_iterations": True, "reset": True, **run.get("reconstruct", {})}
    c0, t0 = time.process_time(), time.perf_counter()
    ptycho.reconstruct(**rec_kw)
    total_s, total_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    # the stored iterates' phases (iteration k: after k + 1 passes)
    phases = np.stack([object_phase(np.asarray(o), object_type) for o in ptycho.object_iterations]).astype(np.float32)
    arrays = {"phase": phases, "amplitude": object_amplitude(np.asarray(ptycho.object), object_type).astype(np.float32),
              "positions_A": np.asarray(ptycho.positions, dtype=np.float64),
              "positions_initial_A": positions_initial}
    rec = {"setup_s": setup_s, "setup_cpu_s": setup_cpu_s, "reconstruct_s": total_s, "reconstruct_cpu_s": total_cpu_s,
           "iter_s": [m[0] - t0 for m in marks], "iter_cpu_s": [m[1] - c0 for m in marks],
           "errors": [float(e) for e in ptycho.error_iterations], "sampling_A": sampling,
           "object_shape": list(phases.shape[1:]), "object_type": object_type, "class": CLASSES[kind],
           "constructor": {k: v for k, v in kw.items() if k != "datacube"}, "preprocess": pre, "reconstruct": rec_kw,
           "n_patterns": int(data.shape[0] * data.shape[1])}
    return arrays, rec


def main(spec_path: str) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    t0 = time.perf_counter()
    import py4DSTEM

    meta = {"py4dstem_version": py4DSTEM.__version__, "numpy_version": np.__version__,
            "import_s": time.perf_counter() - t0, "runs": {}}
    arrays: dict[str, np.ndarray] = {}
    for run in spec["runs"]:
        name = run["name"]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arr, rec = run_one(py4DSTEM, run)
            arrays.update({f"{name}__{k}": v for k, v in arr.items()})
            rec["ok"] = True
        except Exception as exc:  # report and go on with the next run
            rec = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        meta["runs"][name] = rec
        print(f"[py4dstem worker] {name}: "
              + (f"setup {rec['setup_s']:.1f} s, {len(rec['errors'])} iterations {rec['reconstruct_s']:.1f} s "
                 f"(cpu {rec['reconstruct_cpu_s']:.1f} s), error {rec['errors'][-1]:.4g}" if rec["ok"] else rec["error"]),
              file=sys.stderr, flush=True)
    np.savez(spec["out"], **arrays)
    with open(spec["out"] + ".json", "w") as f:
        json.dump(meta, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
