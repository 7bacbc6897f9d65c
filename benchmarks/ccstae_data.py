#!/usr/bin/env python3
"""The simulated scan of the CC-ST-AE benchmark: a Si [011] crystal with known strain and rotation
fields and a vacuum region (abTEM multislice, noise-free), cached in ``benchmarks/data/ccstae/``.

Fields on a ``--scan`` grid (default 32x32; rows = Rx, columns = Ry):
- rows ``0 .. REF_ROWS-1``: the unstrained reference (F = I);
- below: ``eps_xx`` a linear gradient from -1 % to +1 % along Rx; ``eps_yy`` a Gaussian bump of
  -0.6 % (sigma 5 positions); ``eps_xy`` = 0.4 % sin(pi y / Ry_sample); ``theta`` a
  dislocation-like rotation field (1 degree, core 3 positions);
- the last ``VACUUM_COLS`` columns: vacuum (the vacuum probe).

Doses and the plasmon background are added by ``ccstae_benchmark.py`` (so one simulation serves
every dose). Usage: ``.venv/bin/python benchmarks/ccstae_data.py [--scan 32 32]``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = HERE / "data" / "ccstae"
REF_ROWS = 6
VACUUM_FRACTION = 0.25
THICKNESS_A = 200.0
STRAIN_STEP = 2.5e-3  # simulated-state rounding; the warp carries the rest exactly


def make_fields(scan: tuple[int, int]):
    """The :class:`~distill4d.simulate.scan.ScanFields` described in the module doc."""
    from distill4d.simulate.scan import ScanFields

    rx, ry = scan
    x = np.arange(rx)[:, None] * np.ones((1, ry))
    y = np.ones((rx, 1)) * np.arange(ry)[None, :]
    n_vac = round(VACUUM_FRACTION * ry)
    ry_s = ry - n_vac
    sample = x >= REF_ROWS
    xs = np.clip((x - REF_ROWS) / max(rx - 1 - REF_ROWS, 1), 0.0, 1.0)
    exx = np.where(sample, 0.01 * (2 * xs - 1), 0.0)
    cx, cy = REF_ROWS + 0.55 * (rx - REF_ROWS), 0.4 * ry_s
    eyy = np.where(sample, -0.006 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 5.0**2)), 0.0)
    exy = np.where(sample, 0.004 * np.sin(math.pi * y / max(ry_s - 1, 1)), 0.0)
    X, Y = x - (REF_ROWS + 0.5 * (rx - REF_ROWS)), y - 0.6 * ry_s
    r0 = 3.0
    theta = np.where(sample, math.radians(1.0) * 2 * r0 * X / (X**2 + Y**2 + r0**2), 0.0)
    U = np.zeros((rx, ry, 2, 2))
    U[..., 0, 0] = 1 + exx
    U[..., 1, 1] = 1 + eyy
    U[..., 0, 1] = U[..., 1, 0] = exy
    c, s = np.cos(theta), np.sin(theta)
    R = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)
    vacuum = np.zeros((rx, ry), dtype=bool)
    vacuum[:, ry - n_vac :] = True
    return ScanFields(F=R @ U, tilt_mrad=np.zeros((rx, ry, 2)), thickness_A=np.full((rx, ry), THICKNESS_A),
                      vacuum=vacuum)


def scan_path(scan: tuple[int, int]) -> Path:
    return CACHE / f"si011_{scan[0]}x{scan[1]}_128x128.h5"


def load_or_simulate(scan: tuple[int, int], resimulate: bool = False):
    """(DataCube (noise-free), truth, vacuum probe, seconds simulating or 0 when cached)."""
    from distill4d.simulate.crystals import orient, prototype
    from distill4d.simulate.kinematic import DEFAULT_CALIBRATION
    from distill4d.simulate.multislice import CBEDSettings, vacuum_probe_pattern
    from distill4d.simulate.scan import load_scan, save_scan, simulate_scan

    cal = DEFAULT_CALIBRATION
    settings = CBEDSettings(energy_eV=cal.energy_eV, semiangle_mrad=cal.semiangle_mrad, shape=(128, 128),
                            q_pixel_inv_A=cal.q_pixel_inv_A)
    path = scan_path(scan)
    probe_path = path.with_name(path.stem + "_probe.npy")
    if path.exists() and probe_path.exists() and not resimulate:
        dc, truth = load_scan(path)
        return dc, truth, np.load(probe_path), 0.0
    t = time.perf_counter()
    atoms, _ = orient(prototype("Si"), (0, 1, 1))
    dc, truth = simulate_scan(atoms, make_fields(scan), settings, strain_step=STRAIN_STEP)
    probe = vacuum_probe_pattern(settings)
    seconds = time.perf_counter() - t
    CACHE.mkdir(parents=True, exist_ok=True)
    save_scan(path, dc, truth, force=True)
    np.save(probe_path, probe)
    return dc, truth, probe, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scan", type=int, nargs=2, default=(32, 32))
    ap.add_argument("--resimulate", action="store_true")
    a = ap.parse_args()
    dc, _, _, seconds = load_or_simulate(tuple(a.scan), a.resimulate)
    print(f"{scan_path(tuple(a.scan))}: {dc.shape}, simulated in {seconds:.0f} s")


if __name__ == "__main__":
    main()
