"""What the commands share: options, outputs, region parsing, the command line, error reporting.

The command modules (:mod:`.imaging`, :mod:`.strain`, :mod:`.phase`, :mod:`.train`,
:mod:`.simulate`, :mod:`.demo`) import only this module; :mod:`distill4d.cli` assembles them.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

from ..errors import Distill4dError
from ..results import command_line

__all__ = [
    "FILE_HELP",
    "Outputs",
    "add_calibration",
    "add_engine",
    "add_input_options",
    "add_output",
    "add_ptycho_options",
    "calibration_kwargs",
    "check_counts",
    "command_line",
    "engine_kwargs",
    "input_label",
    "open_input",
    "parse_region",
    "ptycho_kwargs",
    "read_vacuum_probe",
    "require_torch",
    "run_command",
    "warn_nonfinite",
    "wrote",
]


# ---------------------------------------------------------------------- shared options
#: What the positional FILE of the commands that read data accepts.
FILE_HELP = ("the 4D-STEM data: HDF5 / EMD (.h5 .hdf5 .emd .hspy: distill4d, py4DSTEM, Prismatic, HyperSpy, "
             "Dectris ARINA/EIGER *_master.h5; choose a dataset inside as FILE.h5:/path/to/data or with "
             "--dataset), .npy, Merlin .mib, ASTAR .blo, Gatan .dm3/.dm4, EMPAD .xml (beside its .raw), "
             "TVIPS .tvips, .mrc, .ser, .prz")


def add_calibration(p: argparse.ArgumentParser) -> None:
    """Options that override the calibration of the input file (see :func:`calibration_kwargs`)."""
    g = p.add_argument_group("calibration (overrides what the file says)")
    g.add_argument("--scan-step-A", type=float, metavar="Å", help="real-space scan step in Å")
    g.add_argument("--q-pixel-inv-A", type=float, metavar="1/Å", help="detector pixel size in 1/Å")
    g.add_argument("--energy-kV", type=float, metavar="kV", help="beam energy in kV (e.g. 300)")
    g.add_argument("--semiangle-mrad", type=float, metavar="mrad", help="probe convergence semiangle in mrad")
    g.add_argument("--origin-px", type=float, nargs=2, metavar=("QX", "QY"), help="diffraction origin in pixels")
    add_input_options(g)


def add_input_options(p: Any) -> None:
    """``--dataset`` and ``--scan-shape``: which data of the file to read, and its scan (a parser or group)."""
    p.add_argument("--dataset", metavar="PATH", help="dataset path inside an HDF5 file (default: the only 4D "
                   "dataset; the candidates are listed when there are several); or use FILE.h5:/path")
    p.add_argument("--scan-shape", type=int, nargs=2, metavar=("RX", "RY"),
                   help="scan shape of a stack of patterns (N, Qx, Qy), e.g. the frames of an ARINA file")


def add_engine(p: argparse.ArgumentParser) -> None:
    """Options of the engine: scheduler, workers, memory budget, progress (see :func:`engine_kwargs`)."""
    g = p.add_argument_group("execution")
    g.add_argument("--scheduler", default="threads",
                   help="threads (default), inline, processes, or a Dask scheduler address tcp://host:port")
    g.add_argument("--workers", type=int, help="parallel workers for threads/processes (default: all cores)")
    g.add_argument("--memory-budget-MB", type=float, help="working memory to stay within, in MB (default 1024)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_output(p: argparse.ArgumentParser, default_png: bool = True) -> None:
    """``-o/--output``, ``--png``, ``--no-png`` and ``--force`` (see :class:`Outputs`)."""
    p.add_argument("-o", "--output", required=True, help="output HDF5 file")
    p.add_argument("--png", "--plot", dest="png", help="also save a figure here (default: OUTPUT with .png)" if default_png else "figure")
    p.add_argument("--no-png", action="store_true", help="do not save a figure")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs (and a stale .partial/)")


def calibration_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The calibration options (and ``--scan-shape``) given on the command line, as keyword arguments of
    :func:`distill4d.io.read`."""
    out: dict[str, Any] = {}
    if getattr(args, "scan_shape", None) is not None:
        out["scan_shape"] = tuple(args.scan_shape)
    if args.scan_step_A is not None:
        out["scan_step_A"] = args.scan_step_A
    if args.q_pixel_inv_A is not None:
        out["q_pixel_inv_A"] = args.q_pixel_inv_A
    if args.energy_kV is not None:
        out["energy_eV"] = args.energy_kV * 1e3
    if args.semiangle_mrad is not None:
        out["semiangle_mrad"] = args.semiangle_mrad
    if args.origin_px is not None:
        out["origin_px"] = tuple(args.origin_px)
    return out


