"""The ``distill4d`` command line: a thin layer over the Python API.

Every command that computes something writes HDF5 (with units) atomically, refuses to
overwrite an existing output without ``--force``, and keeps finished chunks in
``OUTPUT.partial/`` so that an interrupted run resumes when the same command is run again.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..ml import FCUNET_VIEWS

__all__ = ["main"]


class CLIError(Exception):
    """A problem with the user's input, shown without a traceback."""


# ---------------------------------------------------------------------- shared options
def _add_calibration(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("calibration (overrides what the file says)")
    g.add_argument("--scan-step-A", type=float, metavar="Å", help="real-space scan step in Å")
    g.add_argument("--q-pixel-inv-A", type=float, metavar="1/Å", help="detector pixel size in 1/Å")
    g.add_argument("--energy-kV", type=float, metavar="kV", help="beam energy in kV (e.g. 300)")
    g.add_argument("--semiangle-mrad", type=float, metavar="mrad", help="probe convergence semiangle in mrad")
    g.add_argument("--origin-px", type=float, nargs=2, metavar=("QX", "QY"), help="diffraction origin in pixels")
    g.add_argument("--dataset", help="dataset path inside an HDF5 file (or use FILE.h5:/path)")


def _add_engine(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("execution")
    g.add_argument("--scheduler", default="threads",
                   help="threads (default), inline, processes, or a Dask scheduler address tcp://host:port")
    g.add_argument("--workers", type=int, help="parallel workers for threads/processes (default: all cores)")
    g.add_argument("--memory-budget-MB", type=float, help="working memory to stay within, in MB (default 1024)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_output(p: argparse.ArgumentParser, default_png: bool = True) -> None:
    p.add_argument("-o", "--output", required=True, help="output HDF5 file")
    p.add_argument("--png", "--plot", dest="png", help="also save a figure here (default: OUTPUT with .png)" if default_png else "figure")
    p.add_argument("--no-png", action="store_true", help="do not save a figure")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs (and a stale .partial/)")


def _calibration_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
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


def _engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"scheduler": args.scheduler, "progress": False if args.no_progress else None}
    if args.workers is not None:
        out["n_workers"] = args.workers
    if args.memory_budget_MB is not None:
        if not (math.isfinite(args.memory_budget_MB) and args.memory_budget_MB >= 1):
            raise CLIError(f"--memory-budget-MB must be at least 1, got {args.memory_budget_MB}")
        out["memory_budget"] = int(args.memory_budget_MB * 2**20)
    return out


def _open(args: argparse.Namespace):
    from ..io import read

    return read(args.file, dataset=args.dataset, **_calibration_kwargs(args))


class _Outputs:
    """Checks outputs up front, and owns the resumable ``OUTPUT.partial/`` checkpoint."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.h5 = Path(args.output)
        self.png = None if args.no_png else Path(args.png) if args.png else self.h5.with_suffix(".png")
        self.force = args.force
        for p in (self.h5, self.png):
            if p is not None and p.exists() and not self.force:
                raise CLIError(f"{p} exists; pass --force to overwrite it")
        from ..io import split_dataset_path

        if Path(split_dataset_path(args.file)[0]).resolve() == self.h5.resolve():
            raise CLIError(f"the output {self.h5} is the input file; choose another output")
        self.partial = self.h5.with_name(self.h5.name + ".partial")

    def checkpoint(self, step: str) -> Path:
        return self.partial / step

    def clear_stale(self) -> None:
        if self.force and self.partial.exists():
            shutil.rmtree(self.partial)

    def done(self) -> None:
        if self.partial.exists():
            shutil.rmtree(self.partial)


def _warn_nonfinite(images: dict[str, Any]) -> None:
    import numpy as np

    for name, img in images.items():
        bad = int(np.size(img) - np.isfinite(img).sum())
        if bad:
            print(f"distill4d: warning: {name} is undefined (NaN/Inf) at {bad} scan positions "
                  "(patterns with NaN/Inf values or no intensity)", file=sys.stderr)


def _command_line() -> str:
    return " ".join(["distill4d"] + sys.argv[1:])


# ---------------------------------------------------------------------- commands
def cmd_info(args: argparse.Namespace) -> int:
    from ..io import list_datasets, read

    path = args.file
    try:
        dc = read(path, dataset=args.dataset, lazy=True)
    except ValueError as err:
        from ..io import split_dataset_path

        base = str(split_dataset_path(path)[0])
        if base.lower().endswith((".h5", ".hdf5", ".emd")) and Path(base).exists():
            try:
                found = list_datasets(base)
            except (ValueError, OSError):
                found = []
            if found:
                print("4D datasets in this file:")
                for name, shape, dtype in found:
                    print(f"  {name}  {shape}  {dtype}")
        raise CLIError(str(err)) from None
    print(dc)
    print(dc.calibration.describe())
    return 0


def cmd_virtual(args: argparse.Namespace) -> int:
    from ..imaging import detector_mask, virtual_images
    from ..io import write

    outs = _Outputs(args)
    dc = _open(args)
    origin = tuple(args.origin_px) if args.origin_px else None
    detectors: dict[str, Any] = {}
    if args.bf is not None:
        detectors["bf"] = ("bf", tuple(args.bf) or None)
    if args.adf is not None:
        detectors["adf"] = ("adf", _adf_radii(args.adf))
    if args.annulus:
        for i, (r0, r1) in enumerate(args.annulus):
            detectors[f"annulus{i}"] = ("annulus", (r0, r1))
    if not detectors:
        detectors = {"bf": ("bf", None), "adf": ("adf", None)}
    need_mean = any(r is None for _, r in detectors.values()) or (origin is None and dc.calibration.origin_px is None)
    mean = dc.mean_pattern(**_engine_kwargs(args)) if need_mean else None  # one pass, shared by all detectors
    masks = {name: detector_mask(dc, kind, radii, unit=args.unit, origin=origin, mean_pattern=mean)
             for name, (kind, radii) in detectors.items()}
    outs.clear_stale()
    images = virtual_images(dc, masks, checkpoint=outs.checkpoint("virtual"), **_engine_kwargs(args))
    _warn_nonfinite(images)
    units = {k: "counts" for k in images}
    attrs = {"command": _command_line(), "input": str(args.file), **{f"calibration_{k}": v for k, v in dc.calibration.to_attrs().items()}}
    arrays = dict(images)
    arrays.update({f"mask_{k}": m.astype("uint8") for k, m in masks.items()})
    write(outs.h5, arrays, force=outs.force, units=units, attrs=attrs)
    if outs.png:
        from ..plot import save_images_png

        save_images_png(outs.png, images, units=units, title=f"virtual images: {Path(args.file).name}",
                        scan_step_A=dc.calibration.scan_step_A, force=outs.force)
    outs.done()
    print(f"wrote {outs.h5}" + (f" and {outs.png}" if outs.png else ""))
    return 0


def _adf_radii(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    if len(values) == 1:
        return (values[0], math.inf)
    if len(values) == 2:
        return (values[0], values[1])
    raise CLIError(f"--adf takes an inner radius and optionally an outer radius, got {values}")


def cmd_com(args: argparse.Namespace) -> int:
    from ..imaging import center_of_mass, circle_mask, idpc
    from ..io import write

    outs = _Outputs(args)
    dc = _open(args)
    origin = tuple(args.origin_px) if args.origin_px else dc.calibration.origin_px
    mask = None
    if args.radius is not None:
        from ..imaging.origin import find_bf_disk

        if origin is None:  # found once here and reused by center_of_mass
            origin = find_bf_disk(dc.mean_pattern(**_engine_kwargs(args)))[:2]
        mask = circle_mask(dc.pattern_shape, origin, dc.calibration.length_to_px(args.radius, args.unit))
    outs.clear_stale()
    com = center_of_mass(dc, mask=mask, origin=origin, checkpoint=outs.checkpoint("com"), **_engine_kwargs(args))
    arrays = {"com_qx": com.com_qx_px, "com_qy": com.com_qy_px}
    units = {"com_qx": "px", "com_qy": "px"}
    _warn_nonfinite(arrays)
    attrs: dict[str, Any] = {"command": _command_line(), "input": str(args.file), "origin_px": list(com.origin_px)}
    if min(dc.scan_shape) >= 3:
        rotation = None if args.rotation_deg is None else math.radians(args.rotation_deg)
        res = idpc(com, rotation_rad=rotation, flip=args.flip)
        arrays.update({"idpc_phase": res.phase, "dpc_x": res.field_x, "dpc_y": res.field_y})
        field_unit = "1/Å" if res.units == "rad" else "px"
        units.update({"idpc_phase": res.units, "dpc_x": field_unit, "dpc_y": field_unit})
        attrs.update({"scan_rotation_deg": math.degrees(res.rotation_rad), "scan_flip": res.flip})
        print(f"scan rotation {math.degrees(res.rotation_rad):.2f}°" + (" (flipped)" if res.flip else "")
              + (" (estimated from the data)" if args.rotation_deg is None else ""))
    else:
        print("distill4d: note: scan smaller than 3x3: no DPC rotation or iDPC phase", file=sys.stderr)
    write(outs.h5, arrays, force=outs.force, units=units, attrs=attrs)
    if outs.png:
        from ..plot import save_images_png

        shown = {k: arrays[k] for k in ("com_qx", "com_qy", "idpc_phase") if k in arrays}
        save_images_png(outs.png, shown, units=units, diverging=("com_qx", "com_qy"),
                        title=f"centre of mass / iDPC: {Path(args.file).name}",
                        scan_step_A=dc.calibration.scan_step_A, force=outs.force)
    outs.done()
    print(f"wrote {outs.h5}" + (f" and {outs.png}" if outs.png else ""))
    return 0


def _parse_region(text: str | None, option: str = "--reference") -> tuple[slice, slice] | None:
    """``"x0:x1,y0:y1"`` (scan positions) -> slices; None -> None."""
    if text is None:
        return None
    try:
        parts = [p.split(":") for p in text.split(",")]
        (a, b), (c, d) = parts
        return slice(int(a), int(b)), slice(int(c), int(d))
    except ValueError:
        raise CLIError(f"{option} must look like x0:x1,y0:y1 (scan positions), got {text!r}") from None


def _find_disks(args: argparse.Namespace, outs: _Outputs):
    from ..bragg import find_bragg_disks
    from ..io import read_probe

    if args.method not in _METHODS:
        raise CLIError(f"--method {args.method!r} finds no disks; disk methods: {', '.join(_METHODS)}")
    dc = _open(args)
    probe = read_probe(args.probe) if args.probe else None
    outs.clear_stale()
    if args.method == "fcunet":
        try:
            from ..ml.fcunet_detect import find_bragg_disks_fcunet
        except ImportError as err:
            raise CLIError(f"--method fcunet needs PyTorch: pip install 'distill4d[ml]' ({err})") from None
        engine = _engine_kwargs(args)
        if args.scheduler == "threads":  # the network uses all cores itself
            engine["scheduler"] = "inline"
        peaks = find_bragg_disks_fcunet(
            dc, probe, weights=args.weights, n_passes=args.passes, views=args.views, device=args.device,
            checkpoint=outs.checkpoint("disks"), **engine,
        )
    elif args.method == "com":
        from ..bragg import find_bragg_disks_com

        peaks = find_bragg_disks_com(dc, probe, **_engine_kwargs(args))
    else:
        peaks = find_bragg_disks(dc, probe, checkpoint=outs.checkpoint("disks"), **_engine_kwargs(args))
    counts = peaks.counts
    print(f"found {int(counts.sum())} disks in {dc.n_patterns} patterns "
          f"(median {float(np.median(counts)):.0f} per pattern); parameters: "
          + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in peaks.params.items()))
    return dc, peaks


_METHODS = ("correlation", "fcunet", "com")
_STRAIN_METHODS = _METHODS + ("ccstae",)


def cmd_disks(args: argparse.Namespace) -> int:
    outs = _Outputs(args)
    dc, peaks = _find_disks(args, outs)
    peaks.to_hdf5(outs.h5, force=outs.force)
    if outs.png:
        from ..plot import save_bragg_vector_map_png

        save_bragg_vector_map_png(outs.png, dc.mean_pattern(), peaks, title=Path(args.file).name, force=outs.force)
    outs.done()
    print(f"wrote {outs.h5}" + (f" and {outs.png}" if outs.png else ""))
    return 0


def _strain_ccstae(args: argparse.Namespace, outs: _Outputs):
    try:
        from ..ml.ccstae_fit import CCSTAETrainConfig, save_ccstae, strain_map_ccstae
    except ImportError as err:
        raise CLIError(f"--method ccstae needs PyTorch: pip install 'distill4d[ml]' ({err})") from None
    from ..io import read_probe

    dc = _open(args)
    probe = read_probe(args.probe) if args.probe else None
    if args.save_model and Path(args.save_model).exists() and not args.force:
        raise CLIError(f"{args.save_model} exists; pass --force to overwrite it")
    engine = _engine_kwargs(args)
    try:
        train = CCSTAETrainConfig(max_steps=args.steps, seed=args.seed, max_minutes=args.minutes)
    except ValueError as err:
        raise CLIError(str(err)) from None

    def report(rec: dict) -> None:
        print(f"step {rec['step']}: loss {rec['train']:.4g} (held out {rec['held_out']:.4g}), "
              f"{rec['seconds']:.0f} s", file=sys.stderr)

    res = strain_map_ccstae(dc, probe, num_base=args.bases, reference=_parse_region(args.reference),
                            model=args.model, train=train, refine_steps=args.refine_steps, smooth=args.smooth,
                            device=args.device, callback=report, **engine)
    if outs.png:
        res.plot_bases(outs.png.with_name(outs.png.stem + "_bases.png"))
    if args.save_model:
        save_ccstae(args.save_model, res, force=args.force)
        print(f"saved the model to {args.save_model} (+ .json card)")
    n_vac = int((~res.sample).sum())
    print(f"CC-ST-AE: {len(res.bases)} bases (vacuum: {res.vacuum_bases or 'none'}), {n_vac} vacuum positions, "
          f"stopped: {res.info.get('stopped', 're-used model')}")
    return res


def cmd_strain(args: argparse.Namespace) -> int:
    from ..lattice import strain_map

    outs = _Outputs(args)
    if args.method == "ccstae":
        res = _strain_ccstae(args, outs)
        smap, save = res.strain, res.to_hdf5
    else:
        _, peaks = _find_disks(args, outs)
        smap = strain_map(peaks, reference=_parse_region(args.reference))
        if args.smooth:
            smap = smap.smoothed(args.smooth)
        save = smap.to_hdf5
        bad = int(smap.mask.sum())
        if bad:
            print(f"distill4d: warning: no lattice could be fitted at {bad} of {smap.mask.size} positions "
                  "(NaN there)", file=sys.stderr)
    save(outs.h5, force=outs.force)
    if outs.png:
        smap.plot(outs.png)
    outs.done()
    ok = ~smap.mask
    if ok.any():
        print("strain (median, 5th-95th percentile): "
              + ", ".join(f"{k} {100 * np.median(v[ok]):+.3f}% [{100 * np.percentile(v[ok], 5):+.3f}, "
                          f"{100 * np.percentile(v[ok], 95):+.3f}]"
                          for k, v in (("εxx", smap.eps_xx), ("εyy", smap.eps_yy), ("εxy", smap.eps_xy))))
    print(f"wrote {outs.h5}" + (f" and {outs.png}" if outs.png else ""))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.output), force=args.force, progress=not args.no_progress)
    return 0


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="distill4d", description="4D-STEM data to images, strain maps and more.",
        epilog="Input FILE may name a dataset inside an HDF5 file as FILE.h5:/path/to/data.",
    )
    parser.add_argument("--version", action="version", version=f"distill4d {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="describe a dataset: shape, dtype, calibration")
    p.add_argument("file")
    p.add_argument("--dataset")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("virtual", help="virtual bright-field / annular dark-field images")
    p.add_argument("file")
    p.add_argument("--bf", type=float, nargs="*", metavar="R",
                   help="bright-field disk of radius R (default: the measured BF disk)")
    p.add_argument("--adf", type=float, nargs="*", metavar="R",
                   help="annular dark field INNER [OUTER] (default: 1.5x the BF radius to the detector edge)")
    p.add_argument("--annulus", type=float, nargs=2, action="append", metavar=("INNER", "OUTER"),
                   help="an extra annular detector (repeatable)")
    p.add_argument("--unit", default="px", choices=("px", "mrad", "inv_A"), help="unit of the radii")
    _add_output(p)
    _add_calibration(p)
    _add_engine(p)
    p.set_defaults(func=cmd_virtual)

    p = sub.add_parser("com", help="centre of mass, DPC and integrated DPC (iDPC) phase")
    p.add_argument("file")
    p.add_argument("--radius", type=float, help="only count pixels within this radius of the origin")
    p.add_argument("--unit", default="px", choices=("px", "mrad", "inv_A"), help="unit of --radius")
    p.add_argument("--rotation-deg", type=float, help="scan rotation in degrees (default: estimated)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="detector axes transposed w.r.t. the scan (default: estimated)")
    _add_output(p)
    _add_calibration(p)
    _add_engine(p)
    p.set_defaults(func=cmd_com)

    for name, helptext, func in (
        ("disks", "Bragg disk positions in every pattern (BraggPeaks HDF5)", cmd_disks),
        ("strain", "strain and rotation maps from the Bragg disks (eps_xx, eps_yy, eps_xy, theta)", cmd_strain),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("file")
        p.add_argument("--probe", help="vacuum probe: a 2D image (.npy, FILE.h5:/dataset) or a stack of "
                       "vacuum patterns (averaged); default: the central disk of the mean pattern")
        p.add_argument("--method", default="correlation", choices=_STRAIN_METHODS if name == "strain" else _METHODS,
                       help="correlation (probe template, default), fcunet (the shipped FCU-Net, for thick or "
                       "tilted crystals), com (centres of mass of the disks of the mean pattern)"
                       + (", ccstae (an autoencoder trained on this scan, no labels: very noisy data)"
                          if name == "strain" else ""))
        g = p.add_argument_group("FCU-Net (--method fcunet)")
        g.add_argument("--weights", help="weights file with its model card (.json) beside it "
                       "(default: the shipped model)")
        g.add_argument("--passes", type=int, default=1,
                       help="Monte-Carlo dropout passes averaged per pattern (default 1: dropout off)")
        g.add_argument("--views", default="none", choices=FCUNET_VIEWS,
                       help="average the prediction over mirrored views of each pattern: flips (4 passes), "
                       "dihedral (8, with transposes); default none")
        g.add_argument("--device", default="auto", help="auto (GPU if PyTorch sees one), cpu or cuda")
        if name == "strain":
            p.add_argument("--reference", metavar="x0:x1,y0:y1",
                           help="reference region of the scan (default: the median lattice of the scan)")
            p.add_argument("--smooth", type=float, default=0.0, metavar="SIGMA",
                           help="average the maps over neighbouring positions, Gaussian sigma in scan positions "
                                "(default 0: none; precision for resolution on noisy data)")
            g = p.add_argument_group("CC-ST-AE (--method ccstae)")
            g.add_argument("--bases", type=int, default=2, help="base patterns (default 2: sample and vacuum)")
            g.add_argument("--steps", type=int, default=3000, help="at most this many training steps (default 3000)")
            g.add_argument("--minutes", type=float, default=None, help="training time budget (minutes)")
            g.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
            g.add_argument("--refine-steps", type=int, default=100,
                           help="steps of the per-pattern affine fit after the encoder (default 100; 0: the "
                                "encoder's transforms, shrunk towards the mean on noisy data)")
            g.add_argument("--save-model", metavar="M.pt", help="save the trained model (+ M.json card)")
            g.add_argument("--model", metavar="M.pt", help="re-use a saved model instead of training")
        _add_output(p)
        _add_calibration(p)
        _add_engine(p)
        p.set_defaults(func=func)

    from .phase import add_phase_parser
    from .simulate import add_simulate_parser
    from .train import add_train_parser

    add_phase_parser(sub)
    add_simulate_parser(sub)
    add_train_parser(sub)

    p = sub.add_parser("demo", help="simulate a dataset and run the analyses on it")
    p.add_argument("-o", "--output", default="distill4d_demo", help="output directory (default distill4d_demo)")
    p.add_argument("--force", action="store_true", help="overwrite files of an earlier demo")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def _show_warning(message: Warning | str, category: type, filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    print(f"distill4d: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``distill4d`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return func(args)
    except KeyboardInterrupt:
        print("distill4d: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except (CLIError, ValueError, TypeError, KeyError, OSError, ConnectionError) as err:
        if args.debug or os.environ.get("DISTILL4D_DEBUG"):
            raise
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"distill4d: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
