#!/usr/bin/env python3
"""Multislice ptychography of ``sto_thick`` (2e4 e-/pattern) with a chosen slice count: the benchmark's
``distill4d multislice long`` call (:func:`ptycho_benchmark.run_distill4d`'s keywords) with ``--slices``
slices of ``125.06 / slices`` Å, printing the per-iteration error, the final score (``score_phase``) and
the wall time; the result is saved as ``benchmarks/data/ptycho/sto_thick_20000_slices<S>.npz``.

Usage: ``OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/ptycho_slices_check.py --slices 32``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ptycho_benchmark import DATA, LABEL, Scorer, dosed, score_phase  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=24)
    ap.add_argument("--dose", type=float, default=2e4)
    ap.add_argument("--object-step", type=float, default=None,
                    help="learning_rates['object_step'] (default: the package's)")
    ap.add_argument("--score-every", type=int, default=2)
    a = ap.parse_args()
    import torch

    from distill4d.phase.ptycho import reconstruct

    torch.set_num_threads(1)
    dc, labels = dosed("sto_thick", a.dose)
    scorer = Scorer(labels[LABEL], tuple(labels["metadata"]["scan_step_xy_A"]))
    pixel = 1.0 / (48 * dc.calibration.q_pixel_inv_A)  # the default window (48 px) and margin (6 px)
    sampling, origin = (pixel, pixel), (30 * pixel, 30 * pixel)
    ckpt = DATA / f"sto_thick_{a.dose:g}_slices{a.slices}.ckpt.pt"
    ckpt.unlink(missing_ok=True)
    t0 = time.perf_counter()
    spent = [0.0]

    def callback(it: int, e: float) -> None:
        t = time.perf_counter()
        line = f"iteration {it + 1}: error {e:.5f} ({t - t0 - spent[0]:.0f} s)"
        if (it + 1) % a.score_every == 0:
            st = torch.load(ckpt, weights_only=True, map_location="cpu")["state"]
            ph = st["phase"].sum(dim=0).numpy().astype(np.float32)
            sc = score_phase(scorer, ph, sampling, origin)
            line += f" SSIM {sc['ssim']:.4f} r {sc['pearson']:.4f}"
        print(line, flush=True)
        spent[0] += time.perf_counter() - t

    lr = {} if a.object_step is None else {"object_step": a.object_step}
    res = reconstruct(dc, defocus_A=0.0, iterations=a.iterations, device="cpu", seed=0, progress=False,
                      scan_rotation_rad=0.0, scan_flip=False, slices=a.slices, slice_thickness_A=125.06 / a.slices,
                      checkpoint=ckpt, learning_rates=lr, callback=callback)
    wall = time.perf_counter() - t0 - spent[0]
    ckpt.unlink(missing_ok=True)
    pos = np.asarray(res.positions_A)
    s = score_phase(scorer, res.object_phase, res.sampling_A, (float(pos[0, 0]), float(pos[0, 1])))
    print(f"slices {a.slices}: SSIM {s['ssim']:.4f} r {s['pearson']:.4f} final error {res.errors[-1]:.5f} "
          f"wall {wall:.0f} s", flush=True)
    np.savez_compressed(DATA / f"sto_thick_{a.dose:g}_slices{a.slices}.npz", object_slices=res.object_slices,
                        probe_modes=res.probe_modes, positions_A=res.positions_A, sampling_A=np.asarray(res.sampling_A),
                        errors=res.errors, phase=res.object_phase)


if __name__ == "__main__":
    main()
