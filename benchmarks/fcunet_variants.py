#!/usr/bin/env python3
"""FCU-Net architecture variants side by side: pooling, phase-equivariant layers, training length.

Every variant is a trained weights file (model card beside it). For each: the validation metrics
its training recorded (the training library's validation split: every 20th simulation, never
trained on; intensity-weighted disk accuracy within 0.5 px of the predicted image, and MSE),
the disk accuracy on the held-out test library (``fcunet_test.toml``: crystals and thicknesses
not trained on; noise-free and low dose), the RMS strain error on the multislice multilayer sets,
and the stretch response (how much of a known geometric stretch the peaks follow) — the same
measurements as ``fcunet_benchmark.py`` (its functions), FCU-Net only; the classical
correlation detector once, as the reference row.

Usage (from the repository root):
    .venv/bin/python benchmarks/fcunet_variants.py --test-library TESTLIB \\
        --variant "max (published layers)=W1.pt" --variant "spectral pooling=W2.pt" ...
Writes section ``fcunet_variants`` of benchmarks/data/experiments.md (an experiment, not RESULTS.md) and ``benchmarks/data/fcunet_variants.json``.
Choose between variants on the validation columns; the test columns report, they do not select.
"""

from __future__ import annotations

import argparse
import hashlib
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

from distill4d.ml.fcunet.detect import load_fcunet  # noqa: E402

SECTION = "fcunet_variants"


def _f(x, nd: int = 3) -> str:
    return fb._f(x, nd)


def measure(weights: Path | None, args, *, classical: bool, train_cfg) -> dict:
    """Validation (from the card), test-library accuracy, strain and stretch of one weights file."""
    _, card = load_fcunet(weights)
    t = time.perf_counter()
    lib = fb.run_library(args.test_library, args.max_entries, weights=weights, passes=1, device=args.device,
                         seed=args.seed, train=train_cfg, classical=classical)
    strain, _ = fb.run_strain_sets(args.sets, tuple(args.scan), weights=weights, passes=1, device=args.device,
                                   seed=args.seed, resimulate=False, classical=classical)
    path = weights or fb.DEFAULT_WEIGHTS
    tr = card.get("training", {})
    return {"weights": fb._repo_relative(Path(path)), "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
            "architecture": card.get("architecture"), "steps": tr.get("steps"), "seconds": tr.get("seconds"),
            "init": (tr.get("init") or {}).get("weights"), "command": tr.get("command"),
            "validation": card.get("validation", {}).get("best"),
            "library": {d: r["splits"] for d, r in lib["doses"].items()},
            "library_splits": lib["splits"], "library_n": lib["n_entries"],
            "strain": strain, "measure_s": time.perf_counter() - t}


def _acc(res: dict, method: str, dose: str, split: str) -> str:
    r = res["library"][dose].get(split)
    return _f(r[method]["accuracy_fine"]) if r else "n/a"


