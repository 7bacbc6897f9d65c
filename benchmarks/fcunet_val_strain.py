#!/usr/bin/env python3
"""FCU-Net options on validation strain scans (training crystals; the selection data for strain).

The strain sets of ``fcunet_benchmark.py`` / ``fcunet_dose.py`` (Si [011], a crystal FCU-Net was
never trained on) are test data: nothing may be chosen on them. This script makes the same kind
of multilayer scans (layers of eps_xx = +1 % / -1 %, 4 rows each, true eps_yy = 0) of crystals
from the training library's list, so that detector options can be compared on strain before
they are reported once on the test scans:

- ``val_thick``: MgO [001], 50 nm, on zone;
- ``val_tilt``: Cu [011], 20 nm, tilted (5, 2) mrad;
- ``val_gradient``: BaTiO3 [001], 25 nm, tilt_x rising 0 to 8 mrad along the columns.

Each scan is noise-free and at 1e5 e-/pattern (Poisson, seed 5). For every FCU-Net variant
(``--views``, ``--passes``, ``--weights``) and the correlation detector: RMS error (%) of eps_xx and eps_yy
against the simulator's truth, with its row part and scatter (``fcunet_benchmark.error_parts``),
reference = the first layer. Writes the section ``fcunet_val_strain`` of benchmarks/data/experiments.md (selection data, not RESULTS.md)
and benchmarks/data/fcunet_val_strain.json; scans are cached in benchmarks/data/fcunet/.

Usage (repository root):
    .venv/bin/python benchmarks/fcunet_val_strain.py --views none flips dihedral
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
import strain_vs_py4dstem as svp  # noqa: E402
from _results import add_output_arguments, machine_info, machine_line, write_section  # noqa: E402

from distill4d.ml.fcunet import FCUNET_VIEWS  # noqa: E402

SECTION = "fcunet_val_strain"
SCAN = (16, 16)
DOSE_E = 1e5
NOISE_SEED = 5
#: name: (prototype, zone axis, scan_preset options, tilt_x gradient max mrad or None)
VAL_SETS = {
    "val_thick": ("MgO", (0, 0, 1), dict(thickness_A=500.0, tilt_mrad=(0.0, 0.0)), None),
    "val_tilt": ("Cu", (0, 1, 1), dict(thickness_A=200.0, tilt_mrad=(5.0, 2.0)), None),
    "val_gradient": ("BaTiO3", (0, 0, 1), dict(thickness_A=250.0, tilt_mrad=(0.0, 0.0)), 8.0),
}


def load_or_simulate(name: str):
    """(DataCube, truth, probe) of a validation scan, noise-free, from the cache when there."""
    from distill4d.simulate.crystals import orient, prototype
    from distill4d.simulate.kinematic import DEFAULT_CALIBRATION as cal
    from distill4d.simulate.multislice import CBEDSettings, vacuum_probe_pattern
    from distill4d.simulate.scan import scan_preset, simulate_scan

    def make():
        proto, zone, opts, grad = VAL_SETS[name]
        atoms, _ = orient(prototype(proto), zone)
        settings = CBEDSettings(energy_eV=cal.energy_eV, semiangle_mrad=cal.semiangle_mrad, shape=(128, 128),
                                q_pixel_inv_A=cal.q_pixel_inv_A)
        fields = scan_preset("multilayer", SCAN, strain=svp.STRAIN, layer_width=svp.LAYER_WIDTH, **opts)
        if grad:
            fields.tilt_mrad[..., 0] = np.linspace(0.0, grad, SCAN[1])[None, :]
        dc, truth = simulate_scan(atoms, fields, settings, dose_e=None, seed=0, tilt_step_mrad=1.0)
        return dc, truth, vacuum_probe_pattern(settings)

    return fb.cached_scan(fb.CACHE / f"{name}_{SCAN[0]}x{SCAN[1]}{fb.SETS_VERSION}", make)[:3]


def noisy(dc, dose_e: float):
    """``dc`` with Poisson noise at ``dose_e`` electrons per pattern (seed NOISE_SEED, in scan order)."""
    from distill4d.datacube import DataCube
    from distill4d.simulate.augment import poisson_noise

    a = np.asarray(dc.data, dtype=np.float64)
    rng = np.random.default_rng(NOISE_SEED)
    out = np.stack([poisson_noise(p, dose_e=dose_e, rng=rng) for p in a.reshape(-1, *a.shape[2:])])
    return DataCube(out.reshape(a.shape).astype(np.float32), dc.calibration)


def run(variants: list[tuple[str, str | None, str, int]]) -> list[dict]:
    """One row per (set, dose, detector): eps_xx / eps_yy error parts (%)."""
    from distill4d.bragg import find_bragg_disks
    from distill4d.lattice import strain_map
    from distill4d.ml.fcunet.detect import find_bragg_disks_fcunet

    ref_rows = (0, svp.LAYER_WIDTH)
    rows = []
    for name in VAL_SETS:
        t = time.perf_counter()
        dc0, truth, probe = load_or_simulate(name)
        fb.log(f"{name}: {time.perf_counter() - t:.0f} s")
        expected = svp.expected_strain(truth, ref_rows)[0]
        for dose in (None, DOSE_E):
            dc = dc0 if dose is None else noisy(dc0, dose)
            found = {label: find_bragg_disks_fcunet(dc, probe, weights=w, views=v, n_passes=n, seed=0, device="cpu",
                                                    progress=False)
                     for label, w, v, n in variants}
            found["correlation"] = find_bragg_disks(dc, probe, progress=False, scheduler="inline")
            for label, pk in found.items():
                sm = strain_map(pk, reference=(slice(*ref_rows), slice(None)))
                parts = {k: fb.error_parts(getattr(sm, k), expected[k]) for k in ("eps_xx", "eps_yy")}
                rows.append({"set": name, "dose_e": dose, "detector": label, **parts})
                fb.log(f"  {name} {dose} {label}: eps_xx {parts['eps_xx']['rms']:.3f}, eps_yy {parts['eps_yy']['rms']:.3f} %")
    return rows


def render(rows: list[dict], meta: dict) -> str:
    section = meta.get("section", SECTION)
    def cell(p: dict) -> str:
        return "-" if p["rms"] is None else f"{p['rms']:.3f} ({p['rows']:.3f} / {p['scatter']:.3f})"

    L = [f"<!-- {section}:start -->",
         "## FCU-Net options on validation strain scans (selection data)" + ("" if section == SECTION else f": `{section}`"),
         "",
         f"Written by `benchmarks/fcunet_val_strain.py` on {meta['machine']['date']} (whole run {meta['seconds']:.0f} s).",
         "", machine_line(meta["machine"]), f"- Command: `{meta['command']}`",
         "- Scans (16x16, 128x128 px, 300 kV, 2 mrad; crystals from the training library's list, so these are "
         "selection data, unlike the Si [011] test scans): "
         + "; ".join(f"`{n}` {p} {list(z)} {o['thickness_A'] / 10:g} nm, tilt {o['tilt_mrad']} mrad"
                     + (f", tilt_x 0-{g:g} mrad along the columns" if g else "") for n, (p, z, o, g) in VAL_SETS.items())
         + ". Layers of eps_xx +1 % / -1 % (4 rows each), true eps_yy 0; reference: the first layer.",
         f"- Noise-free and {DOSE_E:.0e} e-/pattern (Poisson, seed {NOISE_SEED}). RMS error (%) as RMS (row part / scatter).",
         "", "| set | dose | detector | eps_xx | eps_yy |", "|---|---|---|---|---|"]
    for r in rows:
        dose = "noise-free" if r["dose_e"] is None else f"{r['dose_e']:.0e}"
        L.append(f"| `{r['set']}` | {dose} | {r['detector']} | {cell(r['eps_xx'])} | {cell(r['eps_yy'])} |")
    L += ["", f"Raw numbers: `benchmarks/data/{section}.json`.", f"<!-- {section}:end -->"]
    return "\n".join(L)


def parse_variant(text: str) -> tuple[str, str | None]:
    """``LABEL=PATH`` of extra FCU-Net weights."""
    label, sep, path = text.partition("=")
    if not sep or not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"expected LABEL=PATH of a weights file, got {text!r}")
    return label, path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--views", nargs="+", default=["none"], choices=FCUNET_VIEWS,
                   help="test-time views of the shipped weights (default: none)")
    p.add_argument("--passes", nargs="+", type=int, default=[],
                   help="also the shipped weights (one view) averaged over this many Monte-Carlo dropout passes")
    p.add_argument("--weights", action="append", type=parse_variant, default=[],
                   help="LABEL=PATH: other weights, one pass, no views (repeatable)")
    add_output_arguments(p, SECTION)
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    if any(n < 2 for n in a.passes):
        p.error(f"--passes takes counts >= 2 (one pass is the plain FCU-Net row), got {a.passes}")
    variants = [(f"FCU-Net, views {v}" if v != "none" else "FCU-Net", None, v, 1) for v in a.views]
    variants += [(f"FCU-Net, {n} dropout passes", None, "none", n) for n in a.passes]
    variants += [(f"FCU-Net {label}", path, "none", 1) for label, path in a.weights]
    t0 = time.perf_counter()
    rows = run(variants)
    meta = {"command": ".venv/bin/python benchmarks/fcunet_val_strain.py" + (" " + shlex.join(argv) if argv else ""),
            "machine": machine_info(), "seconds": time.perf_counter() - t0, "section": a.section}
    out = HERE / "data" / f"{a.section}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    text = render(rows, meta)
    print(text)
    if not a.no_results:
        write_section(a.section, text, Path(__file__).resolve().parent / "data" / "experiments.md")  # selection data: not RESULTS.md
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
