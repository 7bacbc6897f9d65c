#!/usr/bin/env python3
"""Speed of the Poisson template fit (``--method poisson``) on one core: the low-dose benchmark's
``smooth`` scan (1024 patterns of 128x128 px, 25 % vacuum) at each dose, the template built from
the scan first (timed apart: it is a fixed cost of a scan, not a cost per pattern).

Wall and CPU seconds per 1,000 patterns of the fit (``scheduler="inline"``, one thread), the
template build, the mean iterations, the pixels fitted, and the load average of the machine
before and after (a loaded machine makes the wall time an upper bound). Usage:
``OMP_NUM_THREADS=1 benchmarks/lowdose_speed.py [--doses 1e5 1e3 1e2] [--no-results]``. Finished doses
are kept in ``benchmarks/data/lowdose_speed.json`` and a rerun resumes after them (delete it after
changing the code).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _results import machine_line, write_section  # noqa: E402
from ccstae_benchmark import noisy  # noqa: E402
from ccstae_data import REF_ROWS, load_or_simulate  # noqa: E402

from distill4d.lattice.template import build_template, fit_template_batch, make_template  # noqa: E402


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--doses", type=float, nargs="+", default=[1e5, 1e3, 1e2])
    ap.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    a = ap.parse_args()
    dc0, truth, probe, _ = load_or_simulate((32, 32))
    region = (slice(0, REF_ROWS), slice(0, int((~truth.vacuum[0]).sum())))
    rows = []
    done_path = HERE / "data" / "lowdose_speed.json"  # finished doses: a rerun resumes after them
    done = json.loads(done_path.read_text()) if done_path.exists() else {}
    for i, dose in enumerate(a.doses):
        key = f"{dose:g} {i}"
        if key in done:
            rows.append(done[key])
            continue
        load0 = os.getloadavg()[0]
        dc = noisy(dc0, probe, dose, 10 + i)
        w, c = clocks()
        timg, origin, _ = build_template(dc, region, scheduler="inline", progress=False)
        w1, c1 = clocks()
        tmpl = make_template(timg, origin)
        out = fit_template_batch(np.asarray(dc.data).reshape(-1, *dc.pattern_shape), tmpl)
        w2, c2 = clocks()
        n = dc.n_patterns
        crystal = ~truth.vacuum.reshape(-1)
        rows.append({"dose": dose, "build_wall": w1 - w, "build_cpu": c1 - c,
                     "fit_wall": 1000 * (w2 - w1) / n, "fit_cpu": 1000 * (c2 - c1) / n,
                     "iters": float(out["iterations"][crystal].mean()),
                     "iters_vac": float(out["iterations"][~crystal].mean()),
                     "pixels": int(tmpl.pixels.size), "load": (load0, os.getloadavg()[0])})
        print(rows[-1], flush=True)
        done[key] = rows[-1]
        done_path.parent.mkdir(exist_ok=True)
        done_path.write_text(json.dumps(done))
    if a.no_results:
        return
    L = ["## Low-dose strain: speed of the Poisson fit on one core", "",
         f"Written by `benchmarks/lowdose_speed.py --doses {' '.join(f'{d:g}' for d in a.doses)}`.",
         machine_line(), "",
         "The `lowdose` section's `smooth` scan (32x32 patterns of 128x128 px; 25 % vacuum, whose fits stop as "
         "failed once their disk scale is <= 0 after three steps), one core (`scheduler=\"inline\"`, OMP_NUM_THREADS=1). "
         "Template: built from the scan (a fixed cost per scan: the reference mean, then twice the mean of up to "
         "1024 patterns aligned to it by their fits under the `tv 1` prior). Fit: every pattern against that "
         "template. Load: the 1-minute load "
         "average before and after (2 cores; above 2 the wall time is an upper bound).", "",
         "| dose | fit wall s / 1000 | fit CPU s / 1000 | template wall s | template CPU s | iterations (crystal) "
         "| iterations (vacuum) | pixels fitted | load before, after |",
         "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        L.append(f"| {r['dose']:.0e} | {r['fit_wall']:.1f} | {r['fit_cpu']:.1f} | {r['build_wall']:.0f} | "
                 f"{r['build_cpu']:.0f} | {r['iters']:.1f} | {r['iters_vac']:.1f} | {r['pixels']} | "
                 f"{r['load'][0]:.1f}, {r['load'][1]:.1f} |")
    write_section("lowdose_speed", "\n".join(L) + "\n")


if __name__ == "__main__":
    main()
