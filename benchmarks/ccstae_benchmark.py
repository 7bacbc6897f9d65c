#!/usr/bin/env python3
"""CC-ST-AE vs the classical correlation path and centre-of-mass-of-disks on noisy scans with
known strain: RMS errors of eps_xx, eps_yy, eps_xy (%) and theta (degrees) over the sample
positions, the fraction of positions labelled correctly sample / vacuum, and time per 1,000
patterns on this CPU.

Data: ``ccstae_data.py`` (Si [011] 20 nm, abTEM multislice, 32x32 scan, 128x128 px;
an eps_xx gradient, an eps_yy bump, an eps_xy wave and a dislocation-like rotation field;
reference rows 0-5 unstrained; the last 25 % of the columns vacuum). Each dose gets a strong
plasmon-like background (``PLASMON_FRACTION`` of the flux, Lorentzian ⊛ probe, width
``PLASMON_WIDTH_PX``) then Poisson noise (seed = dose index). All three methods take the same
reference region (rows 0-5, sample columns) and the noise-free vacuum probe; the truth is the
simulator's F relative to the same region. CC-ST-AE trains on each noisy scan itself
(``--steps``, seed 0) and nothing was tuned on these scans' truth beyond what the note in
RESULTS.md says.

Besides the methods the table has two yardsticks: the *zero map* (a map of no strain at all:
its RMS error is the RMS of the truth, so a method that only shrinks towards the mean cannot
look good) and the *per-pattern bound*, the Cramér–Rao bound of an unbiased estimate of the
affine from one pattern (Poisson counts, the noise-free reference pattern and the plasmon
background known exactly; ``crb``). Beating the bound needs information from the neighbours:
the ``smooth`` rows average each method's maps over neighbouring positions (a Gaussian of
sigma scan positions, :meth:`StrainMap.smoothed`), the same for every method.

Usage: ``.venv/bin/python benchmarks/ccstae_benchmark.py [--doses 1e5 1e3 1e2] [--steps 1500]``
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
from _results import machine_info, machine_line, write_section  # noqa: E402
from ccstae_data import REF_ROWS, load_or_simulate  # noqa: E402

from distill4d.bragg import find_bragg_disks, find_bragg_disks_com  # noqa: E402
from distill4d.datacube import DataCube  # noqa: E402
from distill4d.lattice import strain_map  # noqa: E402
from distill4d.lattice.strain import strain_from_deformation  # noqa: E402
from distill4d.simulate.augment import plasmon_background, poisson_noise  # noqa: E402

PLASMON_FRACTION = 0.5
PLASMON_WIDTH_PX = 6.4
COMPONENTS = ("eps_xx", "eps_yy", "eps_xy", "theta")


def noisy(dc: DataCube, probe: np.ndarray, dose: float, seed: int) -> DataCube:
    rng = np.random.default_rng(seed)
    data = np.asarray(dc.data, dtype=np.float64).reshape(-1, *dc.pattern_shape)
    out = np.empty(data.shape, dtype=np.float32)
    for i, p in enumerate(data):
        p = plasmon_background(p, probe, fraction=PLASMON_FRACTION, width_px=PLASMON_WIDTH_PX)
        out[i] = poisson_noise(p, dose_e=dose, rng=rng)
    return DataCube(out.reshape(dc.shape), dc.calibration, name=f"dose {dose:g}")


def truth_strain(truth, region) -> dict[str, np.ndarray]:
    F = truth.F
    ref = np.median(F[region][~truth.vacuum[region]], axis=0)
    return strain_from_deformation(F @ np.linalg.inv(ref))


def crb(pattern: np.ndarray, probe: np.ndarray, dose: float, mode: str = "nearest") -> dict[str, float]:
    """Per-pattern Cramér–Rao bound (std; % and degrees) of eps_xx, eps_yy, eps_xy and theta for
    ``dose`` electrons on ``pattern`` (noise-free) plus the benchmark's plasmon background: the
    inverse Fisher information of a Poisson image over the 4 entries of ``A`` and 2 of ``t`` in
    ``pattern(c + A u + t)`` (about the direct beam c; bicubic, central differences). Beyond the
    detector the pattern continues with its edge values: with zeros there (``mode="constant"``, as
    before) the edge pixels jumped to zero under a step of 1e-4 and faked information, a bound 1.2-1.35x
    too low (0.399 / 0.586 / 0.353 % and 0.203 deg instead of 0.480 / 0.663 / 0.471 % and 0.270 deg at
    1e3 e-; dropping the outer 2 px instead gives the same as this; ``lowdose_gap.py``). ``mode``: how
    ``scipy.ndimage.map_coordinates`` continues the pattern (``"constant"``: the old, faulty bound)."""
    from scipy import ndimage

    from distill4d.simulate.augment import lorentzian_background

    p = np.asarray(pattern, dtype=np.float64)
    bg = lorentzian_background(np.asarray(probe, dtype=np.float64), PLASMON_WIDTH_PX)
    bg *= PLASMON_FRACTION * p.sum() / bg.sum()
    ix, iy = np.indices(p.shape).astype(np.float64)
    w = np.where(p > 0.5 * p.max(), p, 0.0)
    c = np.array([(w * ix).sum(), (w * iy).sum()]) / w.sum()
    u = np.stack([ix - c[0], iy - c[1]])

    def moved(d: np.ndarray) -> np.ndarray:
        pos = np.einsum("ij,jhw->ihw", np.eye(2) + d[:4].reshape(2, 2), u) + (c + d[4:])[:, None, None]
        return ndimage.map_coordinates(p, pos, order=3, mode=mode)

    h = 1e-4
    J = np.array([(moved(h * e) - moved(-h * e)).ravel() / (2 * h) for e in np.eye(6)])
    k = dose / (p.sum() + bg.sum())
    lam = (p + bg).ravel() * k
    keep = lam > 0
    C = np.linalg.inv((J[:, keep] * k / lam[keep]) @ (J[:, keep] * k).T)
    # F = A^-T ≈ I - dA^T: eps_xx = -dA00, eps_yy = -dA11, eps_xy = -(dA01 + dA10)/2, theta = ±(dA10 - dA01)/2
    lin = {"eps_xx": [-1, 0, 0, 0], "eps_yy": [0, 0, 0, -1], "eps_xy": [0, -0.5, -0.5, 0], "theta": [0, 0.5, -0.5, 0]}
    out = {}
    for name, v in lin.items():
        v = np.array(v + [0, 0], dtype=np.float64)
        out[name] = float(np.sqrt(v @ C @ v)) * (180 / math.pi if name == "theta" else 100.0)
    return out


def errors(smap, true: dict[str, np.ndarray], sample: np.ndarray) -> dict[str, float]:
    out = {}
    for k in COMPONENTS:
        e = getattr(smap, k)[sample] - true[k][sample]
        f = 180 / math.pi if k == "theta" else 100.0
        out[k] = float(np.sqrt(np.nanmean(e**2)) * f) if np.isfinite(e).any() else float("nan")
    out["failed"] = float(np.mean(~np.isfinite(smap.eps_xx[sample])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--doses", type=float, nargs="+", default=[1e5, 1e4, 1e3, 3e2, 1e2])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--smooth", type=float, default=2.0,
                    help="sigma (scan positions) of the smoothed rows (default 2; 0: none)")
    ap.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    ap.add_argument("--rerun-bound", action="store_true",
                    help="only recompute the per-pattern bound rows (and their lines) of the ccstae section in "
                         "RESULTS.md, for the doses it holds; every other row is kept")
    a = ap.parse_args()
    if a.rerun_bound:
        return _rerun_bound()
    import torch

    from distill4d.ml.ccstae import CCSTAETrainConfig, strain_map_ccstae

    torch.set_num_threads(2)
    dc0, truth, probe, _ = load_or_simulate((32, 32))
    rx, ry = dc0.scan_shape
    sample_cols = int((~truth.vacuum[0]).sum())
    region = (slice(0, REF_ROWS), slice(0, sample_cols))
    true = truth_strain(truth, region)
    sample = ~truth.vacuum
    zero = {k: float(np.sqrt(np.mean(true[k][sample] ** 2)) * (180 / math.pi if k == "theta" else 100.0))
            for k in COMPONENTS}
    rows = []
    for i, dose in enumerate(a.doses):
        dc = noisy(dc0, probe, dose, i)
        rec = {"dose": dose, "zero map": zero, "per-pattern bound": crb(dc0.data[0, 0], probe, dose)}
        maps = {}
        t = time.perf_counter()
        pk = find_bragg_disks(dc, probe, progress=False)
        maps["correlation"] = strain_map(pk, reference=region)
        rec["correlation"] = {**errors(maps["correlation"], true, sample), "seconds": time.perf_counter() - t}
        t = time.perf_counter()
        pk = find_bragg_disks_com(dc, probe, progress=False)
        maps["com"] = strain_map(pk, reference=region)
        rec["com"] = {**errors(maps["com"], true, sample), "seconds": time.perf_counter() - t}
        t = time.perf_counter()
        res = strain_map_ccstae(dc, probe, num_base=2, reference=region, progress=False, device="cpu",
                                train=CCSTAETrainConfig(max_steps=a.steps, seed=0))
        total = time.perf_counter() - t
        maps["ccstae"] = res.strain
        rec["ccstae"] = {**errors(res.strain, true, sample), "seconds": total,
                         "train_seconds": res.info["seconds"], "steps": res.info["steps"],
                         "stopped": res.info["stopped"],
                         "labelled_correctly": float((res.sample == sample).mean())}
        # the published read-out: the encoder's transforms as they are (same trained model, no refinement)
        t = time.perf_counter()
        enc_only = strain_map_ccstae(dc, probe, reference=region, progress=False, device="cpu",
                                     model=(res.model, {"geometry": res.geometry, "info": res.info}), refine_steps=0)
        rec["ccstae encoder only"] = {**errors(enc_only.strain, true, sample),
                                      "seconds": res.info["seconds"] + time.perf_counter() - t}
        if a.smooth > 0:
            for m in ("correlation", "com", "ccstae"):
                t = time.perf_counter()
                sm = maps[m].smoothed(a.smooth)
                rec[f"{m} smooth {a.smooth:g}"] = {**errors(sm, true, sample),
                                                   "seconds": rec[m]["seconds"] + time.perf_counter() - t}
        rows.append(rec)
        print(json.dumps(rec), flush=True)
    out = HERE / "data" / "ccstae_last.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "steps": a.steps, "machine": machine_info()}, indent=1))
    if a.no_results:
        return
    n = rx * ry
    sm_txt = f" --smooth {a.smooth:g}" if a.smooth != 2.0 else ""
    L = ["## CC-ST-AE vs correlation and centre-of-mass-of-disks (noisy scans with known strain)", "",
         f"Written by `benchmarks/ccstae_benchmark.py --doses {' '.join(f'{d:g}' for d in a.doses)} "
         f"--steps {a.steps}{sm_txt}` on {machine_info()['date']}.", "", machine_line(),
         f"- Data: `benchmarks/ccstae_data.py`: Si [011] 20 nm multislice, {rx}x{ry} scan, 128x128 px, 300 kV, "
         "2 mrad; eps_xx gradient -1..+1 %, eps_yy bump -0.6 %, eps_xy wave 0.4 %, rotation field 1 deg (core 3 "
         f"positions); reference rows 0-{REF_ROWS - 1} (unstrained); last 25 % of the columns vacuum. Each dose: "
         f"plasmon-like background of {PLASMON_FRACTION:.0%} of the flux, then Poisson noise.",
         "- RMS errors over the sample positions (truth relative to the same reference region); NaN positions "
         "(failed fits) are left out of the RMS and counted in 'failed'. `ccstae`: trained on each noisy scan "
         f"itself (at most {a.steps} steps, batch 32, seed 0, CPU, 2 threads), then each pattern's own affine "
         "fitted to its base (`refine_steps` 100, the default); its time includes preparation, training, "
         "refinement and read-out. `ccstae encoder only`: the same trained model read out from its encoder "
         "(the published read-out, `refine_steps=0`). Classical: automatic parameters, same probe and reference.",
         "- Yardsticks: `zero map` = a map of no strain (its error is the RMS of the truth: a method that shrinks "
         "everything to the mean scores this); `per-pattern bound` = Cramér-Rao bound (std) of any unbiased "
         "estimate from one pattern (Poisson, noise-free reference pattern and background known). "
         f"`smooth {a.smooth:g}` rows: the method's maps averaged by a Gaussian of sigma {a.smooth:g} scan "
         "positions (`StrainMap.smoothed`), the same for every method; sigma was not tuned per method or dose.", "",
         "| dose e-/pattern | method | eps_xx % | eps_yy % | eps_xy % | theta deg | failed | sample/vacuum correct "
         "| s per 1,000 patterns |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for m, e in r.items():
            if m == "dose":
                continue
            lab = f"{e['labelled_correctly']:.3f}" if "labelled_correctly" in e else "n/a"
            fail = f"{e['failed']:.2f}" if "failed" in e else ""
            sec = f"{1000 * e['seconds'] / n:.0f}" if "seconds" in e else ""
            L.append(f"| {r['dose']:.0e} | {m} | {e['eps_xx']:.3f} | {e['eps_yy']:.3f} | {e['eps_xy']:.3f} | "
                     f"{e['theta']:.3f} | {fail} | {lab if 'failed' in e else ''} | {sec} |")
    L += ["", "Goal (issue 6): at 1e2-1e3 e-/pattern, CC-ST-AE errors at least 3x smaller than correlation and "
          "under 0.3 % / 0.3 deg. Checked for each CC-ST-AE row against plain correlation (the goal as written) "
          "and, for the smoothed row, against correlation smoothed the same way (like for like)."]

    def verdict(m: dict, c: dict) -> str:
        ok = all(m[k] < 0.3 and (not math.isfinite(c[k]) or 3 * m[k] <= c[k]) for k in COMPONENTS)
        return ("PASS" if ok else "FAIL") + " (" + ", ".join(f"{k} {m[k]:.3f} vs {c[k]:.3f}" for k in COMPONENTS) + ")"

    for r in rows:
        if r["dose"] > 1e3:
            continue
        c = r["correlation"]
        L.append(f"- {r['dose']:.0e}: ccstae vs correlation: {verdict(r['ccstae'], c)}")
        key = f"ccstae smooth {a.smooth:g}"
        if key in r:
            L.append(f"  - {key} vs correlation: {verdict(r[key], c)}")
            L.append(f"  - {key} vs correlation smooth {a.smooth:g}: {verdict(r[key], r[f'correlation smooth {a.smooth:g}'])}")
        b = r["per-pattern bound"]
        L.append("  - per-pattern bound / 0.3: " + ", ".join(
            f"{k} {b[k] / 0.3:.1f}x" for k in COMPONENTS) + " (above 1: no unbiased single-pattern estimate "
            "can meet 0.3 % / 0.3 deg)")
    write_section("ccstae", "\n".join(L))


def _rerun_bound() -> None:
    """The ``per-pattern bound`` rows of the ``ccstae`` section recomputed with :func:`crb` (same scan and
    doses as the section's table), every other line kept; a line under the table says when."""
    import re

    from _results import RESULTS_MD

    text = RESULTS_MD.read_text()
    start, end = text.index("<!-- ccstae:start -->"), text.index("<!-- ccstae:end -->")
    section = text[start + len("<!-- ccstae:start -->"):end].strip("\n")
    dc0, _, probe, _ = load_or_simulate((32, 32))
    bounds = {}
    out = []
    for line in section.splitlines():
        m = re.match(r"\| (\S+) \| per-pattern bound \|", line)
        if m:
            b = bounds[float(m.group(1))] = crb(dc0.data[0, 0], probe, float(m.group(1)))
            line = (f"| {m.group(1)} | per-pattern bound | " + " | ".join(f"{b[k]:.3f}" for k in COMPONENTS)
                    + " |  |  |  |")
        m = re.match(r"- (\S+): ccstae vs correlation", line)
        if m:
            dose = float(m.group(1))
        if line.startswith("  - per-pattern bound / 0.3:"):
            b = bounds[dose]
            line = ("  - per-pattern bound / 0.3: " + ", ".join(f"{k} {b[k] / 0.3:.1f}x" for k in COMPONENTS)
                    + " (above 1: no unbiased single-pattern estimate can meet 0.3 % / 0.3 deg)")
        if line.startswith("- Bound rows recomputed"):
            continue
        out.append(line)
        if line.startswith("Goal (issue 6)"):
            out.insert(len(out) - 1, f"- Bound rows recomputed on {machine_info()['date']} by `benchmarks/"
                       "ccstae_benchmark.py --rerun-bound` (the pattern continued by its edge values beyond the "
                       "detector; the earlier rows took it as zero there, which faked information at its edge "
                       "and gave a bound 1.2-1.35x too low); the other rows are those of the run above.\n")
    write_section("ccstae", "\n".join(out))


if __name__ == "__main__":
    main()
