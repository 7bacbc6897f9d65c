"""``distill4d ptycho``: ptychographic reconstruction of a scan (needs ``distill4d[ml]`` for PyTorch)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import Distill4dError
from ._common import (
    FILE_HELP,
    Outputs,
    add_calibration,
    add_output,
    command_line,
    input_label,
    open_input,
    parse_region,
    require_torch,
    wrote,
)

__all__ = ["add_parser", "cmd_ptycho", "ptycho_kwargs", "read_vacuum_probe"]


def read_vacuum_probe(path: str) -> np.ndarray:
    """A vacuum-probe pattern from a .npy file (2D, or a 3D stack that is averaged)."""
    p = Path(path)
    if not p.exists():
        raise Distill4dError(f"--probe file {p} does not exist")
    try:
        arr = np.load(p, allow_pickle=False)
    except ValueError as err:
        raise Distill4dError(f"--probe {p} is not a numeric .npy array ({err})") from None
    if arr.ndim == 3:
        arr = arr.mean(axis=0)
    if arr.ndim != 2:
        raise Distill4dError(f"--probe must hold a 2D pattern (Qx, Qy) or a stack (n, Qx, Qy), got shape {arr.shape}")
    return arr


def ptycho_kwargs(args: argparse.Namespace, scan_shape: tuple[int, int]) -> dict[str, Any]:
    """The ``reconstruct`` keyword arguments of the ptychography options."""
    kw: dict[str, Any] = dict(defocus_A=args.defocus_A, Cs_A=args.Cs_A, slices=args.slices,
                              slice_thickness_A=args.slice_thickness_A, modes=args.modes,
                              iterations=args.iterations, batch_size=args.batch_size, loss=args.loss,
                              refine_positions=args.refine_positions, device=args.device, seed=args.seed,
                              pattern_size=args.pattern_size,
                              progress=False if args.no_progress else None)
    if args.probe:
        kw["probe"] = read_vacuum_probe(args.probe)
    if args.region:
        kw["region"] = parse_region(args.region, "--region", scan_shape)
    if args.scan_rotation_deg is not None:
        kw["scan_rotation_rad"] = float(np.deg2rad(args.scan_rotation_deg))
        kw["scan_flip"] = bool(args.scan_flip)
    return kw


def cmd_ptycho(args: argparse.Namespace) -> int:
    require_torch("ptychography")
    from ..phase import reconstruct

    outs = Outputs(args)
    dc = open_input(args)
    kw = ptycho_kwargs(args, dc.scan_shape)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    outs.clear_stale()
    ckpt = outs.partial / "ptycho.pt"

    def report(it: int, err: float) -> None:
        if args.verbose:
            print(f"iteration {it + 1}: error {err:.5g}", file=sys.stderr)

    res = reconstruct(dc, checkpoint=ckpt, callback=report, **kw)
    res.provenance = res.provenance.replace(command=command_line(), inputs=(str(args.file),))
    res.to_results().to_h5(outs.h5, force=outs.force)
    if outs.png:
        from ..plot.ptycho import save_ptycho_png

        save_ptycho_png(outs.png, res, title=f"ptychography: {input_label(args)}", force=outs.force)
    outs.done()
    p = res.provenance.parameters
    print(f"ptychography: {res.scan_shape[0]} x {res.scan_shape[1]} positions, object {res.object_phase.shape[0]} x "
          f"{res.object_phase.shape[1]} px of {res.sampling_A[0]:.4g} Å, {p['slices']} slice(s), {p['modes']} mode(s); "
          f"error {res.errors[-1]:.4g} after {len(res.errors)} iterations, {p['seconds']:.1f} s on {p['device']}")
    wrote(outs)
    return 0


def add_ptycho_options(p: Any) -> None:
    """The options of the reconstruction (shared with the ``phase --train-on-ptycho`` pipeline)."""
    from ..phase.ptycho import DEFAULT_BATCH_SIZE, DEFAULT_ITERATIONS

    g = p.add_argument_group("ptychography")
    g.add_argument("--defocus-A", type=float, default=0.0, metavar="Å",
                   help="probe defocus in Å, positive = underfocus (C10 = -defocus; default 0)")
    g.add_argument("--Cs-A", type=float, default=0.0, metavar="Å", help="spherical aberration in Å (default 0)")
    g.add_argument("--slices", type=int, default=1, help="object slices (default 1; more: multislice)")
    g.add_argument("--slice-thickness-A", type=float, metavar="Å", help="distance between slices in Å")
    g.add_argument("--modes", type=int, default=1, help="incoherent probe modes (default 1)")
    g.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                   help=f"passes over all positions (default {DEFAULT_ITERATIONS})")
    g.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help=f"positions per optimiser step (default {DEFAULT_BATCH_SIZE})")
    g.add_argument("--loss", default="amplitude", choices=("amplitude", "poisson"),
                   help="amplitude (default) or poisson (counted low-dose data)")
    g.add_argument("--refine-positions", action="store_true", help="refine every probe position")
    g.add_argument("--probe", metavar="VACUUM.npy", help="vacuum-probe pattern (.npy, same detector as the scan)")
    g.add_argument("--pattern-size", type=int, metavar="N",
                   help="crop the patterns to N x N around the origin (default: the largest even square)")
    g.add_argument("--scan-rotation-deg", type=float, metavar="DEG",
                   help="scan-to-detector rotation in degrees (default: the calibration's, else estimated)")
    g.add_argument("--scan-flip", action="store_true", help="with --scan-rotation-deg: the axes are transposed")
    g.add_argument("--device", default="auto", help="auto (default: the GPU if there is one), cpu or cuda")
    g.add_argument("--seed", type=int, default=0, help="seed of the mini-batch order (default 0)")
    g.add_argument("--threads", type=int, help="PyTorch CPU threads")


def add_parser(sub: Any) -> None:
    """Add ``ptycho`` to the subcommands ``sub``."""
    p = sub.add_parser("ptycho", help="ptychography: object phase (rad), amplitude and probe from the scan")
    p.add_argument("file", metavar="FILE", help=FILE_HELP)
    p.add_argument("--region", metavar="x0:x1,y0:y1", help="reconstruct only these scan positions")
    add_ptycho_options(p)
    p.add_argument("--verbose", action="store_true", help="print the error of every iteration")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_output(p)
    add_calibration(p)
    p.set_defaults(func=cmd_ptycho)