def check_counts(args: argparse.Namespace) -> None:
    """Refuse bad ``--workers``, ``--threads``, ``--loader-workers`` and ``--memory-budget-MB`` values
    (whichever the command has) before any work starts: Distill4dError naming the flag."""
    for flag, minimum in (("workers", 1), ("threads", 1), ("loader_workers", 0)):
        value = getattr(args, flag, None)
        if value is not None and value < minimum:
            what = "0 (load in the main process) or more" if minimum == 0 else f"at least {minimum}"
            raise Distill4dError(f"--{flag.replace('_', '-')} must be {what}, got {value}")
    budget = getattr(args, "memory_budget_MB", None)
    if budget is not None and not (math.isfinite(budget) and budget >= 1):
        raise Distill4dError(f"--memory-budget-MB must be at least 1, got {budget}")


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The execution options as keyword arguments of the engine (``scheduler``, ``n_workers``, ...)."""
    out: dict[str, Any] = {"scheduler": args.scheduler, "progress": False if args.no_progress else None}
    if args.workers is not None:
        out["n_workers"] = args.workers
    if args.memory_budget_MB is not None:
        out["memory_budget"] = int(args.memory_budget_MB * 2**20)
    return out


def input_label(args: argparse.Namespace) -> str:
    """The input as a figure title names it: the file's name, and the dataset inside it when one is named
    (``scan.h5:/entry/data`` for ``FILE:/entry/data`` or ``--dataset /entry/data``)."""
    from ..io import split_dataset_path

    file, inline = split_dataset_path(args.file)
    dataset = inline or getattr(args, "dataset", None)
    name = Path(file).name
    return f"{name}:{dataset}" if dataset else name


def open_input(args: argparse.Namespace):
    """The DataCube of ``args.file`` (``--dataset``, ``--scan-shape`` and the calibration options applied)."""
    from ..io import read

    return read(args.file, dataset=args.dataset, **calibration_kwargs(args))


class Outputs:
    """Checks outputs up front, and owns the resumable ``OUTPUT.partial/`` checkpoint."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.h5 = Path(args.output)
        self.png = None if args.no_png else Path(args.png) if args.png else self.h5.with_suffix(".png")
        self.force = args.force
        for p in (self.h5, self.png):
            if p is not None and p.exists() and not self.force:
                raise Distill4dError(f"{p} exists; pass --force to overwrite it")
        from ..io import split_dataset_path

        if Path(split_dataset_path(args.file)[0]).resolve() == self.h5.resolve():
            raise Distill4dError(f"the output {self.h5} is the input file; choose another output")
        self.partial = self.h5.with_name(self.h5.name + ".partial")

    def checkpoint(self, step: str) -> Any:
        """The checkpoint of ``step``; it stays until :meth:`done`, so that a failure after the step resumes too."""
        from ..engine import KeepCheckpoint

        return KeepCheckpoint(self.partial / step)

    def clear_stale(self) -> None:
        if self.force and self.partial.exists():
            shutil.rmtree(self.partial)

    def done(self) -> None:
        if self.partial.exists():
            shutil.rmtree(self.partial)


def wrote(outs: Outputs) -> None:
    """Print which files a command wrote."""
    print(f"wrote {outs.h5}" + (f" and {outs.png}" if outs.png else ""))


