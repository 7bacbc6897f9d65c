#!/usr/bin/env python3
"""FCU-Net vs the correlation detector: strain error against dose on the multislice scans.

The strain sets of ``fcunet_benchmark.py`` (``thick``, ``tilt``, ``tilt_gradient``: Si [011]
multilayers, layers of eps_xx = +1 % / -1 %, the same simulations and seeds) are recorded at
each ``--doses`` (electrons per pattern, Poisson; ``inf``: noise-free). Both detectors' peaks
go through ``strain_map(peaks, reference=<first layer>)``; the RMS errors of eps_xx and eps_yy
against the simulator's truth are split into the scan-row part (a bias shared by a layer's
patterns) and the pattern-to-pattern scatter (``fcunet_benchmark.error_parts``). Noise-free,
the scatter of the on-zone ``thick`` set is 0 (its patterns repeat within a layer) and what
remains is the detector's own bias; the lower doses show how fast each detector's noise grows.

Writes the section ``fcunet_dose`` of benchmarks/RESULTS.md and the raw numbers to
benchmarks/data/fcunet_dose.json. Scans are cached in benchmarks/data/fcunet/.

Usage (repository root):
    .venv/bin/python benchmarks/fcunet_dose.py                      # shipped weights
    .venv/bin/python benchmarks/fcunet_dose.py --weights W.pt --no-results
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fcunet_benchmark as fb  # noqa: E402
from _results import machine_info, machine_line, write_section  # noqa: E402

from distill4d.ml.fcunet_detect import load_fcunet  # noqa: E402

SECTION = "fcunet_dose"
DEFAULT_DOSES = ("inf", "1e6", "1e5", "1e4")
#: The FCU-Net paper's eps_yy goals (%): on zone (set thick) and tilted.
GOAL_ON_ZONE, GOAL_TILTED = 0.02, 0.1


def parse_dose(text: str) -> float | None:
    """Electrons per pattern; ``inf`` (or ``none``): noise-free (None)."""
    if text.lower() in ("inf", "none"):
        return None
    value = float(text)
    if not np.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"a dose is a positive number of electrons per pattern or 'inf', got {text!r}")
    return value


def dose_label(dose: float | None) -> str:
    return "noise-free" if dose is None else f"{dose:.0e}".replace("e+0", "e")


def run(names: list[str], doses: list[float | None], scan: tuple[int, int], *, weights, device: str) -> list[dict]:
    """One row per (set, dose): both detectors' strain RMS errors and their row / scatter parts
    (``fcunet_benchmark.run_strain_sets`` at that dose, one FCU-Net pass, no stretch test)."""
    rows = []
    for dose in doses:
        results, _ = fb.run_strain_sets(names, scan, weights=weights, passes=1, device=device, seed=0,
                                        resimulate=False, dose_e=dose, stretch=False)
        rows += [{"set": name, "dose_e": dose, **results[name]} for name in names]
    rows.sort(key=lambda r: names.index(r["set"]))  # stable: each set's doses stay in the order asked
    for r in rows:
        f, c = r["fcunet"]["strain_parts"], r["classical"]["strain_parts"]
        fb.log(f"{r['set']} {dose_label(r['dose_e'])}: eps_xx RMS FCU-Net {f['eps_xx']['rms']:.3f} / correlation "
               f"{c['eps_xx']['rms']:.3f}, eps_yy {f['eps_yy']['rms']:.3f} / {c['eps_yy']['rms']:.3f} %")
    return rows


def _cell(part: dict) -> str:
    if part.get("rms") is None:
        return "-"
    return f"{part['rms']:.3f} ({part['rows']:.3f} / {part['scatter']:.3f})"


def render(rows: list[dict], meta: dict) -> str:
    lines = [
        f"<!-- {SECTION}:start -->",
        "## FCU-Net vs correlation: strain error against dose",
        "",
        f"Written by `benchmarks/fcunet_dose.py` on {meta['machine']['date']} (whole run {meta['seconds']:.0f} s).",
        "",
        machine_line(meta["machine"]),
        f"- Command: `{meta['command']}`",
        f"- Weights: `{meta['weights']}` (one pass, dropout off, device `{meta['device']}`); classical: "
        "`find_bragg_disks(dc, probe)` with its automatic parameters.",
        f"- Data: the strain sets of the FCU-Net benchmark ({meta['scan'][0]}x{meta['scan'][1]} positions, the same "
        "multislice simulations and seeds) recorded at each dose (Poisson, electrons per pattern; noise-free: "
        "the exact intensities). Strain: `strain_map(peaks, reference=<first layer>)`.",
        "",
        "RMS error (%) against the simulator's truth, as RMS (row part / scatter): the row part is the RMS of "
        "each scan row's mean error (a bias shared by a layer's patterns: in `thick` and `tilt` every pattern of "
        "a layer is the same crystal, so noise-free the scatter is 0 and only the detector's bias is left), the "
        "scatter the pattern-to-pattern rest. The true eps_xx steps by 2 % between layers; the true eps_yy is 0.",
        "",
        "| set | dose (e-/pattern) | FCU-Net eps_xx | correlation eps_xx | FCU-Net eps_yy | correlation eps_yy |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        f, c = r["fcunet"]["strain_parts"], r["classical"]["strain_parts"]
        lines.append(f"| `{r['set']}` | {dose_label(r['dose_e'])} | {_cell(f['eps_xx'])} | {_cell(c['eps_xx'])} | "
                     f"{_cell(f['eps_yy'])} | {_cell(c['eps_yy'])} |")
    lines += ["", f"The paper's eps_yy goals (<= {GOAL_ON_ZONE} % on zone, < {GOAL_TILTED} % tilted) against each "
              "detector, per dose (PASS / FAIL):", ""]
    for r in rows:
        goal, op = (GOAL_ON_ZONE, "<=") if r["set"] == "thick" else (GOAL_TILTED, "<")
        verdict = []
        for m, label in (("fcunet", "FCU-Net"), ("classical", "correlation")):
            v = r[m]["strain_parts"]["eps_yy"]["rms"]
            ok = v is not None and (v <= goal if op == "<=" else v < goal)
            verdict.append(f"{label} {v:.3f} % ({'PASS' if ok else 'FAIL'})" if v is not None else f"{label} -")
        lines.append(f"- `{r['set']}` {dose_label(r['dose_e'])} (goal {op} {goal} %): " + ", ".join(verdict))
    lines += ["", f"Raw numbers: `benchmarks/data/{SECTION}.json`.", f"<!-- {SECTION}:end -->"]
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, default=None, help="FCU-Net weights (default: the shipped ones)")
    p.add_argument("--sets", default=",".join(fb.STRAIN_SETS), help="comma list of strain sets")
    p.add_argument("--doses", type=parse_dose, nargs="+", default=[parse_dose(d) for d in DEFAULT_DOSES],
                   help="electrons per pattern, 'inf' for noise-free (default: inf 1e6 1e5 1e4)")
    p.add_argument("--scan", type=int, nargs=2, default=(16, 16), metavar=("RX", "RY"))
    p.add_argument("--device", default="cpu", help="FCU-Net device (default cpu)")
    p.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    a = parse_args(argv)
    names = a.sets.split(",")
    fb.check_strain_sets(names, tuple(a.scan))
    load_fcunet(a.weights)  # fail early on missing or broken weights
    t0 = time.perf_counter()
    rows = run(names, a.doses, tuple(a.scan), weights=a.weights, device=a.device)
    meta = {"command": ".venv/bin/python benchmarks/fcunet_dose.py" + (" " + shlex.join(argv) if argv else ""),
            "weights": str(a.weights) if a.weights else fb._repo_relative(fb.DEFAULT_WEIGHTS),
            "device": a.device, "scan": list(a.scan), "machine": machine_info(), "seconds": time.perf_counter() - t0}
    out = HERE / "data" / f"{SECTION}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    text = render(rows, meta)
    print(text)
    if not a.no_results:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
