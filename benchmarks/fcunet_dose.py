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

Each set's shot-noise floor is the Cramér–Rao bound of one pattern
(``distill4d.lattice.precision.strain_crb``, eps_xx and eps_yy estimated together, from the
simulator's own response to a stretched cell: ``distill4d.simulate.multislice.strain_renderer``),
RMS over the scan's patterns (and the reference layer's mean), at each dose: no unbiased
per-pattern detector can have a smaller RMS error. The bound treats shear, rotation and the
pattern origin as known, so it is optimistic: a goal below it is out of reach at that dose, a
goal above it is not thereby reachable. Bounds are cached in benchmarks/data/fcunet/.

Writes the section ``fcunet_dose`` of benchmarks/RESULTS.md and the raw numbers to
benchmarks/data/fcunet_dose.json. Scans are cached in benchmarks/data/fcunet/.

Usage (repository root):
    .venv/bin/python benchmarks/fcunet_dose.py                      # shipped weights
    .venv/bin/python benchmarks/fcunet_dose.py --weights W.pt --no-results
    .venv/bin/python benchmarks/fcunet_dose.py --views flips        # section fcunet_dose_views_flips
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

from distill4d.ml.fcunet import FCUNET_VIEWS  # noqa: E402
from distill4d.ml.fcunet.detect import load_fcunet  # noqa: E402

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


FLOOR_COMPONENTS = ("eps_xx", "eps_yy")


def _state_bounds(truth, shape: tuple[int, int], tilt_step_mrad: float) -> tuple[dict, np.ndarray]:
    """Per-electron Cramér–Rao std of eps_xx, eps_yy for each simulated state of a scan, and
    each position's state key (``simulate.scan.state_keys`` plus the simulated thickness)."""
    from distill4d.lattice.precision import strain_crb
    from distill4d.simulate.crystals import orient, prototype
    from distill4d.simulate.kinematic import DEFAULT_CALIBRATION as cal
    from distill4d.simulate.multislice import CBEDSettings, stretch_cell, strain_renderer
    from distill4d.simulate.scan import STRAIN_STEP, state_keys

    F = truth.F
    if np.any(np.abs(F[..., 0, 1]) > 1e-12) or np.any(np.abs(F[..., 1, 0]) > 1e-12) or truth.vacuum.any():
        raise ValueError("the floor needs diagonal deformations and no vacuum")
    keys = np.concatenate([state_keys(F, truth.tilt_mrad, STRAIN_STEP, tilt_step_mrad),
                           np.round(truth.thickness_A, 3)[..., None]], -1)
    atoms, _ = orient(prototype("Si"), (0, 1, 1))
    bounds = {}
    for key in sorted({tuple(k) for k in keys.reshape(-1, 5)}):
        settings = CBEDSettings(energy_eV=cal.energy_eV, semiangle_mrad=cal.semiangle_mrad, shape=shape,
                                q_pixel_inv_A=cal.q_pixel_inv_A, thicknesses_A=(key[4],),
                                tilt_mrad=(key[2] * tilt_step_mrad, key[3] * tilt_step_mrad))
        crystal = stretch_cell(atoms, 1 + key[0] * STRAIN_STEP, 1 + key[1] * STRAIN_STEP)
        bounds[key] = strain_crb(strain_renderer(crystal, settings, device="cpu"), dose_e=1.0,
                                 components=FLOOR_COMPONENTS)
    return bounds, keys


def shot_noise_floor(name: str, scan: tuple[int, int]) -> dict:
    """The set's per-electron floor: RMS over its patterns of the per-pattern Cramér–Rao std
    (fractions at 1 e-/pattern; divide by sqrt(dose)), the reference layer's mean included.
    Cached in ``fb.CACHE``."""
    path = fb.CACHE / f"floor_{name}_{scan[0]}x{scan[1]}.json"
    if path.exists():
        return json.loads(path.read_text())
    t = time.perf_counter()
    dc, truth, *_ = fb.load_or_simulate(name, scan, (128, 128), False, None)
    from distill4d.simulate.scan import TILT_STEP_MRAD

    tilt_step = fb.TILT_GRADIENT_STEP_MRAD if name == "tilt_gradient" else TILT_STEP_MRAD  # as simulated
    bounds, keys = _state_bounds(truth, tuple(dc.data.shape[2:]), tilt_step)
    ref = np.zeros(keys.shape[:2], dtype=bool)
    ref[: fb.svp.LAYER_WIDTH] = True
    out: dict = {"states": len(bounds)}
    for c in FLOOR_COMPONENTS:
        b2 = np.array([[bounds[tuple(k)][c] ** 2 for k in row] for row in keys])
        out[c] = float(np.sqrt(b2.mean() + b2[ref].mean() / ref.sum()))
    out["seconds"] = time.perf_counter() - t
    path.write_text(json.dumps(out, indent=1))
    fb.log(f"{name}: shot-noise floor at 1 e-/pattern eps_xx {out['eps_xx']:.3g}, eps_yy {out['eps_yy']:.3g} "
           f"({out['states']} states, {out['seconds']:.0f} s)")
    return out


