"""``distill4d phase`` (ML phase retrieval of a scan) and ``distill4d train phase`` (needs ``distill4d[ml]``)."""

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
    add_engine,
    add_output,
    add_ptycho_options,
    calibration_kwargs,
    command_line,
    engine_kwargs,
    input_label,
    open_input,
    parse_region,
    ptycho_kwargs,
    require_torch,
    wrote,
)

__all__ = ["add_parser", "add_train_parser", "cmd_phase", "cmd_train_phase", "read_label"]


def read_label(spec: str, key: str | None) -> tuple[np.ndarray, str, str]:
    """The label image ``(array, name, units)`` from a .npy file, a distill4d results file (or the
    results stored beside a simulated DataCube, e.g. ``projected_potential``) or ``FILE.h5:/dataset``."""
    from ..io import read_results, split_dataset_path

    path, inner = split_dataset_path(spec)
    if not Path(path).exists():
        raise Distill4dError(f"label file {path} does not exist")
    if path.endswith(".npy"):
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as err:  # an object array or a file that is not a .npy
            raise Distill4dError(f"label file {path} is not a numeric .npy array ({err})") from None
        return arr, key or Path(path).stem, ""
    if inner:
        import h5py

        with h5py.File(path, "r") as f:
            if inner not in f:
                raise Distill4dError(f"{path} has no dataset {inner!r}")
            dset = f[inner]
            units = dset.attrs.get("units", "")
            return np.asarray(dset), inner.strip("/").split("/")[-1], units.decode() if isinstance(units, bytes) else str(units)
    res = read_results(path)
    images = [k for k, v in res.items() if np.ndim(v) == 2]
    if key is None:
        if len(images) != 1:
            raise Distill4dError(f"{path} holds the 2D results {images}; choose one with --label-key")
        key = images[0]
    if key not in res:
        raise Distill4dError(f"{path} has no result {key!r}; available: {sorted(res)}")
    return np.asarray(res[key]), key, res.units.get(key, "")


#: ``--train-fit auto``: how each ``--train-model`` is fitted.
AUTO_FIT = {"linear": "lstsq", "mlp": "lbfgs", "conv4d": "adam"}


def model_path(h5: Path) -> Path:
    """Where ``phase --train-on-ptycho`` writes its model: ``OUTPUT_model.pt`` (card ``OUTPUT_model.json``)."""
    return h5.with_name(h5.stem + "_model.pt")


def label_border_mask(shape: tuple[int, int], border_A: float, step_A: float) -> np.ndarray:
    """True on the positions of a ``shape`` region farther than ``border_A`` from its edge (``step_A``:
    the scan step, Å); all False when the border leaves nothing."""
    if not border_A >= 0:
        raise Distill4dError(f"--train-border-A must be >= 0 Å, got {border_A!r}")
    b = int(np.ceil(border_A / step_A - 1e-9))
    mask = np.zeros(shape, bool)
    mask[b : max(b, shape[0] - b), b : max(b, shape[1] - b)] = True
    return mask