def warn_nonfinite(images: dict[str, Any]) -> None:
    """Warn (on stderr) about NaN/Inf pixels of each result image."""
    import numpy as np

    for name, img in images.items():
        bad = int(np.size(img) - np.isfinite(img).sum())
        if bad:
            print(f"distill4d: warning: {name} is undefined (NaN/Inf) at {bad} scan positions "
                  "(patterns with NaN/Inf values or no intensity)", file=sys.stderr)


def parse_region(text: str | None, option: str = "--reference",
                 scan_shape: tuple[int, int] | None = None) -> tuple[slice, slice] | None:
    """``"x0:x1,y0:y1"`` (scan positions) -> slices; None -> None.

    With ``scan_shape``, the region is also checked against the scan (before any pattern is
    read): a region partly outside is clipped with a warning, one wholly outside is refused.
    """
    if text is None:
        return None
    try:
        parts = [p.split(":") for p in text.split(",")]
        (a, b), (c, d) = parts
        region = slice(int(a), int(b)), slice(int(c), int(d))
    except ValueError:
        raise Distill4dError(f"{option} must look like x0:x1,y0:y1 (scan positions), got {text!r}") from None
    if scan_shape is None:
        return region
    from .._region import reference_region  # not distill4d.lattice: it imports SciPy

    return reference_region(region, scan_shape, option)


def require_torch(what: str) -> None:
    """A :class:`Distill4dError` saying that ``what`` needs PyTorch, unless it is installed."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise Distill4dError(f"{what} needs PyTorch: pip install 'distill4d[ml]'") from None


# ---------------------------------------------------------------------- ptychography options
def read_vacuum_probe(path: str) -> Any:
    """A vacuum-probe pattern from a .npy file (2D, or a 3D stack that is averaged)."""
    import numpy as np

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


def ptycho_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`distill4d.phase.reconstruct` from :func:`add_ptycho_options`'
    options (sets PyTorch's threads when ``--threads`` is given)."""
    import numpy as np

    kw: dict[str, Any] = dict(defocus_A=args.defocus_A, Cs_A=args.Cs_A, slices=args.slices,
                              slice_thickness_A=args.slice_thickness_A, modes=args.modes,
                              iterations=args.iterations, batch_size=args.batch_size, loss=args.loss,
                              refine_positions=args.refine_positions, device=args.device, seed=args.ptycho_seed,
                              pattern_size=args.pattern_size, validation_fraction=args.validation_fraction,
                              pure_phase=args.pure_phase, tied_slices=args.tied_slices,
                              coarse_iterations=args.coarse_iterations,
                              progress=False if args.no_progress else None)
    if args.probe:
        kw["probe"] = read_vacuum_probe(args.probe)
    if args.scan_rotation_deg is not None:
        kw["scan_rotation_rad"] = float(np.deg2rad(args.scan_rotation_deg))
        kw["scan_flip"] = bool(args.scan_flip)
    if getattr(args, "threads", None) is not None:  # checked (>= 1) before the command ran
        import torch

        torch.set_num_threads(args.threads)
    return kw


