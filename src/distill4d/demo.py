"""``distill4d demo``: simulate a dataset with a known answer and run the analyses on it.

Everything runs through the same commands a user types, on data made here, and the
demo prints how close each result is to the ground truth.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

__all__ = ["run_demo"]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[ok].ravel(), b[ok].ravel())[0, 1])


def run_demo(out_dir: Path, *, force: bool = False, progress: bool = True) -> dict[str, float]:
    """Write ``out_dir``/scan.h5 (a simulated scan), run ``virtual`` and ``com`` on it, and
    write ``summary.json`` with the measured agreement with the ground truth."""
    from .cli import CLIError, main
    from .io import read_results, write
    from .simulate.phase_object import phase_object_scan

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = ["scan.h5", "virtual.h5", "virtual.png", "com.h5", "com.png", "summary.json"]
    existing = [f for f in files if (out_dir / f).exists()]
    if existing and not force:
        raise CLIError(f"{out_dir} already holds demo outputs ({', '.join(existing)}); pass --force to overwrite them")
    print("simulating a 64x64 scan of a weak phase object (300 kV, 20 mrad, 5e4 e-/pattern)...")
    sim = phase_object_scan(scan_shape=(64, 64), pattern_size=64, step_px=1, q_pixel_inv_A=0.04,
                            semiangle_mrad=20.0, energy_eV=300e3, dose_per_pattern=5e4, seed=0)
    scan = out_dir / "scan.h5"
    write(scan, sim.datacube, force=force)
    print(f"wrote {scan}: {sim.datacube}")
    common = ["--force"] if force else []
    if not progress:
        common.append("--no-progress")
    for argv in (["virtual", str(scan), "-o", str(out_dir / "virtual.h5")],
                 ["com", str(scan), "-o", str(out_dir / "com.h5")]):
        code = main(argv + common)
        if code != 0:
            raise CLIError(f"demo step 'distill4d {' '.join(argv)}' failed with exit code {code}")
    phase = np.asarray(read_results(out_dir / "com.h5")["idpc_phase"])
    summary = {
        "idpc_correlation_with_true_phase": _corr(phase, sim.phase_rad),
        "idpc_correlation_with_probe_smoothed_phase": _corr(phase, sim.smoothed_phase_rad),
        "idpc_rms_error_rad": float(np.sqrt(np.nanmean((phase - sim.smoothed_phase_rad
                                                         + sim.smoothed_phase_rad.mean()) ** 2))),
        "true_phase_rms_rad": float(sim.smoothed_phase_rad.std()),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\nagreement with the ground truth:")
    for k, v in summary.items():
        print(f"  {k:45s} {v:.4f}")
    if not math.isfinite(summary["idpc_correlation_with_true_phase"]):
        raise CLIError("the demo produced no finite phase")
    print(f"\nall outputs are in {out_dir}/")
    return summary