def floor_pct(row: dict, component: str) -> float | None:
    """A row's floor (%) of ``component`` at its dose (None: noise-free, no floor)."""
    return None if row["dose_e"] is None else 100.0 * row["floor_per_e"][component] / np.sqrt(row["dose_e"])


def section_name(views: str) -> str:
    """The section: ``fcunet_dose`` (RESULTS.md), or ``fcunet_dose_views_<views>`` with test-time views
    (benchmarks/data/experiments.md)."""
    return SECTION if views == "none" else f"{SECTION}_views_{views}"


def run(names: list[str], doses: list[float | None], scan: tuple[int, int], *, weights, device: str,
        views: str = "none") -> list[dict]:
    """One row per (set, dose): both detectors' strain RMS errors and their row / scatter parts
    (``fcunet_benchmark.run_strain_sets`` at that dose, one FCU-Net pass, no stretch test)."""
    rows = []
    for dose in doses:
        results, _ = fb.run_strain_sets(names, scan, weights=weights, passes=1, views=views, device=device, seed=0,
                                        resimulate=False, dose_e=dose, stretch=False)
        rows += [{"set": name, "dose_e": dose, **results[name]} for name in names]
    rows.sort(key=lambda r: names.index(r["set"]))  # stable: each set's doses stay in the order asked
    floors = {name: shot_noise_floor(name, scan) for name in names}
    for r in rows:
        r["floor_per_e"] = {c: floors[r["set"]][c] for c in FLOOR_COMPONENTS}
    for r in rows:
        f, c = r["fcunet"]["strain_parts"], r["classical"]["strain_parts"]
        fb.log(f"{r['set']} {dose_label(r['dose_e'])}: eps_xx RMS FCU-Net {f['eps_xx']['rms']:.3f} / correlation "
               f"{c['eps_xx']['rms']:.3f}, eps_yy {f['eps_yy']['rms']:.3f} / {c['eps_yy']['rms']:.3f} %")
    return rows


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _cell(part: dict) -> str:
    if part.get("rms") is None:
        return "-"
    return f"{part['rms']:.3f} ({part['rows']:.3f} / {part['scatter']:.3f})"


def _goal_doses(rows: list[dict]) -> list[tuple[str, float, float]]:
    """(set, eps_yy floor at 1 e-/pattern as a fraction, goal %) once per set."""
    seen: dict[str, tuple[str, float, float]] = {}
    for r in rows:
        seen.setdefault(r["set"], (r["set"], r["floor_per_e"]["eps_yy"], GOAL_ON_ZONE if r["set"] == "thick" else GOAL_TILTED))
    return list(seen.values())


