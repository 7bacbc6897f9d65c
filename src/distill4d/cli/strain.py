"""``distill4d disks`` (Bragg disk positions) and ``strain`` (strain and rotation maps)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import Distill4dError
from ..ml.fcunet import FCUNET_VIEWS
from ..results import Provenance
from ._common import (
    FILE_HELP,
    Outputs,
    add_calibration,
    add_engine,
    add_output,
    command_line,
    engine_kwargs,
    input_label,
    open_input,
    parse_region,
    require_torch,
    wrote,
)

__all__ = ["add_parser", "cmd_disks", "cmd_strain"]

_METHODS = ("auto", "correlation", "sobel", "rim", "template", "fcunet", "com")
_STRAIN_METHODS = _METHODS + ("ccstae", "poisson")


def _find_disks(args: argparse.Namespace, outs: Outputs):
    from ..bragg import find_bragg_disks
    from ..io import read_probe

    if args.method not in _METHODS:
        raise Distill4dError(f"--method {args.method!r} finds no disks; disk methods: {', '.join(_METHODS)}")
    dc = open_input(args)
    # the region against the scan before the long work (nothing of OUTPUT.partial/ is written yet)
    region = parse_region(getattr(args, "reference", None), scan_shape=dc.scan_shape)
    probe = read_probe(args.probe) if args.probe else None
    outs.clear_stale()
    if args.method == "fcunet":
        require_torch("--method fcunet")
        from ..ml.fcunet.detect import find_bragg_disks_fcunet

        engine = engine_kwargs(args)
        if args.scheduler == "threads":  # the network uses all cores itself
            engine["scheduler"] = "inline"
        peaks = find_bragg_disks_fcunet(
            dc, probe, weights=args.weights, n_passes=args.passes, views=args.views, device=args.device,
            checkpoint=outs.checkpoint("disks"), **engine,
        )
    elif args.method == "com":
        from ..bragg import find_bragg_disks_com

        peaks = find_bragg_disks_com(dc, probe, **engine_kwargs(args))
    elif args.method == "auto":
        from ..lattice.auto import find_bragg_disks_auto

        peaks = find_bragg_disks_auto(dc, probe, reference=region, checkpoint=outs.checkpoint("disks"),
                                      **engine_kwargs(args))
        print(f"--method auto chose {peaks.params['auto']['reason']}")
    elif args.method == "template":
        from ..bragg import find_bragg_disks_template

        peaks = find_bragg_disks_template(dc, probe, reference=region, checkpoint=outs.checkpoint("disks"),
                                          **engine_kwargs(args))
    elif args.method == "rim":
        from ..bragg import find_bragg_disks_rim

        peaks = find_bragg_disks_rim(dc, probe, reference=region, checkpoint=outs.checkpoint("disks"),
                                     **engine_kwargs(args))
    else:
        kind = "sobel" if args.method == "sobel" else "disk"
        peaks = find_bragg_disks(dc, probe, kind=kind, checkpoint=outs.checkpoint("disks"), **engine_kwargs(args))
    counts = peaks.counts
    print(f"found {int(counts.sum())} disks in {dc.n_patterns} patterns "
          f"(median {float(np.median(counts)):.0f} per pattern); {describe_detection(peaks.params)}")
    return dc, peaks, region


#: The detection parameters shown on screen (key, label); the full set is in the output's provenance.
_SHOWN = (("method", "method"), ("probe_kind", "probe"), ("weights", "weights"), ("radius_px", "radius_px"),
          ("probe_radius_px", "probe_radius_px"), ("min_relative_intensity", "threshold (of the brightest)"),
          ("min_absolute_intensity", "min_intensity"), ("min_intensity", "min_intensity"), ("n_spots", "spots"))


def describe_detection(params: dict[str, Any]) -> str:
    """One short line of the detection parameters a user chooses (method, probe or weights, disk
    radius, threshold, number of spots); the full set stays in the output file's provenance."""
    shown = {}
    for key, label in _SHOWN:
        v = params.get(key)
        if v is None or (key == "min_absolute_intensity" and not v) or label in shown:
            continue
        if key == "probe_radius_px" and params.get("radius_px") == v:
            continue
        if key == "weights":
            v = Path(str(v)).name
        shown[label] = f"{v:.4g}" if isinstance(v, float) else str(v)
    return ("parameters: " + ", ".join(f"{k} {v}" for k, v in shown.items())
            + " (all parameters: the output file's provenance)")


def cmd_disks(args: argparse.Namespace) -> int:
    outs = Outputs(args)
    dc, peaks, _ = _find_disks(args, outs)
    peaks.to_hdf5(outs.h5, force=outs.force)
    if outs.png:
        from ..plot import save_bragg_vector_map_png

        save_bragg_vector_map_png(outs.png, dc.mean_pattern(), peaks, title=input_label(args), force=outs.force)
    outs.done()
    wrote(outs)
    return 0