def _defocus_arg(text: str) -> float | str:
    """``--defocus-A``: a number of Å, or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of Å or 'auto', got {text!r}") from None


def add_ptycho_options(p: Any, *, device: bool = True) -> None:
    """The options of ptychography (``distill4d ptycho`` and the ``phase --train-on-ptycho`` pipeline;
    ``device=False`` where the command has its own ``--device``)."""
    from ..phase.ptycho import DEFAULT_BATCH_SIZE, DEFAULT_ITERATIONS, DEFAULT_VALIDATION_FRACTION

    g = p.add_argument_group("ptychography")
    g.add_argument("--defocus-A", type=_defocus_arg, default=0.0, metavar="Å",
                   help="probe defocus in Å, positive = underfocus (C10 = -defocus; default 0); auto: the defocus "
                        "within ±1000 Å that fits a central patch best (and, where the scan rotation is estimated, "
                        "its 180° ambiguity)")
    g.add_argument("--Cs-A", type=float, default=0.0, metavar="Å", help="spherical aberration in Å (default 0)")
    g.add_argument("--slices", type=int, default=1, help="object slices (default 1; more: multislice)")
    g.add_argument("--slice-thickness-A", type=float, metavar="Å", help="distance between slices in Å")
    g.add_argument("--modes", type=int, default=1, help="incoherent probe modes (default 1)")
    g.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                   help=f"passes over all positions (default {DEFAULT_ITERATIONS})")
    g.add_argument("--batch-size", type=int,
                   help=f"positions per step (default: positions // 16, within 16-{DEFAULT_BATCH_SIZE}; with "
                   "--tied-slices it grows to that from 32 over the iterations)")
    g.add_argument("--loss", default="auto", choices=("auto", "amplitude", "poisson"),
                   help="auto (default), amplitude or poisson; auto: poisson where the patterns are counts that a short "
                        "single-slice trial fits down to their shot noise, as on a thin specimen, else amplitude")
    g.add_argument("--refine-positions", action="store_true", help="refine every probe position")
    g.add_argument("--validation-fraction", type=float, default=DEFAULT_VALIDATION_FRACTION, metavar="F",
                   help="hold this fraction of the positions out of the updates and keep the iteration of the lowest "
                        f"loss on them (0 <= F < 0.5; 0: the last iteration; default {DEFAULT_VALIDATION_FRACTION:g})")
    g.add_argument("--probe", metavar="VACUUM.npy", help="vacuum-probe pattern (.npy, same detector as the scan)")
    g.add_argument("--pattern-size", type=int, metavar="N",
                   help="crop the patterns to N x N around the origin (default: the largest even square; larger than "
                        "the detector: the object pixel shrinks and the pixels beyond the detector go unmeasured)")
    g.add_argument("--pure-phase", action="store_true",
                   help="hold every slice's amplitude at 1 (a pure phase object, for elastic data)")
    g.add_argument("--tied-slices", action="store_true",
                   help="one transmission function for every slice (a crystal repeating along the beam, "
                        "--slice-thickness-A its period)")
    g.add_argument("--coarse-iterations", type=int, metavar="K",
                   help="with --tied-slices: at most K first iterations with 4x fewer, thicker slices while the object "
                        "takes off (default: up to 6, at most half the iterations, with 8 or more slices; 0: none)")
    g.add_argument("--scan-rotation-deg", type=float, metavar="DEG",
                   help="scan-to-detector rotation in degrees (default: the calibration's, else estimated)")
    g.add_argument("--scan-flip", action="store_true", help="with --scan-rotation-deg: the axes are transposed")
    if device:
        g.add_argument("--device", default="auto", help="auto (default: the GPU if there is one), cpu or cuda")
        g.add_argument("--threads", type=int, help="PyTorch CPU threads")
    g.add_argument("--seed", dest="ptycho_seed", type=int, default=0,
                   help="seed of the ptychography's mini-batch order (default 0)")



# ---------------------------------------------------------------------- errors
def _show_warning(message: Warning | str, category: type, filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    print(f"distill4d: warning: {message}", file=sys.stderr)


def execute(args: argparse.Namespace) -> Any:
    """Run parsed ``distill4d`` arguments in this thread (the counts checked before any file is
    read); errors propagate. For embedding a command, as the server's jobs do."""
    check_counts(args)
    return args.func(args)


def run_command(args: argparse.Namespace) -> int:
    """Run ``args.func(args)``; its exit code.

    Bad input (:class:`~distill4d.Distill4dError`) and failures of files or connections
    (:class:`OSError`) are one line on stderr and exit code 1 (``--debug`` or the environment
    variable ``DISTILL4D_DEBUG`` show the traceback). Any other exception is a bug: it
    propagates with its traceback. Ctrl-C exits with 130.
    """
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return execute(args)
    except KeyboardInterrupt:
        print("distill4d: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except (Distill4dError, OSError) as err:
        if args.debug or os.environ.get("DISTILL4D_DEBUG"):
            raise
        print(f"distill4d: error: {err}", file=sys.stderr)
        return 1
