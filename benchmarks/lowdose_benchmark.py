#!/usr/bin/env python3
"""Low-dose strain: the Poisson template fit and the spatial priors against correlation and the
centre of mass of disks, next to the per-pattern Cramér–Rao bound.

Two scans with known fields:
- ``smooth``: the CC-ST-AE benchmark's multislice Si [011] scan (``ccstae_data.py``, 32x32, a
  strain gradient, a bump, a shear wave and a rotation field, 25 % vacuum), with its plasmon
  background and Poisson noise (seed = 10 + dose index, not the CC-ST-AE benchmark's seeds);
- ``layers``: a kinematic Si [110] multilayer (24x16 positions, layers of 6 rows alternating
  eps_xx = +1 % / -1 %, soft 2 px disk edges, a 2 % diffuse halo), for the edge width: the
  10-90 % rise of the row-averaged eps_xx across the first layer boundary, in scan positions.

Every method uses the same reference region (the unstrained rows; the first layer) and the same
priors: ``gaussian 0.78`` (a 2-position edge) and ``tv 1`` (LAMBDA in units of each map's noise).
One choice was made on these scans: the multiple of the template's noise removed from its
informative core (five, docs/experiments.md) was picked from the 1e2 scan's template (the pixels
fitted, so mostly the fit's speed); nothing else was tuned on them. Usage:
``benchmarks/lowdose_benchmark.py [--doses 1e5 1e3 1e2] [--ccstae-steps 1500] [--ccstae-doses 1e3 1e2]
[--rerun poisson [--rerun-tag TAG]] [--no-results]``. Finished doses are kept in
``benchmarks/data/lowdose_doses.json`` and a rerun resumes after them (delete it after changing the
code). ``--rerun METHOD...`` recomputes only those methods (``bound``: the bound rows) at finished doses and keeps the other rows
(after a change to one method only); rows rerun under the same ``--rerun-tag`` are not rerun again.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _results import machine_line, write_section  # noqa: E402
from ccstae_benchmark import COMPONENTS, crb, noisy, truth_strain  # noqa: E402
from ccstae_data import REF_ROWS, load_or_simulate  # noqa: E402

from distill4d.bragg import find_bragg_disks, find_bragg_disks_com  # noqa: E402
from distill4d.lattice import strain_map  # noqa: E402
from distill4d.lattice.priors import apply_prior  # noqa: E402
from distill4d.lattice.template import build_template, strain_map_template  # noqa: E402
from distill4d.simulate.kinematic import strained_scan  # noqa: E402

PRIORS = ("none", "gaussian 0.78", "tv 1")
LAYER = 6
BOUND, BOUND_SCAN = "per-pattern bound", "per-pattern bound, scan"


def bound_rows(dc0, probe, sample: np.ndarray, dose: float, cache: dict) -> list[dict]:
    """The bound of the reference pattern (``crb`` of the first position) and the RMS over the
    crystal positions of each position's own bound (computed once at 1 e-, scaled by dose^-1/2)."""
    if "scan" not in cache:
        per = [crb(dc0.data[i, j], probe, 1.0) for i, j in np.argwhere(sample)]
        cache["scan"] = {k: float(np.sqrt(np.mean([b[k] ** 2 for b in per]))) for k in COMPONENTS}
    scan = {k: v / math.sqrt(dose) for k, v in cache["scan"].items()}
    return [{"dose": dose, "method": BOUND, "prior": "none", **crb(dc0.data[0, 0], probe, dose)},
            {"dose": dose, "method": BOUND_SCAN, "prior": "none", **scan}]


def rms_bias(smap, true: dict[str, np.ndarray], sample: np.ndarray) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in COMPONENTS:
        e = getattr(smap, k)[sample] - true[k][sample]
        f = 180 / math.pi if k == "theta" else 100.0
        ok = np.isfinite(e)
        out[k] = float(np.sqrt(np.mean(e[ok] ** 2)) * f) if ok.any() else float("nan")
        out[k + "_bias"] = float(np.mean(e[ok]) * f) if ok.any() else float("nan")
    out["failed"] = float(np.mean(~np.isfinite(smap.eps_xx[sample])))
    return out


def edge_width(eps_xx: np.ndarray) -> float:
    """10-90 % rise (positions) of the row-averaged eps_xx across the boundary at row LAYER."""
    prof = np.nanmean(eps_xx[: 2 * LAYER], axis=1)
    hi, lo = np.nanmean(prof[: LAYER - 2]), np.nanmean(prof[LAYER + 2 : 2 * LAYER])
    x = np.arange(prof.size, dtype=np.float64)
    p = (prof - lo) / (hi - lo)
    fine = np.linspace(0, prof.size - 1, 2001)
    pf = np.interp(fine, x, p)
    i90 = fine[np.flatnonzero(pf >= 0.9)].max(initial=0.0)
    after = fine > i90
    i10 = fine[after & (pf <= 0.1)].min(initial=float(prof.size - 1))
    return float(i10 - i90)