def render(rows: list[dict], meta: dict) -> str:
    views = meta.get("views", "none")
    section = section_name(views)
    lines = [
        f"<!-- {section}:start -->",
        "## FCU-Net vs correlation: strain error against dose"
        + ("" if views == "none" else f" (FCU-Net with test-time views `{views}`)"),
        "",
        f"Written by `benchmarks/fcunet_dose.py` on {meta['machine']['date']} (whole run {meta['seconds']:.0f} s).",
        "",
        machine_line(meta["machine"]),
        f"- Command: `{meta['command']}`",
        f"- Weights: `{meta['weights']}` (one pass, dropout off, test-time views `{views}`, device "
        f"`{meta['device']}`); classical: "
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
        "The floor columns are the shot-noise floor (Cramér–Rao bound, RMS over the scan's patterns): the "
        "smallest RMS error (%) any unbiased per-pattern detector can have at that dose, computed from the "
        "simulator's own response to a stretched cell with shear, rotation and origin known (so optimistic); "
        "noise-free it is 0.",
        "",
        "| set | dose (e-/pattern) | FCU-Net eps_xx | correlation eps_xx | floor eps_xx | FCU-Net eps_yy | "
        "correlation eps_yy | floor eps_yy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f, c = r["fcunet"]["strain_parts"], r["classical"]["strain_parts"]
        fl = {k: floor_pct(r, k) for k in FLOOR_COMPONENTS}
        lines.append(f"| `{r['set']}` | {dose_label(r['dose_e'])} | {_cell(f['eps_xx'])} | {_cell(c['eps_xx'])} | "
                     f"{_pct(fl['eps_xx'])} | {_cell(f['eps_yy'])} | {_cell(c['eps_yy'])} | {_pct(fl['eps_yy'])} |")
    lines += ["", f"The paper's eps_yy goals (<= {GOAL_ON_ZONE} % on zone, < {GOAL_TILTED} % tilted) against each "
              "detector, per dose (PASS / FAIL):", ""]
    for r in rows:
        goal, op = (GOAL_ON_ZONE, "<=") if r["set"] == "thick" else (GOAL_TILTED, "<")
        verdict = []
        for m, label in (("fcunet", "FCU-Net"), ("classical", "correlation")):
            v = r[m]["strain_parts"]["eps_yy"]["rms"]
            ok = v is not None and (v <= goal if op == "<=" else v < goal)
            verdict.append(f"{label} {v:.3f} % ({'PASS' if ok else 'FAIL'})" if v is not None else f"{label} -")
        floor = floor_pct(r, "eps_yy")
        if floor is not None:
            reach = ("above the goal: no unbiased detector can meet it at this dose" if floor > goal
                     else "below the goal: not ruled out")
            verdict.append(f"floor {floor:.3f} % ({reach})")
        lines.append(f"- `{r['set']}` {dose_label(r['dose_e'])} (goal {op} {goal} %): " + ", ".join(verdict))
    lines += ["", "The dose (e-/pattern) at which each set's eps_yy floor reaches its goal (below it, no unbiased "
              "detector can meet the goal): " + ", ".join(
                  f"`{name}` {(100 * fl / goal) ** 2:.1e}" for name, fl, goal in _goal_doses(rows)) + "."]
    lines += ["", f"Raw numbers: `benchmarks/data/{section}.json`.", f"<!-- {section}:end -->"]
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, default=None, help="FCU-Net weights (default: the shipped ones)")
    p.add_argument("--sets", default=",".join(fb.STRAIN_SETS), help="comma list of strain sets")
    p.add_argument("--doses", type=parse_dose, nargs="+", default=[parse_dose(d) for d in DEFAULT_DOSES],
                   help="electrons per pattern, 'inf' for noise-free (default: inf 1e6 1e5 1e4)")
    p.add_argument("--scan", type=int, nargs=2, default=(16, 16), metavar=("RX", "RY"))
    p.add_argument("--device", default="cpu", help="FCU-Net device (default cpu)")
    p.add_argument("--views", default="none", choices=FCUNET_VIEWS,
                   help="FCU-Net test-time views (default none; others write their own section)")
    p.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    a = parse_args(argv)
    names = a.sets.split(",")
    fb.check_strain_sets(names, tuple(a.scan))
    load_fcunet(a.weights)  # fail early on missing or broken weights
    t0 = time.perf_counter()
    rows = run(names, a.doses, tuple(a.scan), weights=a.weights, device=a.device, views=a.views)
    meta = {"command": ".venv/bin/python benchmarks/fcunet_dose.py" + (" " + shlex.join(argv) if argv else ""),
            "weights": str(a.weights) if a.weights else fb._repo_relative(fb.DEFAULT_WEIGHTS),
            "device": a.device, "views": a.views, "scan": list(a.scan), "machine": machine_info(), "seconds": time.perf_counter() - t0}
    out = HERE / "data" / f"{section_name(a.views)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    text = render(rows, meta)
    print(text)
    if not a.no_results:
        # test-time views are an experiment: their sections go to benchmarks/data/experiments.md
        write_section(section_name(a.views), text, *([] if a.views == "none" else [Path(__file__).resolve().parent / "data" / "experiments.md"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
