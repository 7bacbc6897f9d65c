"""``distill4d info``, ``virtual`` (virtual detectors) and ``com`` (centre of mass, DPC, iDPC)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from ..errors import Distill4dError
from ..results import Provenance
from ._common import (
    FILE_HELP,
    Outputs,
    add_calibration,
    add_engine,
    add_input_options,
    add_output,
    command_line,
    engine_kwargs,
    input_label,
    open_input,
    warn_nonfinite,
    wrote,
)

__all__ = ["add_parser", "cmd_com", "cmd_info", "cmd_virtual"]


def cmd_info(args: argparse.Namespace) -> int:
    from ..io import calibration_attributes, list_datasets, read

    path = args.file
    scan_shape = tuple(args.scan_shape) if args.scan_shape else None
    try:
        dc = read(path, dataset=args.dataset, lazy=True, scan_shape=scan_shape)
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
        raise Distill4dError(str(err)) from None
    print(dc)
    print(dc.calibration.describe())
    used = calibration_attributes(path, args.dataset, scan_shape)
    if used:
        print("calibration read from HDF5 attributes:")
        for line in used:
            print(f"  {line}")
    return 0



def cmd_virtual(args: argparse.Namespace) -> int:
    from ..imaging import detector_mask, virtual_images
    from ..io import write

    outs = Outputs(args)
    dc = open_input(args)
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
    mean = dc.mean_pattern(**engine_kwargs(args)) if need_mean else None  # one pass, shared by all detectors
    masks = {name: detector_mask(dc, kind, radii, unit=args.unit, origin=origin, mean_pattern=mean)
             for name, (kind, radii) in detectors.items()}
    outs.clear_stale()
    images = virtual_images(dc, masks, checkpoint=outs.checkpoint("virtual"), **engine_kwargs(args))
    warn_nonfinite(images)
    units = {k: "counts" for k in images}
    prov = Provenance("virtual", {"detectors": {k: [kind, radii] for k, (kind, radii) in detectors.items()},
                                  "unit": args.unit, "origin_px": origin},
                      inputs=(str(args.file),), command=command_line())
    arrays = dict(images)
    arrays.update({f"mask_{k}": m.astype("uint8") for k, m in masks.items()})
    write(outs.h5, arrays, force=outs.force, units=units, calibration=dc.calibration, provenance=prov)
    if outs.png:
        from ..plot import save_images_png

        save_images_png(outs.png, images, units=units, title=f"virtual images: {input_label(args)}",
                        scan_step_A=dc.calibration.scan_step_A, force=outs.force)
    outs.done()
    wrote(outs)
    return 0


def _adf_radii(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    if len(values) == 1:
        return (values[0], math.inf)
    if len(values) == 2:
        return (values[0], values[1])
    raise Distill4dError(f"--adf takes an inner radius and optionally an outer radius, got {values}")


def cmd_com(args: argparse.Namespace) -> int:
    from ..imaging import center_of_mass, circle_mask, idpc
    from ..io import write

    outs = Outputs(args)
    dc = open_input(args)
    origin = tuple(args.origin_px) if args.origin_px else dc.calibration.origin_px
    mask = None
    if args.radius is not None:
        from ..imaging.origin import find_bf_disk

        if origin is None:  # found once here and reused by center_of_mass
            origin = find_bf_disk(dc.mean_pattern(**engine_kwargs(args)))[:2]
        mask = circle_mask(dc.pattern_shape, origin, dc.calibration.length_to_px(args.radius, args.unit))
    outs.clear_stale()
    com = center_of_mass(dc, mask=mask, origin=origin, checkpoint=outs.checkpoint("com"), **engine_kwargs(args))
    arrays = {"com_qx": com.com_qx_px, "com_qy": com.com_qy_px}
    units = {"com_qx": "px", "com_qy": "px"}
    warn_nonfinite(arrays)
    attrs: dict[str, Any] = {"origin_px": list(com.origin_px)}
    params: dict[str, Any] = {"origin_px": list(com.origin_px), "radius": args.radius, "unit": args.unit}
    if min(dc.scan_shape) >= 3:
        rotation = None if args.rotation_deg is None else math.radians(args.rotation_deg)
        res = idpc(com, rotation_rad=rotation, flip=args.flip)
        arrays.update({"idpc_phase": res.phase, "dpc_x": res.field_x, "dpc_y": res.field_y})
        field_unit = "1/Å" if res.units == "rad" else "px"
        units.update({"idpc_phase": res.units, "dpc_x": field_unit, "dpc_y": field_unit})
        attrs.update({"scan_rotation_deg": math.degrees(res.rotation_rad), "scan_flip": res.flip})
        params.update({"rotation_deg": args.rotation_deg, "flip": args.flip})
        print(f"scan rotation {math.degrees(res.rotation_rad):.2f}°" + (" (flipped)" if res.flip else "")
              + (" (estimated from the data)" if args.rotation_deg is None else ""))
    else:
        print("distill4d: note: scan smaller than 3x3: no DPC rotation or iDPC phase", file=sys.stderr)
    prov = Provenance("idpc" if "idpc_phase" in arrays else "com", params, inputs=(str(args.file),),
                      command=command_line())
    write(outs.h5, arrays, force=outs.force, units=units, attrs=attrs, calibration=dc.calibration, provenance=prov)
    if outs.png:
        from ..plot import save_images_png

        shown = {k: arrays[k] for k in ("com_qx", "com_qy", "idpc_phase") if k in arrays}
        # the CoM sits at some offset (e.g. +20 px from an assumed origin): show its variation
        save_images_png(outs.png, shown, units=units, diverging=("com_qx", "com_qy"),
                        subtract_mean=("com_qx", "com_qy"),
                        title=f"centre of mass / iDPC: {input_label(args)}",
                        scan_step_A=dc.calibration.scan_step_A, force=outs.force)
    outs.done()
    wrote(outs)
    return 0


def add_parser(sub: Any) -> None:
    """Add ``info``, ``virtual`` and ``com`` to the subcommands ``sub``."""
    p = sub.add_parser("info", help="describe a dataset: shape, dtype, calibration")
    p.add_argument("file", metavar="FILE", help=FILE_HELP)
    add_input_options(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("virtual", help="virtual bright-field / annular dark-field images")
    p.add_argument("file", metavar="FILE", help=FILE_HELP)
    p.add_argument("--bf", type=float, nargs="*", metavar="R",
                   help="bright-field disk of radius R (default: the measured BF disk)")
    p.add_argument("--adf", type=float, nargs="*", metavar="R",
                   help="annular dark field INNER [OUTER] (default: 1.5x the BF radius to the detector edge)")
    p.add_argument("--annulus", type=float, nargs=2, action="append", metavar=("INNER", "OUTER"),
                   help="an extra annular detector (repeatable)")
    p.add_argument("--unit", default="px", choices=("px", "mrad", "inv_A"), help="unit of the radii (default px)")
    add_output(p)
    add_calibration(p)
    add_engine(p)
    p.set_defaults(func=cmd_virtual)

    p = sub.add_parser("com", help="centre of mass, DPC and integrated DPC (iDPC) phase")
    p.add_argument("file", metavar="FILE", help=FILE_HELP)
    p.add_argument("--radius", type=float, help="only count pixels within this radius of the origin")
    p.add_argument("--unit", default="px", choices=("px", "mrad", "inv_A"), help="unit of --radius (default px)")
    p.add_argument("--rotation-deg", type=float, help="scan rotation in degrees (default: estimated)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="detector axes transposed w.r.t. the scan (default: estimated)")
    add_output(p)
    add_calibration(p)
    add_engine(p)
    p.set_defaults(func=cmd_com)