def methods(dc, probe, region, ccstae_steps: int, only: set[str] | None = None):
    """name -> (StrainMap, standard errors or None, seconds); only the methods in ``only`` if given."""
    out = {}
    want = (lambda name: True) if only is None else (lambda name: name in only)
    if want("correlation"):
        t = time.perf_counter()
        out["correlation"] = (strain_map(find_bragg_disks(dc, probe, progress=False), reference=region), None,
                              time.perf_counter() - t)
    if want("com"):
        t = time.perf_counter()
        out["com"] = (strain_map(find_bragg_disks_com(dc, probe, progress=False), reference=region), None,
                      time.perf_counter() - t)
    if want("poisson"):
        t = time.perf_counter()
        timg, origin, _ = build_template(dc, region, progress=False)
        build_s = time.perf_counter() - t
        res = strain_map_template(dc, region, template=timg, origin_px=origin, progress=False)
        out["poisson"] = (res.strain, res.standard_error, time.perf_counter() - t,
                          time.perf_counter() - t - build_s)
    if ccstae_steps > 0 and (want("ccstae") or want("ccstae encoder")):
        import torch

        from distill4d.ml.ccstae import CCSTAETrainConfig, strain_map_ccstae

        torch.set_num_threads(1)
        t = time.perf_counter()
        res = strain_map_ccstae(dc, probe, num_base=2, reference=region, progress=False, device="cpu",
                                train=CCSTAETrainConfig(max_steps=ccstae_steps, seed=0))
        train_s = res.info["seconds"]
        out["ccstae"] = (res.strain, None, time.perf_counter() - t)
        t = time.perf_counter()
        enc = strain_map_ccstae(dc, probe, reference=region, progress=False, device="cpu", refine_steps=0,
                                model=(res.model, {"geometry": res.geometry, "info": res.info}))
        out["ccstae encoder"] = (enc.strain, None, train_s + time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--doses", type=float, nargs="+", default=[1e5, 1e3, 1e2])
    ap.add_argument("--ccstae-steps", type=int, default=1500,
                    help="CC-ST-AE training steps on each scan (0: no CC-ST-AE rows)")
    ap.add_argument("--ccstae-doses", type=float, nargs="*", default=[1e3, 1e2],
                    help="the doses with CC-ST-AE rows (its 1e5 rows are in the ccstae section)")
    ap.add_argument("--rerun", nargs="+", default=None, metavar="METHOD",
                    help="at finished doses, recompute only these methods (e.g. poisson; bound: the bound rows) "
                         "and keep the other rows")
    ap.add_argument("--rerun-tag", default="rerun", help="rows rerun under this tag are kept on a later rerun")
    ap.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    a = ap.parse_args()

    dc0, truth, probe, _ = load_or_simulate((32, 32))
    sample_cols = int((~truth.vacuum[0]).sum())
    region = (slice(0, REF_ROWS), slice(0, sample_cols))
    true = truth_strain(truth, region)
    sample = ~truth.vacuum
    rows = []
    done_path = HERE / "data" / "lowdose_doses.json"  # finished doses: a rerun resumes after them
    done = json.loads(done_path.read_text()) if done_path.exists() else {}
    bound_cache: dict = {}
    for i, dose in enumerate(a.doses):
        steps = a.ccstae_steps if dose in a.ccstae_doses else 0
        key = f"{dose:g} {steps} {i}"
        only = None
        if key in done:
            stale = {r["method"] for r in done[key] if a.rerun and r["method"] in a.rerun
                     and r.get("run") != a.rerun_tag}
            redo_bound = bool(a.rerun) and "bound" in a.rerun and not any(
                r["method"] == BOUND_SCAN and r.get("run") == a.rerun_tag for r in done[key])
            if not stale and not redo_bound:
                rows += done[key]
                continue
            only = stale
        first = len(rows)
        dc = noisy(dc0, probe, dose, 10 + i)
        layers, _ = strained_scan((4 * LAYER, 16), kind="multilayer", strain=0.01, layer_width=LAYER,
                                       dose=dose, seed=20 + i, edge_px=2.0, background=0.02)
        lregion = (slice(0, LAYER), slice(None))
        smooth = methods(dc, probe, region, steps, only)
        sharp = methods(layers, None, lregion, steps, only)  # the probe: the central disk of the mean pattern
        new = {}
        for name, (smap, se, secs, *fit) in smooth.items():
            for prior in PRIORS:
                m = apply_prior(smap, prior, se)
                lm = apply_prior(sharp[name][0], prior, sharp[name][1])
                rec = {"dose": dose, "method": name, "prior": prior, **rms_bias(m, true, sample),
                       "edge_px": edge_width(lm.eps_xx), "seconds": secs,
                       "per_1000_s": 1000 * secs / dc.n_patterns,
                       "fit_per_1000_s": 1000 * fit[0] / dc.n_patterns if fit else None}
                if only is not None:
                    rec["run"] = a.rerun_tag
                new.setdefault(name, []).append(rec)
                print(json.dumps(rec), flush=True)
        if only is None:
            rows += [r for recs in new.values() for r in recs]
            rows += bound_rows(dc0, probe, sample, dose, bound_cache)
        else:  # the kept rows in their order, each rerun method's rows where its old ones were
            for r in done[key]:
                if r["method"] in (BOUND, BOUND_SCAN) and redo_bound:
                    if r["method"] == BOUND:
                        rows += [{**b, "run": a.rerun_tag} for b in bound_rows(dc0, probe, sample, dose, bound_cache)]
                elif r["method"] not in new:
                    rows.append(r)
                elif r["prior"] == PRIORS[0]:
                    rows += new[r["method"]]
        done[key] = rows[first:]
        done_path.parent.mkdir(exist_ok=True)
        done_path.write_text(json.dumps(done))
    (HERE / "data").mkdir(exist_ok=True)
    (HERE / "data" / "lowdose_last.json").write_text(json.dumps(rows, indent=1))
    if a.no_results:
        return
    L = ["## Low-dose strain: Poisson template fit and spatial priors", "",
         f"Written by `benchmarks/lowdose_benchmark.py --doses {' '.join(f'{d:g}' for d in a.doses)} "
         f"--ccstae-steps {a.ccstae_steps} --ccstae-doses {' '.join(f'{d:g}' for d in a.ccstae_doses)}`"
         + (f"; the {', '.join(a.rerun)} rows rerun with `--rerun {' '.join(a.rerun)}` (the other rows from the "
            "run before, same data and seeds)." if a.rerun else "."),
         machine_line(), "",
         "Scan `smooth`: the CC-ST-AE benchmark's multislice scan (32x32, Si [011], gradient, "
         "bump, shear wave and rotation fields, 25 % vacuum; plasmon background 50 %; noise seed 10 + dose "
         "index). RMS and mean error (bias) over the crystal positions against the truth relative to the "
         "reference rows (eps in %, theta in degrees). Edge: 10-90 % rise of eps_xx across a +1 % / -1 % layer "
         "boundary of a kinematic multilayer at the same dose (scan positions). Priors: `gaussian 0.78` "
         "(a 2-position edge), `tv 1` (edge-preserving; LAMBDA in units of each map's noise; the Poisson fit's "
         "standard errors weight it). `poisson`: `--method poisson` (template built from the scan; its time is "
         "template and fit, then the fit alone in brackets). `ccstae`: CC-ST-AE trained on each scan itself "
         "(seed 0, 1 thread) with its refinement; `ccstae encoder`: the same model read out from its encoder "
         "(both times include training). Per-pattern "
         "bound: `ccstae_benchmark.crb` of the reference pattern (an unbiased estimator's floor; a fit that shrinks "
         "towards its template, as at 1e2, can fall below it); `per-pattern bound, scan`: the RMS over the crystal "
         "positions of each position's own bound, the floor of the RMS rows. The bound rows before the `bound` rerun "
         "were 1.2-1.35x too low: the pattern was taken as zero beyond the detector, and the jump at its edge faked "
         "information (`benchmarks/lowdose_gap.py`, docs/experiments.md). One choice was made on these scans: the multiple of the template's "
         "noise removed from its informative core (five, docs/experiments.md) was picked from the 1e2 scan's "
         "template (the pixels fitted, so mostly the fit's speed); nothing else was tuned on them. The `poisson` "
         "reference is one deformation fitted jointly to the reference rows' patterns, not the median of their "
         "fits: changed after the 1e3 row showed an eps_xx bias of -0.116 % with the median, which six noise seeds "
         "showed to be the reference's noise (docs/experiments.md); no parameter was set on the scan. Times are "
         "wall times on the shared machine, so rows rerun later carry the load of their run.", "",
         "| dose | method | prior | eps_xx | eps_yy | eps_xy | theta | eps_xx bias | edge px | failed | s per 1000 |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["method"] in (BOUND, BOUND_SCAN):
            L.append(f"| {r['dose']:.0e} | {r['method']} | - | {r['eps_xx']:.3f} | {r['eps_yy']:.3f} | "
                     f"{r['eps_xy']:.3f} | {r['theta']:.3f} | | | | |")
            continue
        L.append(f"| {r['dose']:.0e} | {r['method']} | {r['prior']} | {r['eps_xx']:.3f} | {r['eps_yy']:.3f} | "
                 f"{r['eps_xy']:.3f} | {r['theta']:.3f} | {r['eps_xx_bias']:+.3f} | {r['edge_px']:.2f} | "
                 f"{r['failed']:.2f} | {r['per_1000_s']:.0f}"
                 + (f" ({r['fit_per_1000_s']:.0f})" if r.get("fit_per_1000_s") is not None else "") + " |")
    write_section("lowdose", "\n".join(L) + "\n")


if __name__ == "__main__":
    main()