def _train_on_ptycho(args: argparse.Namespace, dc: Any, outs: Outputs) -> tuple[Any, dict[str, Any], Any, Path, Any]:
    """Steps 1-2 of the pipeline: ptychography of the region, then a model trained on its phase on the
    scan grid (less a border of ``--train-border-A``); returns ``(model, card, ptycho result, weights
    path, label)``."""
    from ..ml.phase.model import PhaseConfig
    from ..ml.phase.train import PhaseTrainConfig, save_phase_model, train_phase
    from ..phase import reconstruct

    region = parse_region(args.train_on_ptycho, "--train-on-ptycho", dc.scan_shape)
    weights = model_path(outs.h5)
    for p in (weights, weights.with_suffix(".json")):
        if p.exists() and not outs.force:
            raise Distill4dError(f"{p} exists; pass --force to overwrite it")
    sub = dc[region[0], region[1]]
    try:  # every check before the ptychography
        # the prepared grid spans ± extent semiangles: at most 2, and no farther than the detector reaches
        cal = dc.calibration
        rim_px = cal.require("semiangle_mrad") / cal.mrad_per_px
        extent = min(2.0, round(0.95 * (min(dc.pattern_shape) / 2) / rim_px, 2))
        config = PhaseConfig(model=args.train_model, cluster=5, extent=extent)
        fit = args.train_fit if args.train_fit != "auto" else AUTO_FIT[args.train_model]
        train = PhaseTrainConfig(max_steps=args.train_steps, seed=args.ptycho_seed, max_minutes=args.train_minutes,
                                 fit=fit)
        use = label_border_mask(sub.scan_shape, args.train_border_A, cal.require("scan_step_A"))
    except ValueError as err:
        raise Distill4dError(str(err)) from None
    rows = np.flatnonzero(use.any(axis=1))
    if len(rows) < 2:
        raise Distill4dError(f"--train-on-ptycho {args.train_on_ptycho} less its --train-border-A {args.train_border_A:g} Å "
                             "leaves fewer than 2 rows of label; reconstruct a larger region or give a smaller border")
    # validation (the fit's choices, the card's metrics): the last quarter of the label's rows
    n_hold = max(1, round(train.holdout_fraction * len(rows)))
    holdout = ((int(rows[-n_hold]), int(rows[-1]) + 1), (0, sub.scan_shape[1]))
    kw = ptycho_kwargs(args)
    kw["device"] = args.device
    res = reconstruct(dc, region=region, checkpoint=outs.partial / "ptycho.pt", **kw)
    label = res.phase_on_scan_grid()
    net, card = train_phase(sub, label, config=config, train=train, holdout=holdout, label_units="rad",
                            label_name="ptychographic_phase", label_mask=use, device=args.device, progress=False)
    card["data"] = {"file": str(args.file), "label": "ptychography", "region": args.train_on_ptycho,
                    "label_border_A": args.train_border_A, "ptychography": res.provenance.parameters}
    save_phase_model(weights, net, card, force=outs.force, command=command_line())
    return net, card, res, weights, label


def cmd_phase(args: argparse.Namespace) -> int:
    require_torch("ML phase retrieval")
    from ..ml.phase.infer import load_phase_model, phase_image, shipped_model_path

    outs = Outputs(args)
    dc = open_input(args)
    outs.clear_stale()
    ptycho = None
    if args.train_on_ptycho:
        if args.weights:
            raise Distill4dError("give --train-on-ptycho (train a model) or --weights (use one), not both")
        net, card, ptycho, weights, label = _train_on_ptycho(args, dc, outs)
    else:
        weights = args.weights or shipped_model_path(args.model)
        net, card = load_phase_model(weights)
    img = phase_image(dc, (net, card), pad=args.pad, device=args.device, checkpoint=outs.checkpoint("phase"),
                      job_key=str(Path(weights).resolve()), **engine_kwargs(args))
    img.info["weights"] = str(weights)
    result = img.to_result()
    if ptycho is not None:  # the label the model learnt, and where it came from
        x, y = (ptycho.provenance.parameters["region"][i : i + 2] for i in (0, 2))
        arrays = {**result.arrays, "ptychographic_label": label,
                  "ptychographic_region": np.asarray([*x, *y], np.int64)}
        units = {**result.units, "ptychographic_label": "rad"}
        prov = result.provenance.derive("phase_image", {**result.provenance.parameters,
                                                        "trained_on_ptychography": ptycho.provenance.parameters,
                                                        "held_out_pearson_r": card["metrics"]["held_out_pearson_r"]},
                                        key="ptychography")
        result = result.replace(arrays=arrays, units=units, provenance=prov)
    result.to_h5(outs.h5, force=outs.force)
    if outs.png:
        chosen = Path(args.weights).name if args.weights else args.model  # e.g. conv4d-mixed, not conv4d
        img.plot(outs.png, force=outs.force, title=f"{img.label_name} ({chosen}): {input_label(args)}")
        if img.model == "linear":
            from ..plot.phase import save_phase_masks_png

            save_phase_masks_png(outs.png.with_name(outs.png.stem + "_masks.png"), net, force=outs.force)
    outs.done()
    print(f"{img.label_name} ({img.units or 'label units'}): {dc.scan_shape[0]} x {dc.scan_shape[1]} in "
          f"{img.info['seconds']:.2f} s")
    if ptycho is not None:
        print(f"trained {card['config']['model']} on the ptychographic phase of {args.train_on_ptycho}: held-out "
              f"Pearson r {card['metrics']['held_out_pearson_r']:.3f}; model {weights} (card "
              f"{Path(weights).with_suffix('.json')})")
    wrote(outs)
    return 0


