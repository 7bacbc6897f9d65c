#!/usr/bin/env python3
"""Ptychography's ``loss="auto"``, measured: for single-slice runs of the amplitude and the Poisson loss on
the phase benchmark's scans, the final SSIM of each against the projected potential, the final error over its
shot-noise floor, and what ``auto`` chooses (its trial's error over the floor) and scores.

Validation scans (the rule and its threshold, :data:`distill4d.phase._noise.AUTO_POISSON_RATIO`, were chosen
on these): ``mos2_train`` (thin), ``mo_val``, ``ceo2_train``, ``mgo_train``, ``bto_val`` (97-120 Å crystals).
Test scans (``--test``, run once the rule was fixed): ``mos2_test``, ``sto_thick``. Reconstruction, data and
scorer are those of ``ptycho_benchmark.py`` (``evaluate``: 12 iterations, one thread, known scan rotation,
defocus 0).

Usage: ``benchmarks/ptycho_loss_choice.py [--test] [--scans ...] [--doses 2e4 2e3] [--redo] [--no-results]``.
Runs are cached in ``benchmarks/data/ptycho/loss_<scan>_<dose>_<loss>.json``; writes the RESULTS.md
section ``ptycho_loss``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import ptycho_benchmark as pb  # noqa: E402
from _results import add_output_arguments, machine_info, machine_line, write_section  # noqa: E402

VALIDATION = ("mos2_train", "mo_val", "ceo2_train", "mgo_train", "bto_val")
TEST = ("mos2_test", "sto_thick")
LOSSES = ("amplitude", "poisson", "auto")


def run(name: str, dose: float, loss: str, a, cache: dict) -> dict:
    """One single-slice reconstruction through ``ptycho_benchmark.evaluate`` (cached)."""
    pb.D4_ROWS[f"distill4d single {loss}"] = {"loss": loss}
    return pb.evaluate_cached(pb.DATA / f"loss_{name}_{dose:g}_{loss}.json", f"distill4d single {loss}", name, dose,
                              pb.default_args(), cache, a.redo)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", nargs="+", default=list(VALIDATION))
    ap.add_argument("--test", action="store_true", help="also the test scans (after the rule is fixed)")
    ap.add_argument("--doses", nargs="+", type=float, default=[2e4, 2e3])
    ap.add_argument("--redo", action="store_true", help="recompute cached runs")
    add_output_arguments(ap, "ptycho_loss")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    scans = list(a.scans) + (list(TEST) if a.test else [])
    lines, cache, out = [], {}, {}
    cpu_total = 0.0
    for name in scans:
        for dose in a.doses:
            recs = {loss: run(name, dose, loss, a, cache) for loss in LOSSES}
            ssim = {k: r["final"]["ssim"] for k, r in recs.items()}
            cpu_total += sum(r["final"]["cpu_s"] for r in recs.values())
            ratio = {k: r["run"]["noise_ratios"][-1] for k, r in recs.items()}
            choice = recs["auto"]["run"]["parameters"]["loss_choice"]
            chosen = recs["auto"]["run"]["parameters"]["loss"]
            other = "poisson" if chosen == "amplitude" else "amplitude"
            split = "test" if name in TEST else "validation"
            out[f"{name} {dose:g}"] = {"ssim": ssim, "ratio": ratio, "choice": choice, "split": split}
            lines.append(f"| {name} ({split}) | {dose:g} | {ssim['amplitude']:.3f} ({ratio['amplitude']:.2f}) | "
                         f"{ssim['poisson']:.3f} ({ratio['poisson']:.2f}) | {choice['error_to_floor']:.2f} | {chosen} | "
                         f"{ssim['auto']:.3f} | {ssim[chosen] - ssim[other]:+.3f} | "
                         f"{recs['auto']['final']['cpu_s']:.1f} / {recs[chosen]['final']['cpu_s']:.1f} |")
            print(lines[-1], flush=True)
    command = "benchmarks/ptycho_loss_choice.py " + " ".join(sys.argv[1:] if argv is None else argv)
    section = "\n".join([
        "## Ptychography: the automatic loss (`loss=\"auto\"`)", "",
        f"Written by `{command.strip()}` on {machine_info()['date']}; the {3 * len(out)} runs (cached in "
        f"`benchmarks/data/ptycho/loss_*.json`) took {cpu_total:.0f} CPU s.", "",
        machine_line(),
        ("- Single-slice `distill4d.phase.ptycho.reconstruct`, 12 iterations, one thread, seed 0, scan rotation and "
         "defocus known, the data, Poisson noise and scorer (SSIM against the projected potential, "
         "`ptycho_benchmark.score_phase`) of the `ptycho` section. `ratio`: the final iteration's amplitude error "
         "over its shot-noise expectation (`PtychoResult.noise_ratios`: Σ (√I − √y)² / Σ E[(√y' − √I)²] for y' ~ "
         "Poisson(I), I the model's intensities, over the pixels where I >= 1 count). `auto`: Poisson where the "
         "patterns are counts and a single-slice trial (2 iterations, amplitude loss, the central 16 x 16 positions) "
         "leaves a ratio below 2, else amplitude; its CPU time includes the trial."),
        ("- Validation scans (the rule and its threshold were chosen on these): `mos2_train` (MoS2 monolayer), "
         "`mo_val` (Mo), `ceo2_train` (CeO2 97 Å), `mgo_train` (MgO), `bto_val` (BaTiO3 120 Å). Test scans (run once, "
         "after): `mos2_test`, `sto_thick` (SrTiO3 121 Å)."), "",
        "| scan | dose e-/pattern | amplitude: SSIM (ratio) | Poisson: SSIM (ratio) | auto: trial ratio | auto chose | "
        "auto SSIM | SSIM of its loss minus the other's | CPU s auto / its loss alone |",
        "|---|---|---|---|---|---|---|---|---|", *lines])
    (pb.DATA / "loss_choice_summary.json").write_text(json.dumps(out, indent=1, default=float))
    print(section)
    if not a.no_results:
        write_section(a.section, section)


if __name__ == "__main__":
    main()
