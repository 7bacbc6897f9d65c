"""``distill4d simulate scan|library``: multislice data with ground truth (needs ``distill4d[sim]``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import Distill4dError
from ..results import command_line

__all__ = ["add_parser", "cmd_simulate_library", "cmd_simulate_scan"]


def _need_sim() -> None:
    try:
        import abtem  # noqa: F401
        import ase  # noqa: F401
    except ImportError as err:
        raise Distill4dError(f"simulation needs the sim extra ({err.name} is missing): pip install 'distill4d[sim]'") from None


def _ints(text: str, n: int, what: str) -> tuple[int, ...]:
    parts = text.replace("x", ",").split(",")
    try:
        vals = tuple(int(p) for p in parts)
    except ValueError:
        vals = ()
    if len(vals) != n:
        raise Distill4dError(f"{what} must be {n} whole numbers like {','.join(['1'] * n)}, got {text!r}")
    return vals


def cmd_simulate_scan(args: argparse.Namespace) -> int:
    _need_sim()
    from ..simulate.crystals import orient, prototype
    from ..simulate.multislice import CBEDSettings
    from ..simulate.scan import save_scan, scan_preset, simulate_scan

    out = Path(args.output)
    if out.exists() and not args.force:
        raise Distill4dError(f"{out} already exists; pass --force to overwrite it")
    atoms, info = orient(prototype(args.crystal), _ints(args.zone, 3, "--zone"))
    shape = (args.shape, args.shape)
    settings = CBEDSettings(
        energy_eV=args.energy_kV * 1e3,
        semiangle_mrad=args.semiangle_mrad,
        shape=shape,
        q_pixel_inv_A=args.q_pixel_inv_A,
        slice_thickness_A=args.slice_thickness_A,
    )
    fields = scan_preset(
        args.preset,
        _ints(args.scan, 2, "--scan"),
        strain=args.strain,
        layer_width=args.layer_width,
        rotation_deg=args.rotation_deg,
        tilt_mrad=tuple(args.tilt_mrad),
        thickness_A=args.thickness_A,
        vacuum_fraction=args.vacuum_fraction,
    )
    dc, truth = simulate_scan(
        atoms, fields, settings, scan_step_A=args.scan_step_A, dose_e=args.dose, plasmon_fraction=args.plasmon,
        seed=args.seed, device=args.device, scheduler=args.scheduler, n_workers=args.workers,
        progress=False if args.no_progress else None,
    )
    attrs = {"command": command_line(), "crystal": args.crystal, "zone_axis": list(info["zone_axis"]),
             "preset": args.preset}
    save_scan(out, dc, truth, force=args.force, attrs=attrs)
    print(f"wrote {out}: {dc.shape[0]}x{dc.shape[1]} patterns of {shape[0]}x{shape[1]} px, "
          f"{args.crystal} [{args.zone}], εxx {100 * np.nanmin(truth.eps_xx):+.2f} to {100 * np.nanmax(truth.eps_xx):+.2f} %, "
          f"θ up to {np.degrees(np.abs(truth.theta).max()):.2f}°; ground truth in /results")
    return 0


def cmd_simulate_library(args: argparse.Namespace) -> int:
    _need_sim()
    from ..simulate.library import LibraryConfig, build_library

    config = LibraryConfig.from_file(args.config)
    kwargs: dict[str, Any] = {"scheduler": args.scheduler, "device": args.device,
                              "progress": False if args.no_progress else None}
    if args.workers is not None:
        kwargs["n_workers"] = args.workers
    if args.max_shards is not None:
        kwargs["max_shards"] = args.max_shards
    summary = build_library(config, args.output, **kwargs)
    done = summary["shards_before"] + summary["shards_built"]
    state = "complete" if summary["complete"] else "partial: run the same command again to go on"
    print(f"{args.output}: {done}/{summary['shards_total']} shards ({state}); "
          f"built {summary['shards_built']} in {summary['wall_seconds']:.1f} s")
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def add_parser(sub: Any) -> None:
    """Add ``simulate scan`` and ``simulate library`` to the subcommands ``sub``."""
    p = sub.add_parser("simulate", help="multislice simulations with ground truth (needs distill4d[sim])")
    ssub = p.add_subparsers(dest="simulate_command", required=True, metavar="WHAT")

    s = ssub.add_parser("scan", help="a 4D-STEM scan of a crystal with a known strain field")
    s.add_argument("--preset", default="multilayer", choices=("uniform", "multilayer", "gradient", "rotation"),
                   help="strain field: uniform (εxx = --strain everywhere), multilayer (default: layers of "
                   "--layer-width rows, εxx alternating ±--strain), gradient (εxx from -strain to +strain along "
                   "x), rotation (a dislocation-like rotation of up to --rotation-deg, no strain)")
    s.add_argument("-o", "--output", required=True, help="output HDF5 file (DataCube + /results ground truth)")
    s.add_argument("--force", action="store_true", help="overwrite an existing output")
    s.add_argument("--crystal", default="Si", help="crystal prototype (default Si)")
    s.add_argument("--zone", default="0,1,1", help="zone axis u,v,w (default 0,1,1)")
    s.add_argument("--scan", default="32x32", help="scan size RXxRY (default 32x32)")
    s.add_argument("--scan-step-A", type=float, default=10.0, help="scan step in Å (default 10)")
    s.add_argument("--shape", type=int, default=128, help="detector pixels per side (default 128)")
    s.add_argument("--q-pixel-inv-A", type=float, default=0.025, help="detector pixel in 1/Å (default 0.025)")
    s.add_argument("--energy-kV", type=float, default=200.0, help="beam energy in kV (default 200)")
    s.add_argument("--semiangle-mrad", type=float, default=2.0,
                   help="probe convergence semiangle in mrad (default 2: separate disks)")
    s.add_argument("--thickness-A", type=float, default=200.0, help="sample thickness in Å (default 200)")
    s.add_argument("--slice-thickness-A", type=float, default=2.0,
                   help="multislice slice thickness in Å (default 2)")
    s.add_argument("--tilt-mrad", type=float, nargs=2, default=(0.0, 0.0), metavar=("TX", "TY"),
                   help="sample tilt in mrad along x and y, the same at every position (default 0 0)")
    s.add_argument("--strain", type=float, default=0.01, help="εxx amplitude (fraction; default 0.01)")
    s.add_argument("--layer-width", type=int, default=4, help="multilayer: scan rows per layer (default 4)")
    s.add_argument("--rotation-deg", type=float, default=1.0, help="rotation preset: peak rotation in degrees (default 1)")
    s.add_argument("--vacuum-fraction", type=float, default=0.0, help="fraction of the scan columns (the last ones) that are vacuum (default 0)")
    s.add_argument("--dose", type=float, help="electrons per pattern (Poisson noise); default noise-free")
    s.add_argument("--plasmon", type=float, default=0.0, help="plasmon background, fraction of the flux (default 0)")
    s.add_argument("--seed", type=int, default=0, help="noise seed; a seed gives the same scan every time (default 0)")
    s.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"),
                   help="auto (default): abTEM's GPU path when CuPy sees a GPU, else the CPU")
    s.add_argument("--scheduler", default="inline", choices=("inline", "processes"),
                   help="inline (default: one state after another) or processes (one state per core)")
    s.add_argument("--workers", type=int, help="processes: parallel workers (default: all cores)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown on a terminal)")
    s.set_defaults(func=cmd_simulate_scan)

    s = ssub.add_parser("library", help="a training library of patterns, probes, targets and peak lists")
    s.add_argument("--config", required=True, help="library configuration (.toml or .json; see LibraryConfig)")
    s.add_argument("-o", "--output", required=True, help="output folder (resumes when it holds the same library)")
    s.add_argument("--scheduler", default="processes",
                   help="processes (default), inline, or a Dask scheduler address tcp://host:port")
    s.add_argument("--workers", type=int, help="parallel workers (default: all cores)")
    s.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"),
                   help="auto (default): abTEM's GPU path when CuPy sees a GPU, else the CPU")
    s.add_argument("--max-shards", type=int, help="stop after this many new shards (rerun to go on)")
    s.add_argument("--summary", help="also write the build summary (JSON) here")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_simulate_library)
