"""Multislice simulation cost: patterns per second, and the cost of a training library.

1. One 256x256 CBED pattern of Si [011] at 200 kV, 2 mrad, 400 Å (40 nm) thick, 0.02 1/Å per
   pixel (``simulate_cbed``; one propagation, best and median of ``--repeats``), and the same
   propagation keeping 5 thicknesses (patterns per second of a thickness series).
2. A library (``build_library``, the default LibraryConfig except ``n_samples``: 128x128
   patterns, 20 crystal prototypes, zone axes up to index 1, 20-600 Å, 3 thicknesses per
   simulation) built with all cores; the measured entries per second give the time for a
   10,000-pattern library (an extrapolation, said so in the table).

Run: ``python benchmarks/simulation_throughput.py [--device gpu] [--samples 24]``. Writes the
``simulation`` section of benchmarks/RESULTS.md (``--no-write``: print only).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine_line, write_section  # noqa: E402


def single_pattern(device: str, repeats: int) -> dict:
    from distill4d.simulate.crystals import orient, prototype
    from distill4d.simulate.multislice import CBEDSettings, simulate_cbed

    atoms, _ = orient(prototype("Si"), (0, 1, 1))
    out = {}
    for label, thick in (("one thickness", (400.0,)), ("5 thicknesses", (80.0, 160.0, 240.0, 320.0, 400.0))):
        s = CBEDSettings(energy_eV=200e3, semiangle_mrad=2.0, shape=(256, 256), q_pixel_inv_A=0.02, thicknesses_A=thick)
        simulate_cbed(atoms, s, device=device)  # warm-up: imports, FFTW plans, numba
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            r = simulate_cbed(atoms, s, device=device)
            times.append(time.perf_counter() - t0)
        out[label] = {
            "seconds_best": min(times),
            "seconds_median": statistics.median(times),
            "patterns": len(r.thicknesses_A),
            "gpts": r.info["gpts"],
            "n_slices": r.info["n_slices"],
        }
    return out


def library(samples: int, device: str, workers: int | None) -> dict:
    from distill4d.simulate.library import Library, LibraryConfig, build_library

    config = LibraryConfig(n_samples=samples, shard_size=2, seed=123)
    tmp = Path(tempfile.mkdtemp(prefix="d4d_lib_"))
    try:
        summary = build_library(config, tmp / "lib", scheduler="processes", n_workers=workers, device=device,
                                progress=False)
        lib = Library(tmp / "lib")
        n = len(lib)
        per_entry = [float(s) for s in lib.metadata(("seconds",))["seconds"]]
        size = sum(p.stat().st_size for p in (tmp / "lib").glob("*.h5"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    wall = summary["wall_seconds"]
    return {
        "samples": samples,
        "entries": n,
        "wall_seconds": wall,
        "entries_per_second": n / wall,
        "bytes_per_entry": size / n,
        "median_simulation_seconds": statistics.median(per_entry),
        "hours_for_10000": 10000 / (n / wall) / 3600,
        "gb_for_10000": 10000 * size / n / 1e9,
        "config": config.to_dict(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--samples", type=int, default=24, help="library simulations to time")
    ap.add_argument("--workers", type=int, help="library workers (default: all cores)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    single = single_pattern(args.device, args.repeats)
    lib = library(args.samples, args.device, args.workers)
    print(json.dumps({"single": single, "library": lib}, indent=2, default=str))
    if args.no_write:
        return
    one, five = single["one thickness"], single["5 thicknesses"]
    lines = [
        f"## Multislice simulation cost ({args.device.upper()})",
        "",
        machine_line(),
        "- Command: `python benchmarks/simulation_throughput.py"
        + (f" --device {args.device}" if args.device != "cpu" else "") + f" --samples {args.samples}`",
        "",
        "| what | measured |",
        "|---|---|",
        f"| Si [011], 256x256 px at 0.02 1/Å, 200 kV, 2 mrad, 40 nm ({one['n_slices']} slices, grid "
        f"{one['gpts'][0]}x{one['gpts'][1]}) | {one['seconds_best']:.2f} s best, {one['seconds_median']:.2f} s median "
        f"= {1 / one['seconds_median']:.2f} patterns/s |",
        f"| same propagation, 5 thicknesses 8-40 nm kept | {five['seconds_median']:.2f} s median = "
        f"{five['patterns'] / five['seconds_median']:.2f} patterns/s |",
        f"| library: {lib['samples']} simulations, {lib['entries']} entries (128x128, 20 prototypes, 20-600 Å, "
        f"3 thicknesses each), all cores | {lib['wall_seconds']:.0f} s wall = {lib['entries_per_second']:.2f} entries/s; "
        f"median {lib['median_simulation_seconds']:.2f} s per simulation; {lib['bytes_per_entry'] / 1e3:.0f} kB per entry |",
        f"| 10,000-entry library at that rate (extrapolated) | {lib['hours_for_10000']:.1f} h, "
        f"{lib['gb_for_10000']:.2f} GB |",
        "",
        "Cost per simulation grows with the supercell (≥ 1 / pixel size wide) times the real-space "
        "sampling (the detector's largest angle) and with the thickness; one propagation gives a "
        "whole thickness series.",
    ]
    write_section("simulation", "\n".join(lines))


if __name__ == "__main__":
    main()