def cmd_train_phase(args: argparse.Namespace) -> int:
    require_torch("ML phase retrieval")
    from ..io import read
    from ..ml.phase.train import PhaseTrainConfig, save_phase_model, train_phase
    from ..ml.phase.model import PhaseConfig

    out = Path(args.out)
    for p in (out, out.with_suffix(".json")):
        if p.exists() and not args.force:
            raise Distill4dError(f"{p} exists; pass --force to overwrite it")
    if len(args.label) != len(args.data):
        raise Distill4dError(f"give one --label per --data file: {len(args.data)} data, {len(args.label)} labels")
    holdout = parse_region(args.holdout, "--holdout")  # its form, before any file is read
    cubes = [read(path, dataset=args.dataset, **calibration_kwargs(args)) for path in args.data]
    labels = [read_label(spec, args.label_key) for spec in args.label]
    name = labels[0][1]
    kinds = list(dict.fromkeys(lab[2] for lab in labels))  # each label is standardised on its own scan
    units = kinds[0] if len(kinds) == 1 else "per scan: " + ", ".join(lab[2] or "?" for lab in labels)
    try:
        config = PhaseConfig(model=args.model, size=args.size, extent=args.extent, input_norm=args.input_norm,
                             cluster=5 if args.model == "conv4d" else args.cluster)
        train = PhaseTrainConfig(max_steps=args.steps, seed=args.seed, max_minutes=args.minutes, lr=args.lr,
                                 batch_size=args.batch_size)
    except ValueError as err:
        raise Distill4dError(str(err)) from None
    if args.threads is not None:  # checked (>= 1) before the command ran
        import torch

        torch.set_num_threads(args.threads)

    def report(rec: dict[str, Any]) -> None:
        print(f"step {rec['step']}: train MSE {rec['train_mse']:.4g}, held-out MSE {rec['held_out_mse']:.4g} "
              f"(r = {rec['held_out_r']:.3f}), {rec['seconds']:.0f} s", file=sys.stderr)

    one = len(cubes) == 1
    model, card = train_phase(cubes[0] if one else cubes, labels[0][0] if one else [lab[0] for lab in labels],
                              config=config, train=train, pad=args.pad, label_units=units, label_name=name,
                              holdout=holdout, device=args.device, callback=report, **engine_kwargs(args))
    card["data"] = {"file": args.data[0] if one else args.data, "label": args.label[0] if one else args.label,
                    "label_key": name}
    save_phase_model(out, model, card, force=args.force, command=command_line())
    m = card["metrics"]
    print(f"{args.model}: held-out Pearson r {m['held_out_pearson_r']:.3f} (best step {m['best_step']}, "
          f"stopped: {card['stopped']}); wrote {out} and {out.with_suffix('.json')}")
    return 0


