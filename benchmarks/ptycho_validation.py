#!/usr/bin/env python3
"""Ptychography's truth-free stopping rule (``reconstruct(validation_fraction=...)``), measured: the
iteration it chooses by the loss on held-out diffraction patterns, and the SSIM of that iterate against
the last iterate and the best (truth) iterate, on the scans and doses of ``ptycho_benchmark.py``.

Every configuration is run twice, without held-out positions (``validation_fraction=0``: the last
iterate, and the best iterate by the truth) and with them (the chosen iterate; the run trains on the
other positions only). Reconstruction, scoring (:func:`ptycho_benchmark.score_phase`, every iterate),
data and settings are those of ``ptycho_benchmark.py`` (its ``run_distill4d`` and ``evaluate``).
With held-out positions the returned object has had one more pass over every position (the held-out
ones put back, object only): the "chosen" column scores that object.

Writes its section to ``benchmarks/data/experiments.md`` (an experiment; the decision and its numbers are
in docs/experiments.md). Usage: ``benchmarks/ptycho_validation.py [--scans mos2_test sto_thick] [--doses 2e4 2e3]
[--rows 'distill4d single' 'distill4d single poisson'] [--fraction 0.0625] [--redo] [--no-results]``.
Runs are cached in ``benchmarks/data/ptycho/validation_<scan>_<dose>_<row>_<fraction>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import ptycho_benchmark as pb  # noqa: E402
from _results import EXPERIMENTS_MD, add_output_arguments, machine_info, machine_line, write_section  # noqa: E402

ROWS = ("distill4d single", "distill4d single poisson", "distill4d multislice")


def run(name: str, dose: float, row: str, fraction: float, a, cache: dict) -> dict:
    """One configuration through ``ptycho_benchmark.evaluate`` (cached)."""
    tag = f"_seed{a.seed}" if a.seed else ""
    path = pb.DATA / f"validation_{name}_{dose:g}_{row.replace(' ', '_')}_{fraction:g}{tag}.json"
    return pb.evaluate_cached(path, row, name, dose, pb.default_args(validation_fraction=fraction, seed=a.seed), cache,
                              a.redo)


def summary(off: dict, on: dict) -> dict:
    best_off, best_on = pb.best_point(off["curve"]), pb.best_point(on["curve"])
    ch = on["final"]["chosen_iteration"]
    return {"chosen": ch, "ssim_chosen": on["final"]["ssim"], "r_chosen": on["final"]["pearson"],
            "ssim_chosen_iterate": next(p["ssim"] for p in on["curve"] if p["iteration"] == ch),
            "ssim_last_on": on["curve"][-1]["ssim"], "best_on": best_on["ssim"], "best_on_it": best_on["iteration"],
            "ssim_last_off": off["curve"][-1]["ssim"], "r_last_off": off["curve"][-1]["pearson"],
            "best_off": best_off["ssim"], "best_off_it": best_off["iteration"],
            "cpu_off": off["final"]["cpu_s"], "cpu_on": on["final"]["cpu_s"],
            "held_out": on["run"].get("validation_errors", [])}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", nargs="+", choices=pb.SCANS, default=list(pb.SCANS))
    ap.add_argument("--doses", nargs="+", type=float, default=[2e4, 2e3])
    ap.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS[:2]))
    ap.add_argument("--fraction", type=float, default=1 / 16, help="validation_fraction of the runs with it")
    ap.add_argument("--seed", type=int, default=0, help="seed of reconstruct (batch order, held-out positions)")
    ap.add_argument("--redo", action="store_true", help="recompute cached runs")
    add_output_arguments(ap, "ptycho-validation")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    command = "benchmarks/ptycho_validation.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines, cache, recs = [], {}, {}
    for name in a.scans:
        for dose in a.doses:
            for row in a.rows:
                if not pb.applicable(row, name, dose):
                    continue
                off = run(name, dose, row, 0.0, a, cache)
                on = run(name, dose, row, a.fraction, a, cache)
                s = summary(off, on)
                recs[f"{name} {dose:g} {row}"] = s
                lines.append(f"| {name} | {dose:g} | {row.removeprefix('distill4d ')} | {s['chosen']} | "
                             f"{s['ssim_chosen']:.3f} | {s['ssim_chosen_iterate']:.3f} | {s['ssim_last_on']:.3f} | {s['best_on']:.3f} ({s['best_on_it']}) | "
                             f"{s['ssim_last_off']:.3f} | {s['best_off']:.3f} ({s['best_off_it']}) | "
                             f"{s['cpu_on']:.1f} / {s['cpu_off']:.1f} |")
                print(lines[-1], flush=True)
    section = "\n".join([
        "## Ptychography: choosing the iteration by held-out patterns", "",
        f"Written by `{command.strip()}` on {machine_info()['date']}.", "", machine_line(),
        (f"- `distill4d.phase.ptycho.reconstruct(..., validation_fraction={a.fraction:g}, seed={a.seed})`: one position in "
         f"{1 / a.fraction:.0f} (one drawn at random from each run of consecutive positions) is held out "
         "of the updates; after each iteration the run's loss on them is computed and the iterate of the lowest "
         "held-out loss is returned. Against the same run without held-out positions (`validation_fraction=0`, "
         "which returns its last iterate). Data, settings (12 iterations single-slice, 10 multislice), metric "
         "(`score_phase`, SSIM with the projected potential) and timing (process CPU s, one thread) are those "
         "of the `ptycho` section (`ptycho_benchmark.py`); the best iterate is picked by the truth, which a user "
         "does not have."), "",
        "| scan | dose e-/pattern | loss / model | chosen iteration | SSIM returned | SSIM chosen iterate | "
        "SSIM last (held out) | "
        "best SSIM (iteration), held out | SSIM last, no hold-out | best SSIM (iteration), no hold-out | "
        "CPU s held out / none |",
        "|---|---|---|---|---|---|---|---|---|---|---|", *lines,
        "", ("`SSIM returned`: what `reconstruct` returns, the chosen iterate after one more pass over every "
             "position (object only, at the last iteration's step: the held-out positions put back); `SSIM chosen "
             "iterate`: before that pass. The two `best` columns are picked with the truth.")])
    (pb.DATA / f"validation_summary_seed{a.seed}.json").write_text(json.dumps(recs, indent=1))
    print(section)
    if not a.no_results:
        write_section(a.section, section, EXPERIMENTS_MD)  # an experiment: the decision is in docs/experiments.md


if __name__ == "__main__":
    main()
