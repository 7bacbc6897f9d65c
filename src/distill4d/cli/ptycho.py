"""``distill4d ptycho``: ptychographic reconstruction of a scan (needs ``distill4d[ml]`` for PyTorch)."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from ._common import (
    FILE_HELP,
    Outputs,
    add_calibration,
    add_output,
    add_ptycho_options,
    command_line,
    input_label,
    open_input,
    parse_region,
    ptycho_kwargs,
    require_torch,
    wrote,
)

__all__ = ["add_parser", "cmd_ptycho"]


def cmd_ptycho(args: argparse.Namespace) -> int:
    require_torch("ptychography")
    from ..phase import reconstruct

    outs = Outputs(args)
    dc = open_input(args)
    kw = ptycho_kwargs(args)
    if args.region:
        kw["region"] = parse_region(args.region, "--region", dc.scan_shape)
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
          + (f"error {res.errors[-1]:.4g} after {len(res.errors)} iterations" if len(res.errors) else "no iterations")
          + (f" (the first {p['coarse_iterations_run']} with {p['coarse_slices']} thicker slices)"
             if p.get("coarse_iterations_run") else "")
          + f", {p['seconds']:.1f} s on {p['device']}"
          + (f"; kept iteration {res.chosen_iteration} (lowest loss on {p['validation_positions']} held-out positions)"
             if len(res.validation_errors) else "") + _loss_note(res))
    hint = _thick_hint(res)
    if hint:
        print(hint, file=sys.stderr)
    wrote(outs)
    return 0


def _loss_note(res: Any) -> str:
    """``; <loss> loss ...``: the loss, and with ``--loss auto`` why, and the final error against the shot noise."""
    p = res.provenance.parameters
    choice = p.get("loss_choice")
    if choice is None:
        return f"; {p['loss']} loss"
    if not choice["counted"]:
        return f"; {p['loss']} loss (auto: the patterns are not counts)"
    trial = choice["error_to_floor"]
    note = (f"; {p['loss']} loss (auto: a single-slice trial left {trial:.2f}x the shot noise)" if math.isfinite(trial)
            else f"; {p['loss']} loss (auto: no pixel reached one count in the trial)")
    final = res.noise_ratio
    return note + (f"; final error {final:.2f}x the shot noise" if math.isfinite(final) else "")


def _thick_hint(res: Any) -> str:
    """A note where one slice leaves counted data far above their shot noise (a thick specimen), else ''."""
    from ..phase.ptycho import AUTO_POISSON_RATIO

    ratio = res.noise_ratio  # NaN unless the patterns are counts
    if res.provenance.parameters["slices"] > 1 or not ratio > AUTO_POISSON_RATIO:
        return ""
    return (f"note: one slice leaves {ratio:.1f}x the shot noise, so the specimen is probably too thick for a "
            "single slice: try --slices N --slice-thickness-A T (--tied-slices for a crystal on zone, T its period)")


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
