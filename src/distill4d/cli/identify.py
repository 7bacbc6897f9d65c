"""``distill4d identify`` (crystal system, space group and lattice parameters from Bragg disks)
and ``distill4d train identify`` (the crystal identifier, on a library the package builds)."""

from __future__ import annotations

import argparse
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
    add_output,
    calibration_kwargs,
    command_line,
    engine_kwargs,
    open_input,
    parse_region,
)

__all__ = ["add_parser", "add_train_parser", "cmd_identify", "cmd_train_identify"]

_PEAKS_FORMAT = "distill4d-braggpeaks-1"


def _is_peaks_file(path: str) -> bool:
    """Whether ``path`` is a BraggPeaks file written by ``distill4d disks``."""
    from ..io import split_dataset_path

    file, inline = split_dataset_path(path)
    if inline or Path(file).suffix.lower() not in (".h5", ".hdf5") or not Path(file).is_file():
        return False
    import h5py

    try:
        with h5py.File(file, "r") as f:
            return f.attrs.get("format") == _PEAKS_FORMAT
    except OSError:
        return False


def _read_peaks(args: argparse.Namespace) -> Any:
    from ..bragg.peaks import BraggPeaks

    peaks = BraggPeaks.from_hdf5(args.file)
    cal = {k: v for k, v in calibration_kwargs(args).items() if k != "scan_shape"}
    if cal:
        peaks.calibration = peaks.calibration.replace(**cal)
    for name, flag in (("q_pixel_inv_A", "--q-pixel-inv-A"), ("origin_px", "--origin-px QX QY")):
        if getattr(peaks.calibration, name) is None:
            raise Distill4dError(f"{args.file} has no calibration {name}: identification needs spots in 1/Å "
                                 f"relative to the direct beam; pass {flag}")
    return peaks


def _load_model(path: str | None) -> Any:
    from ..identify import load_default
    from ..identify.models import CrystalIdentifier

    return load_default() if path is None else CrystalIdentifier.load(path)


def cmd_identify(args: argparse.Namespace) -> int:
    from ..identify import identify

    outs = Outputs(args)
    if args.top < 1:
        raise Distill4dError(f"--top must be at least 1, got {args.top}")
    model = _load_model(args.model)  # a bad model file fails before any disk is found
    if _is_peaks_file(args.file):
        if args.probe:
            raise Distill4dError("--probe applies to a scan; FILE is a Bragg-peaks file (disks already found)")
        data = _read_peaks(args)
        region = parse_region(args.region, "--region", data.scan_shape)
        engine: dict[str, Any] = {}
    else:
        dc = open_input(args)
        for name, flag in (("q_pixel_inv_A", "--q-pixel-inv-A"),):
            if getattr(dc.calibration, name) is None:
                raise Distill4dError(f"{args.file} has no calibration {name}: identification needs spots in 1/Å; "
                                     f"pass {flag}")
        region = parse_region(args.region, "--region", dc.scan_shape)
        from ..io import read_probe

        data = dc
        engine = dict(engine_kwargs(args), probe=read_probe(args.probe) if args.probe else None)
    res = identify(data, model, region=region, aggregation=args.aggregate, k=args.top, min_spots=args.min_spots,
                   **engine)
    res.provenance = (res.provenance or Provenance("identify")).replace(
        command=command_line(), inputs=tuple(str(p) for p in (args.file, args.probe, args.model) if p))
    res.to_hdf5(outs.h5, force=outs.force)
    if outs.png:
        import numpy as np

        from ..plot import save_images_png

        system = np.where(res.valid, res.system, np.nan)
        save_images_png(outs.png, {"crystal system (0 triclinic ... 6 cubic)": system,
                                   "its probability": np.nanmax(np.where(res.valid[..., None], res.system_proba, 0),
                                                                axis=-1),
                                   "a (Å)": res.lattice[..., 0]},
                        title=Path(args.file).name, scan_step_A=res.calibration.scan_step_A, force=outs.force)
    print(res.summary())
    if res.agg_system is not None and res.agg_system_score is not None:
        print("note: these are model predictions from single sections of reciprocal space; read the top-3 and the "
              "uncertainties (see the model card's held-out accuracy)", file=sys.stderr)
    print(f"wrote {outs.h5}" + (f" and {outs.png}" if outs.png else ""))
    return 0


def add_parser(sub: Any) -> None:
    """Add ``identify`` to the subcommands ``sub``."""
    p = sub.add_parser("identify", help="crystal system, space group and lattice parameters from the Bragg disks "
                       "(a Bragg-peaks file of 'distill4d disks', or a scan)")
    p.add_argument("file", metavar="FILE", help="a Bragg-peaks file written by 'distill4d disks' (calibrated: "
                   "q pixel size and origin), or " + FILE_HELP[0].lower() + FILE_HELP[1:]
                   + " (disks are found first by the automatic detector)")
    p.add_argument("--probe", help="vacuum probe for the disk detection of a scan (as for 'distill4d disks')")
    p.add_argument("--region", metavar="x0:x1,y0:y1", help="scan positions whose patterns are aggregated "
                   "(default: the whole scan)")
    p.add_argument("--aggregate", default="log", choices=("log", "margin", "none"),
                   help="combine the region's patterns by the sum of log-probabilities (log, default), of "
                   "margins (margin), or not (none: per-pattern results only)")
    p.add_argument("--top", type=int, default=3, help="space groups kept per pattern (top k, default 3)")
    p.add_argument("--min-spots", type=int, default=3,
                   help="patterns with fewer spots besides the direct beam are not identified (default 3)")
    p.add_argument("--model", metavar="M.npz", help="a model written by 'distill4d train identify' "
                   "(default: the shipped one)")
    add_output(p)
    add_calibration(p)
    add_engine(p)
    p.set_defaults(func=cmd_identify)


