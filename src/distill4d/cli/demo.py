"""``distill4d demo``: simulate a dataset with a known answer and run the analyses on it.

Everything runs through the same commands a user types, on data made here, and the
demo prints how close each result is to the ground truth.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import Distill4dError

__all__ = ["add_parser", "cmd_demo", "demo_inputs", "run_demo"]

#: The ``distill4d`` entry point: arguments -> exit code (:func:`distill4d.cli.main`).
Main = Callable[[Sequence[str]], int]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[ok].ravel(), b[ok].ravel())[0, 1])


def _phase_object_input(out_dir: Path, force: bool) -> Any:
    """``scan.h5``: a 64x64 scan of a weak phase object; returns the simulation (with its truth)."""
    from ..io import write
    from ..simulate.phase_object import phase_object_scan

    sim = phase_object_scan(scan_shape=(64, 64), pattern_size=64, step_px=1, q_pixel_inv_A=0.04,
                            semiangle_mrad=20.0, energy_eV=300e3, dose_per_pattern=5e4, seed=0)
    write(out_dir / "scan.h5", sim.datacube, force=force)
    return sim


def _multilayer_input(out_dir: Path, force: bool) -> Any:
    """``multilayer.h5`` (24x24, 6-row layers at eps_xx +1 % / -1 %) and its vacuum ``probe.npy``;
    returns the ground truth."""
    from ..io import write
    from ..simulate.kinematic import strained_scan, vacuum_probe

    dc, truth = strained_scan((24, 24), (128, 128), kind="multilayer", strain=0.01, layer_width=6,
                              dose=1e4, seed=1)
    write(out_dir / "multilayer.h5", dc, force=force)
    np.save(out_dir / "probe.npy", vacuum_probe((128, 128), calibration=dc.calibration))
    return truth


def demo_inputs(out_dir: str | Path, force: bool = False) -> list[Path]:
    """Write only the demo's input files (``scan.h5``, ``multilayer.h5``, ``probe.npy``) to
    ``out_dir``, without running the analyses (e.g. to try the README's Python tour)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _phase_object_input(out_dir, force)
    _multilayer_input(out_dir, force)
    return [out_dir / f for f in ("scan.h5", "multilayer.h5", "probe.npy")]


def _strain_demo(out_dir: Path, force: bool, common: list[str], main: Main) -> dict[str, float]:
    """A multilayer whose layers differ by 2 % in eps_xx, referenced to its first layer: disks ->
    lattice -> strain, against the truth. The map reads 0 % in the layers like the first and
    -1.98 % (0.99 / 1.01 - 1) in the others."""
    from ..lattice import StrainMap

    print("\nsimulating a 24x24 scan of a Si-like multilayer, 6-row layers whose eps_xx differ by 2 % "
          "(1e4 e-/pattern);\nstrain referenced to the first layer: expect 0 % and -1.98 % stripes...")
    truth = _multilayer_input(out_dir, force)
    scan, probe = out_dir / "multilayer.h5", out_dir / "probe.npy"
    argv = ["strain", str(scan), "--probe", str(probe), "--reference", "0:6,0:24", "-o", str(out_dir / "strain.h5")]
    if main(argv + common) != 0:
        raise Distill4dError(f"demo step 'distill4d {' '.join(argv)}' failed")
    smap = StrainMap.from_hdf5(out_dir / "strain.h5")
    expected = (1 + truth.eps_xx) / (1 + truth.eps_xx[0, 0]) - 1  # relative to the reference layer
    err = smap.eps_xx - expected
    other = expected < -0.01  # the layers unlike the reference layer
    return {
        "strain_eps_xx_other_layers_expected_percent": float(100 * np.median(expected[other])),
        "strain_eps_xx_other_layers_median_percent": float(100 * np.nanmedian(smap.eps_xx[other])),
        "strain_eps_xx_rms_error_percent": float(100 * np.sqrt(np.nanmean(err**2))),
        "strain_eps_yy_rms_percent": float(100 * np.sqrt(np.nanmean(smap.eps_yy**2))),
        "strain_positions_fitted_fraction": float(np.mean(~smap.mask)),
    }


def run_demo(out_dir: Path, *, main: Main, force: bool = False, progress: bool = True) -> dict[str, float]:
    """Simulate two scans with known answers and analyse them with the ``distill4d`` commands.

    A weak phase object (``scan.h5``) goes through ``virtual`` and ``com`` (iDPC); a strained
    multilayer (``multilayer.h5``) through ``strain``. ``summary.json`` holds the measured
    agreement with the ground truth. ``main`` runs each step: :func:`distill4d.cli.main`.
    """
    from ..io import read_results

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = ["scan.h5", "virtual.h5", "virtual.png", "com.h5", "com.png", "multilayer.h5", "probe.npy",
             "strain.h5", "strain.png", "summary.json"]
    existing = [f for f in files if (out_dir / f).exists()]
    if existing and not force:
        raise Distill4dError(f"{out_dir} already holds demo outputs ({', '.join(existing)}); pass --force to overwrite them")
    print("simulating a 64x64 scan of a weak phase object (300 kV, 20 mrad, 5e4 e-/pattern)...")
    sim = _phase_object_input(out_dir, force)
    scan = out_dir / "scan.h5"
    print(f"wrote {scan}: {sim.datacube}")
    common = ["--force"] if force else []
    if not progress:
        common.append("--no-progress")
    for argv in (["virtual", str(scan), "-o", str(out_dir / "virtual.h5")],
                 ["com", str(scan), "-o", str(out_dir / "com.h5")]):
        code = main(argv + common)
        if code != 0:
            raise Distill4dError(f"demo step 'distill4d {' '.join(argv)}' failed with exit code {code}")
    phase = np.asarray(read_results(out_dir / "com.h5")["idpc_phase"])
    summary = {
        "idpc_correlation_with_true_phase": _corr(phase, sim.phase_rad),
        "idpc_correlation_with_probe_smoothed_phase": _corr(phase, sim.smoothed_phase_rad),
        "idpc_rms_error_rad": float(np.sqrt(np.nanmean((phase - sim.smoothed_phase_rad
                                                         + sim.smoothed_phase_rad.mean()) ** 2))),
        "true_phase_rms_rad": float(sim.smoothed_phase_rad.std()),
    }
    summary.update(_strain_demo(out_dir, force, common, main))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\nagreement with the ground truth:")
    for k, v in summary.items():
        print(f"  {k:45s} {v:.4f}")
    if not math.isfinite(summary["idpc_correlation_with_true_phase"]):
        raise Distill4dError("the demo produced no finite phase")
    print(f"\nall outputs are in {out_dir}/")
    return summary


def cmd_demo(args: argparse.Namespace) -> int:
    run_demo(Path(args.output), main=args.main, force=args.force, progress=not args.no_progress)
    return 0


def add_parser(sub: Any, main: Main) -> None:
    """Add ``demo`` to the subcommands ``sub``; its steps run through ``main``."""
    p = sub.add_parser("demo", help="simulate a dataset and run the analyses on it")
    p.add_argument("-o", "--output", default="distill4d_demo", help="output directory (default distill4d_demo)")
    p.add_argument("--force", action="store_true", help="overwrite files of an earlier demo")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (default: shown on a terminal)")
    p.set_defaults(func=cmd_demo, main=main)
