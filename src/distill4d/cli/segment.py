"""``distill4d segment``: domain maps and domain fractions of an image, a series or a 4D scan."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import Distill4dError
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
    require_torch,
    wrote,
)

__all__ = ["add_parser", "cmd_segment"]

_METHODS = ("autoencoder", "kmeans", "nmf", "pca-gmm", "peaks")
_INPUT_HELP = ("an image (H, W) or a series (T, H, W): .npy, .tif/.tiff (every page a frame), .png, or an HDF5 "
               "dataset FILE.h5:/path; or a 4D-STEM scan: " + FILE_HELP)


def cmd_segment(args: argparse.Namespace) -> int:
    from ..io.images import image_ndim, read_images
    from ..segment import segment, segment_datacube

    outs = Outputs(args)
    if args.method == "autoencoder":
        require_torch("--method autoencoder")
    if args.model and args.method != "autoencoder":
        raise Distill4dError(f"--model is a saved autoencoder; it does not go with --method {args.method}")
    if args.model and args.save_model:
        raise Distill4dError("--save-model saves a trained model; with --model nothing is trained")
    train = None
    if args.method == "autoencoder" and not args.model:
        from ..ml.window_ae.train import WindowAETrainConfig

        train = WindowAETrainConfig(max_steps=args.steps, seed=args.seed, max_minutes=args.minutes)
    window, step = args.window, args.step
    if args.model:
        from ..ml.window_ae.segment import window_ae_geometry

        geo = window_ae_geometry(args.model)
        window = int(geo["window_px"]) if window is None else window
        step = int(geo["step_px"]) if step is None else step

    def report(rec: dict) -> None:
        print(f"step {rec['step']}: loss {rec['train']:.4g} (held out {rec['held_out']:.4g}), {rec['seconds']:.0f} s",
              file=sys.stderr)

    opts: dict[str, Any] = {"domains": args.domains, "channels": args.channels, "model": args.model, "train": train,
                            "save_model": args.save_model, "force": args.force, "seed": args.seed,
                            "device": args.device, "callback": report}
    ndim = image_ndim(args.file, args.dataset)
    if ndim in (2, 3) or args.route == "virtual":
        opts["refine"] = not args.no_refine
    if ndim in (2, 3):
        images = read_images(args.file, args.dataset)
        seg = segment(images, args.method, window_px=128 if window is None else window,
                      step_px=32 if step is None else step, **opts)
        shown = images
    elif args.route == "virtual":
        from ..imaging import detector_mask, virtual_image

        dc = open_input(args)
        shown = virtual_image(dc, detector_mask(dc, args.detector), **engine_kwargs(args))
        seg = segment(shown, args.method, window_px=32 if window is None else window,
                      step_px=8 if step is None else step, **opts)
    else:
        dc = open_input(args)
        seg = segment_datacube(dc, args.method, route="patterns", engine=engine_kwargs(args), **opts)
        shown = seg.channels.max(axis=-1)[0]  # the strongest channel: the map on the scan grid
    prov = Provenance(f"segment-{seg.method}", parameters=seg.parameters, inputs=(args.file,), command=command_line())
    seg.to_hdf5(outs.h5, force=outs.force, provenance=prov)
    if outs.png is not None and shown is not None:
        from ..plot.domains import save_domains_png

        save_domains_png(outs.png, shown, seg, title=input_label(args), force=outs.force)
    angles = ", ".join(f"{a:.1f}°" for a in seg.variant_angles_deg)
    print(f"{seg.method}: {seg.n_variants} domain variants (orientations {angles or 'none'}); mean fractions "
          + ", ".join(f"{f:.3f}" for f in seg.fractions.mean(axis=0))
          + f"; windowing {seg.timings_s.get('windows', 0):.2f} s, training {seg.timings_s.get('train', 0):.1f} s")
    walls = seg.parameters.get("walls")
    if walls is not None:
        print("walls: " + (f"placed by fringe energy ({100 * walls['changed']:.1f} % of pixels relabelled)" if walls["applied"]
                           else f"window read-out ({walls['reason']})"))
    if seg.model_path:
        print(f"model: {seg.model_path}")
    outs.done()
    wrote(outs)
    return 0


def add_parser(sub: Any) -> None:
    """Add ``segment`` to the subcommands ``sub``."""
    p = sub.add_parser("segment", help="domain maps and domain fractions (ferroelectric domains, no labels needed)")
    p.add_argument("file", metavar="FILE", help=_INPUT_HELP)
    p.add_argument("--method", default="peaks", choices=_METHODS,
                   help="peaks (default: NMF of the linear window spectra at the mean spectrum's peaks, the most "
                        "accurate on the held-out benchmark), autoencoder (the windowing autoencoder trained on this "
                        "input; less reliable, see the tutorial), or nmf, kmeans, pca-gmm on the log window spectra")
    p.add_argument("--domains", type=int, metavar="K", help="number of domain variants (default: channels whose "
                   "orientations differ by less than 10 degrees are one variant; peaks: the K at which one more "
                   "component lowers the residual most)")
    p.add_argument("--window", type=int, metavar="PX", help="window width in pixels (default 128 for images, 32 "
                   "scan positions for the virtual image of a 4D scan; a saved model's own with --model)")
    p.add_argument("--step", type=int, metavar="PX", help="step between windows in pixels (default 32; 8 for a 4D scan)")
    p.add_argument("--route", default="patterns", choices=("patterns", "virtual"),
                   help="4D scans: patterns (each diffraction pattern is a Fourier-space view, default) or virtual "
                        "(windows of a virtual image, --detector)")
    p.add_argument("--no-refine", action="store_true",
                   help="keep the walls of the window read-out (default: walls placed at pixel precision by each "
                        "variant's fringe energy, where the fringes tell the variants apart; images only)")
    p.add_argument("--detector", default="bf", choices=("bf", "adf"), help="virtual image of --route virtual (default bf)")
    g = p.add_argument_group("autoencoder (--method autoencoder)")
    g.add_argument("--channels", type=int, default=None,
                   help="latent domain channels (default: K of --domains when given, else 8)")
    g.add_argument("--steps", type=int, default=1000, help="at most this many training steps (default 1000)")
    g.add_argument("--minutes", type=float, default=None, help="training time budget in minutes (default: none)")
    g.add_argument("--seed", type=int, default=0, help="seed of training and of the baselines (default 0)")
    g.add_argument("--save-model", metavar="M.pt", help="save the trained model (+ M.json card)")
    g.add_argument("--model", metavar="M.pt", help="re-use a saved model on this input instead of training")
    g.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    add_output(p)
    add_calibration(p)
    add_engine(p)
    p.set_defaults(func=cmd_segment)
