#!/usr/bin/env python3
"""Options of the ptychography-labelled phase pipeline (``distill4d phase --train-on-ptycho``), chosen
on the development scan ``mos2_large`` (never on ``mos2_test``, whose held-out area scores the pipeline
in ``ptycho_benchmark.py``).

For one scan and dose: the block of ``ptycho_benchmark.pipeline_region`` is reconstructed with each
ptychography setting (loss, iterations; CPU seconds of ``reconstruct`` each), the linear model is fitted
by least squares on its phase with each border band left out of the label (``train_phase(...,
label_mask=...)``), applied to the whole scan and scored on the held-out positions (outside the block)
with the benchmark's own ``Scorer``. The model's own block-internal validation r (the card's) is listed
beside it: what a user without the truth would see. Also: the linear model fitted on the projected
potential itself (the ceiling of the model, not of the label).

Writes its section of ``benchmarks/data/experiments.md`` (not RESULTS.md: a selection study) and
``benchmarks/data/pipeline_options/<scan>_<dose>.json``. One thread.

Usage: ``benchmarks/pipeline_options.py [--scan mos2_large] [--dose 2e4] [--iterations 12 6 3]
[--losses amplitude poisson] [--borders 0 2 4 6]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _results import EXPERIMENTS_MD, machine_line, write_section  # noqa: E402
from phase_data import load_or_simulate  # noqa: E402
from ptycho_benchmark import DATA, LABEL, Scorer, pipeline_region  # noqa: E402

OUT = HERE / "data" / "pipeline_options"


def border_mask(shape: tuple[int, int], band: int) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[band : shape[0] - band, band : shape[1] - band] = True
    return m


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scan", default="mos2_large")
    ap.add_argument("--dose", type=float, default=2e4)
    ap.add_argument("--iterations", nargs="+", type=int, default=[12, 6, 3])
    ap.add_argument("--losses", nargs="+", default=["amplitude", "poisson"])
    ap.add_argument("--borders", nargs="+", type=int, default=[0, 2, 4, 6])
    ap.add_argument("--models", nargs="+", default=["linear", "mlp"], choices=("linear", "mlp"))
    ap.add_argument("--mlp-steps", nargs="+", type=int, default=[150], help="L-BFGS iterations of the MLP (at most)")
    ap.add_argument("--mlp-hidden", nargs="+", type=int, default=[32], help="hidden width of the MLP")
    ap.add_argument("--mlp-l2", nargs="+", type=float, default=[1e-2], help="L2 penalty of the MLP's fit")
    ap.add_argument("--block", type=int, nargs=2, default=None, metavar=("NX", "NY"),
                    help="a corner block of NX x NY positions instead of the benchmark's 1/8 (e.g. 27 31: the "
                    "size of mos2_test's block, on the development scan)")
    ap.add_argument("--no-results", action="store_true")
    a = ap.parse_args(argv)
    import torch

    from distill4d.io import read
    from distill4d.ml.phase.infer import phase_image
    from distill4d.ml.phase.model import PhaseConfig
    from distill4d.ml.phase.train import PhaseTrainConfig, train_phase
    from distill4d.phase import reconstruct

    torch.set_num_threads(1)
    dc = read(str(DATA / f"{a.scan}_{a.dose:g}.h5"))
    _, labels = load_or_simulate(a.scan)
    truth = np.asarray(labels[LABEL], np.float64)
    step = tuple(labels["metadata"]["scan_step_xy_A"])
    region = pipeline_region(dc.scan_shape) if a.block is None else (slice(0, a.block[0]), slice(0, a.block[1]))
    btag = "" if a.block is None else f"_block{a.block[0]}x{a.block[1]}"
    sub = dc[region[0], region[1]]
    held = Scorer(truth, step, exclude=region)
    cal = dc.calibration
    extent = min(2.0, round(0.95 * (min(dc.pattern_shape) / 2) / (cal.semiangle_mrad / cal.mrad_per_px), 2))
    OUT.mkdir(parents=True, exist_ok=True)
    out_json = OUT / f"{a.scan}_{a.dose:g}{btag}.json"
    rows = json.loads(out_json.read_text()) if out_json.exists() else {}
    labs: dict[str, tuple[np.ndarray, float]] = {"truth": (truth[region].astype(np.float32), 0.0)}
    for loss in a.losses:
        for it in a.iterations:
            key = f"{loss} {it}"
            cache = OUT / f"{a.scan}_{a.dose:g}{btag}_{loss}_{it}.npz"
            if cache.exists():
                z = np.load(cache)
                labs[key] = (z["label"], float(z["cpu_s"]))
                continue
            c0 = time.process_time()
            res = reconstruct(dc, region=region, iterations=it, loss=loss, device="cpu", seed=0, progress=False,
                              scan_rotation_rad=0.0, scan_flip=False)
            cpu = time.process_time() - c0
            lab = res.phase_on_scan_grid()
            np.savez(cache, label=lab, cpu_s=cpu)
            labs[key] = (lab, cpu)
            print(f"{key}: block ptychography {cpu:.1f} CPU s", flush=True)
    import distill4d.ml.phase.train as train_module

    mlp = [(n, hd, l2) for n in a.mlp_steps for hd in a.mlp_hidden for l2 in a.mlp_l2]
    runs = [(m, k, b, o) for m in a.models for k in labs for b in a.borders for o in (mlp if m == "mlp" else [(0, 0, 0)])]
    for model, key, band, (steps, hidden, l2) in runs:
            lab, cpu = labs[key]
            name = f"{model}: {key} border {band}" + (f" steps {steps}" if steps and steps != 300 else "")
            name += f" hidden {hidden} l2 {l2:g}" if model == "mlp" and (hidden, l2) != (32, 1e-3) else ""  # 1e-3: the first runs
            train_module.MLP_L2 = l2 or train_module.MLP_L2
            train_module.MLP_MAX_ITERATIONS = 300
            if name in rows:
                continue
            config = PhaseConfig(model=model, cluster=5, extent=extent, hidden=hidden or 32)
            c0 = time.process_time()
            net, card = train_phase(sub, lab, config=config,
                                    train=PhaseTrainConfig(fit="lstsq" if model == "linear" else "lbfgs",
                                                           max_steps=steps or 2000),
                                    label_mask=border_mask(sub.scan_shape, band), progress=False)
            img = phase_image(dc, (net, card), progress=False, scheduler="inline")
            fit_cpu = time.process_time() - c0
            s = held.score(np.asarray(img.image, np.float64), step, (0.0, 0.0))
            rows[name] = {"model": model, "steps": card["steps"], "hidden": hidden, "l2": l2, "label": key, "border": band, "block_ptycho_cpu_s": cpu,
                          "fit_and_apply_cpu_s": fit_cpu, "block_r": card["metrics"]["held_out_pearson_r"],
                          "held_out_ssim": s["ssim"], "held_out_r": s["pearson"]}
            print(name, {k: round(v, 3) if isinstance(v, float) else v for k, v in rows[name].items()}, flush=True)
            out_json.write_text(json.dumps(rows, indent=1))
    if a.no_results:
        return
    L = [f"## Pipeline options ({a.scan}, {a.dose:g} e-/pattern, block {region[0].stop} x {region[1].stop})", "",
         f"Written by `benchmarks/pipeline_options.py {' '.join(sys.argv[1:] if argv is None else argv)}`.", "",
         machine_line(), "", "| model (fit iterations) | label (block ptychography: loss, iterations) | border left out (positions) | "
         "block ptychography CPU s | fit + apply CPU s | block-internal r | held-out SSIM / r |",
         "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        L.append(f"| {r.get('model', 'linear')}" + (f" ({r.get('steps', 300)} iterations, hidden {r.get('hidden') or 32}, L2 {r.get('l2') or 1e-3:g})" if r.get("model") == "mlp" else "") + f" | {r['label']} | {r['border']} | {r['block_ptycho_cpu_s']:.1f} | "
                 f"{r['fit_and_apply_cpu_s']:.1f} | {r['block_r']:.3f} | "
                 f"{r['held_out_ssim']:.3f} / {r['held_out_r']:.3f} |")
    write_section(f"pipeline_options_{a.scan}_{a.dose:g}{btag}", "\n".join(L) + "\n", EXPERIMENTS_MD)


if __name__ == "__main__":
    main()