def cmd_train_identify(args: argparse.Namespace) -> int:
    import json

    from .._atomic import atomic_output
    from ..identify.train import IdentifyTrainConfig, train_identifier

    out = Path(args.out)
    card_path = out.with_suffix(".json")
    if out.suffix != ".npz":
        raise Distill4dError(f"--out must name a .npz file, got {out}")
    for p in (out, card_path):
        if p.exists() and not args.force:
            raise Distill4dError(f"{p} exists; pass --force to overwrite it")
    if args.cache is not None:
        Path(args.cache).mkdir(parents=True, exist_ok=True)
    try:
        config = IdentifyTrainConfig(
            n_structures=args.structures, n_orientations=args.orientations, n_variants=args.variants,
            variant_orientations=args.variant_orientations, n_zone_variants=args.zone_variants,
            zone_orientations=args.zone_orientations, zone_tail=args.zone_tail, n_estimators=args.trees,
            max_depth=args.max_depth or None, min_samples_leaf=args.min_samples_leaf, seed=args.seed,
            system_classifier=args.system_classifier,
            **({"space_groups": tuple(args.space_groups)} if args.space_groups else {}),
        )
    except ValueError as err:
        raise Distill4dError(str(err)) from None
    if args.system_classifier == "mlp":
        from ._common import require_torch

        require_torch("--system-classifier mlp")
        import torch

        torch.set_num_threads(args.threads)
    model, card = train_identifier(config, cache_dir=args.cache, callback=lambda m: print(m, file=sys.stderr))
    card["command"] = command_line()
    model.save(out)
    with atomic_output(card_path, force=True) as tmp:
        Path(tmp).write_text(json.dumps(card, indent=1) + "\n")
    m = card["metrics"]["held_out"]
    print(f"held out ({m['structures']} structures, {m['patterns']} patterns): crystal system {m['system_accuracy']:.3f} "
          f"from one pattern, {m['system_accuracy_10_patterns_log']} over 10; space group "
          f"{m['space_group_accuracy_10_patterns_log']} over 10; a, b, c median error "
          f"{100 * m['lattice_abc_median_rel_error_true_system']:.0f} %")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) and {card_path}")
    return 0


def add_train_parser(tsub: Any) -> None:
    """Add ``identify`` to the models of ``distill4d train`` (``tsub``)."""
    t = tsub.add_parser("identify", help="crystal identifier (random forests: system, space group, lattice) on a "
                        "library of kinematic spot lists the package simulates")
    t.add_argument("--out", required=True, metavar="M.npz", help="model file to write; its card goes beside it (.json)")
    t.add_argument("--cache", metavar="DIR", help="build the library here, one file per structure, and save the "
                   "fit part by part, so that an interrupted run resumes (default: in memory only)")
    t.add_argument("--structures", type=int, default=12, help="random crystals per space group (default 12)")
    t.add_argument("--space-groups", type=int, nargs="+", metavar="N",
                   help="space groups of the random crystals (default: 34 groups over all seven systems)")
    t.add_argument("--orientations", type=int, default=40, help="random orientations per structure (default 40)")
    t.add_argument("--variants", type=int, default=0, help="cheap variants of every training structure (new cell "
                   "parameters and species, same space group; never of a held-out one) added to the training data "
                   "(default 0)")
    t.add_argument("--variant-orientations", type=int, default=10,
                   help="random orientations per variant (default 10)")
    t.add_argument("--zone-variants", type=int, default=0,
                   help="more variants of every training structure, each seen near low-index zone axes with the "
                   "narrow relrods of a crystal tilted to a zone, as microscopists record them (default 0)")
    t.add_argument("--zone-orientations", type=int, default=10, help="zone-axis patterns per zone variant (default 10)")
    t.add_argument("--zone-tail", action="store_true", help="the zone-axis patterns also carry the weak spots multiple "
                   "scattering brings from far off the Ewald sphere in thick crystals")
    t.add_argument("--trees", type=int, default=50, help="trees per forest (default 50)")
    t.add_argument("--max-depth", type=int, default=14, help="deepest tree level (default 14; 0: unlimited)")
    t.add_argument("--min-samples-leaf", type=int, default=5, help="smallest leaf (default 5)")
    t.add_argument("--system-classifier", default="mlp", choices=("mlp", "forest"),
                   help="crystal-system classifier: mlp (default; a small network, trained with PyTorch, applied "
                   "with NumPy) or forest; space groups and lattice parameters are always forests")
    t.add_argument("--threads", type=int, default=1, help="PyTorch CPU threads for the mlp (default 1)")
    t.add_argument("--seed", type=int, default=1, help="library, split, forest and network seed (default 1)")
    t.add_argument("--force", action="store_true", help="overwrite an existing model of that name")
    t.set_defaults(func=cmd_train_identify)