def render(raw: dict) -> str:
    meta, variants = raw["meta"], raw["variants"]
    first = variants[0]
    doses = list(first["library"])
    split_names = [s["name"] for s in first["library_splits"][:7]]
    thick = next(n for n in split_names if n.startswith("thick"))
    off = next(n for n in split_names if n.startswith("off zone"))
    L = ["## FCU-Net variants (pooling, phase-equivariant layers)", "",
         f"Written by `benchmarks/fcunet_variants.py` on {raw['machine']['date']} (whole run {meta['total_s']:.0f} s).",
         "", machine_line(raw["machine"]), f"- Command: `{meta['command']}`",
         f"- Test library: {first['library_n']} entries of `{meta['test_library']}` (crystals and thicknesses held "
         f"out of training, as in the FCU-Net benchmark); strain sets {', '.join(meta['sets'])} on "
         f"{meta['scan'][0]}x{meta['scan'][1]} scans; one pass, dropout off.",
         "- Validation columns: what training recorded on the training library's validation split (every 20th "
         "simulation; disk accuracy within 0.5 px on the predicted image). Choose on these; the other columns "
         "report on data no variant was selected on.", "",
         "| variant | architecture | steps | val acc. 0.5 px | val MSE | test acc. 0.5 px (all / thick / off zone), "
         f"{doses[0]} | test acc. 0.5 px all, {doses[1]} |", "|---|---|---|---|---|---|---|"]
    for v in variants:
        a = v["architecture"] or {}
        arch = f"pool={a.get('pool')}, equivariant={a.get('equivariant', False)}, filters={a.get('filters')}"
        val = v["validation"] or {}
        steps = f"{v['steps']}" + (f" (from {v['init']})" if v["init"] else "")
        L.append(f"| {v['label']} | {arch} | {steps} | {_f(val.get('accuracy'))} | {val.get('mse', float('nan')):.3g} | "
                 f"{_acc(v, 'fcunet', doses[0], 'all')} / {_acc(v, 'fcunet', doses[0], thick)} / "
                 f"{_acc(v, 'fcunet', doses[0], off)} | {_acc(v, 'fcunet', doses[1], 'all')} |")
    L.append(f"| correlation (reference) | - | - | - | - | {_acc(first, 'classical', doses[0], 'all')} / "
             f"{_acc(first, 'classical', doses[0], thick)} / {_acc(first, 'classical', doses[0], off)} | "
             f"{_acc(first, 'classical', doses[1], 'all')} |")
    L += ["", "Strain RMS error (%) against the simulator's truth, and the stretch response (strain slope: the "
          "fraction of a known ±1-2 % stretch of the first layer's patterns that the strain map reports; 1 = full):",
          "", "| variant | " + " | ".join(f"`{s}` eps_xx / eps_yy RMS | `{s}` stretch slope xx / yy"
                                           for s in meta["sets"]) + " |",
          "|---|" + "---|---|" * len(meta["sets"])]

    def strain_cells(v: dict, m: str) -> str:
        cells = []
        for s in meta["sets"]:
            r = v["strain"][s]
            e = r[m]["strain"]
            st = r["stretch"][m]
            cells.append(f"{_f(e.get('eps_xx'))} / {_f(e.get('eps_yy'))} | "
                         f"{_f(st['eps_xx']['strain_slope'], 2)} / {_f(st['eps_yy']['strain_slope'], 2)}")
        return " | ".join(cells)

    for v in variants:
        L.append(f"| {v['label']} | {strain_cells(v, 'fcunet')} |")
    L.append(f"| correlation (reference) | {strain_cells(first, 'classical')} |")
    L += ["", "Weights (the training command from each model card):", ""]
    L += [f"- {v['label']}: `{v['weights']}` (sha256 {v['sha256'][:12]}): `{v['command']}`" for v in variants]
    L += ["", f"Raw numbers: `benchmarks/data/{meta['raw_name']}`."]
    return "\n".join(L)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", action="append", required=True, metavar="LABEL=WEIGHTS",
                   help="a label and a weights file (.pt with its .json card); repeat; 'LABEL=shipped' for the "
                        "package's weights")
    p.add_argument("--test-library", type=Path, required=True, help="held-out library (fcunet_test.toml)")
    p.add_argument("--max-entries", type=int, default=96)
    p.add_argument("--sets", default="thick,tilt,tilt_gradient")
    p.add_argument("--scan", type=int, nargs=2, default=(16, 16), metavar=("RX", "RY"))
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    a = p.parse_args(argv)
    a.sets = a.sets.split(",")
    unknown = [s for s in a.sets if s not in fb.STRAIN_SETS]
    if unknown:
        p.error(f"unknown strain set(s) {unknown}; known: {list(fb.STRAIN_SETS)}")
    parsed = []
    for v in a.variant:
        label, sep, path = v.partition("=")
        if not sep or not label or not path:
            p.error(f"--variant wants LABEL=WEIGHTS, got {v!r}")
        w = None if path == "shipped" else Path(path)
        if w is not None and not w.is_file():
            p.error(f"--variant {label}: no weights file {w}")
        parsed.append((label, w))
    a.variant = parsed
    return a


def main(argv=None) -> int:
    import torch

    argv = sys.argv[1:] if argv is None else list(argv)
    a = parse_args(argv)
    torch.manual_seed(a.seed)
    t0 = time.perf_counter()
    train_cfg, _ = fb.training_config(load_fcunet(a.variant[0][1])[1])
    variants = []
    for k, (label, w) in enumerate(a.variant):
        fb.log(f"variant {label}: {w or 'shipped'}")
        variants.append({"label": label, **measure(w, a, classical=k == 0, train_cfg=train_cfg)})
    meta = {"command": ".venv/bin/python benchmarks/fcunet_variants.py " + shlex.join(argv),
            "test_library": str(a.test_library), "sets": a.sets, "scan": list(a.scan), "seed": a.seed,
            "raw_name": "fcunet_variants.json", "total_s": time.perf_counter() - t0,
            "numpy": np.__version__, "torch": torch.__version__}
    raw = {"meta": meta, "machine": machine_info(), "variants": variants}
    out = HERE / "data" / meta["raw_name"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(raw, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    text = render(raw)
    print("\n" + text)
    if not a.no_results:
        write_section(SECTION, text, Path(__file__).resolve().parent / "data" / "experiments.md")  # an experiment: not RESULTS.md
        fb.log(f"wrote section '{SECTION}' of benchmarks/data/experiments.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