def _strain_ccstae(args: argparse.Namespace, outs: Outputs):
    require_torch("--method ccstae")
    from ..ml.ccstae.strain import save_ccstae, strain_map_ccstae
    from ..ml.ccstae.train import CCSTAETrainConfig

    from ..io import read_probe

    dc = open_input(args)
    region = parse_region(args.reference, scan_shape=dc.scan_shape)  # before training
    probe = read_probe(args.probe) if args.probe else None
    if args.save_model and Path(args.save_model).exists() and not args.force:
        raise Distill4dError(f"{args.save_model} exists; pass --force to overwrite it")
    engine = engine_kwargs(args)
    try:
        train = CCSTAETrainConfig(max_steps=args.steps, seed=args.seed, max_minutes=args.minutes)
    except ValueError as err:
        raise Distill4dError(str(err)) from None

    def report(rec: dict) -> None:
        print(f"step {rec['step']}: loss {rec['train']:.4g} (held out {rec['held_out']:.4g}), "
              f"{rec['seconds']:.0f} s", file=sys.stderr)

    res = strain_map_ccstae(dc, probe, num_base=args.bases, reference=region,
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


def describe_lattice_failures(lattice) -> str:
    """One line on the positions without a lattice (empty when every position has one): how many,
    how many of their peaks lie on a lattice against the fraction needed, and the fit residuals."""
    ok = lattice.ok
    bad = int((~ok).sum())
    if not bad:
        return ""
    frac = lattice.indexed_fraction[~ok] if lattice.indexed_fraction is not None else np.array([np.nan])
    frac = frac[np.isfinite(frac)]
    line = f"no lattice at {bad} of {ok.size} positions (NaN there, mask True)"
    if frac.size and lattice.min_indexed_fraction > 0:
        line += (f": {100 * np.median(frac):.0f} % of their peaks (median) lie on a lattice, "
                 f"{100 * lattice.min_indexed_fraction:.0f} % needed")
    rms = lattice.rms_px[ok]
    if rms.size:
        line += f"; fit residual where found: median {np.median(rms):.2f} px RMS"
    if not ok.any():
        line += "; no crystal lattice anywhere in the scan (is this the right file, or vacuum / amorphous?)"
    return line


def _strain_poisson(args: argparse.Namespace):
    from ..lattice.template import strain_map_template

    if not args.reference:
        raise Distill4dError("--method poisson needs --reference x0:x1,y0:y1: the region whose pattern is the "
                             "template (zero strain)")
    dc = open_input(args)
    region = parse_region(args.reference, scan_shape=dc.scan_shape)
    template = None
    if args.template:
        from ..io import read_probe

        template = read_probe(args.template)
    res = strain_map_template(dc, region, template=template, **engine_kwargs(args))
    se = res.standard_error
    print(f"Poisson template fit: {res.strain.provenance.parameters['template']}; median standard error "
          f"εxx {100 * np.nanmedian(se['eps_xx']):.3f} %, εyy {100 * np.nanmedian(se['eps_yy']):.3f} %")
    return res


def cmd_strain(args: argparse.Namespace) -> int:
    from ..lattice import fit_lattice, strain_map
    from ..lattice.priors import apply_prior, parse_prior

    outs = Outputs(args)
    parse_region(args.reference)  # its form, before any file is read
    prior = parse_prior(args.prior)
    if prior[0] != "none" and args.smooth:
        raise Distill4dError("--smooth SIGMA is --prior gaussian SIGMA: give one of them")
    res = None
    extra = {}
    standard_error = None
    if args.method == "ccstae":
        res = _strain_ccstae(args, outs)
        smap = res.strain
    elif args.method == "poisson":
        fit = _strain_poisson(args)
        smap, standard_error = fit.strain, fit.standard_error
        extra = {f"se_{k}": v for k, v in standard_error.items()}
        extra.update(shift_px=fit.shift_px, disk_scale=fit.scale, background_scale=fit.background)
    else:
        _, peaks, region = _find_disks(args, outs)
        lattice = fit_lattice(peaks, min_indexed_fraction=args.min_indexed_fraction)
        smap = strain_map(lattice, reference=region)
        warning = describe_lattice_failures(lattice)
        if warning:
            print(f"distill4d: warning: {warning}", file=sys.stderr)
    if args.smooth and args.method != "ccstae":  # CC-ST-AE smooths its own maps (it was given --smooth)
        smap = smap.smoothed(args.smooth)
    smap = apply_prior(smap, prior, standard_error)
    # the file records what made it: command, inputs, method and (in the parameters) the reference
    prov = (smap.provenance or Provenance(args.method)).replace(
        command=command_line(), inputs=tuple(str(p) for p in (args.file, args.probe) if p))
    smap = dataclasses.replace(smap, provenance=prov)
    if res is not None:
        res = dataclasses.replace(res, strain=smap)
        res.to_hdf5(outs.h5, force=outs.force)
    else:
        smap.to_hdf5(outs.h5, force=outs.force, extra=extra or None)
    if outs.png:
        smap.plot(outs.png)
    outs.done()
    ok = ~smap.mask
    if ok.any():
        print("strain (median, 5th-95th percentile): "
              + ", ".join(f"{k} {100 * np.median(v[ok]):+.3f}% [{100 * np.percentile(v[ok], 5):+.3f}, "
                          f"{100 * np.percentile(v[ok], 95):+.3f}]"
                          for k, v in (("εxx", smap.eps_xx), ("εyy", smap.eps_yy), ("εxy", smap.eps_xy))))
    wrote(outs)
    return 0


def add_parser(sub: Any) -> None:
    """Add ``disks`` and ``strain`` to the subcommands ``sub``."""
    for name, helptext, func in (
        ("disks", "Bragg disk positions in every pattern (BraggPeaks HDF5)", cmd_disks),
        ("strain", "strain and rotation maps from the Bragg disks (eps_xx, eps_yy, eps_xy, theta)", cmd_strain),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("file", metavar="FILE", help=FILE_HELP)
        p.add_argument("--probe", help="vacuum probe: a 2D image (.npy, FILE.h5:/dataset) or a stack of "
                       "vacuum patterns (averaged); default: the central disk of the mean pattern")
        p.add_argument("--method", default="auto", choices=_STRAIN_METHODS if name == "strain" else _METHODS,
                       help="auto (default: correlation on a thin crystal on zone; where the disks' Friedel pairs differ "
                       "(tilt) or the disks are full of contrast (a thick crystal), "
                       "the detector whose strain scatters least in the reference region, recorded in the "
                       "output's provenance), correlation (probe template), sobel (edge-filtered correlation), "
                       "rim (correlation, then a circle fit to each disk's rim), template (each reflection's "
                       "disk averaged over the reference region, registered in every pattern with Poisson weights), fcunet (the "
                       "shipped FCU-Net), com (centres of mass of the disks of the mean pattern)"
                       + (", ccstae (an autoencoder trained on this scan, no labels: very noisy data), poisson "
                          "(no disk finding: every pattern fitted by Poisson maximum likelihood to a template "
                          "built from the scan, with standard errors; low dose; needs --reference)"
                          if name == "strain" else ""))
        g = p.add_argument_group("FCU-Net (--method fcunet)")
        g.add_argument("--weights", help="weights file with its model card (.json) beside it "
                       "(default: the shipped model)")
        g.add_argument("--passes", type=int, default=1,
                       help="Monte-Carlo dropout passes averaged per pattern (default 1: dropout off)")
        g.add_argument("--views", default="none", choices=FCUNET_VIEWS,
                       help="average the prediction over mirrored views of each pattern: flips (4 passes), "
                       "dihedral (8, with transposes); default none")
        g.add_argument("--device", default="auto", help="auto (default: GPU if PyTorch sees one), cpu or cuda")
        if name == "strain":
            p.add_argument("--reference", metavar="x0:x1,y0:y1",
                           help="reference region of the scan (default: the median lattice of the scan)")
            p.add_argument("--min-indexed-fraction", type=float, default=0.25, metavar="F",
                           help="a position has a lattice only when this fraction of its peaks lies on it "
                                "(default 0.25; noise gives 0.1-0.2; at 1e2 e-/pattern a crystal may give "
                                "as little, so pass 0 to keep every position there)")
            p.add_argument("--smooth", type=float, default=0.0, metavar="SIGMA",
                           help="average the maps over neighbouring positions, Gaussian sigma in scan positions "
                                "(default 0: none; precision for resolution on noisy data; = --prior gaussian SIGMA)")
            p.add_argument("--prior", nargs="+", default=None, metavar="PRIOR",
                           help="spatial prior on the maps: none (default), gaussian SIGMA (scan positions; blurs "
                                "edges by 2.56 SIGMA) or tv LAMBDA (edge-preserving total variation, LAMBDA in "
                                "units of the map's noise, 0.5-2 useful; weighted by the standard errors of "
                                "--method poisson)")
            g = p.add_argument_group("Poisson template fit (--method poisson)")
            g.add_argument("--template", metavar="FILE",
                           help="a noise-free template pattern (.npy or FILE.h5:/dataset) instead of the one "
                                "built from the scan (the reference region's patterns, then up to 1024 patterns "
                                "aligned to it)")
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
        add_output(p)
        add_calibration(p)
        add_engine(p)
        p.set_defaults(func=func)