def add_parser(sub: Any) -> None:
    """Add ``phase`` to the subcommands ``sub``."""
    from ..ml.phase import SHIPPED_MODELS

    p = sub.add_parser("phase", help="ML phase retrieval: a high-resolution image from the 4D scan")
    p.add_argument("file", metavar="FILE", help=FILE_HELP)
    p.add_argument("--weights", help="weights file with its model card (.json) beside it "
                   "(default: the shipped model named by --model)")
    p.add_argument("--model", default="conv4d-mixed", choices=SHIPPED_MODELS,
                   help="shipped model to use when no --weights is given: conv4d-mixed (default) / linear-mixed "
                   "(trained on a MoS2 monolayer and five thick crystals; standardised output) or conv4d / "
                   "linear (MoS2 monolayer only; output in V·Å)")
    p.add_argument("--pad", choices=("edge", "reflect", "wrap"),
                   help="how neighbourhoods continue past the scan edge (default: as in training)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    t = p.add_argument_group("pipeline: train on a ptychographic reconstruction of a region")
    t.add_argument("--train-on-ptycho", metavar="x0:x1,y0:y1",
                   help="reconstruct this region by ptychography, train --train-model on its phase, apply it to "
                   "the whole scan; the model and its card are written as OUTPUT_model.pt/.json (reuse: --weights)")
    t.add_argument("--train-model", default="linear", choices=("linear", "mlp", "conv4d"),
                   help="model trained on the ptychographic phase: linear (default; least squares, milliseconds), "
                   "mlp (a small MLP on rotation-invariant features of the 5 x 5 cluster; L-BFGS, about a second; "
                   "for regions of some hundreds of positions or more: it overfits smaller ones) or conv4d (the 4D "
                   "CNN; minutes)")
    t.add_argument("--train-border-A", type=float, default=0.0, metavar="Å",
                   help="leave the label within this distance of the region's edge out of training, where the "
                   "region's ptychography is poorly constrained (default 0; 1 Å helped the mlp on a simulated "
                   "MoS2 scan)")
    t.add_argument("--train-steps", type=int, default=1000, help="at most this many training steps (default 1000)")
    t.add_argument("--train-minutes", type=float, help="training time budget (minutes)")
    t.add_argument("--train-fit", default="auto", choices=("auto", "lstsq", "lbfgs", "adam"),
                   help="how the model is fitted: lstsq (linear model: least squares, no steps), lbfgs (mlp: "
                   "full-batch L-BFGS), adam (optimiser steps with early stopping); auto (default): lstsq for "
                   "the linear model, lbfgs for the mlp, adam for the 4D CNN")
    add_ptycho_options(p, device=False)
    add_output(p)
    add_calibration(p)
    add_engine(p)
    p.set_defaults(func=cmd_phase)


def add_train_parser(tsub: Any) -> None:
    """Add ``phase`` to the models of ``distill4d train`` (``tsub``)."""
    t = tsub.add_parser("phase", help="phase retrieval: 4D scan + label image -> linear or 4D-CNN model")
    t.add_argument("--data", required=True, nargs="+", help="the 4D scan(s); several scans (materials, "
                   "thicknesses) train one model, each label standardised on its own scan")
    t.add_argument("--label", required=True, nargs="+", help="label image on the scan grid, one per --data: .npy, "
                   "a distill4d results file (e.g. a simulated scan's projected_potential) or FILE.h5:/dataset")
    t.add_argument("--label-key", help="which result of --label (e.g. projected_potential, phase)")
    t.add_argument("--model", required=True, choices=("linear", "conv4d"),
                   help="linear (radial-ring linear model) or conv4d (the 4D CNN)")
    t.add_argument("--out", required=True, help="weights file to write (.pt); the model card goes beside it (.json)")
    t.add_argument("--holdout", metavar="x0:x1,y0:y1",
                   help="scan rectangle held out for validation, in every scan (default: the last quarter "
                   "of the rows)")
    t.add_argument("--pad", default="edge", choices=("edge", "reflect", "wrap"),
                   help="neighbourhoods past the scan edge (wrap for periodic simulations; default edge)")
    t.add_argument("--size", type=int, default=16, help="prepared detector grid N (default 16)")
    t.add_argument("--extent", type=float, default=2.0,
                   help="the grid spans +- this many convergence semiangles (default 2)")
    t.add_argument("--input-norm", default="scan", choices=("scan", "pattern"),
                   help="scan (default): subtract the scan's mean prepared pattern, divide by its RMS; "
                   "pattern: each pattern divided by its mean only")
    t.add_argument("--cluster", type=int, default=5, choices=(3, 5), help="cluster c x c (linear model; default 5)")
    t.add_argument("--steps", type=int, default=2000, help="at most this many optimiser steps (default 2000)")
    t.add_argument("--batch-size", type=int, default=16, help="scan positions per optimiser step (default 16)")
    t.add_argument("--lr", type=float, help="Adam learning rate (default 1e-2 linear, 2e-3 conv4d)")
    t.add_argument("--minutes", type=float, help="training time budget (minutes)")
    t.add_argument("--seed", type=int, default=0, help="initialisation and shuffling seed (default 0)")
    t.add_argument("--threads", type=int, help="PyTorch CPU threads")
    t.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    t.add_argument("--force", action="store_true", help="overwrite existing weights of that name")
    add_calibration(t)
    add_engine(t)
    t.set_defaults(func=cmd_train_phase)
