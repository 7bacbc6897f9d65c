#!/usr/bin/env python3
"""Multislice ptychography of ``sto_thick`` (2e4 e-/pattern) with a chosen slice count: the benchmark's
``distill4d multislice long`` call (:func:`ptycho_benchmark.run_distill4d`'s keywords) with ``--slices``
slices of ``125.06 / slices`` Å, printing the per-iteration error, the final score (``score_phase``) and
the wall time; the result is saved as ``benchmarks/data/ptycho/sto_thick_20000_slices<S>.npz``.

Usage: ``OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/ptycho_slices_check.py --slices 32``
(``--pattern-size 96``: a window twice the detector's, so the object pixel is half the detector's Nyquist
pixel and scattering beyond the detector leaves it; ``--analyse``: score a saved result by depth).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ptycho_benchmark import DATA, LABEL, Scorer, dosed, object_frame, score_phase  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=24)
    ap.add_argument("--dose", type=float, default=2e4)
    ap.add_argument("--object-step", type=float, default=None,
                    help="learning_rates['object_step'] (default: the package's)")
    ap.add_argument("--score-every", type=int, default=2)
    ap.add_argument("--analyse", action="store_true",
                    help="score the saved result of these settings by depth (the phase of each quarter of the "
                         "slices, and -log of the amplitude product) instead of reconstructing")
    ap.add_argument("--pure-phase", action="store_true", help="every slice's amplitude held at 1")
    ap.add_argument("--tied-slices", action="store_true", help="one transmission function for every slice")
    ap.add_argument("--pattern-size", type=int, default=48,
                    help="the window N in pixels (48: the detector; 96: the object at half the detector's Nyquist "
                         "pixel, the pixels beyond the detector unmeasured)")
    a = ap.parse_args()
    import torch

    from distill4d.phase.ptycho import reconstruct

    torch.set_num_threads(1)
    dc, labels = dosed("sto_thick", a.dose)
    scorer = Scorer(labels[LABEL], tuple(labels["metadata"]["scan_step_xy_A"]))
    n = a.pattern_size
    sampling, origin = object_frame(n, dc.calibration.q_pixel_inv_A)
    tag = f"sto_thick_{a.dose:g}_slices{a.slices}" + ("" if n == 48 else f"_n{n}") + ("_pure" if a.pure_phase else "") + ("_tied" if a.tied_slices else "")
    ckpt = DATA / f"{tag}.ckpt.pt"
    if a.analyse:
        analyse(DATA / f"{tag}.npz", scorer, origin, n)
        return
    ckpt.unlink(missing_ok=True)
    t0 = time.perf_counter()
    spent = [0.0]

    def callback(it: int, e: float) -> None:
        t = time.perf_counter()
        line = f"iteration {it + 1}: error {e:.5f} ({t - t0 - spent[0]:.0f} s)"
        if (it + 1) % a.score_every == 0:
            st = torch.load(ckpt, weights_only=True, map_location="cpu")["state"]
            ph = (st["phase"].sum(dim=0) * (a.slices if a.tied_slices else 1)).numpy().astype(np.float32)
            sc = score_phase(scorer, ph, sampling, origin)
            line += f" SSIM {sc['ssim']:.4f} r {sc['pearson']:.4f}"
        print(line, flush=True)
        spent[0] += time.perf_counter() - t

    lr = {} if a.object_step is None else {"object_step": a.object_step}
    res = reconstruct(dc, defocus_A=0.0, iterations=a.iterations, device="cpu", seed=0, progress=False,
                      scan_rotation_rad=0.0, scan_flip=False, slices=a.slices, slice_thickness_A=125.06 / a.slices,
                      checkpoint=ckpt, learning_rates=lr, callback=callback, pattern_size=n,
                      pure_phase=a.pure_phase, tied_slices=a.tied_slices)
    wall = time.perf_counter() - t0 - spent[0]
    ckpt.unlink(missing_ok=True)
    pos = np.asarray(res.positions_A)
    s = score_phase(scorer, res.object_phase, res.sampling_A, (float(pos[0, 0]), float(pos[0, 1])))
    print(f"slices {a.slices}, window {n}: SSIM {s['ssim']:.4f} r {s['pearson']:.4f} final error {res.errors[-1]:.5f} "
          f"wall {wall:.0f} s", flush=True)
    np.savez_compressed(DATA / f"{tag}.npz", object_slices=res.object_slices,
                        probe_modes=res.probe_modes, positions_A=res.positions_A, sampling_A=np.asarray(res.sampling_A),
                        errors=res.errors, phase=res.object_phase)


DETECTOR = 48  # the scan's detector, pixels


def analyse(path: Path, scorer, origin, window: int) -> None:
    """Scores of the saved object read by depth: every slice's phase summed, each quarter of the slices
    alone, and ``-log`` of the product of the amplitudes (where the column signal goes when the model
    takes scattering beyond the detector for absorption); with a window larger than the detector, each also
    low-passed to the detector's band (the finer object's higher frequencies are barely measured)."""
    z = np.load(path)
    slices, sampling = z["object_slices"], tuple(float(v) for v in z["sampling_A"])
    phase = np.angle(slices)  # per slice, within (-pi, pi]: a slice of about 1 rad does not wrap
    S = len(slices)
    reads = {"all slices (phase summed)": phase.sum(0)}
    for q in range(4):
        a, b = q * S // 4, (q + 1) * S // 4
        if b > a:
            reads[f"slices {a}-{b - 1}"] = phase[a:b].sum(0)
    reads["-log amplitude product"] = -np.log(np.clip(np.abs(slices), 1e-6, None)).sum(0)
    if window > DETECTOR:  # each read also low-passed to the band the detector measures
        fx = np.fft.fftfreq(slices.shape[1])[:, None]
        fy = np.fft.fftfreq(slices.shape[2])[None, :]
        band = np.hypot(fx, fy) <= 0.5 * DETECTOR / window
        for name in list(reads):
            reads[name + ", low-passed"] = np.real(np.fft.ifft2(np.fft.fft2(reads[name]) * band))
    print(f"{path.name}: {S} slices, final error {float(z['errors'][-1]):.5f}")
    for name, img in reads.items():
        sc = score_phase(scorer, img.astype(np.float32), sampling, origin)
        print(f"  {name}: SSIM {sc['ssim']:.4f} r {sc['pearson']:.4f}", flush=True)


if __name__ == "__main__":
    main()
